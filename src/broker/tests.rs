//! Broker tests through `Broker::handle` on an in-memory disk: the data path, admin errors,
//! long polls, durability waits and restart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::testkit::{call, frame, open_broker, open_broker_with};
use super::{Broker, Reply};
use crate::protocol::batch::build_batch;
use crate::protocol::errors;
use crate::runtime::MemDisk;

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

async fn create(b: &Arc<Broker>, name: &str, partitions: i32, configs: &[(&str, &str)]) -> i16 {
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(sb(name));
    t.num_partitions = partitions;
    t.replication_factor = -1;
    for (k, v) in configs {
        let mut c = create_topics_request::CreatableTopicConfig::default();
        c.name = sb(k);
        c.value = Some(sb(v));
        t.configs.push(c);
    }
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![t];
    r.timeout_ms = 1000;
    let resp: CreateTopicsResponse = call(b, ApiKey::CreateTopics, 7, &r).await;
    resp.topics[0].error_code
}

fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    let mut pd = produce_request::PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(records);
    let mut td = produce_request::TopicProduceData::default();
    td.name = TopicName(sb(topic));
    td.partition_data = vec![pd];
    let mut r = ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 5000;
    r.topic_data = vec![td];
    r
}

fn values(n: usize, prefix: &str) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{prefix}{i}").into_bytes()).collect()
}

fn batch(vals: &[Vec<u8>], key: Option<&[u8]>) -> Bytes {
    let specs: Vec<_> = vals.iter().map(|v| (key, Some(v.as_slice()), vec![])).collect();
    Bytes::from(build_batch(&specs, crate::runtime::now_ms(), 0))
}

async fn produce(b: &Arc<Broker>, topic: &str, partition: i32, acks: i16, records: Bytes) -> (i16, i64) {
    let resp: ProduceResponse = call(b, ApiKey::Produce, 9, &produce_request(topic, partition, acks, records)).await;
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch_request(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    let mut fp = fetch_request::FetchPartition::default();
    fp.partition = partition;
    fp.fetch_offset = offset;
    fp.partition_max_bytes = 1 << 20;
    let mut ft = fetch_request::FetchTopic::default();
    ft.topic = TopicName(sb(topic));
    ft.partitions = vec![fp];
    let mut r = FetchRequest::default();
    r.max_wait_ms = max_wait_ms;
    r.min_bytes = 1;
    r.max_bytes = 8 << 20;
    r.topics = vec![ft];
    r
}

/// Runs the flusher until no partition is waiting (what the server's flusher task does).
fn spawn_flusher(b: &Arc<Broker>) -> tokio::task::JoinHandle<()> {
    let b = b.clone();
    tokio::spawn(async move {
        loop {
            b.wait_for_flush_request(5).await;
            b.flush_round(false).await;
        }
    })
}

// Proves records produced with acks=1 and acks=all come back from Fetch with dense offsets,
// and acks=all answers only after the flusher synced them.
#[tokio::test]
async fn produce_then_fetch_round_trip() {
    let disk = MemDisk::new();
    let b = open_broker(&disk);
    assert_eq!(create(&b, "t", 2, &[]).await, errors::NONE);
    assert_eq!(produce(&b, "t", 1, 1, batch(&values(3, "a"), None)).await, (errors::NONE, 0));
    let flusher = spawn_flusher(&b);
    assert_eq!(produce(&b, "t", 1, -1, batch(&values(2, "b"), None)).await, (errors::NONE, 3));
    flusher.abort();
    let resp: FetchResponse = call(&b, ApiKey::Fetch, 12, &fetch_request("t", 1, 0, 0)).await;
    let pd = &resp.responses[0].partitions[0];
    assert_eq!(pd.error_code, errors::NONE);
    assert_eq!(pd.high_watermark, 5);
    let mut recs = pd.records.clone().unwrap();
    let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut recs).unwrap();
    let offsets: Vec<i64> = sets.iter().flat_map(|s| s.records.iter().map(|r| r.offset)).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
}

