//! A minimal classic consumer-group member ("subscribe"): find the coordinator, join (with the
//! KIP-394 member-id round trip), sync (as leader it computes a range assignment), heartbeat,
//! commit and fetch committed offsets, leave.
//!
//! The member does not fetch records itself: the caller reads its assigned partitions with
//! [`Client::fetch`] and decides when to heartbeat and commit, so the group's moving parts stay
//! visible to tests (the simulator's subscribe workload drives one of these per consumer).
//!
//! Invariants: like the rest of the client it spawns nothing, reads no clock and draws no
//! random numbers. Requests use fixed protocol versions every Kafka broker since 2.3 speaks
//! (FindCoordinator v3, JoinGroup v5, SyncGroup v3, Heartbeat v3, LeaveGroup v1,
//! OffsetCommit v6, OffsetFetch v7). Assignments use Kafka's consumer protocol encoding
//! (version 0), so other clients in the same group understand them.
//!
//! Errors: a coordinator error or a broken connection forgets the coordinator (the next call
//! looks it up again); `UNKNOWN_MEMBER_ID` forgets the member id; every Kafka error code is
//! returned as [`ClientError::Kafka`], and [`needs_rejoin`] says which ones mean "join again".

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest, HeartbeatRequest,
    JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use super::{topic_name, Client, ClientError};

/// Kafka error codes the group protocol answers with.
pub mod group_codes {
    /// The coordinator is still loading.
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    /// No coordinator is available.
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    /// The broker asked is not the group's coordinator.
    pub const NOT_COORDINATOR: i16 = 16;
    /// The generation is not the group's current one.
    pub const ILLEGAL_GENERATION: i16 = 22;
    /// The coordinator does not know the member id.
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    /// A rebalance started: join again.
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    /// KIP-394: the first join gets a member id and must be repeated with it.
    pub const MEMBER_ID_REQUIRED: i16 = 79;
}
use group_codes::*;

const FIND_COORDINATOR_VERSION: i16 = 3;
const JOIN_GROUP_VERSION: i16 = 5;
const SYNC_GROUP_VERSION: i16 = 3;
const HEARTBEAT_VERSION: i16 = 3;
const LEAVE_GROUP_VERSION: i16 = 1;
const OFFSET_COMMIT_VERSION: i16 = 6;
const OFFSET_FETCH_VERSION: i16 = 7;
/// Consumer protocol (subscription and assignment) encoding version.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;
/// The only assignment strategy this member offers.
pub const RANGE_ASSIGNOR: &str = "range";
/// Extra time a JoinGroup or SyncGroup may take beyond the rebalance timeout (as Kafka's
/// consumer allows) before the member gives up on the answer.
const JOIN_SLACK: Duration = Duration::from_secs(5);

/// True if `e` means the member must join the group again (its generation is over).
pub fn needs_rejoin(e: &ClientError) -> bool {
    matches!(e.kafka_code(), Some(ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | REBALANCE_IN_PROGRESS))
}

/// What one generation gave this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The generation the assignment belongs to.
    pub generation_id: i32,
    /// This member's id.
    pub member_id: String,
    /// Whether this member computed the assignment.
    pub leader: bool,
    /// Partitions by topic, sorted.
    pub partitions: BTreeMap<String, Vec<i32>>,
}

/// One member of a classic consumer group.
#[derive(Debug, Clone)]
pub struct GroupMember {
    group_id: String,
    topics: Vec<String>,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    member_id: String,
    generation_id: i32,
    coordinator: Option<i32>,
}

impl GroupMember {
    /// A member of `group_id` subscribing to `topics`, not yet joined.
    pub fn new(group_id: &str, topics: &[&str], session_timeout_ms: i32, rebalance_timeout_ms: i32) -> GroupMember {
        let mut topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        topics.sort();
        topics.dedup();
        GroupMember {
            group_id: group_id.to_string(),
            topics,
            session_timeout_ms,
            rebalance_timeout_ms,
            member_id: String::new(),
            generation_id: -1,
            coordinator: None,
        }
    }

