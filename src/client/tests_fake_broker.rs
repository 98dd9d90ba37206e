//! End-to-end tests of [`Client`](super::Client) against a tiny fake broker on loopback.
//!
//! The fake broker keeps one in-memory log per partition and speaks just enough of
//! ApiVersions, Metadata, CreateTopics, Produce, Fetch and ListOffsets to drive the client; it
//! can refuse the next produce with NOT_LEADER_OR_FOLLOWER to exercise the retry path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

#[derive(Default)]
struct FakeState {
    /// (topic, partition) -> batches with broker-assigned base offsets.
    logs: BTreeMap<(String, i32), Vec<Bytes>>,
    partitions: BTreeMap<String, i32>,
    refuse_next_produce: bool,
}

impl FakeState {
    fn high_watermark(&self, topic: &str, partition: i32) -> i64 {
        self.logs
            .get(&(topic.to_string(), partition))
            .and_then(|b| b.last())
            .map(|b| (&b[0..8]).get_i64() + (&b[23..27]).get_i32() as i64 + 1)
            .unwrap_or(0)
    }
}

type Shared = Arc<Mutex<FakeState>>;

async fn start_fake_broker(state: Shared) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let advertised = addr.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, state.clone(), advertised.clone()));
        }
    });
    addr
}

async fn serve(mut stream: TcpStream, state: Shared, addr: String) {
    loop {
        let Ok(size) = stream.read_i32().await else { return };
        let mut buf = vec![0u8; size as usize];
        stream.read_exact(&mut buf).await.unwrap();
        let mut buf = Bytes::from(buf);
        let header = decode_request_header_from_buffer(&mut buf).unwrap();
        let (key, version) = (header.request_api_key, header.request_api_version);
        let api = ApiKey::try_from(key).unwrap();
        let mut out = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut out, api.response_header_version(version))
            .unwrap();
        match api {
            ApiKey::ApiVersions => api_versions().encode(&mut out, version).unwrap(),
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut buf, version).unwrap();
                metadata(&state, &addr, req).encode(&mut out, version).unwrap()
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut buf, version).unwrap();
                let mut s = state.lock().unwrap();
                let mut resp = CreateTopicsResponse::default();
                for t in req.topics {
                    let exists = s.partitions.contains_key(t.name.0.as_str());
                    if !exists {
                        s.partitions.insert(t.name.0.to_string(), t.num_partitions);
                    }
                    resp.topics.push(CreatableTopicResult::default().with_name(t.name).with_error_code(if exists {
                        codes::TOPIC_ALREADY_EXISTS
                    } else {
                        0
                    }));
                }
                resp.encode(&mut out, version).unwrap()
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut buf, version).unwrap();
                let acks = req.acks;
                let resp = produce(&state, req);
                if acks == 0 {
                    continue; // Kafka sends no response to acks=0.
                }
                resp.encode(&mut out, version).unwrap()
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut buf, version).unwrap();
                fetch(&state, req).encode(&mut out, version).unwrap()
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut buf, version).unwrap();
                let s = state.lock().unwrap();
                let mut resp = ListOffsetsResponse::default();
                for t in req.topics {
                    let mut rt = ListOffsetsTopicResponse::default().with_name(t.name.clone());
                    for p in t.partitions {
                        let offset = if p.timestamp == EARLIEST_TIMESTAMP {
                            0
                        } else {
                            s.high_watermark(t.name.0.as_str(), p.partition_index)
                        };
                        rt.partitions.push(
                            ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_offset(offset)
                                .with_timestamp(-1),
                        );
                    }
                    resp.topics.push(rt);
                }
                resp.encode(&mut out, version).unwrap()
            }
            other => panic!("fake broker does not serve {other:?}"),
        }
        let mut frame = BytesMut::new();
        frame.put_i32(out.len() as i32);
        frame.extend_from_slice(&out);
        stream.write_all(&frame).await.unwrap();
        stream.flush().await.unwrap();
    }
}

fn api_versions() -> ApiVersionsResponse {
    let range = |key: ApiKey, min: i16, max: i16| {
        ApiVersion::default().with_api_key(key as i16).with_min_version(min).with_max_version(max)
    };
    let mut resp = ApiVersionsResponse::default();
    resp.api_keys = vec![
        range(ApiKey::ApiVersions, 0, 3),
        range(ApiKey::Metadata, 0, 12),
        range(ApiKey::Produce, 0, 9),
        range(ApiKey::Fetch, 4, 12),
        range(ApiKey::ListOffsets, 1, 7),
        range(ApiKey::CreateTopics, 2, 7),
    ];
    resp
}

fn metadata(state: &Shared, addr: &str, req: MetadataRequest) -> MetadataResponse {
    let s = state.lock().unwrap();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut resp = MetadataResponse::default();
    resp.brokers = vec![MetadataResponseBroker::default()
        .with_node_id(1.into())
        .with_host(StrBytes::from_string(host.to_string()))
        .with_port(port.parse().unwrap())];
    let names: Vec<String> = match req.topics {
        Some(ts) if !ts.is_empty() => ts.into_iter().map(|t| t.name.unwrap().0.to_string()).collect(),
        _ => s.partitions.keys().cloned().collect(),
    };
    for name in names {
        let mut t = MetadataResponseTopic::default().with_name(Some(topic_name(&name)));
        match s.partitions.get(&name) {
            None => t.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION,
            Some(&n) => {
                t.partitions = (0..n)
                    .map(|i| {
                        MetadataResponsePartition::default()
                            .with_partition_index(i)
                            .with_leader_id(1.into())
                            .with_leader_epoch(0)
                            .with_replica_nodes(vec![1.into()])
                            .with_isr_nodes(vec![1.into()])
                    })
                    .collect()
            }
        }
        resp.topics.push(t);
    }
    resp
}

