//! Client workloads, each running on its own simulated node with the project's own client:
//! producers (acks=all or acks=1, optionally idempotent), consumers that read assigned
//! partitions sequentially, consumers that subscribe through a consumer group (join, sync,
//! heartbeat, commit; `runnel::client::group`), a liveness probe and the final reader. Every operation is
//! recorded in the [`History`]; values are unique strings (`p{producer}-{batch}-{record}`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{InitProducerIdRequest, ProducerId};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use madsim::rand::{thread_rng, Rng};
use runnel::client::group::{needs_rejoin, GroupMember};
use runnel::client::{codes, Client, ClientError, ProduceRecord, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

use crate::history::{Event, History};
use crate::settings::ProducerSpec;

/// The topic every workload uses.
pub const TOPIC: &str = "sim";
/// Bytes a consumer asks for per fetch: small, so reads span many requests.
const FETCH_BYTES_MAX: i32 = 16 * 1024;
/// The final reader stops waiting for the high watermark to cover every acknowledged acks=all
/// record this long before the liveness deadline and reads what is there, so lost records are
/// reported as LOST (with offsets) rather than as a liveness failure.
const FINAL_READ_LAST_CHANCE_MS: u64 = 5_000;
/// How long a consumer's fetch waits for data.
const FETCH_WAIT_MS: i32 = 50;
/// Attempts an idempotent producer makes for one batch before giving up on it.
const IDEMPOTENT_ATTEMPTS_MAX: usize = 4;
/// The producer index recorded for the liveness probe's writes.
pub const PROBE_PRODUCER: usize = 999;
/// Subscribing consumer `i` is recorded as consumer `GROUP_CONSUMER_BASE + i`, so its reads
/// never share a session key with a consumer by assign.
pub const GROUP_CONSUMER_BASE: usize = 100;
/// The consumer group the subscribing consumers join.
pub const GROUP: &str = "sim-group";
/// How long the coordinator waits for every member to rejoin during a rebalance.
const REBALANCE_TIMEOUT_MS: i32 = 3_000;

/// Next fetch offset and broker life, by (consumer index, partition).
pub type Positions = Arc<Mutex<BTreeMap<(usize, i32), (i64, u64)>>>;

/// State shared by the harness and every workload.
#[derive(Clone)]
pub struct Ctx {
    pub history: History,
    pub bootstrap: String,
    pub request_timeout: Duration,
    /// Bumped when a broker crashes: reads and acks carry the value they saw.
    pub incarnation: Arc<AtomicU64>,
    /// Producers stop at the end of the safety phase.
    pub stop_producers: Arc<AtomicBool>,
    /// Consumers stop once they have caught up in the liveness phase.
    pub stop_consumers: Arc<AtomicBool>,
    next_op: Arc<AtomicU64>,
    /// Each consumer's next fetch offset per partition and the broker life it was reached in,
    /// for the liveness catch-up check.
    pub positions: Positions,
    /// The same for subscribing consumers (keyed by their recorded consumer index): the group
    /// has caught up on a partition when any member has read it to the end.
    pub group_positions: Positions,
}

impl Ctx {
    pub fn new(history: History, bootstrap: String, request_timeout: Duration) -> Ctx {
        Ctx {
            history,
            bootstrap,
            request_timeout,
            incarnation: Arc::new(AtomicU64::new(0)),
            stop_producers: Arc::new(AtomicBool::new(false)),
            stop_consumers: Arc::new(AtomicBool::new(false)),
            next_op: Arc::new(AtomicU64::new(0)),
            positions: Arc::new(Mutex::new(BTreeMap::new())),
            group_positions: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::SeqCst)
    }

    fn op(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::SeqCst)
    }

    async fn connect(&self, name: &str) -> Option<Client> {
        match Client::connect_with_timeout(&self.bootstrap, name, self.request_timeout).await {
            Ok(c) => Some(c),
            Err(_) => {
                madsim::time::sleep(Duration::from_millis(50)).await;
                None
            }
        }
    }
}