    /// The member id the coordinator gave (empty before the first join).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The generation of the last successful join (-1 before).
    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    /// The group's coordinator node, looked up if not known.
    pub async fn coordinator(&mut self, client: &mut Client) -> Result<i32, ClientError> {
        if let Some(c) = self.coordinator {
            return Ok(c);
        }
        let req = FindCoordinatorRequest::default().with_key(StrBytes::from_string(self.group_id.clone()));
        let key = client.any_connection().await?;
        let resp = send_on(client, key, &req, FIND_COORDINATOR_VERSION, None).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka(resp.error_code, resp.error_message.as_deref()));
        }
        self.coordinator = Some(resp.node_id.0);
        Ok(resp.node_id.0)
    }

    /// Sends `req` to the coordinator; forgets it on a coordinator error or a broken connection.
    async fn send_to_coordinator<R: Request>(
        &mut self,
        client: &mut Client,
        req: &R,
        version: i16,
        timeout: Option<Duration>,
    ) -> Result<R::Response, ClientError> {
        let node = self.coordinator(client).await?;
        let result = async {
            let key = client.node_connection(node).await?;
            send_on(client, key, req, version, timeout).await
        }
        .await;
        if result.is_err() {
            self.coordinator = None;
        }
        result
    }

    /// Checks a response's error code; coordinator errors forget the coordinator, and
    /// `UNKNOWN_MEMBER_ID` the member id.
    fn check(&mut self, code: i16) -> Result<(), ClientError> {
        match code {
            0 => Ok(()),
            NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS => {
                self.coordinator = None;
                Err(ClientError::kafka(code, None))
            }
            UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                self.generation_id = -1;
                Err(ClientError::kafka(code, None))
            }
            code => Err(ClientError::kafka(code, None)),
        }
    }

    /// Joins the group and syncs: returns this member's assignment for the new generation.
    /// As the leader, computes a range assignment over the members' subscriptions.
    pub async fn join(&mut self, client: &mut Client) -> Result<Assignment, ClientError> {
        let join_timeout = Duration::from_millis(self.rebalance_timeout_ms.max(0) as u64) + JOIN_SLACK;
        let mut subscription = BytesMut::new();
        subscription.put_i16(CONSUMER_PROTOCOL_VERSION);
        ConsumerProtocolSubscription::default()
            .with_topics(self.topics.iter().map(|t| StrBytes::from_string(t.clone())).collect())
            .encode(&mut subscription, CONSUMER_PROTOCOL_VERSION)
            .map_err(|e| ClientError::Protocol(format!("encoding subscription: {e}")))?;
        let subscription = subscription.freeze();
        // KIP-394: at most one MEMBER_ID_REQUIRED round trip.
        let mut attempts = 0;
        let join = loop {
            attempts += 1;
            let req = JoinGroupRequest::default()
                .with_group_id(StrBytes::from_string(self.group_id.clone()).into())
                .with_session_timeout_ms(self.session_timeout_ms)
                .with_rebalance_timeout_ms(self.rebalance_timeout_ms)
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(RANGE_ASSIGNOR))
                    .with_metadata(subscription.clone())]);
            let resp = self.send_to_coordinator(client, &req, JOIN_GROUP_VERSION, Some(join_timeout)).await?;
            if resp.error_code == MEMBER_ID_REQUIRED && attempts == 1 {
                self.member_id = resp.member_id.to_string();
                continue;
            }
            self.check(resp.error_code)?;
            break resp;
        };
        self.member_id = join.member_id.to_string();
        self.generation_id = join.generation_id;
        let leader = join.leader.as_str() == self.member_id;
        let assignments = if leader {
            let mut subscriptions = BTreeMap::new();
            for m in &join.members {
                subscriptions.insert(m.member_id.to_string(), decode_subscription(&m.metadata)?);
            }
            let mut counts = BTreeMap::new();
            for topic in subscriptions.values().flatten() {
                if !counts.contains_key(topic) {
                    counts.insert(topic.clone(), client.partitions(topic).await?.len() as i32);
                }
            }
            range_assign(&subscriptions, &counts)
                .into_iter()
                .map(|(member, parts)| {
                    Ok(SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(member))
                        .with_assignment(encode_assignment(&parts)?))
                })
                .collect::<Result<Vec<_>, ClientError>>()?
        } else {
            Vec::new()
        };
        let req = SyncGroupRequest::default()
            .with_group_id(StrBytes::from_string(self.group_id.clone()).into())
            .with_generation_id(self.generation_id)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_assignments(assignments);
        let resp = self.send_to_coordinator(client, &req, SYNC_GROUP_VERSION, Some(join_timeout)).await?;
        self.check(resp.error_code)?;
        Ok(Assignment {
            generation_id: self.generation_id,
            member_id: self.member_id.clone(),
            leader,
            partitions: decode_assignment(&resp.assignment)?,
        })
    }

    /// One heartbeat for the current generation.
    pub async fn heartbeat(&mut self, client: &mut Client) -> Result<(), ClientError> {
        let req = HeartbeatRequest::default()
            .with_group_id(StrBytes::from_string(self.group_id.clone()).into())
            .with_generation_id(self.generation_id)
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let resp = self.send_to_coordinator(client, &req, HEARTBEAT_VERSION, None).await?;
        self.check(resp.error_code)
    }

    /// Commits `offsets` (topic, partition) -> next offset to read, for the current
    /// generation. Fails with the first partition's error if any partition failed.
    pub async fn commit(
        &mut self,
        client: &mut Client,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), ClientError> {
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((topic, partition), offset) in offsets {
            by_topic.entry(topic.as_str()).or_default().push(
                OffsetCommitRequestPartition::default().with_partition_index(*partition).with_committed_offset(*offset),
            );
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(StrBytes::from_string(self.group_id.clone()).into())
            .with_generation_id_or_member_epoch(self.generation_id)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, parts)| {
                        OffsetCommitRequestTopic::default().with_name(topic_name(t)).with_partitions(parts)
                    })
                    .collect(),
            );
        let resp = self.send_to_coordinator(client, &req, OFFSET_COMMIT_VERSION, None).await?;
        for t in &resp.topics {
            for p in &t.partitions {
                self.check(p.error_code)?;
            }
        }
        Ok(())
    }

    /// The group's committed offsets for `partitions` of `topic` (-1: none committed).
    pub async fn committed(
        &mut self,
        client: &mut Client,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, i64>, ClientError> {
        let req = OffsetFetchRequest::default()
            .with_group_id(StrBytes::from_string(self.group_id.clone()).into())
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partition_indexes(partitions.to_vec())]));
        let resp = self.send_to_coordinator(client, &req, OFFSET_FETCH_VERSION, None).await?;
        self.check(resp.error_code)?;
        let mut out = BTreeMap::new();
        for t in resp.topics.iter().filter(|t| t.name.as_str() == topic) {
            for p in &t.partitions {
                self.check(p.error_code)?;
                out.insert(p.partition_index, p.committed_offset);
            }
        }
        Ok(out)
    }

    /// Leaves the group (best effort: the session timeout removes a member that cannot).
    pub async fn leave(&mut self, client: &mut Client) -> Result<(), ClientError> {
        let req = LeaveGroupRequest::default()
            .with_group_id(StrBytes::from_string(self.group_id.clone()).into())
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let resp = self.send_to_coordinator(client, &req, LEAVE_GROUP_VERSION, None).await?;
        self.member_id.clear();
        self.generation_id = -1;
        self.check(resp.error_code)
    }
}