fn produce(state: &Shared, req: ProduceRequest) -> ProduceResponse {
    let mut s = state.lock().unwrap();
    let mut resp = ProduceResponse::default();
    for t in req.topic_data {
        let mut rt = TopicProduceResponse::default().with_name(t.name.clone());
        for p in t.partition_data {
            let mut rp = PartitionProduceResponse::default().with_index(p.index);
            if s.refuse_next_produce {
                s.refuse_next_produce = false;
                rp.error_code = codes::NOT_LEADER_OR_FOLLOWER;
            } else {
                let base = s.high_watermark(t.name.0.as_str(), p.index);
                let mut batch = BytesMut::from(&p.records.unwrap()[..]);
                batch[0..8].copy_from_slice(&base.to_be_bytes());
                s.logs.entry((t.name.0.to_string(), p.index)).or_default().push(batch.freeze());
                rp.base_offset = base;
            }
            rt.partition_responses.push(rp);
        }
        resp.responses.push(rt);
    }
    resp
}

fn fetch(state: &Shared, req: FetchRequest) -> FetchResponse {
    let s = state.lock().unwrap();
    let mut resp = FetchResponse::default();
    for t in req.topics {
        let mut rt = FetchableTopicResponse::default().with_topic(t.topic.clone());
        for p in t.partitions {
            let key = (t.topic.0.to_string(), p.partition);
            let mut records = BytesMut::new();
            for b in s.logs.get(&key).into_iter().flatten() {
                let end = (&b[0..8]).get_i64() + (&b[23..27]).get_i32() as i64 + 1;
                if end > p.fetch_offset {
                    records.extend_from_slice(b);
                }
            }
            rt.partitions.push(
                PartitionData::default()
                    .with_partition_index(p.partition)
                    .with_high_watermark(s.high_watermark(&key.0, key.1))
                    .with_log_start_offset(0)
                    .with_records(Some(records.freeze())),
            );
        }
        resp.responses.push(rt);
    }
    resp
}

fn rec(v: &str) -> ProduceRecord {
    ProduceRecord { value: Some(Bytes::from(v.to_string())), timestamp_ms: 1, ..Default::default() }
}

#[tokio::test]
async fn client_round_trip_against_fake_broker() {
    // Proves connect + negotiation, create, produce (with one NOT_LEADER retry), fetch from the
    // middle of a batch, and list offsets, all over real TCP frames.
    let state = Shared::default();
    let addr = start_fake_broker(state.clone()).await;
    // The first bootstrap address is dead: the client must move on to the second.
    let mut client = Client::connect(&format!("127.0.0.1:1,{addr}"), "test").await.unwrap();
    client.create_topic("t", 2, 1, vec![("retention.ms".into(), "1000".into())]).await.unwrap();
    let again = client.create_topic("t", 2, 1, vec![]).await.unwrap_err();
    assert_eq!(again.kafka_code(), Some(codes::TOPIC_ALREADY_EXISTS));

    state.lock().unwrap().refuse_next_produce = true;
    let base = client.produce("t", 1, -1, vec![rec("a"), rec("b"), rec("c")], Compression::None).await.unwrap();
    assert_eq!(base, 0);
    let base = client.produce("t", 1, 1, vec![rec("d"), rec("e")], Compression::Gzip).await.unwrap();
    assert_eq!(base, 3);
    // acks=0 gets no answer; the next request on the same connection must still line up.
    assert_eq!(client.produce("t", 0, 0, vec![rec("z")], Compression::None).await.unwrap(), -1);

    let fetched = client.fetch("t", 1, 1, 100, 1, 1 << 20).await.unwrap();
    let values: Vec<&[u8]> = fetched.records.iter().map(|r| r.value.as_deref().unwrap()).collect();
    assert_eq!(values, vec![&b"b"[..], b"c", b"d", b"e"]);
    assert_eq!(fetched.records[0].offset, 1);
    assert_eq!((fetched.high_watermark, fetched.next_offset), (5, 5));

    assert_eq!(client.list_offsets("t", 1, LATEST_TIMESTAMP).await.unwrap().0, 5);
    assert_eq!(client.list_offsets("t", 1, EARLIEST_TIMESTAMP).await.unwrap().0, 0);
    assert_eq!(client.list_offsets("t", 0, LATEST_TIMESTAMP).await.unwrap().0, 1);

    let md = client.metadata(None).await.unwrap();
    assert_eq!(md.topics.len(), 1);
    assert_eq!(md.topics[0].partitions.len(), 2);
    let missing = client.produce("nope", 0, 1, vec![rec("x")], Compression::None).await.unwrap_err();
    assert_eq!(missing.kafka_code(), Some(codes::UNKNOWN_TOPIC_OR_PARTITION));
    let no_partition = client.fetch("t", 9, 0, 0, 1, 1024).await.unwrap_err();
    assert_eq!(no_partition.kafka_code(), Some(codes::UNKNOWN_TOPIC_OR_PARTITION));
}
