//! The controller listener's wire format: brokers and controllers talk to the controller
//! quorum with these frames (Kafka clients never connect to this port).
//!
//! Frame: `u32 length` (of what follows), `u8 kind`, `u32 correlation id`, payload. Raft
//! messages are one-way; every other request gets exactly one response with the same
//! correlation id, in request order. Decoding never panics on hostile bytes and checks every
//! length against [`RPC_FRAME_MAX_BYTES`] before allocating.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

/// Largest controller frame accepted (metadata fetch responses are chunked below this).
pub const RPC_FRAME_MAX_BYTES: usize = 64 * 1024 * 1024;
const VERSION: u8 = 1;
/// Most voters a Quorum response may list (far above any real quorum).
const VOTERS_IN_FRAME_MAX: usize = 1024;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RpcError {
    /// The frame ended early.
    #[error("truncated controller frame")]
    Truncated,
    /// A length or count is out of bounds.
    #[error("controller frame field too large: {0}")]
    TooLarge(usize),
    /// Unknown message kind or version.
    #[error("unknown controller message kind {0}")]
    UnknownKind(u8),
    /// A string is not UTF-8.
    #[error("controller frame string is not UTF-8")]
    Utf8,
}

/// A request to the controller quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerRequest {
    /// A Raft message between controllers (one-way, no response).
    Raft {
        /// The encoded raft message.
        message: Bytes,
    },
    /// A broker's registration and heartbeat.
    Heartbeat {
        /// The broker.
        broker_id: i32,
        /// Changes on every broker process start.
        incarnation: u64,
        /// Advertised host.
        host: String,
        /// Advertised port.
        port: u16,
        /// The broker wants to shut down (controlled shutdown).
        want_shutdown: bool,
        /// The last metadata record index the broker applied.
        metadata_index: u64,
    },
    /// The metadata image if it is newer than `from_index`, waiting up to `max_wait_ms` for a
    /// change.
    FetchMetadata {
        /// The applied index of the image the broker has (0: none).
        from_index: u64,
        /// Long-poll bound.
        max_wait_ms: u32,
    },
    /// A partition leader asks to change the ISR (Kafka's AlterPartition).
    AlterPartition {
        /// The leader asking.
        broker_id: i32,
        /// Topic id.
        topic_id: Uuid,
        /// Partition.
        partition: i32,
        /// The leader's epoch.
        leader_epoch: i32,
        /// The partition epoch the leader last saw.
        partition_epoch: i32,
        /// The proposed ISR.
        new_isr: Vec<i32>,
    },
    /// Create a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Partitions (-1: default).
        partitions: i32,
        /// Replication factor (-1: default).
        replication_factor: i16,
        /// Config overrides.
        configs: Vec<(String, String)>,
        /// Only check.
        validate_only: bool,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Grow a topic.
    CreatePartitions {
        /// Name.
        name: String,
        /// New total.
        count: i32,
        /// Only check.
        validate_only: bool,
    },
    /// Replace a topic's config overrides.
    AlterTopicConfig {
        /// Name.
        name: String,
        /// The complete new set of overrides.
        configs: Vec<(String, String)>,
        /// Only check.
        validate_only: bool,
    },
    /// Reserve a block of producer ids.
    AllocateProducerIds {
        /// Requesting broker.
        broker_id: i32,
        /// How many.
        count: i32,
    },
    /// Describe the controller quorum (answered by the active controller; Kafka's
    /// DescribeQuorum, which brokers forward).
    DescribeQuorum,
}

/// One voter's replication state as the active controller sees it (Kafka's `ReplicaState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterState {
    /// The voter's node id.
    pub replica_id: i32,
    /// The last metadata log offset the voter acknowledged (-1 unknown).
    pub log_end_offset: i64,
    /// When the leader last heard from it, ms since the epoch (-1 unknown).
    pub last_fetch_timestamp: i64,
    /// When it was last caught up to the leader, ms since the epoch (-1 unknown).
    pub last_caught_up_timestamp: i64,
}

