//! Cluster and topic administration: Metadata, CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs and DescribeCluster.
//!
//! Topic creation and deletion hold `admin_lock`, persist the topics file atomically, and only
//! then publish the new topic table, so a crash leaves either the old or the new table.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::data::SINGLE_NODE_LEADER_EPOCH;
use super::{Broker, RequestContext, Topic};
use crate::config::validate_topic_config;
use crate::limits;
use crate::protocol::{errors, str_bytes, validate_topic_name};
use crate::runtime;

/// Kafka's "authorized operations not requested" marker.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Why a topic could not be created.
pub(super) struct CreateError {
    pub code: i16,
    pub message: String,
}

fn cerr(code: i16, message: impl Into<String>) -> CreateError {
    CreateError { code, message: message.into() }
}

impl Broker {
    /// Creates a topic (or, with `validate_only`, checks that it could be created).
    pub(super) fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, CreateError> {
        validate_topic_name(name).map_err(|m| cerr(errors::INVALID_TOPIC_EXCEPTION, m))?;
        let partitions = if partitions == -1 { self.config.num_partitions() } else { partitions };
        if !(1..=limits::TOPIC_PARTITIONS_MAX).contains(&partitions) {
            return Err(cerr(
                errors::INVALID_PARTITIONS,
                format!(
                    "number of partitions must be between 1 and {}, got {partitions}",
                    limits::TOPIC_PARTITIONS_MAX
                ),
            ));
        }
        let rf = if replication_factor == -1 { self.config.default_replication_factor() } else { replication_factor };
        if rf < 1 {
            return Err(cerr(
                errors::INVALID_REPLICATION_FACTOR,
                format!("replication factor must be at least 1, got {rf}"),
            ));
        }
        if rf > 1 {
            return Err(cerr(
                errors::INVALID_REPLICATION_FACTOR,
                format!("replication factor {rf} is larger than the 1 available broker"),
            ));
        }
        for (k, v) in &overrides {
            validate_topic_config(k, v).map_err(|m| cerr(errors::INVALID_CONFIG, m))?;
            if v.contains(['\t', '\n']) {
                return Err(cerr(errors::INVALID_CONFIG, format!("value of {k} contains a tab or newline")));
            }
        }
        let _guard = self.admin_lock.lock().unwrap();
        if self.topics.read().unwrap().contains_key(name) {
            return Err(cerr(errors::TOPIC_ALREADY_EXISTS, format!("topic '{name}' already exists")));
        }
        let tc = self.config.topic_config(&overrides);
        if validate_only {
            return Ok(Arc::new(Topic {
                name: name.into(),
                id: Uuid::nil(),
                config: tc,
                partition_count: partitions,
                partitions: BTreeMap::new(),
            }));
        }
        let now = runtime::now_ms();
        let mut parts = BTreeMap::new();
        for i in 0..partitions {
            let p =
                self.open_partition(name, i, &tc, now).map_err(|e| cerr(errors::KAFKA_STORAGE_ERROR, e.to_string()))?;
            parts.insert(i, p);
        }
        let id = Uuid::from_u128(runtime::random_u128() | 1);
        let topic =
            Arc::new(Topic { name: name.into(), id, config: tc, partition_count: partitions, partitions: parts });
        let mut next = self.topics.read().unwrap().clone();
        next.insert(name.into(), topic.clone());
        self.write_topics_file(&next).map_err(|e| cerr(errors::KAFKA_STORAGE_ERROR, e.to_string()))?;
        *self.topics.write().unwrap() = next;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    fn delete_topic(&self, name: &str) -> Result<Uuid, CreateError> {
        if !self.config.delete_topic_enable() {
            return Err(cerr(errors::INVALID_REQUEST, "topic deletion is disabled (delete.topic.enable=false)"));
        }
        let _guard = self.admin_lock.lock().unwrap();
        let mut next = self.topics.read().unwrap().clone();
        let Some(topic) = next.remove(name) else {
            return Err(cerr(errors::UNKNOWN_TOPIC_OR_PARTITION, format!("topic '{name}' does not exist")));
        };
        self.write_topics_file(&next).map_err(|e| cerr(errors::KAFKA_STORAGE_ERROR, e.to_string()))?;
        *self.topics.write().unwrap() = next;
        for p in topic.partitions.values() {
            p.deleted.store(true, Ordering::Release);
            p.durable.send_modify(|_| {});
            if let Err(e) = crate::log::delete_log(&*self.disk, &p.dir) {
                tracing::warn!(dir = %p.dir.display(), error = %e, "could not remove deleted partition's files");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(topic.id)
    }

    fn metadata_topic(&self, t: &Topic, version: i16) -> metadata_response::MetadataResponseTopic {
        let me = self.config.node_id();
        let mut mt = metadata_response::MetadataResponseTopic::default();
        mt.name = Some(TopicName(str_bytes(&t.name)));
        mt.topic_id = t.id;
        mt.is_internal = false;
        mt.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        let _ = version;
        for p in t.partitions.values() {
            let mut mp = metadata_response::MetadataResponsePartition::default();
            mp.partition_index = p.index;
            mp.leader_id = BrokerId(me);
            mp.leader_epoch = SINGLE_NODE_LEADER_EPOCH;
            mp.replica_nodes = vec![BrokerId(me)];
            mp.isr_nodes = vec![BrokerId(me)];
            mt.partitions.push(mp);
        }
        mt
    }

    pub(super) fn metadata(self: &Arc<Self>, req: MetadataRequest, ctx: &RequestContext) -> Bytes {
        let adv = self.config.advertised_listener();
        let mut resp = MetadataResponse::default();
        let mut b = metadata_response::MetadataResponseBroker::default();
        b.node_id = BrokerId(self.config.node_id());
        b.host = str_bytes(&adv.host);
        b.port = adv.port as i32;
        resp.brokers.push(b);
        resp.cluster_id = Some(str_bytes(&self.cluster_id));
        resp.controller_id = BrokerId(self.config.node_id());
        resp.cluster_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        // v0: an empty list means every topic; v1+: null means every topic.
        let requested = match req.topics {
            None => None,
            Some(v) if v.is_empty() && ctx.version == 0 => None,
            Some(v) => Some(v),
        };
        match requested {
            None => {
                for t in self.all_topics() {
                    resp.topics.push(self.metadata_topic(&t, ctx.version));
                }
            }
            Some(list) => {
                let auto = self.config.auto_create_topics() && (ctx.version < 4 || req.allow_auto_topic_creation);
                for rt in list {
                    let by_id = rt.name.is_none() && !rt.topic_id.is_nil();
                    let existing = match &rt.name {
                        Some(n) => self.topic(n.as_str()),
                        None => self.topic_by_id(rt.topic_id),
                    };
                    let topic = match existing {
                        Some(t) => Ok(t),
                        None if by_id => Err(errors::UNKNOWN_TOPIC_ID),
                        None => {
                            let name = rt.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
                            if validate_topic_name(&name).is_err() {
                                Err(errors::INVALID_TOPIC_EXCEPTION)
                            } else if auto {
                                match self.create_topic(&name, -1, -1, BTreeMap::new(), false) {
                                    Ok(t) => Ok(t),
                                    Err(e) if e.code == errors::TOPIC_ALREADY_EXISTS => {
                                        self.topic(&name).ok_or(errors::LEADER_NOT_AVAILABLE)
                                    }
                                    Err(e) => Err(e.code),
                                }
                            } else {
                                Err(errors::UNKNOWN_TOPIC_OR_PARTITION)
                            }
                        }
                    };
                    match topic {
                        Ok(t) => resp.topics.push(self.metadata_topic(&t, ctx.version)),
                        Err(code) => {
                            let mut mt = metadata_response::MetadataResponseTopic::default();
                            mt.error_code = code;
                            mt.name = rt.name.clone();
                            mt.topic_id = rt.topic_id;
                            mt.topic_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
                            resp.topics.push(mt);
                        }
                    }
                }
            }
        }
        ctx.encode(&resp)
    }

    pub(super) fn create_topics(self: &Arc<Self>, req: CreateTopicsRequest, ctx: &RequestContext) -> Bytes {
        let mut resp = CreateTopicsResponse::default();
        for ct in req.topics {
            let name = ct.name.to_string();
            let mut r = create_topics_response::CreatableTopicResult::default();
            r.name = ct.name.clone();
            r.num_partitions = -1;
            r.replication_factor = -1;
            let mut overrides = BTreeMap::new();
            for c in &ct.configs {
                if let Some(v) = &c.value {
                    overrides.insert(c.name.to_string(), v.to_string());
                }
            }
            let (mut partitions, mut rf) = (ct.num_partitions, ct.replication_factor);
            let mut bad_assignment = None;
            if !ct.assignments.is_empty() {
                if partitions != -1 || rf != -1 {
                    bad_assignment =
                        Some("give either replica assignments or partitions and replication factor, not both");
                }
                partitions = ct.assignments.len() as i32;
                rf = ct.assignments[0].broker_ids.len() as i16;
                let me = self.config.node_id();
                let mut idx: Vec<i32> = ct.assignments.iter().map(|a| a.partition_index).collect();
                idx.sort();
                if idx != (0..partitions).collect::<Vec<_>>() {
                    bad_assignment = Some("replica assignments must cover partitions 0..n-1");
                }
                if ct.assignments.iter().any(|a| a.broker_ids.iter().any(|b| b.0 != me)) {
                    bad_assignment = Some("replica assignment names a broker that does not exist");
                }
            }
            let result = match bad_assignment {
                Some(m) => Err(cerr(errors::INVALID_REPLICA_ASSIGNMENT, m)),
                None => self.create_topic(&name, partitions, rf, overrides, req.validate_only),
            };
            match result {
                Ok(t) => {
                    r.topic_id = t.id;
                    r.num_partitions = if req.validate_only {
                        if partitions == -1 {
                            self.config.num_partitions()
                        } else {
                            partitions
                        }
                    } else {
                        t.partition_count
                    };
                    r.replication_factor = 1;
                    if ctx.version >= 5 {
                        r.configs = Some(
                            t.config
                                .values
                                .iter()
                                .map(|(k, v)| {
                                    let mut c = create_topics_response::CreatableTopicConfigs::default();
                                    c.name = str_bytes(k);
                                    c.value = Some(str_bytes(v));
                                    c.config_source = if t.config.overrides.contains_key(k) { 1 } else { 5 };
                                    c
                                })
                                .collect(),
                        );
                    }
                }
                Err(e) => {
                    r.error_code = e.code;
                    r.error_message = Some(str_bytes(&e.message));
                }
            }
            resp.topics.push(r);
        }
        ctx.encode(&resp)
    }

    pub(super) fn delete_topics(self: &Arc<Self>, req: DeleteTopicsRequest, ctx: &RequestContext) -> Bytes {
        let mut resp = DeleteTopicsResponse::default();
        let mut targets: Vec<(Option<String>, Uuid)> =
            req.topic_names.iter().map(|n| (Some(n.to_string()), Uuid::nil())).collect();
        for t in &req.topics {
            targets.push((t.name.as_ref().map(|n| n.to_string()), t.topic_id));
        }
        for (name, id) in targets {
            let mut r = delete_topics_response::DeletableTopicResult::default();
            r.topic_id = id;
            let name = match name {
                Some(n) => Some(n),
                None => self.topic_by_id(id).map(|t| t.name.clone()),
            };
            match name {
                None => r.error_code = errors::UNKNOWN_TOPIC_ID,
                Some(n) => {
                    r.name = Some(TopicName(str_bytes(&n)));
                    match self.delete_topic(&n) {
                        Ok(tid) => r.topic_id = tid,
                        Err(e) => {
                            r.error_code = e.code;
                            r.error_message = Some(str_bytes(&e.message));
                        }
                    }
                }
            }
            resp.responses.push(r);
        }
        ctx.encode(&resp)
    }

    pub(super) fn create_partitions(self: &Arc<Self>, req: CreatePartitionsRequest, ctx: &RequestContext) -> Bytes {
        let mut resp = CreatePartitionsResponse::default();
        for ct in req.topics {
            let mut r = create_partitions_response::CreatePartitionsTopicResult::default();
            r.name = ct.name.clone();
            match self.add_partitions(ct.name.as_str(), ct.count, req.validate_only) {
                Ok(()) => {}
                Err(e) => {
                    r.error_code = e.code;
                    r.error_message = Some(str_bytes(&e.message));
                }
            }
            resp.results.push(r);
        }
        ctx.encode(&resp)
    }

    fn add_partitions(&self, name: &str, count: i32, validate_only: bool) -> Result<(), CreateError> {
        // Standalone only: in cluster mode CreatePartitions goes to the controller
        // (`create_partitions_cluster`).
        debug_assert!(self.cluster.is_none());
        let _guard = self.admin_lock.lock().unwrap();
        let Some(topic) = self.topic(name) else {
            return Err(cerr(errors::UNKNOWN_TOPIC_OR_PARTITION, format!("topic '{name}' does not exist")));
        };
        let have = topic.partition_count;
        if count <= have {
            return Err(cerr(
                errors::INVALID_PARTITIONS,
                format!("topic has {have} partitions; the new count must be larger, got {count}"),
            ));
        }
        if count > limits::TOPIC_PARTITIONS_MAX {
            return Err(cerr(
                errors::INVALID_PARTITIONS,
                format!("at most {} partitions", limits::TOPIC_PARTITIONS_MAX),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let now = runtime::now_ms();
        let mut parts = topic.partitions.clone();
        for i in have..count {
            let p = self
                .open_partition(name, i, &topic.config, now)
                .map_err(|e| cerr(errors::KAFKA_STORAGE_ERROR, e.to_string()))?;
            parts.insert(i, p);
        }
        let grown = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            config: topic.config.clone(),
            partition_count: count,
            partitions: parts,
        });
        let mut next = self.topics.read().unwrap().clone();
        next.insert(name.into(), grown);
        self.write_topics_file(&next).map_err(|e| cerr(errors::KAFKA_STORAGE_ERROR, e.to_string()))?;
        *self.topics.write().unwrap() = next;
        Ok(())
    }

    /// Replaces a topic's config overrides (persisted), keeping its partitions.
    fn set_topic_overrides(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), CreateError> {
        for (k, v) in &overrides {
            validate_topic_config(k, v).map_err(|m| cerr(errors::INVALID_CONFIG, m))?;
        }
        let _guard = self.admin_lock.lock().unwrap();
        let Some(topic) = self.topic(name) else {
            return Err(cerr(errors::UNKNOWN_TOPIC_OR_PARTITION, format!("topic '{name}' does not exist")));
        };
        if validate_only {
            return Ok(());
        }
        let config = self.config.topic_config(&overrides);
        let updated = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            config: config.clone(),
            partition_count: topic.partition_count,
            partitions: topic.partitions.clone(),
        });
        let mut next = self.topics.read().unwrap().clone();
        next.insert(name.into(), updated);
        self.write_topics_file(&next).map_err(|e| cerr(errors::KAFKA_STORAGE_ERROR, e.to_string()))?;
        *self.topics.write().unwrap() = next;
        for p in topic.partitions.values() {
            p.state.lock().unwrap().log.set_config(super::log_config(&config));
        }
        Ok(())
    }

    pub(super) fn describe_configs(self: &Arc<Self>, req: DescribeConfigsRequest, ctx: &RequestContext) -> Bytes {
        const TOPIC: i8 = 2;
        const BROKER: i8 = 4;
        let mut resp = DescribeConfigsResponse::default();
        for res in req.resources {
            let mut r = describe_configs_response::DescribeConfigsResult::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            let wanted = |k: &str| {
                res.configuration_keys.as_ref().is_none_or(|ks| ks.is_empty() || ks.iter().any(|x| x.as_str() == k))
            };
            let entry = |k: &str, v: &str, source: i8| {
                let mut c = describe_configs_response::DescribeConfigsResourceResult::default();
                c.name = str_bytes(k);
                c.value = Some(str_bytes(v));
                c.config_source = source;
                c.read_only = res.resource_type == BROKER;
                c
            };
            match res.resource_type {
                TOPIC => match self.topic(res.resource_name.as_str()) {
                    None => {
                        r.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                        r.error_message = Some(str_bytes("unknown topic"));
                    }
                    Some(t) => {
                        for (k, v) in t.config.values.iter().filter(|(k, _)| wanted(k)) {
                            // Sources: 1 = DYNAMIC_TOPIC_CONFIG, 5 = DEFAULT_CONFIG.
                            r.configs.push(entry(k, v, if t.config.overrides.contains_key(k) { 1 } else { 5 }));
                        }
                    }
                },
                BROKER => {
                    if res.resource_name.as_str() != self.config.node_id().to_string() && !res.resource_name.is_empty()
                    {
                        r.error_code = errors::INVALID_REQUEST;
                        r.error_message = Some(str_bytes("unknown broker id"));
                    } else {
                        for (k, v) in self.config.entries().filter(|(k, _)| wanted(k)) {
                            // 4 = STATIC_BROKER_CONFIG.
                            r.configs.push(entry(k, v, 4));
                        }
                    }
                }
                other => {
                    r.error_code = errors::INVALID_REQUEST;
                    r.error_message = Some(str_bytes(&format!("resource type {other} is not supported")));
                }
            }
            resp.results.push(r);
        }
        ctx.encode(&resp)
    }

    pub(super) fn alter_configs(self: &Arc<Self>, req: AlterConfigsRequest, ctx: &RequestContext) -> Bytes {
        let mut resp = AlterConfigsResponse::default();
        for res in req.resources {
            let mut r = alter_configs_response::AlterConfigsResourceResponse::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            if res.resource_type != 2 {
                r.error_code = errors::INVALID_REQUEST;
                r.error_message = Some(str_bytes("only topic configs can be altered"));
            } else {
                let overrides: BTreeMap<String, String> = res
                    .configs
                    .iter()
                    .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                    .collect();
                if let Err(e) = self.set_topic_overrides(res.resource_name.as_str(), overrides, req.validate_only) {
                    r.error_code = e.code;
                    r.error_message = Some(str_bytes(&e.message));
                }
            }
            resp.responses.push(r);
        }
        ctx.encode(&resp)
    }

    pub(super) fn incremental_alter_configs(
        self: &Arc<Self>,
        req: IncrementalAlterConfigsRequest,
        ctx: &RequestContext,
    ) -> Bytes {
        let mut resp = IncrementalAlterConfigsResponse::default();
        for res in req.resources {
            let mut r = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            let topic = (res.resource_type == 2).then(|| self.topic(res.resource_name.as_str())).flatten();
            match topic {
                None => {
                    r.error_code = if res.resource_type == 2 {
                        errors::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        errors::INVALID_REQUEST
                    };
                    r.error_message = Some(str_bytes("only existing topics' configs can be altered"));
                }
                Some(t) => {
                    let mut overrides = t.config.overrides.clone();
                    let mut bad = None;
                    for c in &res.configs {
                        let k = c.name.to_string();
                        match c.config_operation {
                            0 => {
                                overrides.insert(k, c.value.as_ref().map(|v| v.to_string()).unwrap_or_default());
                            }
                            1 => {
                                overrides.remove(&k);
                            }
                            _ => bad = Some(format!("operation {} on {k} is not supported", c.config_operation)),
                        }
                    }
                    let res2 = match bad {
                        Some(m) => Err(cerr(errors::INVALID_CONFIG, m)),
                        None => self.set_topic_overrides(&t.name, overrides, req.validate_only),
                    };
                    if let Err(e) = res2 {
                        r.error_code = e.code;
                        r.error_message = Some(str_bytes(&e.message));
                    }
                }
            }
            resp.responses.push(r);
        }
        ctx.encode(&resp)
    }

    pub(super) fn describe_cluster(self: &Arc<Self>, _req: DescribeClusterRequest, ctx: &RequestContext) -> Bytes {
        let adv = self.config.advertised_listener();
        let mut resp = DescribeClusterResponse::default();
        resp.cluster_id = str_bytes(&self.cluster_id);
        resp.controller_id = BrokerId(self.config.node_id());
        resp.endpoint_type = 1;
        resp.cluster_authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        let mut b = describe_cluster_response::DescribeClusterBroker::default();
        b.broker_id = BrokerId(self.config.node_id());
        b.host = str_bytes(&adv.host);
        b.port = adv.port as i32;
        resp.brokers.push(b);
        ctx.encode(&resp)
    }
}

#[allow(dead_code)]
fn _assert_str_bytes(_: StrBytes) {}
