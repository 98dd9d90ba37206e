//! The broker's side of cluster mode: registration and heartbeats to the active controller,
//! fetching the metadata image, replica fetchers (followers pulling from leaders with the
//! Fetch API), ISR maintenance, and controlled shutdown.
//!
//! Invariants:
//! - Followers fsync what they fetched before fetching again ("sync-before-fetch"), so the
//!   offset a follower reports is durable on it and the leader's high watermark only covers
//!   records every in-sync replica has on disk (see `replication` for the argument).
//! - A fetcher never holds a partition lock across an await.
//! - Every loop stops when the broker begins shutting down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{fetch_request, BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::rpc::{ControllerRequest, ControllerResponse};
use super::transport::ControllerClient;
use crate::broker::{Broker, Partition, Role};
use crate::client::Connection;
use crate::controller::MetadataImage;
use crate::protocol::batch::BatchHeader;
use crate::protocol::errors;
use crate::replication::{EpochEndOffset, FollowerPhase};
use crate::runtime;

/// Fetch API version followers use (v12: topic names, `last_fetched_epoch`, `diverging_epoch`).
pub const REPLICA_FETCH_VERSION: i16 = 12;
/// How often the fetcher manager looks for partitions whose leader changed.
pub const FETCHER_SCAN_INTERVAL_MS: u64 = 50;
/// How long controlled shutdown waits for leadership to move away.
pub const CONTROLLED_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;

/// Starts the broker's cluster tasks (heartbeats, metadata, fetchers, ISR maintenance).
pub fn start(broker: Arc<Broker>) {
    let b = broker.clone();
    tokio::spawn(async move { heartbeat_loop(b).await });
    let b = broker.clone();
    tokio::spawn(async move { metadata_loop(b).await });
    let b = broker.clone();
    tokio::spawn(async move { fetcher_manager(b).await });
    let b = broker;
    tokio::spawn(async move { isr_loop(b).await });
}

fn controller_client(broker: &Broker) -> ControllerClient {
    ControllerClient::new(broker.config().controller_quorum_voters(), Duration::from_millis(2000))
}

fn heartbeat_request(broker: &Broker, want_shutdown: bool) -> ControllerRequest {
    let adv = broker.config().advertised_listener();
    let c = broker.cluster().expect("cluster mode");
    ControllerRequest::Heartbeat {
        broker_id: broker.config().node_id(),
        incarnation: c.incarnation,
        host: adv.host,
        port: adv.port,
        want_shutdown,
        metadata_index: c.applied_index.load(std::sync::atomic::Ordering::Acquire),
    }
}

/// How long one heartbeat waits for an answer before the client tries the next voter: short
/// enough that a broker whose heartbeat went to a controller that vanished without closing the
/// connection (a network partition) reaches the new one within its grace period
/// ([`crate::cluster::controller::new_controller_grace_ms`]).
pub fn heartbeat_request_timeout_ms(config: &crate::config::BrokerConfig) -> i64 {
    let interval = config.int_value("broker.heartbeat.interval.ms");
    let session = config.int_value("broker.session.timeout.ms");
    (session - 2 * interval).clamp(2 * interval, 2_000)
}

