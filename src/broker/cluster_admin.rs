//! Cluster-mode Metadata, DescribeCluster and admin requests: metadata is answered from the
//! controller's image; topic changes are forwarded to the active controller and answered once
//! this broker's image shows them (so the client's next Metadata request here agrees).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::*;

use super::{Broker, Reply, RequestContext};
use crate::cluster::rpc::{ControllerRequest, ControllerResponse, VoterState};
use crate::config::validate_topic_config;
use crate::controller::metadata::{BrokerRegistration, NO_LEADER};
use crate::controller::MetadataImage;
use crate::protocol::{errors, str_bytes, validate_topic_name};

const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// The metadata log's topic and partition, as Kafka names them in DescribeQuorum.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// See [`METADATA_TOPIC`].
pub const METADATA_PARTITION: i32 = 0;
/// The listener name DescribeQuorum v2 gives the voters' addresses from
/// `controller.quorum.voters`.
const CONTROLLER_LISTENER_NAME: &str = "CONTROLLER";

fn replica_state(v: &VoterState) -> describe_quorum_response::ReplicaState {
    let mut r = describe_quorum_response::ReplicaState::default();
    r.replica_id = BrokerId(v.replica_id);
    r.log_end_offset = v.log_end_offset;
    r.last_fetch_timestamp = v.last_fetch_timestamp;
    r.last_caught_up_timestamp = v.last_caught_up_timestamp;
    r
}

/// One resource of an AlterConfigs request: (resource type, name, the complete new override
/// set or why it is invalid).
pub(super) type ConfigUpdate = (i8, String, Result<BTreeMap<String, String>, String>);

fn topic_entry(img: &MetadataImage, name: &str) -> metadata_response::MetadataResponseTopic {
    let mut mt = metadata_response::MetadataResponseTopic::default();
    mt.name = Some(TopicName(str_bytes(name)));
    mt.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
    mt.is_internal = name == super::offsets_topic::OFFSETS_TOPIC;
    let Some(t) = img.topic_by_name(name) else {
        mt.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
        return mt;
    };
    mt.topic_id = t.topic_id;
    for (&idx, p) in &t.partitions {
        let mut mp = metadata_response::MetadataResponsePartition::default();
        mp.partition_index = idx;
        mp.leader_id = BrokerId(p.leader);
        mp.leader_epoch = p.leader_epoch;
        mp.replica_nodes = p.replicas.iter().map(|r| BrokerId(*r)).collect();
        mp.isr_nodes = p.isr.iter().map(|r| BrokerId(*r)).collect();
        mp.offline_replicas = p.replicas.iter().filter(|r| !img.is_unfenced(**r)).map(|r| BrokerId(*r)).collect();
        if p.leader == NO_LEADER {
            mp.error_code = errors::LEADER_NOT_AVAILABLE;
        }
        mt.partitions.push(mp);
    }
    mt
}

