//! A Kafka-protocol client used by the CLI, `sim/`, `chaos/` and `benches/`.
//!
//! Layers, bottom up:
//! - [`connection`]: one socket to one broker; framing, headers, correlation ids, version
//!   negotiation, pipelining. The only code that does I/O.
//! - [`records`]: record batch encoding and decoding (pure).
//! - [`partitioner`]: Kafka's murmur2 key partitioner (pure).
//! - [`Client`] (this file): bootstrap, a metadata cache, routing to partition leaders (one
//!   connection per node id), and convenience calls for produce, fetch, list offsets and admin.
//!
//! Invariants: the client never spawns tasks, starts threads, reads a clock or draws random
//! numbers, so it runs unchanged under madsim; timeouts use `tokio::time` only. Kafka error
//! codes in responses become [`ClientError::Kafka`] values; a produce or fetch that fails
//! because the leader moved, the topic is unknown to the broker we asked, or the connection
//! broke is retried once after a metadata refresh (a produce retried after a lost response may
//! therefore be written twice: this client is not idempotent).

pub mod connection;
pub mod error;
pub mod group;
pub mod partitioner;
pub mod records;
#[cfg(test)]
mod tests_fake_broker;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
pub use kafka_protocol::records::Compression;
use uuid::Uuid;

pub use connection::{Connection, InFlight};
pub use error::{codes, kafka_error_name, ClientError};
pub use partitioner::{murmur2, partition_for_key};
pub use records::{decode_batches, encode_batch, ConsumedRecord, DecodedBatches, ProduceRecord};

/// Default time a request may take before the connection is abandoned.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Key under which the bootstrap connection is kept until metadata names its node id.
/// Negative, so it can never collide with a broker's node id.
const BOOTSTRAP_CONNECTION_KEY: i32 = -1;
/// Attempts for a routed request: the first, plus one after a metadata refresh.
const ROUTED_ATTEMPTS_MAX: usize = 2;
/// Kafka's resource type for topics in DescribeConfigs.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// The last Produce and Fetch versions that name topics; later ones need the topic id.
const LAST_VERSION_WITH_TOPIC_NAMES: i16 = 12;

/// ListOffsets timestamp for the earliest offset.
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// ListOffsets timestamp for the latest offset (the high watermark).
pub const LATEST_TIMESTAMP: i64 = -1;
/// ListOffsets timestamp for the offset of the record with the largest timestamp.
pub const MAX_TIMESTAMP: i64 = -3;

/// A broker as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerMetadata {
    /// The broker's node id.
    pub node_id: i32,
    /// Host to connect to.
    pub host: String,
    /// Port to connect to.
    pub port: i32,
    /// Rack, if configured.
    pub rack: Option<String>,
}

/// One partition as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Partition index.
    pub partition: i32,
    /// Kafka error code for this partition (0 if none).
    pub error_code: i16,
    /// Node id of the leader, or -1 if there is none.
    pub leader_id: i32,
    /// The leader epoch (-1 when the broker's Metadata version does not carry it).
    pub leader_epoch: i32,
    /// All replicas.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// Replicas that are offline.
    pub offline_replicas: Vec<i32>,
}

/// One topic as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Topic name.
    pub name: String,
    /// Topic id (nil when the broker's Metadata version does not carry it).
    pub topic_id: Uuid,
    /// Kafka error code for this topic (0 if none).
    pub error_code: i16,
    /// Internal topics (`__consumer_offsets`) are marked.
    pub is_internal: bool,
    /// Partitions, sorted by index.
    pub partitions: Vec<PartitionMetadata>,
}

/// A Metadata response in plain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Cluster id, if the broker sent one.
    pub cluster_id: Option<String>,
    /// Node id of the controller (-1 if unknown).
    pub controller_id: i32,
    /// Brokers, sorted by node id.
    pub brokers: Vec<BrokerMetadata>,
    /// Topics, sorted by name.
    pub topics: Vec<TopicMetadata>,
}