/// Sends `req` at `version` on the client's connection `key` and waits up to `timeout` (at least
/// the client's request timeout); drops the connection if it broke.
async fn send_on<R: Request>(
    client: &mut Client,
    key: i32,
    req: &R,
    version: i16,
    timeout: Option<Duration>,
) -> Result<R::Response, ClientError> {
    let timeout = timeout.unwrap_or(client.request_timeout).max(client.request_timeout);
    let conn = client.connections.get_mut(&key).expect("connection just opened");
    let result = conn.send_versioned(req, version, timeout).await;
    client.reap(key);
    result
}

/// Kafka's range assignor: per topic, members subscribed to it (in member-id order) get
/// contiguous ranges of its partitions, the first `count % members` one extra.
pub fn range_assign(
    subscriptions: &BTreeMap<String, Vec<String>>,
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> =
        subscriptions.keys().map(|m| (m.clone(), BTreeMap::new())).collect();
    for (topic, &count) in partition_counts {
        let members: Vec<&String> = subscriptions.iter().filter(|(_, ts)| ts.contains(topic)).map(|(m, _)| m).collect();
        if members.is_empty() {
            continue;
        }
        let n = members.len() as i32;
        let (per, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in members.into_iter().enumerate() {
            let take = per + i32::from((i as i32) < extra);
            if take > 0 {
                out.get_mut(m).expect("member listed").insert(topic.clone(), (next..next + take).collect());
            }
            next += take;
        }
    }
    out
}

fn encode_assignment(parts: &BTreeMap<String, Vec<i32>>) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_VERSION);
    ConsumerProtocolAssignment::default()
        .with_assigned_partitions(
            parts
                .iter()
                .map(|(t, ps)| AssignedPartitions::default().with_topic(topic_name(t)).with_partitions(ps.clone()))
                .collect(),
        )
        .encode(&mut buf, CONSUMER_PROTOCOL_VERSION)
        .map_err(|e| ClientError::Protocol(format!("encoding assignment: {e}")))?;
    Ok(buf.freeze())
}