fn value_of(v: &Option<Bytes>) -> String {
    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

/// Encodes an idempotent batch: producer id, epoch and base sequence set.
fn idempotent_batch(values: &[String], pid: i64, epoch: i16, base_seq: i32) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_seq.wrapping_add(i as i32),
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(v.clone())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .expect("encode batch");
    buf.freeze()
}

/// A producer: writes batches of unique values to random partitions until told to stop.
pub async fn producer(ctx: Ctx, idx: usize, spec: ProducerSpec, partitions: i32) {
    let name = format!("producer-{idx}");
    let mut client: Option<Client> = None;
    // Idempotence: producer id, epoch, next sequence per partition.
    let mut pid: Option<(i64, i16)> = None;
    let mut seqs: BTreeMap<i32, i32> = BTreeMap::new();
    let mut n = 0u64;
    while !ctx.stop_producers.load(Ordering::SeqCst) {
        if client.is_none() {
            client = ctx.connect(&name).await;
            continue;
        }
        let partition = thread_rng().gen_range(0..partitions);
        let count = thread_rng().gen_range(1..=spec.batch_max);
        let values: Vec<String> = (0..count).map(|j| format!("p{idx}-{n}-{j}")).collect();
        n += 1;
        if spec.idempotent && pid.is_none() {
            let c = client.as_mut().unwrap();
            let req = InitProducerIdRequest::default()
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            match c.send(req).await {
                Ok(r) if r.error_code == 0 => {
                    pid = Some((r.producer_id.0, r.producer_epoch));
                    seqs.clear();
                }
                _ => {
                    client = None;
                    continue;
                }
            }
        }
        let op = ctx.op();
        let incarnation = ctx.incarnation();
        ctx.history.record(Event::Send {
            op,
            producer: idx,
            acks: spec.acks,
            idempotent: spec.idempotent,
            partition,
            values: values.clone(),
            incarnation,
        });
        let result = if let Some((id, epoch)) = pid {
            let seq = *seqs.get(&partition).unwrap_or(&0);
            let batch = idempotent_batch(&values, id, epoch, seq);
            let mut result = Err(ClientError::InvalidArgument("no attempt".into()));
            for attempt in 0..IDEMPOTENT_ATTEMPTS_MAX {
                if client.is_none() {
                    client = ctx.connect(&name).await;
                }
                let Some(c) = client.as_mut() else { continue };
                result = c.produce_raw(TOPIC, partition, spec.acks, batch.clone()).await;
                match &result {
                    Ok(_) => break,
                    Err(e) if e.is_routing_retriable() || e.kafka_code() == Some(7) => {
                        if e.kafka_code().is_none() {
                            client = None;
                        }
                        tracing::debug!(op, attempt, error = %e, "idempotent retry");
                        madsim::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => break,
                }
            }
            match &result {
                Ok(_) => {
                    seqs.insert(partition, seq.wrapping_add(count as i32));
                }
                // The batch's fate is unknown: start over with a new producer id (as Kafka
                // bumps the epoch), so the next sequence cannot be refused as a gap.
                Err(_) => pid = None,
            }
            result
        } else {
            let recs: Vec<ProduceRecord> = values
                .iter()
                .map(|v| ProduceRecord {
                    key: None,
                    value: Some(Bytes::from(v.clone())),
                    headers: vec![],
                    timestamp_ms: 0,
                })
                .collect();
            client.as_mut().unwrap().produce(TOPIC, partition, spec.acks, recs, runnel::client::Compression::None).await
        };
        match result {
            Ok(base) => ctx.history.record(Event::Ack { op, base_offset: base, incarnation: ctx.incarnation() }),
            Err(e) => {
                if e.kafka_code().is_none() {
                    client = None;
                }
                ctx.history.record(Event::Fail { op, error: e.to_string() });
            }
        }
        madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(0..spec.pause_max_ms))).await;
    }
}

struct Cursor {
    pos: i64,
    session: u64,
    incarnation: u64,
}