/// One topic config entry from DescribeConfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Config key.
    pub name: String,
    /// Config value (`None` if sensitive or unset).
    pub value: Option<String>,
    /// True if the value cannot be changed.
    pub read_only: bool,
    /// Kafka's config source (1 = dynamic topic config, 5 = static broker, 6 = default, ...).
    pub source: i8,
    /// True if the value is hidden.
    pub is_sensitive: bool,
}

/// What a fetch of one partition returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchResult {
    /// Records at or above the requested offset, in offset order.
    pub records: Vec<ConsumedRecord>,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// The partition's log start offset (-1 if the broker's Fetch version does not carry it).
    pub log_start_offset: i64,
    /// Size of the record data the broker returned, before decoding.
    pub raw_bytes: usize,
    /// Where the next fetch should start: after the last complete batch returned, or the
    /// requested offset if none was.
    pub next_offset: i64,
}

/// A Kafka client: bootstrap servers, a metadata cache and connections by node id.
pub struct Client {
    client_id: String,
    bootstrap: Vec<String>,
    request_timeout: Duration,
    /// Broker addresses ("host:port") from the latest metadata, by node id.
    brokers: BTreeMap<i32, String>,
    /// Open connections by node id (or [`BOOTSTRAP_CONNECTION_KEY`]).
    connections: BTreeMap<i32, Connection>,
    /// Topics from metadata responses, by name; entries are dropped when routing fails.
    topics: BTreeMap<String, TopicMetadata>,
    /// The highest leader epoch seen per partition (KIP-320), kept when `topics` entries are
    /// dropped: metadata naming an older epoch (from a broker that has not caught up, or a
    /// deposed leader still answering) does not replace what we know, and fetches carry the
    /// epoch so a stale leader refuses them instead of serving its old log.
    leader_epochs: BTreeMap<(String, i32), (Uuid, i32)>,
}

impl Client {
    /// Connects to the first reachable address of `bootstrap` ("host:port[,host:port]") and
    /// negotiates API versions with it.
    pub async fn connect(bootstrap: &str, client_id: &str) -> Result<Client, ClientError> {
        Client::connect_with_timeout(bootstrap, client_id, REQUEST_TIMEOUT_DEFAULT).await
    }

    /// Like [`Client::connect`] with an explicit request timeout.
    pub async fn connect_with_timeout(
        bootstrap: &str,
        client_id: &str,
        request_timeout: Duration,
    ) -> Result<Client, ClientError> {
        let addrs: Vec<String> = bootstrap.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if addrs.is_empty() {
            return Err(ClientError::InvalidArgument(format!("no bootstrap address in {bootstrap:?}")));
        }
        let mut client = Client {
            client_id: client_id.to_string(),
            bootstrap: addrs,
            request_timeout,
            brokers: BTreeMap::new(),
            connections: BTreeMap::new(),
            topics: BTreeMap::new(),
            leader_epochs: BTreeMap::new(),
        };
        client.any_connection().await?;
        Ok(client)
    }

    /// The request timeout applied to each request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends `request` to any connected broker at the negotiated version (no retry).
    pub async fn send<R: Request>(&mut self, request: R) -> Result<R::Response, ClientError> {
        let key = self.any_connection().await?;
        let conn = self.connections.get_mut(&key).expect("connection just opened");
        let result = conn.send(&request).await;
        self.reap(key);
        result
    }

    /// Sends `request` to broker `node_id` at the negotiated version (no retry).
    pub async fn send_to<R: Request>(&mut self, node_id: i32, request: R) -> Result<R::Response, ClientError> {
        let key = self.node_connection(node_id).await?;
        let conn = self.connections.get_mut(&key).expect("connection just opened");
        let result = conn.send(&request).await;
        self.reap(key);
        result
    }

    /// The connection to broker `node_id`, opened if needed; for pipelining (see
    /// [`Connection::start`]). Drop it from the client with [`Client::reap`] if it breaks.
    pub async fn connection_to(&mut self, node_id: i32) -> Result<&mut Connection, ClientError> {
        let key = self.node_connection(node_id).await?;
        Ok(self.connections.get_mut(&key).expect("connection just opened"))
    }