/// The consumer-protocol version prefix, or an error if the bytes are too short.
fn protocol_version(buf: &mut Bytes, what: &str) -> Result<i16, ClientError> {
    if buf.remaining() < 2 {
        return Err(ClientError::Protocol(format!("{what}: {} bytes, no version", buf.remaining())));
    }
    Ok(buf.get_i16().min(3))
}

fn decode_subscription(bytes: &Bytes) -> Result<Vec<String>, ClientError> {
    let mut buf = bytes.clone();
    let version = protocol_version(&mut buf, "subscription")?;
    let s = ConsumerProtocolSubscription::decode(&mut buf, version)
        .map_err(|e| ClientError::Protocol(format!("decoding subscription: {e}")))?;
    Ok(s.topics.iter().map(|t| t.to_string()).collect())
}

/// An empty assignment (a member with nothing to do) may come as zero bytes.
fn decode_assignment(bytes: &Bytes) -> Result<BTreeMap<String, Vec<i32>>, ClientError> {
    if bytes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut buf = bytes.clone();
    let version = protocol_version(&mut buf, "assignment")?;
    let a = ConsumerProtocolAssignment::decode(&mut buf, version)
        .map_err(|e| ClientError::Protocol(format!("decoding assignment: {e}")))?;
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for tp in a.assigned_partitions {
        out.entry(tp.topic.to_string()).or_default().extend(tp.partitions);
    }
    for ps in out.values_mut() {
        ps.sort_unstable();
        ps.dedup();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the range assignor splits each topic's partitions into contiguous ranges among
    // its subscribers in member-id order, the first ones taking the remainder.
    #[test]
    fn range_assignment() {
        let subs: BTreeMap<String, Vec<String>> = [
            ("b".to_string(), vec!["t".to_string()]),
            ("a".to_string(), vec!["t".to_string(), "u".to_string()]),
            ("c".to_string(), vec!["t".to_string()]),
        ]
        .into();
        let counts: BTreeMap<String, i32> = [("t".to_string(), 4), ("u".to_string(), 1)].into();
        let out = range_assign(&subs, &counts);
        assert_eq!(out["a"]["t"], vec![0, 1]);
        assert_eq!(out["a"]["u"], vec![0]);
        assert_eq!(out["b"]["t"], vec![2]);
        assert_eq!(out["c"]["t"], vec![3]);
    }

    // Proves assignments round-trip through Kafka's consumer-protocol encoding.
    #[test]
    fn assignment_round_trip() {
        let parts: BTreeMap<String, Vec<i32>> = [("t".to_string(), vec![0, 2])].into();
        let bytes = encode_assignment(&parts).unwrap();
        assert_eq!(decode_assignment(&bytes).unwrap(), parts);
        assert!(decode_assignment(&Bytes::new()).unwrap().is_empty());
    }
}