/// A consumer by assign: reads each of its partitions sequentially from offset 0. A broker
/// crash (incarnation change) starts a new session from offset 0, as a crash may have
/// replaced unsynced records it already read; within a session reads must be dense and
/// monotonic.
pub async fn consumer(ctx: Ctx, idx: usize, partitions: Vec<i32>) {
    let name = format!("consumer-{idx}");
    let mut client: Option<Client> = None;
    let mut sessions = 0u64;
    let mut cursors: BTreeMap<i32, Cursor> = BTreeMap::new();
    for &p in &partitions {
        cursors.insert(p, Cursor { pos: 0, session: sessions, incarnation: 0 });
        sessions += 1;
    }
    while !ctx.stop_consumers.load(Ordering::SeqCst) {
        for &p in &partitions {
            if client.is_none() {
                client = ctx.connect(&name).await;
            }
            let Some(c) = client.as_mut() else { continue };
            let inc = ctx.incarnation();
            let cur = cursors.get_mut(&p).unwrap();
            if cur.incarnation != inc {
                *cur = Cursor { pos: 0, session: sessions, incarnation: inc };
                sessions += 1;
                ctx.positions.lock().unwrap().insert((idx, p), (0, inc));
            }
            let from = cur.pos;
            match c.fetch(TOPIC, p, from, FETCH_WAIT_MS, 1, FETCH_BYTES_MAX).await {
                Ok(r) => {
                    if ctx.incarnation() != inc {
                        continue; // Answered across a crash: which broker life served it is unknown.
                    }
                    if !r.records.is_empty() {
                        let records = r.records.iter().map(|x| (x.offset, value_of(&x.value))).collect();
                        ctx.history.record(Event::Read {
                            consumer: idx,
                            partition: p,
                            session: cur.session,
                            from,
                            records,
                            incarnation: inc,
                        });
                    }
                    cur.pos = r.next_offset.max(from);
                    ctx.positions.lock().unwrap().insert((idx, p), (cur.pos, inc));
                }
                Err(e) => {
                    let out_of_range = e.kafka_code() == Some(codes::OFFSET_OUT_OF_RANGE);
                    let bad_bytes = matches!(e, ClientError::Protocol(_));
                    // An error answered across a crash says nothing about one broker life.
                    if ctx.incarnation() == inc {
                        ctx.history.record(Event::ReadError {
                            consumer: idx,
                            partition: p,
                            session: cur.session,
                            from,
                            error: e.to_string(),
                            incarnation: inc,
                        });
                    }
                    if out_of_range || bad_bytes {
                        // Reset to the start in a new session (auto.offset.reset=earliest).
                        *cur = Cursor { pos: 0, session: sessions, incarnation: inc };
                        sessions += 1;
                        ctx.positions.lock().unwrap().insert((idx, p), (0, inc));
                    }
                    // The client stays: it reopens broken connections itself, and like a real
                    // consumer keeps its metadata and the leader epochs it has seen (KIP-320),
                    // which keep it from following a deposed leader back to an older log.
                    madsim::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// One assigned partition of a subscribing consumer.
struct GroupCursor {
    pos: i64,
    session: u64,
    incarnation: u64,
}

/// Why a subscribing consumer's generation ended.
enum GenerationEnd {
    /// Join again (rebalance, lost membership, coordinator moved, connection broke).
    Rejoin,
    /// The harness told consumers to stop.
    Stop,
}

/// A consumer by subscribe: joins [`GROUP`], reads its assigned partitions from the committed
/// offsets (or 0), commits what it read after every pass, heartbeats every third of the
/// session timeout, and joins again when the generation ends. Each assigned partition in each
/// generation is a new session (a rebalance may hand a partition back from an older commit, so
/// duplicates across generations are expected); a broker crash or an OFFSET_OUT_OF_RANGE reset
/// to offset 0 starts a new session too. Within a session reads must be dense and monotonic.
pub async fn group_consumer(ctx: Ctx, idx: usize, session_timeout_ms: u64) {
    let name = format!("group-consumer-{idx}");
    let id = GROUP_CONSUMER_BASE + idx;
    let mut client: Option<Client> = None;
    let mut member = GroupMember::new(GROUP, &[TOPIC], session_timeout_ms as i32, REBALANCE_TIMEOUT_MS);
    let mut sessions = 0u64;
    while !ctx.stop_consumers.load(Ordering::SeqCst) {
        if client.is_none() {
            client = ctx.connect(&name).await;
            continue;
        }
        let c = client.as_mut().unwrap();
        match group_generation(&ctx, c, &mut member, id, session_timeout_ms, &mut sessions).await {
            Ok(GenerationEnd::Stop) => {
                let _ = member.leave(c).await;
                return;
            }
            Ok(GenerationEnd::Rejoin) => {}
            // The client stays across errors, as with the consumer by assign.
            Err(_) => {
                madsim::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One generation of a subscribing consumer: join, read committed offsets, then fetch, commit
/// and heartbeat until the generation ends.
async fn group_generation(
    ctx: &Ctx,
    c: &mut Client,
    member: &mut GroupMember,
    id: usize,
    session_timeout_ms: u64,
    sessions: &mut u64,
) -> Result<GenerationEnd, ClientError> {
    let assignment = member.join(c).await?;
    let parts: Vec<i32> = assignment.partitions.get(TOPIC).cloned().unwrap_or_default();
    let inc = ctx.incarnation();
    ctx.history.record(Event::Join {
        consumer: id,
        member: assignment.member_id.clone(),
        generation: assignment.generation_id,
        partitions: parts.clone(),
        incarnation: inc,
    });
    let sent_ms = ctx.history.now_ms();
    let committed = member.committed(c, TOPIC, &parts).await?;
    ctx.history.record(Event::Committed {
        consumer: id,
        sent_ms,
        offsets: committed.iter().map(|(p, o)| (*p, *o)).collect(),
    });
    let mut cursors: BTreeMap<i32, GroupCursor> = BTreeMap::new();
    for &p in &parts {
        let pos = committed.get(&p).copied().filter(|&o| o >= 0).unwrap_or(0);
        cursors.insert(p, GroupCursor { pos, session: *sessions, incarnation: inc });
        *sessions += 1;
    }
    let mut last_commit: BTreeMap<i32, i64> = committed.clone();
    let heartbeat_every = session_timeout_ms / 3;
    let mut last_heartbeat = ctx.history.now_ms();
    loop {
        if ctx.stop_consumers.load(Ordering::SeqCst) {
            return Ok(GenerationEnd::Stop);
        }
        for &p in &parts {
            let cur = cursors.get_mut(&p).unwrap();
            let inc = ctx.incarnation();
            if cur.incarnation != inc {
                // The broker restarted: records past its durable end may have been replaced.
                *cur = GroupCursor { pos: cur.pos, session: *sessions, incarnation: inc };
                *sessions += 1;
            }
            let from = cur.pos;
            match c.fetch(TOPIC, p, from, FETCH_WAIT_MS, 1, FETCH_BYTES_MAX).await {
                Ok(r) => {
                    if ctx.incarnation() != inc {
                        continue; // answered across a crash
                    }
                    if !r.records.is_empty() {
                        let records = r.records.iter().map(|x| (x.offset, value_of(&x.value))).collect();
                        ctx.history.record(Event::Read {
                            consumer: id,
                            partition: p,
                            session: cur.session,
                            from,
                            records,
                            incarnation: inc,
                        });
                    }
                    cur.pos = r.next_offset.max(from);
                    ctx.group_positions.lock().unwrap().insert((id, p), (cur.pos, inc));
                }
                Err(e) => {
                    let out_of_range = e.kafka_code() == Some(codes::OFFSET_OUT_OF_RANGE);
                    let bad_bytes = matches!(e, ClientError::Protocol(_));
                    if ctx.incarnation() == inc {
                        ctx.history.record(Event::ReadError {
                            consumer: id,
                            partition: p,
                            session: cur.session,
                            from,
                            error: e.to_string(),
                            incarnation: inc,
                        });
                    }
                    if out_of_range || bad_bytes {
                        // auto.offset.reset=earliest, in a new session.
                        *cur = GroupCursor { pos: 0, session: *sessions, incarnation: inc };
                        *sessions += 1;
                        ctx.group_positions.lock().unwrap().insert((id, p), (0, inc));
                    }
                    if e.kafka_code().is_none() {
                        return Err(e);
                    }
                    madsim::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        if parts.is_empty() {
            madsim::time::sleep(Duration::from_millis(FETCH_WAIT_MS as u64)).await;
        }
        // Commit what moved since the last commit.
        let offsets: BTreeMap<(String, i32), i64> = cursors
            .iter()
            .filter(|(p, cur)| last_commit.get(p) != Some(&cur.pos))
            .map(|(p, cur)| ((TOPIC.to_string(), *p), cur.pos))
            .collect();
        if !offsets.is_empty() {
            let op = ctx.op();
            ctx.history.record(Event::CommitSend {
                op,
                consumer: id,
                generation: member.generation_id(),
                offsets: offsets.iter().map(|((_, p), o)| (*p, *o)).collect(),
            });
            match member.commit(c, &offsets).await {
                Ok(()) => {
                    ctx.history.record(Event::CommitAck { op });
                    for ((_, p), o) in offsets {
                        last_commit.insert(p, o);
                    }
                }
                Err(e) => {
                    ctx.history.record(Event::CommitFail { op, error: e.to_string() });
                    if needs_rejoin(&e) {
                        return Ok(GenerationEnd::Rejoin);
                    }
                    return Err(e);
                }
            }
        }
        if ctx.history.now_ms() >= last_heartbeat + heartbeat_every {
            match member.heartbeat(c).await {
                Ok(()) => last_heartbeat = ctx.history.now_ms(),
                Err(e) if needs_rejoin(&e) => return Ok(GenerationEnd::Rejoin),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The liveness probe: one acks=all record per partition, retried until acknowledged or the
/// deadline passes. Returns the partitions that never accepted it.
pub async fn probe(ctx: Ctx, partitions: i32, deadline_ms: u64) -> Vec<i32> {
    let mut failed = Vec::new();
    let mut client: Option<Client> = None;
    for p in 0..partitions {
        let value = format!("probe-{p}");
        let op = ctx.op();
        ctx.history.record(Event::Send {
            op,
            producer: PROBE_PRODUCER,
            acks: -1,
            idempotent: false,
            partition: p,
            values: vec![value.clone()],
            incarnation: ctx.incarnation(),
        });
        let mut done = false;
        while !done && ctx.history.now_ms() < deadline_ms {
            if client.is_none() {
                client = ctx.connect("probe").await;
                continue;
            }
            let rec =
                ProduceRecord { key: None, value: Some(Bytes::from(value.clone())), headers: vec![], timestamp_ms: 0 };
            match client.as_mut().unwrap().produce(TOPIC, p, -1, vec![rec], runnel::client::Compression::None).await {
                Ok(base) => {
                    ctx.history.record(Event::Ack { op, base_offset: base, incarnation: ctx.incarnation() });
                    done = true;
                }
                Err(e) => {
                    ctx.history.record(Event::Fail { op, error: e.to_string() });
                    client = None;
                    madsim::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if !done {
            failed.push(p);
        }
    }
    failed
}

/// Reads every partition from its log start to its high watermark. `None` if the broker
/// could not be read before the deadline.
pub async fn final_read(
    ctx: Ctx,
    partitions: i32,
    deadline_ms: u64,
) -> Option<BTreeMap<i32, (i64, Vec<(i64, String)>)>> {
    let mut out = BTreeMap::new();
    let mut client: Option<Client> = None;
    // The end of what was acknowledged with acks=all, per partition. A newly elected leader's
    // high watermark can lag (it starts from what it knew as a follower and advances as the
    // followers fetch), so the final read waits, within the liveness bound, until the high
    // watermark covers every acknowledged acks=all record instead of reading a short log; in the
    // last FINAL_READ_LAST_CHANCE_MS it reads what is there (the checker then names what is lost).
    let mut acked_end: BTreeMap<i32, i64> = BTreeMap::new();
    {
        let mut sends: BTreeMap<u64, (i32, i16, i64)> = BTreeMap::new();
        for e in ctx.history.entries() {
            match e.event {
                Event::Send { op, acks, partition, ref values, .. } => {
                    sends.insert(op, (partition, acks, values.len() as i64));
                }
                Event::Ack { op, base_offset, .. } => {
                    if let Some(&(partition, -1, n)) = sends.get(&op) {
                        let end = acked_end.entry(partition).or_insert(0);
                        *end = (*end).max(base_offset + n);
                    }
                }
                _ => {}
            }
        }
    }
    'partitions: for p in 0..partitions {
        loop {
            if ctx.history.now_ms() >= deadline_ms {
                return None;
            }
            if client.is_none() {
                client = ctx.connect("final-reader").await;
                continue;
            }
            let c = client.as_mut().unwrap();
            let attempt: Result<(i64, Vec<(i64, String)>), ClientError> = async {
                let (start, _) = c.list_offsets(TOPIC, p, EARLIEST_TIMESTAMP).await?;
                let (hw, _) = c.list_offsets(TOPIC, p, LATEST_TIMESTAMP).await?;
                let last_chance = ctx.history.now_ms() + FINAL_READ_LAST_CHANCE_MS >= deadline_ms;
                if hw < acked_end.get(&p).copied().unwrap_or(0) && !last_chance {
                    return Ok((-1, Vec::new())); // not caught up yet: retry
                }
                let mut records = Vec::new();
                let mut pos = start;
                while pos < hw {
                    let r = c.fetch(TOPIC, p, pos, 0, 1, 1 << 20).await?;
                    if r.next_offset <= pos {
                        return Err(ClientError::Protocol(format!("fetch at {pos} below hw {hw} returned nothing")));
                    }
                    records.extend(r.records.iter().map(|x| (x.offset, value_of(&x.value))));
                    pos = r.next_offset;
                }
                Ok((hw, records))
            }
            .await;
            match attempt {
                Ok((-1, _)) => {
                    madsim::time::sleep(Duration::from_millis(100)).await;
                }
                Ok((hw, records)) => {
                    ctx.history.record(Event::Final { partition: p, records: records.clone(), high_watermark: hw });
                    out.insert(p, (hw, records));
                    continue 'partitions;
                }
                Err(e) => {
                    ctx.history.record(Event::Fault { what: format!("final read of partition {p} failed: {e}") });
                    client = None;
                    madsim::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    Some(out)
}

/// Liveness: waits (until `deadline_ms`) for the consumers by assign to reach the final high
/// watermark `hws` on each of their partitions in the current broker life, and, with
/// `group_consumers`, for some member of the group to reach it on every one of `partitions`.
/// Returns `(consumers caught up, group caught up or None without group consumers)`.
pub async fn wait_for_catch_up(
    ctx: &Ctx,
    consumers: &[Vec<i32>],
    group_consumers: bool,
    partitions: i32,
    hws: &BTreeMap<i32, i64>,
    deadline_ms: u64,
) -> (bool, Option<bool>) {
    let mut caught_up = false;
    let mut group_caught_up = group_consumers.then_some(false);
    while ctx.history.now_ms() < deadline_ms {
        let pos = ctx.positions.lock().unwrap().clone();
        let life = ctx.incarnation.load(Ordering::SeqCst);
        caught_up = !consumers.iter().enumerate().any(|(c, ps)| {
            ps.iter().any(|p| match pos.get(&(c, *p)) {
                Some(&(at, inc)) => inc != life || at < *hws.get(p).unwrap_or(&0),
                None => true,
            })
        });
        if group_consumers {
            let gpos = ctx.group_positions.lock().unwrap().clone();
            let done = (0..partitions).all(|p| {
                let hw = *hws.get(&p).unwrap_or(&0);
                hw == 0 || gpos.iter().any(|(&(_, q), &(at, inc))| q == p && inc == life && at >= hw)
            });
            group_caught_up = Some(done);
        }
        if caught_up && group_caught_up != Some(false) {
            break;
        }
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
    (caught_up, group_caught_up)
}