    /// Closes the connection under `key` if it has broken.
    pub fn reap(&mut self, key: i32) {
        if self.connections.get(&key).is_some_and(|c| c.is_broken()) {
            self.connections.remove(&key);
        }
    }

    /// Fetches metadata for `topics` (`None`: all topics) and refreshes the cache.
    pub async fn metadata(&mut self, topics: Option<Vec<String>>) -> Result<ClusterMetadata, ClientError> {
        let mut last_err = None;
        for _ in 0..ROUTED_ATTEMPTS_MAX {
            match self.metadata_once(topics.as_deref()).await {
                Ok(m) => return Ok(m),
                Err(e) if e.is_routing_retriable() && e.kafka_code().is_none() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    async fn metadata_once(&mut self, topics: Option<&[String]>) -> Result<ClusterMetadata, ClientError> {
        let key = self.any_connection().await?;
        let conn = self.connections.get_mut(&key).expect("connection just opened");
        let version = conn.version_for::<MetadataRequest>()?;
        let mut request = MetadataRequest::default();
        request.topics = match topics {
            Some(names) => {
                Some(names.iter().map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n)))).collect())
            }
            // v0 has no null array: an empty list means all topics there.
            None if version == 0 => Some(Vec::new()),
            None => None,
        };
        if version >= 4 {
            request.allow_auto_topic_creation = false;
        }
        let result = conn.send_versioned(&request, version, self.request_timeout).await;
        self.reap(key);
        let response = result?;
        let metadata = convert_metadata(response);
        self.absorb_metadata(&metadata);
        Ok(metadata)
    }

    /// Creates a topic. `replication_factor` -1 and `partitions` -1 ask for broker defaults.
    pub async fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: Vec<(String, String)>,
    ) -> Result<(), ClientError> {
        let topic = CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .into_iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k))
                            .with_value(Some(StrBytes::from_string(v)))
                    })
                    .collect(),
            );
        let request =
            CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(millis_i32(self.request_timeout));
        let response = self.send(request).await?;
        let result =
            response.topics.iter().find(|t| t.name.0.as_str() == name).ok_or_else(|| missing("CreateTopics", name))?;
        if result.error_code != 0 {
            return Err(ClientError::kafka(result.error_code, result.error_message.as_deref()));
        }
        self.topics.remove(name);
        Ok(())
    }

    /// Deletes a topic by name.
    pub async fn delete_topic(&mut self, name: &str) -> Result<(), ClientError> {
        let key = self.any_connection().await?;
        let version = self.connections[&key].version_for::<DeleteTopicsRequest>()?;
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(millis_i32(self.request_timeout));
        if version >= 6 {
            request.topics = vec![DeleteTopicState::default().with_name(Some(topic_name(name)))];
        } else {
            request.topic_names = vec![topic_name(name)];
        }
        let response = self.send(request).await?;
        let result = response
            .responses
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(name))
            .ok_or_else(|| missing("DeleteTopics", name))?;
        if result.error_code != 0 {
            return Err(ClientError::kafka(result.error_code, result.error_message.as_deref()));
        }
        self.topics.remove(name);
        Ok(())
    }

    /// All config entries of a topic.
    pub async fn describe_configs(&mut self, topic: &str) -> Result<Vec<ConfigEntry>, ClientError> {
        let resource = DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TYPE_TOPIC)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configuration_keys(None);
        let request = DescribeConfigsRequest::default().with_resources(vec![resource]);
        let response = self.send(request).await?;
        let result = response
            .results
            .into_iter()
            .find(|r| r.resource_name.as_str() == topic)
            .ok_or_else(|| missing("DescribeConfigs", topic))?;
        if result.error_code != 0 {
            return Err(ClientError::kafka(result.error_code, result.error_message.as_deref()));
        }
        Ok(result
            .configs
            .into_iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.map(|v| v.to_string()),
                read_only: c.read_only,
                source: c.config_source,
                is_sensitive: c.is_sensitive,
            })
            .collect())
    }

    /// Partitions of `topic` from the cache, refreshing metadata if the topic is not cached.
    pub async fn partitions(&mut self, topic: &str) -> Result<Vec<PartitionMetadata>, ClientError> {
        Ok(self.topic_metadata(topic).await?.partitions)
    }

    /// Produces `records` as one batch to `topic`/`partition`; returns the base offset
    /// assigned by the broker (-1 with acks=0, which gets no answer).
    pub async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        acks: i16,
        records: Vec<ProduceRecord>,
        compression: Compression,
    ) -> Result<i64, ClientError> {
        let batch = encode_batch(&records, compression)?;
        self.produce_raw(topic, partition, acks, batch).await
    }

    /// Produces one pre-encoded v2 record batch (see [`encode_batch`]).
    pub async fn produce_raw(
        &mut self,
        topic: &str,
        partition: i32,
        acks: i16,
        batch: Bytes,
    ) -> Result<i64, ClientError> {
        let mut attempt = 1;
        loop {
            match self.produce_once(topic, partition, acks, batch.clone()).await {
                Err(e) if attempt < ROUTED_ATTEMPTS_MAX && e.is_routing_retriable() => {
                    tracing::debug!(topic, partition, error = %e, "produce: refreshing metadata and retrying");
                    self.topics.remove(topic);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn produce_once(&mut self, topic: &str, partition: i32, acks: i16, batch: Bytes) -> Result<i64, ClientError> {
        let (leader, metadata) = self.leader_for(topic, partition).await?;
        let key = self.node_connection(leader).await?;
        let version = produce_version(&self.connections[&key], &metadata)?;
        let timeout = self.request_timeout;
        let request = produce_request(&metadata, partition, acks, timeout, batch);
        let conn = self.connections.get_mut(&key).expect("connection just opened");
        let result = if acks == 0 {
            conn.send_without_response(&request, version).await.map(|()| None)
        } else {
            conn.send_versioned(&request, version, timeout).await.map(Some)
        };
        self.reap(key);
        match result? {
            None => Ok(-1),
            Some(response) => produce_base_offset(&response, partition),
        }
    }

    /// Fetches from `topic`/`partition` starting at `offset`, waiting up to `max_wait_ms` for
    /// `min_bytes`; returns the decoded records at or above `offset`.
    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        min_bytes: i32,
        max_bytes: i32,
    ) -> Result<FetchResult, ClientError> {
        let mut attempt = 1;
        loop {
            let result = self.fetch_once(topic, partition, offset, max_wait_ms, min_bytes, max_bytes).await;
            match result {
                Err(e) if attempt < ROUTED_ATTEMPTS_MAX && e.is_routing_retriable() => {
                    tracing::debug!(topic, partition, error = %e, "fetch: refreshing metadata and retrying");
                    self.topics.remove(topic);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn fetch_once(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        min_bytes: i32,
        max_bytes: i32,
    ) -> Result<FetchResult, ClientError> {
        let (leader, metadata) = self.leader_for(topic, partition).await?;
        let key = self.node_connection(leader).await?;
        let conn = self.connections.get_mut(&key).expect("connection just opened");
        let mut version = conn.version_for::<FetchRequest>()?;
        if metadata.topic_id.is_nil() {
            version = version.min(LAST_VERSION_WITH_TOPIC_NAMES);
        }
        let fetch_partition = FetchPartition::default()
            .with_partition(partition)
            .with_current_leader_epoch(Client::current_leader_epoch(&metadata, partition))
            .with_fetch_offset(offset)
            .with_partition_max_bytes(max_bytes);
        let fetch_topic = FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_topic_id(metadata.topic_id)
            .with_partitions(vec![fetch_partition]);
        let request = FetchRequest::default()
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(max_bytes)
            .with_topics(vec![fetch_topic]);
        let timeout = self.request_timeout + Duration::from_millis(max_wait_ms.max(0) as u64);
        let result = conn.send_versioned(&request, version, timeout).await;
        self.reap(key);
        let response = result?;
        if response.error_code != 0 {
            return Err(ClientError::kafka(response.error_code, None));
        }
        let data = response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| missing("Fetch", topic))?;
        if data.error_code != 0 {
            return Err(ClientError::kafka(data.error_code, None));
        }
        let raw = data.records.unwrap_or_default();
        let raw_bytes = raw.len();
        let decoded = decode_batches(raw, offset)?;
        Ok(FetchResult {
            records: decoded.records,
            next_offset: decoded.next_offset.unwrap_or(offset).max(offset),
            high_watermark: data.high_watermark,
            log_start_offset: data.log_start_offset,
            raw_bytes,
        })
    }

    /// The offset for `timestamp` in `topic`/`partition`: [`EARLIEST_TIMESTAMP`],
    /// [`LATEST_TIMESTAMP`], [`MAX_TIMESTAMP`], or a time in ms (first offset whose timestamp
    /// is at or after it). Returns `(offset, timestamp)`; offset -1 if no such record.
    pub async fn list_offsets(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<(i64, i64), ClientError> {
        let mut attempt = 1;
        loop {
            match self.list_offsets_once(topic, partition, timestamp).await {
                Err(e) if attempt < ROUTED_ATTEMPTS_MAX && e.is_routing_retriable() => {
                    self.topics.remove(topic);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn list_offsets_once(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<(i64, i64), ClientError> {
        let (leader, metadata) = self.leader_for(topic, partition).await?;
        let request = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_timeout_ms(millis_i32(self.request_timeout))
            .with_topics(vec![ListOffsetsTopic::default().with_name(topic_name(topic)).with_partitions(vec![
                ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_current_leader_epoch(Client::current_leader_epoch(&metadata, partition))
                    .with_timestamp(timestamp),
            ])]);
        let response = self.send_to(leader, request).await?;
        let p = response
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| missing("ListOffsets", topic))?;
        if p.error_code != 0 {
            return Err(ClientError::kafka(p.error_code, None));
        }
        Ok((p.offset, p.timestamp))
    }

    /// Metadata of one topic, from the cache or a refresh; a topic-level error is returned.
    pub async fn topic_metadata(&mut self, topic: &str) -> Result<TopicMetadata, ClientError> {
        if let Some(t) = self.topics.get(topic) {
            return Ok(t.clone());
        }
        let metadata = self.metadata(Some(vec![topic.to_string()])).await?;
        let t = metadata.topics.into_iter().find(|t| t.name == topic).ok_or_else(|| missing("Metadata", topic))?;
        if t.error_code != 0 {
            return Err(ClientError::kafka(t.error_code, Some(topic)));
        }
        // The cached copy, not the raw answer: absorbing it kept newer leader epochs (KIP-320).
        // Routing by the raw answer followed a deposed leader anyway (cluster-overlap seed 3294).
        Ok(self.topics.get(topic).cloned().unwrap_or(t))
    }

    /// The leader's node id for a partition, and the topic's metadata.
    pub async fn leader_for(&mut self, topic: &str, partition: i32) -> Result<(i32, TopicMetadata), ClientError> {
        let t = self.topic_metadata(topic).await?;
        let p = t.partitions.iter().find(|p| p.partition == partition).ok_or_else(|| {
            ClientError::kafka(
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                Some(&format!("{topic} has no partition {partition}")),
            )
        })?;
        if p.leader_id < 0 {
            return Err(ClientError::kafka(codes::LEADER_NOT_AVAILABLE, Some(&format!("{topic}-{partition}"))));
        }
        Ok((p.leader_id, t))
    }

    /// Key of a usable connection to any broker, connecting to a bootstrap address if none.
    async fn any_connection(&mut self) -> Result<i32, ClientError> {
        if let Some((&key, _)) = self.connections.iter().find(|(_, c)| !c.is_broken()) {
            return Ok(key);
        }
        let mut last_err = None;
        let mut addrs: Vec<String> = self.bootstrap.clone();
        addrs.extend(self.brokers.values().cloned());
        for addr in addrs {
            match Connection::connect(&addr, &self.client_id, self.request_timeout).await {
                Ok(conn) => {
                    let key = self
                        .brokers
                        .iter()
                        .find(|(_, a)| **a == addr)
                        .map(|(id, _)| *id)
                        .unwrap_or(BOOTSTRAP_CONNECTION_KEY);
                    self.connections.insert(key, conn);
                    return Ok(key);
                }
                Err(e) => {
                    tracing::debug!(addr, error = %e, "bootstrap connect failed");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("bootstrap list is not empty"))
    }

    /// Key of a usable connection to `node_id`, connecting if needed.
    async fn node_connection(&mut self, node_id: i32) -> Result<i32, ClientError> {
        if self.connections.get(&node_id).is_some_and(|c| !c.is_broken()) {
            return Ok(node_id);
        }
        if !self.brokers.contains_key(&node_id) {
            self.metadata(Some(Vec::new())).await?;
        }
        let addr = self.brokers.get(&node_id).cloned().ok_or_else(|| {
            ClientError::kafka(codes::LEADER_NOT_AVAILABLE, Some(&format!("broker {node_id} is not in metadata")))
        })?;
        let conn = Connection::connect(&addr, &self.client_id, self.request_timeout).await?;
        self.connections.insert(node_id, conn);
        Ok(node_id)
    }

    /// Updates the broker and topic caches, and files the bootstrap connection under its
    /// node id once metadata says which broker it is.
    fn absorb_metadata(&mut self, metadata: &ClusterMetadata) {
        if !metadata.brokers.is_empty() {
            self.brokers = metadata.brokers.iter().map(|b| (b.node_id, format!("{}:{}", b.host, b.port))).collect();
        }
        if let Some(conn) = self.connections.get(&BOOTSTRAP_CONNECTION_KEY) {
            let node = self.brokers.iter().find(|(_, a)| a.as_str() == conn.addr()).map(|(id, _)| *id);
            if let Some(node) = node {
                if !self.connections.contains_key(&node) {
                    let conn = self.connections.remove(&BOOTSTRAP_CONNECTION_KEY).expect("checked above");
                    self.connections.insert(node, conn);
                }
            }
        }
        for t in &metadata.topics {
            if t.error_code == 0 {
                let mut t = t.clone();
                self.keep_newest_epochs(&mut t);
                self.topics.insert(t.name.clone(), t);
            } else {
                self.topics.remove(&t.name);
            }
        }
    }

    /// KIP-320 for metadata: a partition whose leader epoch is older than one already seen
    /// keeps the cached entry (Kafka's clients do the same) or, with none cached, gets no
    /// leader, so routing asks again instead of following a deposed leader. Newer epochs are
    /// remembered. A topic id that changed (topic deleted and recreated) starts afresh.
    fn keep_newest_epochs(&mut self, t: &mut TopicMetadata) {
        let cached = self.topics.get(&t.name);
        for p in &mut t.partitions {
            let key = (t.name.clone(), p.partition);
            let known = self.leader_epochs.get(&key).copied();
            match known {
                Some((id, epoch)) if id == t.topic_id && p.leader_epoch >= 0 && p.leader_epoch < epoch => {
                    let kept = cached
                        .filter(|c| c.topic_id == t.topic_id)
                        .and_then(|c| c.partitions.iter().find(|q| q.partition == p.partition))
                        .filter(|q| q.leader_epoch >= epoch);
                    match kept {
                        Some(q) => *p = q.clone(),
                        None => p.leader_id = -1,
                    }
                }
                _ if p.leader_epoch >= 0 => {
                    self.leader_epochs.insert(key, (t.topic_id, p.leader_epoch));
                }
                _ => {}
            }
        }
    }

    /// The leader epoch to send as `current_leader_epoch` for a partition (-1: unknown, the
    /// broker skips the check).
    fn current_leader_epoch(metadata: &TopicMetadata, partition: i32) -> i32 {
        metadata.partitions.iter().find(|p| p.partition == partition).map_or(-1, |p| p.leader_epoch)
    }
}

/// The Produce version to use on `conn` for `topic`: the negotiated one, capped at the last
/// version that names topics when the topic id is unknown. For callers that pipeline.
pub fn produce_version(conn: &Connection, topic: &TopicMetadata) -> Result<i16, ClientError> {
    let version = conn.version_for::<ProduceRequest>()?;
    Ok(if topic.topic_id.is_nil() { version.min(LAST_VERSION_WITH_TOPIC_NAMES) } else { version })
}

/// A ProduceRequest carrying one batch for one partition (named both by name and id; the
/// encoder writes whichever the version uses). For callers that pipeline.
pub fn produce_request(
    topic: &TopicMetadata,
    partition: i32,
    acks: i16,
    timeout: Duration,
    batch: Bytes,
) -> ProduceRequest {
    let data = TopicProduceData::default()
        .with_name(topic_name(&topic.name))
        .with_topic_id(topic.topic_id)
        .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(batch))]);
    ProduceRequest::default().with_acks(acks).with_timeout_ms(millis_i32(timeout)).with_topic_data(vec![data])
}

/// The base offset of `partition` in a produce response, or its Kafka error.
pub fn produce_base_offset(response: &ProduceResponse, partition: i32) -> Result<i64, ClientError> {
    let p = response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .ok_or_else(|| ClientError::Protocol(format!("produce response lacks partition {partition}")))?;
    if p.error_code != 0 {
        return Err(ClientError::kafka(p.error_code, p.error_message.as_deref()));
    }
    Ok(p.base_offset)
}

/// Converts a Metadata response to plain types, sorted for stable output.
fn convert_metadata(response: MetadataResponse) -> ClusterMetadata {
    let mut brokers: Vec<BrokerMetadata> = response
        .brokers
        .into_iter()
        .map(|b| BrokerMetadata {
            node_id: b.node_id.0,
            host: b.host.to_string(),
            port: b.port,
            rack: b.rack.map(|r| r.to_string()),
        })
        .collect();
    brokers.sort_by_key(|b| b.node_id);
    let mut topics: Vec<TopicMetadata> = response
        .topics
        .into_iter()
        .map(|t| {
            let mut partitions: Vec<PartitionMetadata> = t
                .partitions
                .into_iter()
                .map(|p| PartitionMetadata {
                    partition: p.partition_index,
                    error_code: p.error_code,
                    leader_id: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.into_iter().map(|n| n.0).collect(),
                    isr: p.isr_nodes.into_iter().map(|n| n.0).collect(),
                    offline_replicas: p.offline_replicas.into_iter().map(|n| n.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            TopicMetadata {
                name: t.name.map(|n| n.0.to_string()).unwrap_or_default(),
                topic_id: t.topic_id,
                error_code: t.error_code,
                is_internal: t.is_internal,
                partitions,
            }
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterMetadata {
        cluster_id: response.cluster_id.map(|c| c.to_string()),
        controller_id: response.controller_id.0,
        brokers,
        topics,
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn millis_i32(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

fn missing(api: &str, topic: &str) -> ClientError {
    ClientError::Protocol(format!("{api} response does not mention {topic}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};

    fn offline_client() -> Client {
        Client {
            client_id: "t".into(),
            bootstrap: vec!["127.0.0.1:1".into()],
            request_timeout: Duration::from_secs(1),
            brokers: BTreeMap::new(),
            connections: BTreeMap::new(),
            topics: BTreeMap::new(),
            leader_epochs: BTreeMap::new(),
        }
    }

    fn one_partition(topic_id: Uuid, leader_id: i32, leader_epoch: i32) -> ClusterMetadata {
        ClusterMetadata {
            cluster_id: None,
            controller_id: -1,
            brokers: Vec::new(),
            topics: vec![TopicMetadata {
                name: "t".into(),
                topic_id,
                error_code: 0,
                is_internal: false,
                partitions: vec![PartitionMetadata {
                    partition: 0,
                    error_code: 0,
                    leader_id,
                    leader_epoch,
                    replicas: vec![1, 2, 3],
                    isr: vec![1, 2, 3],
                    offline_replicas: vec![],
                }],
            }],
        }
    }

    #[test]
    fn metadata_with_an_older_leader_epoch_does_not_replace_a_newer_one() {
        // Proves KIP-320 on the client: a deposed leader's (or a lagging broker's) metadata
        // naming an older epoch neither replaces the cached newer leader nor, once the cache
        // entry is dropped, routes to the old leader; a newer epoch and a recreated topic (new
        // id) are taken; fetches carry the cached epoch.
        let id = Uuid::from_u128(1);
        let mut c = offline_client();
        c.absorb_metadata(&one_partition(id, 2, 5));
        c.absorb_metadata(&one_partition(id, 1, 4));
        let p = &c.topics["t"].partitions[0];
        assert_eq!((p.leader_id, p.leader_epoch), (2, 5));
        assert_eq!(Client::current_leader_epoch(&c.topics["t"], 0), 5);
        c.topics.remove("t");
        c.absorb_metadata(&one_partition(id, 1, 4));
        assert_eq!(c.topics["t"].partitions[0].leader_id, -1, "no leader rather than the deposed one");
        c.absorb_metadata(&one_partition(id, 3, 6));
        assert_eq!((c.topics["t"].partitions[0].leader_id, c.topics["t"].partitions[0].leader_epoch), (3, 6));
        c.absorb_metadata(&one_partition(Uuid::from_u128(2), 1, 0));
        assert_eq!(c.topics["t"].partitions[0].leader_id, 1, "a recreated topic starts afresh");
        // A broker without epochs in its Metadata (-1) is followed as before.
        c.absorb_metadata(&one_partition(Uuid::from_u128(2), 2, -1));
        assert_eq!(c.topics["t"].partitions[0].leader_id, 2);
    }

    #[test]
    fn metadata_conversion_sorts_and_keeps_epochs() {
        // Proves leader, replicas, ISR and leader epoch survive conversion, sorted by index.
        let mut resp = MetadataResponse::default();
        resp.brokers = vec![MetadataResponseBroker::default()
            .with_node_id(1.into())
            .with_host(StrBytes::from_static_str("h"))
            .with_port(9092)];
        resp.topics = vec![MetadataResponseTopic::default().with_name(Some(topic_name("t"))).with_partitions(vec![
            MetadataResponsePartition::default()
                .with_partition_index(1)
                .with_leader_id(1.into())
                .with_leader_epoch(7)
                .with_replica_nodes(vec![1.into(), 2.into()])
                .with_isr_nodes(vec![1.into()]),
            MetadataResponsePartition::default().with_partition_index(0),
        ])];
        let m = convert_metadata(resp);
        assert_eq!(m.brokers[0].port, 9092);
        let t = &m.topics[0];
        assert_eq!(t.partitions[0].partition, 0);
        let p1 = &t.partitions[1];
        assert_eq!((p1.leader_id, p1.leader_epoch), (1, 7));
        assert_eq!((p1.replicas.clone(), p1.isr.clone()), (vec![1, 2], vec![1]));
    }

    #[test]
    fn produce_errors_become_kafka_errors() {
        // Proves a partition error in a produce response is returned with its name.
        let mut resp = ProduceResponse::default();
        resp.responses = vec![TopicProduceResponse::default().with_partition_responses(vec![
            PartitionProduceResponse::default().with_index(0).with_base_offset(42),
            PartitionProduceResponse::default().with_index(1).with_error_code(codes::NOT_LEADER_OR_FOLLOWER),
        ])];
        assert_eq!(produce_base_offset(&resp, 0).unwrap(), 42);
        let e = produce_base_offset(&resp, 1).unwrap_err();
        assert!(e.is_routing_retriable());
        assert!(e.to_string().contains("NOT_LEADER_OR_FOLLOWER"), "{e}");
        assert!(produce_base_offset(&resp, 2).is_err());
    }
}