impl Broker {
    /// The brokers that Metadata and DescribeCluster list: every unfenced broker, and a fenced
    /// one for [`FENCED_BROKER_LISTED_MS`](crate::limits::FENCED_BROKER_LISTED_MS) after this
    /// broker learned of the fencing (its partitions already show other leaders and it is
    /// named in `offline_replicas`).
    fn listed_brokers<'a>(&self, img: &'a MetadataImage) -> Vec<&'a BrokerRegistration> {
        let now = crate::runtime::now_ms();
        let since = self.cluster().map(|c| c.fenced_since.lock().unwrap().clone()).unwrap_or_default();
        img.brokers
            .values()
            .filter(|b| {
                !b.fenced || since.get(&b.broker_id).is_some_and(|t| now - t < crate::limits::FENCED_BROKER_LISTED_MS)
            })
            .collect()
    }

    fn cluster_metadata_response(&self, img: &MetadataImage, names: Option<&[String]>) -> MetadataResponse {
        let mut resp = MetadataResponse::default();
        for b in self.listed_brokers(img) {
            let mut mb = metadata_response::MetadataResponseBroker::default();
            mb.node_id = BrokerId(b.broker_id);
            mb.host = str_bytes(&b.host);
            mb.port = b.port as i32;
            resp.brokers.push(mb);
        }
        // Always list this broker (clients must keep a usable node even before the cluster has
        // registered anyone, e.g. right after start) and name a controller that exists.
        let me = self.config().node_id();
        if !resp.brokers.iter().any(|b| b.node_id.0 == me) {
            let adv = self.config().advertised_listener();
            let mut mb = metadata_response::MetadataResponseBroker::default();
            mb.node_id = BrokerId(me);
            mb.host = str_bytes(&adv.host);
            mb.port = adv.port as i32;
            resp.brokers.push(mb);
            resp.brokers.sort_by_key(|b| b.node_id.0);
        }
        resp.cluster_id = Some(str_bytes(self.cluster_id()));
        // The active controller is not a broker-visible node here; name the lowest live broker
        // so clients that send admin requests to "the controller" reach a broker that forwards.
        resp.controller_id = BrokerId(img.brokers.values().find(|b| !b.fenced).map_or(me, |b| b.broker_id));
        resp.cluster_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        match names {
            None => {
                for name in img.topic_ids.keys() {
                    resp.topics.push(topic_entry(img, name));
                }
            }
            Some(list) => {
                for name in list {
                    if validate_topic_name(name).is_err() {
                        let mut mt = metadata_response::MetadataResponseTopic::default();
                        mt.name = Some(TopicName(str_bytes(name)));
                        mt.error_code = errors::INVALID_TOPIC_EXCEPTION;
                        mt.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
                        resp.topics.push(mt);
                    } else {
                        resp.topics.push(topic_entry(img, name));
                    }
                }
            }
        }
        resp
    }

    /// Metadata in cluster mode, creating missing topics through the controller when allowed.
    pub(super) fn metadata_cluster(self: &Arc<Self>, req: MetadataRequest, ctx: RequestContext) -> Reply {
        let img = self.image().unwrap_or_default();
        let names: Option<Vec<String>> = match req.topics {
            None => None,
            Some(v) if v.is_empty() && ctx.version == 0 => None,
            Some(v) => Some(v.iter().filter_map(|t| t.name.as_ref().map(|n| n.to_string())).collect()),
        };
        let auto = self.config.auto_create_topics() && (ctx.version < 4 || req.allow_auto_topic_creation);
        let missing: Vec<String> = names
            .iter()
            .flatten()
            .filter(|n| img.topic_by_name(n).is_none() && validate_topic_name(n).is_ok())
            .cloned()
            .collect();
        if !auto || missing.is_empty() {
            return Reply::Ready(ctx.encode(&self.cluster_metadata_response(&img, names.as_deref())));
        }
        let b = self.clone();
        Reply::Wait(Box::pin(async move {
            for name in &missing {
                let req = ControllerRequest::CreateTopic {
                    name: name.clone(),
                    partitions: -1,
                    replication_factor: -1,
                    configs: Vec::new(),
                    validate_only: false,
                };
                let n = name.clone();
                let (code, msg) = b.forward_admin(req, move |i| i.topic_by_name(&n).is_some()).await;
                if code != errors::NONE && code != errors::TOPIC_ALREADY_EXISTS {
                    tracing::debug!(topic = %name, code, msg, "auto-creating a topic failed");
                }
            }
            let img = b.image().unwrap_or_default();
            ctx.encode(&b.cluster_metadata_response(&img, names.as_deref()))
        }))
    }

    /// DescribeCluster in cluster mode.
    pub(super) fn describe_cluster_cluster(self: &Arc<Self>, ctx: &RequestContext) -> Bytes {
        let img = self.image().unwrap_or_default();
        let mut resp = DescribeClusterResponse::default();
        resp.cluster_id = str_bytes(self.cluster_id());
        resp.controller_id = BrokerId(img.brokers.values().find(|b| !b.fenced).map_or(-1, |b| b.broker_id));
        resp.endpoint_type = 1;
        resp.cluster_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        for b in self.listed_brokers(&img) {
            let mut db = describe_cluster_response::DescribeClusterBroker::default();
            db.broker_id = BrokerId(b.broker_id);
            db.host = str_bytes(&b.host);
            db.port = b.port as i32;
            resp.brokers.push(db);
        }
        ctx.encode(&resp)
    }

    /// DescribeQuorum (KIP-595/KIP-836): forwarded to the active controller, which answers with
    /// its term, applied metadata offset and what it knows of each voter. Like Kafka, only the
    /// metadata partition `__cluster_metadata`-0 exists (anything else is
    /// UNKNOWN_TOPIC_OR_PARTITION at the top level), and a quorum without a reachable leader is
    /// NOT_LEADER_OR_FOLLOWER (retriable) on the partition. A standalone node has no quorum.
    pub(super) fn describe_quorum(self: &Arc<Self>, req: DescribeQuorumRequest, ctx: RequestContext) -> Reply {
        let asks_metadata_partition = matches!(req.topics.as_slice(), [t]
            if t.topic_name.as_str() == METADATA_TOPIC
                && matches!(t.partitions.as_slice(), [p] if p.partition_index == METADATA_PARTITION));
        if self.cluster.is_none() || !asks_metadata_partition {
            let mut resp = DescribeQuorumResponse::default();
            resp.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
            if ctx.version >= 2 {
                let why = if asks_metadata_partition {
                    "this node runs standalone: it has no controller quorum"
                } else {
                    "only __cluster_metadata-0 can be described"
                };
                resp.error_message = Some(str_bytes(why));
            }
            return Reply::Ready(ctx.encode(&resp));
        }
        let b = self.clone();
        Reply::Wait(Box::pin(async move {
            let answer = match b.cluster.as_ref() {
                Some(c) => c.controller.lock().await.call(&ControllerRequest::DescribeQuorum).await.ok(),
                None => None,
            };
            ctx.encode(&b.describe_quorum_response(answer, ctx.version))
        }))
    }

    fn describe_quorum_response(&self, answer: Option<ControllerResponse>, version: i16) -> DescribeQuorumResponse {
        let mut part = describe_quorum_response::PartitionData::default();
        part.partition_index = METADATA_PARTITION;
        match answer {
            Some(ControllerResponse::Quorum { leader_id, leader_epoch, high_watermark, voters }) => {
                part.leader_id = BrokerId(leader_id);
                part.leader_epoch = leader_epoch;
                part.high_watermark = high_watermark;
                part.current_voters = voters.iter().map(replica_state).collect();
            }
            _ => {
                part.error_code = errors::NOT_LEADER_OR_FOLLOWER;
                part.leader_id = BrokerId(-1);
                part.leader_epoch = -1;
                part.high_watermark = -1;
                if version >= 2 {
                    part.error_message = Some(str_bytes("no active controller reachable from this broker"));
                }
            }
        }
        let mut topic = describe_quorum_response::TopicData::default();
        topic.topic_name = TopicName(str_bytes(METADATA_TOPIC));
        topic.partitions.push(part);
        let mut resp = DescribeQuorumResponse::default();
        resp.topics.push(topic);
        if version >= 2 {
            for v in self.config().controller_quorum_voters() {
                let mut l = describe_quorum_response::Listener::default();
                l.name = str_bytes(CONTROLLER_LISTENER_NAME);
                l.host = str_bytes(&v.host);
                l.port = v.port;
                let mut n = describe_quorum_response::Node::default();
                n.node_id = BrokerId(v.id);
                n.listeners.push(l);
                resp.nodes.push(n);
            }
        }
        resp
    }

    /// CreateTopics in cluster mode.
    pub(super) fn create_topics_cluster(self: &Arc<Self>, req: CreateTopicsRequest, ctx: RequestContext) -> Reply {
        let b = self.clone();
        Reply::Wait(Box::pin(async move {
            let mut resp = CreateTopicsResponse::default();
            for ct in req.topics {
                let name = ct.name.to_string();
                let mut r = create_topics_response::CreatableTopicResult::default();
                r.name = ct.name.clone();
                r.num_partitions = -1;
                r.replication_factor = -1;
                let configs: Vec<(String, String)> = ct
                    .configs
                    .iter()
                    .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                    .collect();
                let (code, msg) = if let Err(m) = validate_topic_name(&name) {
                    (errors::INVALID_TOPIC_EXCEPTION, m)
                } else if !ct.assignments.is_empty() {
                    (errors::INVALID_REQUEST, "manual replica assignment is not supported yet".into())
                } else if ct.num_partitions == 0 || ct.num_partitions < -1 {
                    (errors::INVALID_PARTITIONS, format!("invalid partition count {}", ct.num_partitions))
                } else if ct.replication_factor == 0 || ct.replication_factor < -1 {
                    (
                        errors::INVALID_REPLICATION_FACTOR,
                        format!("invalid replication factor {}", ct.replication_factor),
                    )
                } else if let Some(m) = configs.iter().find_map(|(k, v)| validate_topic_config(k, v).err()) {
                    (errors::INVALID_CONFIG, m)
                } else {
                    let creq = ControllerRequest::CreateTopic {
                        name: name.clone(),
                        partitions: ct.num_partitions,
                        replication_factor: ct.replication_factor,
                        configs,
                        validate_only: req.validate_only,
                    };
                    let n = name.clone();
                    let validate_only = req.validate_only;
                    b.forward_admin(creq, move |i| validate_only || i.topic_by_name(&n).is_some()).await
                };
                if code == errors::NONE {
                    if let Some(t) = b.image().and_then(|i| i.topic_by_name(&name).cloned()) {
                        r.topic_id = t.topic_id;
                        r.num_partitions = t.partitions.len() as i32;
                        r.replication_factor = t.partitions.get(&0).map_or(-1, |p| p.replicas.len() as i16);
                    }
                } else {
                    r.error_code = code;
                    r.error_message = Some(str_bytes(&msg));
                }
                resp.topics.push(r);
            }
            ctx.encode(&resp)
        }))
    }

    /// CreatePartitions in cluster mode: forwarded to the controller, answered once this
    /// broker's metadata image shows the new partition count.
    pub(super) fn create_partitions_cluster(
        self: &Arc<Self>,
        req: CreatePartitionsRequest,
        ctx: RequestContext,
    ) -> Reply {
        let b = self.clone();
        Reply::Wait(Box::pin(async move {
            let mut resp = CreatePartitionsResponse::default();
            for ct in req.topics {
                let name = ct.name.to_string();
                let mut r = create_partitions_response::CreatePartitionsTopicResult::default();
                r.name = ct.name.clone();
                let (code, msg) = if ct.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                    (errors::INVALID_REQUEST, "manual replica assignment is not supported yet".to_string())
                } else if ct.count > crate::limits::TOPIC_PARTITIONS_MAX {
                    (errors::INVALID_PARTITIONS, format!("at most {} partitions", crate::limits::TOPIC_PARTITIONS_MAX))
                } else {
                    let creq = ControllerRequest::CreatePartitions {
                        name: name.clone(),
                        count: ct.count,
                        validate_only: req.validate_only,
                    };
                    let (n, count, validate_only) = (name.clone(), ct.count as usize, req.validate_only);
                    b.forward_admin(creq, move |i| {
                        validate_only || i.topic_by_name(&n).is_some_and(|t| t.partitions.len() >= count)
                    })
                    .await
                };
                if code != errors::NONE {
                    r.error_code = code;
                    r.error_message = Some(str_bytes(&msg));
                }
                resp.results.push(r);
            }
            ctx.encode(&resp)
        }))
    }

    /// DeleteTopics in cluster mode.
    pub(super) fn delete_topics_cluster(self: &Arc<Self>, req: DeleteTopicsRequest, ctx: RequestContext) -> Reply {
        let b = self.clone();
        Reply::Wait(Box::pin(async move {
            let mut resp = DeleteTopicsResponse::default();
            let img = b.image().unwrap_or_default();
            let mut names: Vec<(Option<String>, uuid::Uuid)> =
                req.topic_names.iter().map(|n| (Some(n.to_string()), uuid::Uuid::nil())).collect();
            for t in &req.topics {
                let name = t.name.as_ref().map(|n| n.to_string());
                let name = name.or_else(|| img.topics.get(&t.topic_id).map(|ti| ti.name.clone()));
                names.push((name, t.topic_id));
            }
            for (name, id) in names {
                let mut r = delete_topics_response::DeletableTopicResult::default();
                r.topic_id = id;
                match name {
                    None => r.error_code = errors::UNKNOWN_TOPIC_ID,
                    Some(n) => {
                        r.name = Some(TopicName(str_bytes(&n)));
                        if let Some(t) = img.topic_by_name(&n) {
                            r.topic_id = t.topic_id;
                        }
                        let n2 = n.clone();
                        let (code, msg) = b
                            .forward_admin(ControllerRequest::DeleteTopic { name: n }, move |i| {
                                i.topic_by_name(&n2).is_none()
                            })
                            .await;
                        if code != errors::NONE {
                            r.error_code = code;
                            r.error_message = Some(str_bytes(&msg));
                        }
                    }
                }
                resp.responses.push(r);
            }
            ctx.encode(&resp)
        }))
    }

    /// IncrementalAlterConfigs / AlterConfigs on topics in cluster mode: `updates` are
    /// (topic, complete new override set or error).
    pub(super) fn alter_topic_configs_cluster(
        self: &Arc<Self>,
        updates: Vec<ConfigUpdate>,
        validate_only: bool,
        incremental: bool,
        ctx: RequestContext,
    ) -> Reply {
        let b = self.clone();
        Reply::Wait(Box::pin(async move {
            let mut results = Vec::new();
            for (rtype, name, want) in updates {
                let (code, msg) = match want {
                    Err(m) => (errors::INVALID_CONFIG, m),
                    Ok(_) if rtype != 2 => (errors::INVALID_REQUEST, "only topic configs can be altered".into()),
                    Ok(configs) => {
                        let c2 = configs.clone();
                        let n2 = name.clone();
                        let req = ControllerRequest::AlterTopicConfig {
                            name: name.clone(),
                            configs: configs.into_iter().collect(),
                            validate_only,
                        };
                        b.forward_admin(req, move |i| {
                            validate_only || i.topic_by_name(&n2).is_none_or(|t| t.configs == c2)
                        })
                        .await
                    }
                };
                results.push((rtype, name, code, msg));
            }
            if incremental {
                let mut resp = IncrementalAlterConfigsResponse::default();
                for (rtype, name, code, msg) in results {
                    let mut r = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
                    r.resource_type = rtype;
                    r.resource_name = str_bytes(&name);
                    r.error_code = code;
                    if code != errors::NONE {
                        r.error_message = Some(str_bytes(&msg));
                    }
                    resp.responses.push(r);
                }
                ctx.encode(&resp)
            } else {
                let mut resp = AlterConfigsResponse::default();
                for (rtype, name, code, msg) in results {
                    let mut r = alter_configs_response::AlterConfigsResourceResponse::default();
                    r.resource_type = rtype;
                    r.resource_name = str_bytes(&name);
                    r.error_code = code;
                    if code != errors::NONE {
                        r.error_message = Some(str_bytes(&msg));
                    }
                    resp.responses.push(r);
                }
                ctx.encode(&resp)
            }
        }))
    }

    /// The override set an IncrementalAlterConfigs resource asks for, from the image.
    pub(super) fn incremental_overrides(
        &self,
        res: &incremental_alter_configs_request::AlterConfigsResource,
    ) -> Result<BTreeMap<String, String>, String> {
        let img = self.image().unwrap_or_default();
        let Some(t) = img.topic_by_name(res.resource_name.as_str()) else {
            return Err(format!("topic '{}' does not exist", res.resource_name.as_str()));
        };
        let mut overrides = t.configs.clone();
        for c in &res.configs {
            let k = c.name.to_string();
            match c.config_operation {
                0 => {
                    let v = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
                    validate_topic_config(&k, &v)?;
                    overrides.insert(k, v);
                }
                1 => {
                    overrides.remove(&k);
                }
                op => return Err(format!("operation {op} on {k} is not supported")),
            }
        }
        Ok(overrides)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;
    use crate::broker::testkit::{call, open_broker};
    use crate::runtime::MemDisk;

    fn request(topic: &str, partition: i32) -> DescribeQuorumRequest {
        let mut p = describe_quorum_request::PartitionData::default();
        p.partition_index = partition;
        let mut t = describe_quorum_request::TopicData::default();
        t.topic_name = TopicName(str_bytes(topic));
        t.partitions.push(p);
        let mut r = DescribeQuorumRequest::default();
        r.topics.push(t);
        r
    }

    // Proves a standalone node answers DescribeQuorum at every served version with a decodable
    // UNKNOWN_TOPIC_OR_PARTITION (it has no quorum) instead of closing the connection.
    #[tokio::test]
    async fn standalone_answers_unknown_partition_at_every_version() {
        let b = open_broker(&MemDisk::new());
        for v in 0..=2 {
            let resp: DescribeQuorumResponse =
                call(&b, ApiKey::DescribeQuorum, v, &request(METADATA_TOPIC, METADATA_PARTITION)).await;
            assert_eq!(resp.error_code, errors::UNKNOWN_TOPIC_OR_PARTITION, "v{v}");
            if v >= 2 {
                assert!(resp.error_message.is_some_and(|m| m.contains("standalone")), "v{v}");
            }
        }
    }

    // Proves the cluster-mode answer encodes and decodes at v0-v2 (flexible versions, v1
    // timestamps, v2 nodes) with the leader, epoch, high watermark and voters intact, and that
    // an unreachable controller is a retriable partition error.
    #[test]
    fn quorum_response_round_trips_at_every_version() {
        let b = crate::broker::testkit::open_broker_with(
            &MemDisk::new(),
            &[
                ("process.roles", "broker,controller"),
                ("listeners", "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:19092"),
                ("controller.quorum.voters", "7@127.0.0.1:19092,8@127.0.0.1:19093"),
            ],
        );
        let voter = |id, leo, t| VoterState {
            replica_id: id,
            log_end_offset: leo,
            last_fetch_timestamp: t,
            last_caught_up_timestamp: t,
        };
        let answer = ControllerResponse::Quorum {
            leader_id: 8,
            leader_epoch: 4,
            high_watermark: 42,
            voters: vec![voter(7, 40, 1000), voter(8, 42, 2000)],
        };
        for v in 0..=2i16 {
            let resp = b.describe_quorum_response(Some(answer.clone()), v);
            let mut buf = BytesMut::new();
            resp.encode(&mut buf, v).unwrap();
            let back = DescribeQuorumResponse::decode(&mut buf.freeze(), v).unwrap();
            let p = &back.topics[0].partitions[0];
            assert_eq!(back.topics[0].topic_name.as_str(), METADATA_TOPIC);
            assert_eq!((p.error_code, p.leader_id.0, p.leader_epoch, p.high_watermark), (0, 8, 4, 42), "v{v}");
            let leos: Vec<(i32, i64)> = p.current_voters.iter().map(|r| (r.replica_id.0, r.log_end_offset)).collect();
            assert_eq!(leos, vec![(7, 40), (8, 42)]);
            let fetched = p.current_voters[0].last_fetch_timestamp;
            assert_eq!(fetched, if v >= 1 { 1000 } else { -1 }, "v{v}: timestamps exist from v1");
            let nodes: Vec<(i32, u16)> = back.nodes.iter().map(|n| (n.node_id.0, n.listeners[0].port)).collect();
            assert_eq!(nodes, if v >= 2 { vec![(7, 19092), (8, 19093)] } else { vec![] }, "v{v}");
        }
        let unreachable = b.describe_quorum_response(None, 1);
        assert_eq!(unreachable.topics[0].partitions[0].error_code, errors::NOT_LEADER_OR_FOLLOWER);
        assert_eq!(unreachable.topics[0].partitions[0].leader_id.0, -1);
    }
}