async fn heartbeat_loop(broker: Arc<Broker>) {
    let interval = Duration::from_millis(broker.config().int_value("broker.heartbeat.interval.ms") as u64);
    let timeout = Duration::from_millis(heartbeat_request_timeout_ms(broker.config()) as u64);
    let mut client = ControllerClient::new(broker.config().controller_quorum_voters(), timeout);
    let mut was_fenced = None;
    while !broker.is_shutting_down() {
        match client.call(&heartbeat_request(&broker, false)).await {
            Ok(ControllerResponse::Heartbeat { fenced, .. }) => {
                if was_fenced != Some(fenced) {
                    tracing::info!(fenced, "controller heartbeat answered");
                    was_fenced = Some(fenced);
                }
            }
            Ok(other) => tracing::debug!(answer = ?other, "unexpected heartbeat answer"),
            Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Controlled shutdown: asks the controller to move leadership away and fence this broker,
/// waiting (bounded) until it leads nothing.
pub async fn controlled_shutdown(broker: &Arc<Broker>) {
    if !broker.config().bool_value("controlled.shutdown.enable") {
        return;
    }
    let mut client = controller_client(broker);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CONTROLLED_SHUTDOWN_TIMEOUT_MS);
    while tokio::time::Instant::now() < deadline {
        match client.call(&heartbeat_request(broker, true)).await {
            Ok(ControllerResponse::Heartbeat { shutdown_ok: true, .. }) => {
                tracing::info!("controlled shutdown: leadership moved away");
                return;
            }
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tracing::warn!("controlled shutdown timed out; exiting anyway");
}

async fn metadata_loop(broker: Arc<Broker>) {
    let mut client = controller_client(&broker);
    let mut applied = 0u64;
    while !broker.is_shutting_down() {
        let req = ControllerRequest::FetchMetadata { from_index: applied, max_wait_ms: 1000 };
        match client.call(&req).await {
            Ok(ControllerResponse::Metadata { applied_index, image: Some(bytes) }) => {
                match MetadataImage::decode(&bytes) {
                    Ok(image) => {
                        applied = applied_index;
                        broker.apply_image(image, applied_index);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "undecodable metadata image from the controller");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            Ok(ControllerResponse::Metadata { .. }) => {}
            Ok(other) => {
                tracing::debug!(answer = ?other, "unexpected metadata answer");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "metadata fetch failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn isr_loop(broker: Arc<Broker>) {
    // Kafka checks every replica.lag.time.max.ms / 2.
    let every = (broker.config().int_value("replica.lag.time.max.ms") / 2).clamp(50, 5_000) as u64;
    while !broker.is_shutting_down() {
        tokio::time::sleep(Duration::from_millis(every)).await;
        broker.isr_maintenance();
    }
}

/// The partitions this broker follows, grouped by leader.
fn followed(broker: &Broker) -> BTreeMap<i32, Vec<Arc<Partition>>> {
    let mut out: BTreeMap<i32, Vec<Arc<Partition>>> = BTreeMap::new();
    for t in broker.all_topics() {
        for p in t.partitions.values() {
            if let Role::Follower(f) = &p.state.lock().unwrap().role {
                out.entry(f.leader_id()).or_default().push(p.clone());
            }
        }
    }
    out
}

async fn fetcher_manager(broker: Arc<Broker>) {
    let mut running: BTreeMap<i32, tokio::task::JoinHandle<()>> = BTreeMap::new();
    while !broker.is_shutting_down() {
        running.retain(|_, h| !h.is_finished());
        for leader in followed(&broker).keys() {
            if !running.contains_key(leader) {
                let b = broker.clone();
                let l = *leader;
                running.insert(l, tokio::spawn(async move { fetcher(b, l).await }));
            }
        }
        tokio::time::sleep(Duration::from_millis(FETCHER_SCAN_INTERVAL_MS)).await;
    }
    for h in running.values() {
        h.abort();
    }
}

/// Pulls from one leader for every partition this broker follows there, until none is left.
async fn fetcher(broker: Arc<Broker>, leader: i32) {
    let me = broker.config().node_id();
    let wait_ms = broker.config().int_value("replica.fetch.wait.max.ms") as i32;
    let partition_max = broker.config().int_value("replica.fetch.max.bytes") as i32;
    let response_max = broker.config().int_value("replica.fetch.response.max.bytes") as i32;
    let mut conn: Option<Connection> = None;
    loop {
        if broker.is_shutting_down() {
            return;
        }
        let parts = followed(&broker).remove(&leader).unwrap_or_default();
        if parts.is_empty() {
            return;
        }
        if conn.as_ref().is_none_or(|c| c.is_broken()) {
            let addr = broker.image().and_then(|i| i.brokers.get(&leader).map(|b| format!("{}:{}", b.host, b.port)));
            let Some(addr) = addr else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match Connection::connect(&addr, "runnel-replica-fetcher", Duration::from_millis(wait_ms as u64 + 5_000))
                .await
            {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(leader, error = %e, "cannot connect to the leader");
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        // Build the request.
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(me);
        req.max_wait_ms = wait_ms;
        req.min_bytes = 1;
        req.max_bytes = response_max;
        req.session_id = 0;
        req.session_epoch = -1;
        let mut by_topic: BTreeMap<String, Vec<fetch_request::FetchPartition>> = BTreeMap::new();
        let mut index: BTreeMap<(String, i32), Arc<Partition>> = BTreeMap::new();
        for p in &parts {
            let st = p.state.lock().unwrap();
            // A follower whose log failed (fsync EIO, ENOSPC) must stop reporting progress: its
            // fetch offset would claim records as durable that the failed sync may have lost.
            if st.log.is_poisoned() {
                continue;
            }
            let (Role::Follower(f), Some(epochs)) = (&st.role, &st.epochs) else { continue };
            let fields = f.fetch_request(epochs);
            let mut fp = fetch_request::FetchPartition::default();
            fp.partition = p.index;
            fp.fetch_offset = fields.fetch_offset;
            fp.current_leader_epoch = fields.current_leader_epoch;
            fp.last_fetched_epoch = fields.last_fetched_epoch;
            fp.log_start_offset = st.log.log_start_offset();
            fp.partition_max_bytes = partition_max;
            by_topic.entry(p.topic.clone()).or_default().push(fp);
            index.insert((p.topic.clone(), p.index), p.clone());
        }
        for (name, partitions) in by_topic {
            let mut ft = fetch_request::FetchTopic::default();
            ft.topic = TopicName(StrBytes::from_string(name));
            ft.partitions = partitions;
            req.topics.push(ft);
        }
        if req.topics.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let c = conn.as_mut().expect("connected above");
        let timeout = Duration::from_millis(wait_ms as u64 + 5_000);
        let resp = match c.send_versioned(&req, REPLICA_FETCH_VERSION, timeout).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader, error = %e, "replica fetch failed");
                conn = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut backoff = false;
        let mut to_sync: Vec<Arc<Partition>> = Vec::new();
        for tr in resp.responses {
            let topic = tr.topic.to_string();
            for pd in tr.partitions {
                let Some(p) = index.get(&(topic.clone(), pd.partition_index)) else { continue };
                match pd.error_code {
                    errors::NONE => {}
                    code => {
                        tracing::debug!(topic = %topic, partition = pd.partition_index, code, "replica fetch error");
                        backoff = true;
                        continue;
                    }
                }
                let records = pd.records.unwrap_or_default();
                let mut st = p.state.lock().unwrap();
                let state = &mut *st;
                let (Role::Follower(f), Some(epochs)) = (&mut state.role, &mut state.epochs) else { continue };
                if f.leader_id() != leader {
                    continue;
                }
                if pd.diverging_epoch.epoch >= 0 {
                    let t = f.on_epoch_end_offset(
                        epochs,
                        EpochEndOffset { epoch: pd.diverging_epoch.epoch, end_offset: pd.diverging_epoch.end_offset },
                    );
                    if let Some(off) = t.offset() {
                        if off < state.log.log_end_offset() {
                            tracing::info!(topic = %topic, partition = pd.partition_index, offset = off,
                                "truncating diverging log suffix");
                            if let Err(e) = state.log.truncate_to(off) {
                                tracing::error!(error = %e, "truncation failed");
                                continue;
                            }
                            match crate::broker::ProducerState::rebuild(&state.log) {
                                Ok(ps) => state.producers = ps,
                                Err(e) => {
                                    tracing::error!(error = %e, "rebuilding producer state after truncation failed");
                                    state.producers.clear();
                                }
                            }
                        }
                    }
                    let leo = state.log.log_end_offset();
                    if let Err(e) = f.truncated(epochs, t, leo) {
                        tracing::error!(error = %e, "epoch cache truncation failed");
                    }
                    continue;
                }
                if !records.is_empty() {
                    if let Err(e) = append_fetched(&mut state.log, epochs, &mut state.producers, &records) {
                        tracing::warn!(topic = %topic, partition = pd.partition_index, error = %e,
                            "could not append fetched records");
                        backoff = true;
                        continue;
                    }
                    to_sync.push(p.clone());
                }
                if f.phase() == FollowerPhase::Truncating && records.is_empty() {
                    // The leader validated our position (no divergence): start fetching.
                }
                let leo = state.log.log_end_offset();
                // Follow the leader's log start offset (DeleteRecords, retention) as Kafka's
                // followers do, never past what this replica holds and the leader committed.
                let start = pd.log_start_offset.min(leo).min(pd.high_watermark);
                if start > state.log.log_start_offset() {
                    if let Err(e) = state.log.delete_records_before(start) {
                        tracing::warn!(topic = %topic, partition = pd.partition_index, error = %e,
                            "could not follow the leader's log start offset");
                    }
                }
                f.on_fetch_response(pd.high_watermark, leo);
            }
        }
        if !to_sync.is_empty() {
            sync_partitions(&to_sync).await;
            broker.notify_appended();
        }
        if backoff {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Appends a fetched chunk (whole batches carrying the leader's offsets), recording new leader
/// epochs in the cache before the batches that start them.
fn append_fetched(
    log: &mut crate::log::Log,
    epochs: &mut crate::replication::LeaderEpochCache,
    producers: &mut crate::broker::ProducerState,
    records: &Bytes,
) -> Result<(), String> {
    let mut pos = 0usize;
    let mut end = 0usize;
    let mut headers = Vec::new();
    while pos < records.len() {
        let h = BatchHeader::parse(&records[pos..]).map_err(|e| e.to_string())?;
        if pos + h.total_len() > records.len() {
            break; // a partial trailing batch: fetch it whole next time
        }
        if h.base_offset >= log.log_end_offset() && epochs.latest_epoch().is_none_or(|e| h.partition_leader_epoch > e) {
            epochs.assign(h.partition_leader_epoch, h.base_offset).map_err(|e| e.to_string())?;
        }
        pos += h.total_len();
        end = pos;
        headers.push(h);
    }
    if end == 0 {
        return Ok(());
    }
    log.append_as_follower(&records[..end]).map_err(|e| e.to_string())?;
    for h in &headers {
        producers.observe_batch(h);
    }
    Ok(())
}

/// Fsyncs the given partitions' new data and records the durable offsets.
async fn sync_partitions(parts: &[Arc<Partition>]) {
    let work: Vec<_> = parts
        .iter()
        .filter_map(|p| p.state.lock().unwrap().log.unflushed().map(|(files, upto)| (p.clone(), files, upto)))
        .collect();
    let results = runtime::blocking(move || {
        work.into_iter()
            .map(|(p, files, upto)| {
                let r = files.iter().try_for_each(|f| f.sync_data());
                (p, upto, r)
            })
            .collect::<Vec<_>>()
    })
    .await;
    for (p, upto, r) in results {
        let mut st = p.state.lock().unwrap();
        match r {
            Ok(()) => {
                st.log.mark_flushed(upto);
                if let Role::Follower(f) = &mut st.role {
                    f.on_flushed(upto);
                }
            }
            Err(e) => {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "follower fsync failed; poisoning");
                st.log.poison();
            }
        }
    }
}