/// A response from the controller quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerResponse {
    /// This controller is not the active one; try `leader_hint` (-1 unknown).
    NotController {
        /// Known active controller.
        leader_hint: i32,
    },
    /// Heartbeat accepted.
    Heartbeat {
        /// The broker is fenced (not yet caught up, or lost its session).
        fenced: bool,
        /// Controlled shutdown may proceed (no leaderships left).
        shutdown_ok: bool,
    },
    /// The committed metadata image, when it is newer than the one the broker has.
    Metadata {
        /// The log index the image reflects.
        applied_index: u64,
        /// `MetadataImage::encode` bytes, or `None` when the broker is already up to date.
        image: Option<Bytes>,
    },
    /// An admin or AlterPartition outcome (Kafka error code and message).
    Done {
        /// Kafka error code (0 success).
        error_code: i16,
        /// Human-readable detail.
        message: String,
    },
    /// A reserved producer id block.
    ProducerIds {
        /// First id.
        first: i64,
        /// Count.
        count: i32,
    },
    /// The quorum as the active controller sees it.
    Quorum {
        /// The active controller (Raft leader).
        leader_id: i32,
        /// The Raft term (Kafka's leader epoch of the metadata partition).
        leader_epoch: i32,
        /// The committed and applied metadata offset.
        high_watermark: i64,
        /// Every voter, the leader included.
        voters: Vec<VoterState>,
    },
}

struct Enc(BytesMut);

