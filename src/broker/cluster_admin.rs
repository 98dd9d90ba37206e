//! Cluster-mode Metadata, DescribeCluster and admin requests: metadata is answered from the
//! controller's image; topic changes are forwarded to the active controller and answered once
//! this broker's image shows them (so the client's next Metadata request here agrees).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::*;

use super::{Broker, Reply, RequestContext};
use crate::cluster::rpc::ControllerRequest;
use crate::config::validate_topic_config;
use crate::controller::metadata::{BrokerRegistration, NO_LEADER};
use crate::controller::MetadataImage;
use crate::protocol::{errors, str_bytes, validate_topic_name};

const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

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