// Proves an acks=all produce does not answer until an fsync covers it.
#[tokio::test]
async fn acks_all_waits_for_the_flusher() {
    let disk = MemDisk::new();
    let b = open_broker(&disk);
    create(&b, "t", 1, &[]).await;
    let reply = b.handle(frame(ApiKey::Produce, 9, &produce_request("t", 0, -1, batch(&values(2, "x"), None))));
    let Reply::Wait(fut) = reply else { panic!("acks=all must wait for durability") };
    let pending = tokio::spawn(fut);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished(), "acks=all answered before any fsync");
    assert_eq!(b.flush_round(false).await, 1);
    let out = tokio::time::timeout(Duration::from_secs(1), pending).await.unwrap().unwrap();
    assert!(out.len() > 8);
}

// Proves a long-polling fetch is woken by a produce and returns the new records.
#[tokio::test]
async fn long_poll_wakes_on_produce() {
    let disk = MemDisk::new();
    let b = open_broker(&disk);
    create(&b, "t", 1, &[]).await;
    let reply = b.handle(frame(ApiKey::Fetch, 12, &fetch_request("t", 0, 0, 10_000)));
    let Reply::Wait(fut) = reply else { panic!("an empty fetch with max_wait must wait") };
    let pending = tokio::spawn(fut);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!pending.is_finished());
    produce(&b, "t", 0, 1, batch(&values(1, "late"), None)).await;
    let out = tokio::time::timeout(Duration::from_secs(2), pending).await.expect("fetch was not woken").unwrap();
    assert!(out.windows(5).any(|w| w == b"late0"), "woken fetch lacks the new record");
}