impl Enc {
    fn str(&mut self, s: &str) {
        self.0.put_u32(s.len() as u32);
        self.0.put_slice(s.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.put_u32(b.len() as u32);
        self.0.put_slice(b);
    }
    fn pairs(&mut self, p: &[(String, String)]) {
        self.0.put_u32(p.len() as u32);
        for (k, v) in p {
            self.str(k);
            self.str(v);
        }
    }
}

struct Dec(Bytes);

impl Dec {
    fn need(&self, n: usize) -> Result<(), RpcError> {
        if self.0.remaining() < n {
            Err(RpcError::Truncated)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, RpcError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, RpcError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn i16(&mut self) -> Result<i16, RpcError> {
        self.need(2)?;
        Ok(self.0.get_i16())
    }
    fn i32(&mut self) -> Result<i32, RpcError> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn u32(&mut self) -> Result<u32, RpcError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn i64(&mut self) -> Result<i64, RpcError> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn u64(&mut self) -> Result<u64, RpcError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn bool(&mut self) -> Result<bool, RpcError> {
        Ok(self.u8()? != 0)
    }
    fn len(&mut self) -> Result<usize, RpcError> {
        let n = self.u32()? as usize;
        if n > RPC_FRAME_MAX_BYTES {
            return Err(RpcError::TooLarge(n));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<Bytes, RpcError> {
        let n = self.len()?;
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn str(&mut self) -> Result<String, RpcError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| RpcError::Utf8)
    }
    fn uuid(&mut self) -> Result<Uuid, RpcError> {
        self.need(16)?;
        let mut b = [0u8; 16];
        self.0.copy_to_slice(&mut b);
        Ok(Uuid::from_bytes(b))
    }
    fn count(&mut self, max: usize) -> Result<usize, RpcError> {
        let n = self.u32()? as usize;
        if n > max || n > self.0.remaining() {
            return Err(RpcError::TooLarge(n));
        }
        Ok(n)
    }
    fn pairs(&mut self) -> Result<Vec<(String, String)>, RpcError> {
        let n = self.count(100_000)?;
        (0..n).map(|_| Ok((self.str()?, self.str()?))).collect()
    }
    fn ids(&mut self) -> Result<Vec<i32>, RpcError> {
        let n = self.count(100_000)?;
        (0..n).map(|_| self.i32()).collect()
    }
}

fn frame(kind: u8, correlation_id: u32, body: impl FnOnce(&mut Enc)) -> Bytes {
    let mut e = Enc(BytesMut::with_capacity(64));
    e.0.put_u32(0);
    e.0.put_u8(VERSION);
    e.0.put_u8(kind);
    e.0.put_u32(correlation_id);
    body(&mut e);
    let len = (e.0.len() - 4) as u32;
    e.0[..4].copy_from_slice(&len.to_be_bytes());
    e.0.freeze()
}

/// Reads the version, kind and correlation id at the start of a frame body (after the length).
fn header(d: &mut Dec) -> Result<(u8, u32), RpcError> {
    let v = d.u8()?;
    if v != VERSION {
        return Err(RpcError::UnknownKind(v));
    }
    Ok((d.u8()?, d.u32()?))
}

impl ControllerRequest {
    /// Encodes a whole frame, length prefix included.
    pub fn encode(&self, correlation_id: u32) -> Bytes {
        match self {
            ControllerRequest::Raft { message } => frame(1, correlation_id, |e| e.bytes(message)),
            ControllerRequest::Heartbeat { broker_id, incarnation, host, port, want_shutdown, metadata_index } => {
                frame(2, correlation_id, |e| {
                    e.0.put_i32(*broker_id);
                    e.0.put_u64(*incarnation);
                    e.str(host);
                    e.0.put_u16(*port);
                    e.0.put_u8(*want_shutdown as u8);
                    e.0.put_u64(*metadata_index);
                })
            }
            ControllerRequest::FetchMetadata { from_index, max_wait_ms } => frame(3, correlation_id, |e| {
                e.0.put_u64(*from_index);
                e.0.put_u32(*max_wait_ms);
            }),
            ControllerRequest::AlterPartition {
                broker_id,
                topic_id,
                partition,
                leader_epoch,
                partition_epoch,
                new_isr,
            } => frame(4, correlation_id, |e| {
                e.0.put_i32(*broker_id);
                e.0.put_slice(topic_id.as_bytes());
                e.0.put_i32(*partition);
                e.0.put_i32(*leader_epoch);
                e.0.put_i32(*partition_epoch);
                e.0.put_u32(new_isr.len() as u32);
                for r in new_isr {
                    e.0.put_i32(*r);
                }
            }),
            ControllerRequest::CreateTopic { name, partitions, replication_factor, configs, validate_only } => {
                frame(5, correlation_id, |e| {
                    e.str(name);
                    e.0.put_i32(*partitions);
                    e.0.put_i16(*replication_factor);
                    e.pairs(configs);
                    e.0.put_u8(*validate_only as u8);
                })
            }
            ControllerRequest::DeleteTopic { name } => frame(6, correlation_id, |e| e.str(name)),
            ControllerRequest::CreatePartitions { name, count, validate_only } => frame(7, correlation_id, |e| {
                e.str(name);
                e.0.put_i32(*count);
                e.0.put_u8(*validate_only as u8);
            }),
            ControllerRequest::AlterTopicConfig { name, configs, validate_only } => frame(8, correlation_id, |e| {
                e.str(name);
                e.pairs(configs);
                e.0.put_u8(*validate_only as u8);
            }),
            ControllerRequest::AllocateProducerIds { broker_id, count } => frame(9, correlation_id, |e| {
                e.0.put_i32(*broker_id);
                e.0.put_i32(*count);
            }),
            ControllerRequest::DescribeQuorum => frame(10, correlation_id, |_| {}),
        }
    }

    /// Decodes a frame body (everything after the length prefix): (correlation id, request).
    pub fn decode(body: Bytes) -> Result<(u32, ControllerRequest), RpcError> {
        let mut d = Dec(body);
        let (kind, cid) = header(&mut d)?;
        let req = match kind {
            1 => ControllerRequest::Raft { message: d.bytes()? },
            2 => ControllerRequest::Heartbeat {
                broker_id: d.i32()?,
                incarnation: d.u64()?,
                host: d.str()?,
                port: d.u16()?,
                want_shutdown: d.bool()?,
                metadata_index: d.u64()?,
            },
            3 => ControllerRequest::FetchMetadata { from_index: d.u64()?, max_wait_ms: d.u32()? },
            4 => ControllerRequest::AlterPartition {
                broker_id: d.i32()?,
                topic_id: d.uuid()?,
                partition: d.i32()?,
                leader_epoch: d.i32()?,
                partition_epoch: d.i32()?,
                new_isr: d.ids()?,
            },
            5 => ControllerRequest::CreateTopic {
                name: d.str()?,
                partitions: d.i32()?,
                replication_factor: d.i16()?,
                configs: d.pairs()?,
                validate_only: d.bool()?,
            },
            6 => ControllerRequest::DeleteTopic { name: d.str()? },
            7 => ControllerRequest::CreatePartitions { name: d.str()?, count: d.i32()?, validate_only: d.bool()? },
            8 => ControllerRequest::AlterTopicConfig { name: d.str()?, configs: d.pairs()?, validate_only: d.bool()? },
            9 => ControllerRequest::AllocateProducerIds { broker_id: d.i32()?, count: d.i32()? },
            10 => ControllerRequest::DescribeQuorum,
            k => return Err(RpcError::UnknownKind(k)),
        };
        Ok((cid, req))
    }
}

impl ControllerResponse {
    /// Encodes a whole frame, length prefix included.
    pub fn encode(&self, correlation_id: u32) -> Bytes {
        match self {
            ControllerResponse::NotController { leader_hint } => {
                frame(101, correlation_id, |e| e.0.put_i32(*leader_hint))
            }
            ControllerResponse::Heartbeat { fenced, shutdown_ok } => frame(102, correlation_id, |e| {
                e.0.put_u8(*fenced as u8);
                e.0.put_u8(*shutdown_ok as u8);
            }),
            ControllerResponse::Metadata { applied_index, image } => frame(103, correlation_id, |e| {
                e.0.put_u64(*applied_index);
                match image {
                    Some(b) => {
                        e.0.put_u8(1);
                        e.bytes(b);
                    }
                    None => e.0.put_u8(0),
                }
            }),
            ControllerResponse::Done { error_code, message } => frame(104, correlation_id, |e| {
                e.0.put_i16(*error_code);
                e.str(message);
            }),
            ControllerResponse::ProducerIds { first, count } => frame(105, correlation_id, |e| {
                e.0.put_i64(*first);
                e.0.put_i32(*count);
            }),
            ControllerResponse::Quorum { leader_id, leader_epoch, high_watermark, voters } => {
                frame(106, correlation_id, |e| {
                    e.0.put_i32(*leader_id);
                    e.0.put_i32(*leader_epoch);
                    e.0.put_i64(*high_watermark);
                    e.0.put_u32(voters.len() as u32);
                    for v in voters {
                        e.0.put_i32(v.replica_id);
                        e.0.put_i64(v.log_end_offset);
                        e.0.put_i64(v.last_fetch_timestamp);
                        e.0.put_i64(v.last_caught_up_timestamp);
                    }
                })
            }
        }
    }

    /// Decodes a frame body (everything after the length prefix): (correlation id, response).
    pub fn decode(body: Bytes) -> Result<(u32, ControllerResponse), RpcError> {
        let mut d = Dec(body);
        let (kind, cid) = header(&mut d)?;
        let resp = match kind {
            101 => ControllerResponse::NotController { leader_hint: d.i32()? },
            102 => ControllerResponse::Heartbeat { fenced: d.bool()?, shutdown_ok: d.bool()? },
            103 => {
                let applied_index = d.u64()?;
                let image = if d.bool()? { Some(d.bytes()?) } else { None };
                ControllerResponse::Metadata { applied_index, image }
            }
            104 => ControllerResponse::Done { error_code: d.i16()?, message: d.str()? },
            105 => ControllerResponse::ProducerIds { first: d.i64()?, count: d.i32()? },
            106 => {
                let (leader_id, leader_epoch, high_watermark) = (d.i32()?, d.i32()?, d.i64()?);
                let n = d.count(VOTERS_IN_FRAME_MAX)?;
                let voters = (0..n)
                    .map(|_| {
                        Ok(VoterState {
                            replica_id: d.i32()?,
                            log_end_offset: d.i64()?,
                            last_fetch_timestamp: d.i64()?,
                            last_caught_up_timestamp: d.i64()?,
                        })
                    })
                    .collect::<Result<Vec<_>, RpcError>>()?;
                ControllerResponse::Quorum { leader_id, leader_epoch, high_watermark, voters }
            }
            k => return Err(RpcError::UnknownKind(k)),
        };
        Ok((cid, resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(frame: Bytes) -> Bytes {
        let mut f = frame;
        let len = f.get_u32() as usize;
        assert_eq!(len, f.len());
        f
    }

    // Proves every request and response kind round-trips through its encoding.
    #[test]
    fn round_trips() {
        let reqs = vec![
            ControllerRequest::Raft { message: Bytes::from_static(b"raft") },
            ControllerRequest::Heartbeat {
                broker_id: 3,
                incarnation: 77,
                host: "127.0.0.1".into(),
                port: 9094,
                want_shutdown: true,
                metadata_index: 12,
            },
            ControllerRequest::FetchMetadata { from_index: 5, max_wait_ms: 500 },
            ControllerRequest::AlterPartition {
                broker_id: 1,
                topic_id: Uuid::from_u128(9),
                partition: 2,
                leader_epoch: 4,
                partition_epoch: 6,
                new_isr: vec![1, 3],
            },
            ControllerRequest::CreateTopic {
                name: "t".into(),
                partitions: 3,
                replication_factor: 3,
                configs: vec![("min.insync.replicas".into(), "2".into())],
                validate_only: false,
            },
            ControllerRequest::DeleteTopic { name: "t".into() },
            ControllerRequest::CreatePartitions { name: "t".into(), count: 5, validate_only: true },
            ControllerRequest::AlterTopicConfig { name: "t".into(), configs: vec![], validate_only: false },
            ControllerRequest::AllocateProducerIds { broker_id: 2, count: 1000 },
            ControllerRequest::DescribeQuorum,
        ];
        for (i, r) in reqs.into_iter().enumerate() {
            let (cid, back) = ControllerRequest::decode(body(r.encode(i as u32))).unwrap();
            assert_eq!((cid, back), (i as u32, r));
        }
        let resps = vec![
            ControllerResponse::NotController { leader_hint: 2 },
            ControllerResponse::Heartbeat { fenced: false, shutdown_ok: true },
            ControllerResponse::Metadata { applied_index: 9, image: Some(Bytes::from_static(b"img")) },
            ControllerResponse::Metadata { applied_index: 9, image: None },
            ControllerResponse::Done { error_code: 36, message: "exists".into() },
            ControllerResponse::ProducerIds { first: 1000, count: 1000 },
            ControllerResponse::Quorum {
                leader_id: 2,
                leader_epoch: 7,
                high_watermark: 120,
                voters: vec![
                    VoterState {
                        replica_id: 1,
                        log_end_offset: 118,
                        last_fetch_timestamp: 5,
                        last_caught_up_timestamp: 4,
                    },
                    VoterState {
                        replica_id: 2,
                        log_end_offset: 120,
                        last_fetch_timestamp: -1,
                        last_caught_up_timestamp: -1,
                    },
                ],
            },
        ];
        for r in resps {
            assert_eq!(ControllerResponse::decode(body(r.encode(5))).unwrap(), (5, r));
        }
    }

    proptest! {
        // Proves decoding arbitrary bytes never panics.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ControllerRequest::decode(Bytes::from(bytes.clone()));
            let _ = ControllerResponse::decode(Bytes::from(bytes));
        }
    }
}