// Proves bad produce input gets Kafka error codes: unknown topic, corrupt batch, keyless
// record on a compacted topic, record over max.message.bytes, invalid acks.
#[tokio::test]
async fn produce_errors_are_kafka_codes() {
    let disk = MemDisk::new();
    let b = open_broker(&disk);
    create(&b, "t", 1, &[("max.message.bytes", "1000")]).await;
    create(&b, "c", 1, &[("cleanup.policy", "compact")]).await;
    assert_eq!(produce(&b, "nope", 0, 1, batch(&values(1, "v"), None)).await.0, errors::UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(produce(&b, "t", 5, 1, batch(&values(1, "v"), None)).await.0, errors::UNKNOWN_TOPIC_OR_PARTITION);
    let mut corrupt = batch(&values(1, "v"), None).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(produce(&b, "t", 0, 1, Bytes::from(corrupt)).await.0, errors::CORRUPT_MESSAGE);
    assert_eq!(produce(&b, "c", 0, 1, batch(&values(1, "v"), None)).await.0, errors::INVALID_RECORD);
    assert_eq!(produce(&b, "c", 0, 1, batch(&values(1, "v"), Some(b"k"))).await.0, errors::NONE);
    assert_eq!(produce(&b, "t", 0, 1, batch(&[vec![b'x'; 5000]], None)).await.0, errors::MESSAGE_TOO_LARGE);
    assert_eq!(produce(&b, "t", 0, 7, batch(&values(1, "v"), None)).await.0, errors::INVALID_REQUIRED_ACKS);
}

// Proves admin errors: invalid names, bad partition counts, existing topics, bad configs,
// too-high replication factor on one node.
#[tokio::test]
async fn create_topic_errors() {
    let disk = MemDisk::new();
    let b = open_broker(&disk);
    assert_eq!(create(&b, "bad name", 1, &[]).await, errors::INVALID_TOPIC_EXCEPTION);
    assert_eq!(create(&b, "t", 0, &[]).await, errors::INVALID_PARTITIONS);
    assert_eq!(create(&b, "t", 1, &[("retention.ms", "soon")]).await, errors::INVALID_CONFIG);
    assert_eq!(create(&b, "t", 1, &[("no.such.key", "1")]).await, errors::INVALID_CONFIG);
    assert_eq!(create(&b, "t", 1, &[]).await, errors::NONE);
    assert_eq!(create(&b, "t", 1, &[]).await, errors::TOPIC_ALREADY_EXISTS);
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(sb("rf3"));
    t.num_partitions = 1;
    t.replication_factor = 3;
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![t];
    let resp: CreateTopicsResponse = call(&b, ApiKey::CreateTopics, 7, &r).await;
    assert_eq!(resp.topics[0].error_code, errors::INVALID_REPLICATION_FACTOR);
}

// Proves topics, configs and data survive a clean restart, and acks=all data survives a crash
// that drops every unsynced byte.
#[tokio::test]
async fn restart_keeps_topics_and_synced_data() {
    let disk = MemDisk::new();
    {
        let b = open_broker(&disk);
        create(&b, "t", 3, &[("retention.ms", "3600000")]).await;
        let flusher = spawn_flusher(&b);
        produce(&b, "t", 2, -1, batch(&values(4, "d"), None)).await;
        flusher.abort();
        produce(&b, "t", 2, 1, batch(&values(4, "unsynced"), None)).await;
    }
    disk.crash(|_, _| 0);
    let b = open_broker(&disk);
    let t = b.topic("t").expect("topic survives restart");
    assert_eq!(t.partitions.len(), 3);
    assert_eq!(t.config.values["retention.ms"], "3600000");
    let leo = t.partitions[&2].state.lock().unwrap().log.log_end_offset();
    assert_eq!(leo, 4, "exactly the fsynced acks=all records survive the crash");
}

// Proves the ApiVersions table answers, an unsupported ApiVersions version gets
// UNSUPPORTED_VERSION, and other unsupported versions close the connection.
#[tokio::test]
async fn api_versions_and_unsupported_versions() {
    let disk = MemDisk::new();
    let b = open_broker(&disk);
    let resp: ApiVersionsResponse = call(&b, ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
    let produce = resp.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).unwrap();
    assert_eq!(produce.min_version, 0, "Produce must advertise min version 0 (KAFKA-18659)");
    let mut raw = bytes::BytesMut::new();
    raw.extend_from_slice(&[0, 18, 0, 99, 0, 0, 0, 11, 0, 0]);
    match b.handle(raw.freeze()) {
        Reply::Ready(mut f) => {
            use bytes::Buf;
            f.advance(4);
            assert_eq!(f.get_i32(), 11);
            assert_eq!(f.get_i16(), errors::UNSUPPORTED_VERSION);
        }
        _ => panic!("ApiVersions v99 must be answered"),
    }
    let metadata_v99 = Bytes::from_static(&[0, 3, 0, 99, 0, 0, 0, 1, 0, 0]);
    assert!(matches!(b.handle(metadata_v99), Reply::Close(_)));
    assert!(matches!(b.handle(Bytes::from_static(&[0xff; 16])), Reply::Close(_)));
    assert!(matches!(b.handle(Bytes::from_static(&[0, 1])), Reply::Close(_)));
}

// Proves a retried idempotent batch is answered with its original offset and not appended
// twice, and a sequence gap is refused.
#[tokio::test]
async fn idempotent_retries_are_deduplicated() {
    let disk = MemDisk::new();
    let b = open_broker_with(&disk, &[]);
    create(&b, "t", 1, &[]).await;
    let mut raw = build_batch(&[(None, Some(b"v".as_slice()), vec![])], 0, 0);
    // producer id 42, epoch 0, base sequence 0 (header offsets 43, 51, 53), then fix the CRC.
    raw[43..51].copy_from_slice(&42i64.to_be_bytes());
    raw[51..53].copy_from_slice(&0i16.to_be_bytes());
    raw[53..57].copy_from_slice(&0i32.to_be_bytes());
    let crc = crc32c::crc32c(&raw[21..]);
    raw[17..21].copy_from_slice(&crc.to_be_bytes());
    let first = produce(&b, "t", 0, 1, Bytes::from(raw.clone())).await;
    let again = produce(&b, "t", 0, 1, Bytes::from(raw.clone())).await;
    assert_eq!(first, (errors::NONE, 0));
    assert_eq!(again, (errors::NONE, 0), "a retry must get the original offset");
    raw[53..57].copy_from_slice(&5i32.to_be_bytes());
    let crc = crc32c::crc32c(&raw[21..]);
    raw[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(produce(&b, "t", 0, 1, Bytes::from(raw)).await.0, errors::OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(b.topic("t").unwrap().partitions[&0].state.lock().unwrap().log.log_end_offset(), 1);
}

// Proves every served version of the data and admin APIs yields a response that encodes and
// decodes (a field set that a version lacks makes encoding fail, as ListOffsets v2 once did).
#[tokio::test]
async fn every_served_version_encodes() {
    let disk = MemDisk::new();
    let b = open_broker(&disk);
    create(&b, "t", 1, &[]).await;
    produce(&b, "t", 0, 1, batch(&values(2, "v"), None)).await;
    let topic_id = b.topic("t").unwrap().id;
    for v in 0..=12 {
        let mut r = MetadataRequest::default();
        let mut mt = metadata_request::MetadataRequestTopic::default();
        mt.name = Some(TopicName(sb("t")));
        r.topics = Some(vec![mt]);
        let resp: MetadataResponse = call(&b, ApiKey::Metadata, v, &r).await;
        assert_eq!(resp.topics[0].partitions.len(), 1, "Metadata v{v}");
    }
    for v in 3..=11 {
        let (code, _) = {
            let resp: ProduceResponse =
                call(&b, ApiKey::Produce, v, &produce_request("t", 0, 1, batch(&values(1, "p"), None))).await;
            let p = &resp.responses[0].partition_responses[0];
            (p.error_code, p.base_offset)
        };
        assert_eq!(code, errors::NONE, "Produce v{v}");
    }
    for v in 4..=16 {
        let mut r = fetch_request("t", 0, 0, 0);
        r.topics[0].topic_id = topic_id;
        let resp: FetchResponse = call(&b, ApiKey::Fetch, v, &r).await;
        assert_eq!(resp.responses[0].partitions[0].error_code, errors::NONE, "Fetch v{v}");
        assert!(resp.responses[0].partitions[0].records.as_ref().is_some_and(|r| !r.is_empty()), "Fetch v{v}");
    }
    for v in 1..=8 {
        for ts in [-1, -2, -3, 0] {
            if ts == -3 && v < 7 {
                continue;
            }
            let mut p = list_offsets_request::ListOffsetsPartition::default();
            p.timestamp = ts;
            let mut t = list_offsets_request::ListOffsetsTopic::default();
            t.name = TopicName(sb("t"));
            t.partitions = vec![p];
            let mut r = ListOffsetsRequest::default();
            r.topics = vec![t];
            let resp: ListOffsetsResponse = call(&b, ApiKey::ListOffsets, v, &r).await;
            assert_eq!(resp.topics[0].partitions[0].error_code, errors::NONE, "ListOffsets v{v} ts {ts}");
        }
    }
    for v in 1..=4 {
        let mut res = describe_configs_request::DescribeConfigsResource::default();
        res.resource_type = 2;
        res.resource_name = sb("t");
        let mut r = DescribeConfigsRequest::default();
        r.resources = vec![res];
        let resp: DescribeConfigsResponse = call(&b, ApiKey::DescribeConfigs, v, &r).await;
        assert!(resp.results[0].configs.iter().any(|c| c.name.as_str() == "retention.ms"), "DescribeConfigs v{v}");
    }
    for v in 0..=1 {
        let resp: DescribeClusterResponse =
            call(&b, ApiKey::DescribeCluster, v, &DescribeClusterRequest::default()).await;
        assert_eq!(resp.brokers.len(), 1);
    }
    for v in 2..=4 {
        let mut p = offset_for_leader_epoch_request::OffsetForLeaderPartition::default();
        p.leader_epoch = 0;
        p.current_leader_epoch = -1;
        let mut t = offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
        t.topic = TopicName(sb("t"));
        t.partitions = vec![p];
        let mut r = OffsetForLeaderEpochRequest::default();
        r.topics = vec![t];
        let resp: OffsetForLeaderEpochResponse = call(&b, ApiKey::OffsetForLeaderEpoch, v, &r).await;
        assert_eq!(resp.topics[0].partitions[0].error_code, errors::NONE, "OffsetForLeaderEpoch v{v}");
    }
    for v in 0..=5 {
        let r = InitProducerIdRequest::default();
        let resp: InitProducerIdResponse = call(&b, ApiKey::InitProducerId, v, &r).await;
        assert_eq!(resp.error_code, errors::NONE, "InitProducerId v{v}");
    }
}
