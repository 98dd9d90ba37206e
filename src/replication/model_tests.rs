//! Model-based property test of the replication cores: three replicas whose logs are vectors of
//! record epochs (offset = index), driven through random appends, flushes, follower fetches (by
//! OffsetForLeaderEpoch or by Fetch `diverging_epoch`), clock ticks that shrink the ISR,
//! controller answers, crashes that lose unsynced suffixes (keeping a random torn prefix), and
//! leader elections chosen only from the controller's ISR with epoch bumps. The model plays the
//! shell and the controller; all decisions are the cores'.
//!
//! Invariants checked after every step:
//! - every offset below the highest high watermark ever published is durable and identical on
//!   every ISR member (hence on any leader elected later), and matches what was acknowledged;
//! - the logs of followers that finished truncation are prefixes of the leader's log;
//! - the high watermark never exceeds any ISR member's durable log end offset;
//! - a follower never truncates below its own high watermark.
//!
//! A final healing phase (no faults) checks liveness: all replicas converge to the leader's log,
//! rejoin the ISR, and the high watermark reaches the log end offset.

use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::runtime::{Disk, MemDisk};

const REPLICA_COUNT: usize = 3;
const MIN_INSYNC_REPLICAS: i32 = 2;
const LAG_MS: i64 = 1_000;
const HEAL_ROUNDS_MAX: usize = 60;
/// Random cases per run; `PROPTEST_CASES` overrides it for a longer sweep.
const MODEL_CASES_DEFAULT: u32 = 512;

fn model_cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(MODEL_CASES_DEFAULT)
}

#[derive(Debug, Clone)]
enum Op {
    Append { count: usize, acks_all: bool },
    Flush(usize),
    Fetch { replica: usize, max_records: usize, offset_for_leader_epoch: bool },
    Tick(i64),
    ControllerAnswer { accept: bool },
    Crash { replica: usize, keep_unsynced: usize },
    Elect(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..REPLICA_COUNT;
    prop_oneof![
        4 => (1usize..4, any::<bool>()).prop_map(|(count, acks_all)| Op::Append { count, acks_all }),
        3 => r.clone().prop_map(Op::Flush),
        6 => (r.clone(), 1usize..6, any::<bool>())
            .prop_map(|(replica, max_records, o)| Op::Fetch { replica, max_records, offset_for_leader_epoch: o }),
        2 => (100i64..1_500).prop_map(Op::Tick),
        2 => prop::bool::weighted(0.8).prop_map(|accept| Op::ControllerAnswer { accept }),
        1 => (r, 0usize..4).prop_map(|(replica, keep_unsynced)| Op::Crash { replica, keep_unsynced }),
        1 => (0usize..REPLICA_COUNT).prop_map(Op::Elect),
    ]
}

struct Replica {
    id: i32,
    /// `log[o]` is the epoch of the record at offset `o`.
    log: Vec<i32>,
    /// `log[..durable]` is fsynced.
    durable: usize,
    disk: MemDisk,
    epochs: LeaderEpochCache,
    follower: Option<FollowerState>,
    /// The last high watermark this replica knew (a checkpoint that survives crashes).
    hw_seen: i64,
}

struct Cluster {
    replicas: Vec<Replica>,
    /// Index of the leader, `None` while the partition is offline.
    leader: Option<usize>,
    state: Option<LeaderState>,
    leader_epoch: i32,
    partition_epoch: i32,
    /// The controller's committed ISR.
    isr: Vec<i32>,
    now_ms: i64,
    /// Epochs of offsets below `max_hw`: what was committed.
    committed: Vec<i32>,
    max_hw: i64,
    /// Parked acks=all produces: (required offset, epoch of their records).
    pending_acks: Vec<(i64, i32)>,
    /// Acknowledged acks=all records: (offset, epoch).
    acked: Vec<(i64, i32)>,
}

fn dir() -> PathBuf {
    PathBuf::from("/partition")
}

impl Cluster {
    fn new() -> Cluster {
        let replicas = (0..REPLICA_COUNT)
            .map(|i| {
                let disk = MemDisk::new();
                disk.create_dir_all(&dir()).unwrap();
                let epochs = LeaderEpochCache::open(Arc::new(disk.clone()), dir()).unwrap().0;
                Replica { id: i as i32 + 1, log: vec![], durable: 0, disk, epochs, follower: None, hw_seen: 0 }
            })
            .collect();
        let mut c = Cluster {
            replicas,
            leader: None,
            state: None,
            leader_epoch: 0,
            partition_epoch: 0,
            isr: (1..=REPLICA_COUNT as i32).collect(),
            now_ms: 0,
            committed: vec![],
            max_hw: 0,
            pending_acks: vec![],
            acked: vec![],
        };
        c.elect(0);
        c
    }

    fn idx(id: i32) -> usize {
        (id - 1) as usize
    }

    /// The controller elects `isr[k % len]` at a new epoch; everyone else follows it.
    fn elect(&mut self, k: usize) {
        let id = self.isr[k % self.isr.len()];
        let l = Self::idx(id);
        self.leader_epoch += 1;
        self.partition_epoch += 1;
        self.pending_acks.clear();
        let r = &mut self.replicas[l];
        if let Some(f) = r.follower.take() {
            r.hw_seen = r.hw_seen.max(f.high_watermark());
        }
        let init = LeaderInit {
            leader_id: id,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            replicas: (1..=REPLICA_COUNT as i32).collect(),
            isr: self.isr.clone(),
            log_end_offset: r.log.len() as i64,
            durable_log_end_offset: r.durable as i64,
            high_watermark: r.hw_seen,
            now_ms: self.now_ms,
        };
        self.state = Some(LeaderState::new(init, &mut r.epochs).expect("become leader"));
        self.leader = Some(l);
        for i in 0..REPLICA_COUNT {
            if i != l {
                self.start_following(i);
            }
        }
    }

    fn start_following(&mut self, i: usize) {
        let leader_id = self.replicas[self.leader.expect("leader")].id;
        let r = &mut self.replicas[i];
        if let Some(f) = r.follower.take() {
            r.hw_seen = r.hw_seen.max(f.high_watermark());
        }
        let len = r.log.len() as i64;
        r.follower = Some(
            FollowerState::new(leader_id, self.leader_epoch, &r.epochs, 0, len, r.durable as i64, r.hw_seen.min(len))
                .expect("follow"),
        );
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append { count, acks_all } => self.append(count, acks_all),
            Op::Flush(i) => self.flush(i),
            Op::Fetch { replica, max_records, offset_for_leader_epoch } => {
                self.fetch(replica, max_records, offset_for_leader_epoch)
            }
            Op::Tick(ms) => {
                self.now_ms += ms;
                if let Some(s) = self.state.as_mut() {
                    if let Some(proposed) = s.maybe_shrink_isr(self.now_ms, LAG_MS) {
                        assert!(proposed.len() < s.isr().len());
                    }
                }
            }
            Op::ControllerAnswer { accept } => self.controller_answer(accept),
            Op::Crash { replica, keep_unsynced } => self.crash(replica, keep_unsynced),
            Op::Elect(k) => self.elect(k),
        }
        self.observe_high_watermark();
        self.check_invariants();
    }

    fn append(&mut self, count: usize, acks_all: bool) {
        let (Some(l), Some(s)) = (self.leader, self.state.as_mut()) else { return };
        if acks_all && s.acks_all_admit(MIN_INSYNC_REPLICAS) == AckCheck::NotEnoughReplicas {
            assert!((s.isr().len() as i32) < MIN_INSYNC_REPLICAS);
            return;
        }
        let r = &mut self.replicas[l];
        r.log.extend(std::iter::repeat_n(self.leader_epoch, count));
        s.on_leader_append(r.log.len() as i64);
        if acks_all {
            self.pending_acks.push((r.log.len() as i64, self.leader_epoch));
        }
    }

    fn flush(&mut self, i: usize) {
        let r = &mut self.replicas[i];
        r.durable = r.log.len();
        if self.leader == Some(i) {
            self.state.as_mut().unwrap().on_leader_flushed(r.durable as i64);
        } else if let Some(f) = r.follower.as_mut() {
            f.on_flushed(r.durable as i64);
        }
    }

    fn fetch(&mut self, i: usize, max_records: usize, offset_for_leader_epoch: bool) {
        let Some(l) = self.leader else { return };
        if i == l {
            return;
        }
        let leader_log = self.replicas[l].log.clone();
        let leader_leo = leader_log.len() as i64;
        let f = self.replicas[i].follower.clone().expect("follower state");
        if f.phase() == FollowerPhase::Truncating && offset_for_leader_epoch {
            let epoch = f.offset_for_leader_epoch_request(&self.replicas[i].epochs).expect("an epoch to validate");
            let answer = self.replicas[l].epochs.end_offset_for(epoch, leader_leo);
            let t = f.on_epoch_end_offset(&self.replicas[i].epochs, answer);
            self.truncate(i, t);
            return;
        }
        let req = f.fetch_request(&self.replicas[i].epochs);
        let fetch = FollowerFetch {
            replica_id: self.replicas[i].id,
            fetch_offset: req.fetch_offset,
            durable_log_end_offset: req.durable_log_end_offset,
            last_fetched_epoch: (req.last_fetched_epoch >= 0).then_some(req.last_fetched_epoch),
            current_leader_epoch: Some(req.current_leader_epoch),
        };
        let s = self.state.as_mut().unwrap();
        let effect =
            s.on_follower_fetch(&fetch, &self.replicas[l].epochs, leader_leo, self.now_ms).expect("valid fetch");
        if let Some(diverging) = effect.diverging_epoch {
            assert_eq!(effect, FetchEffect { diverging_epoch: Some(diverging), ..FetchEffect::default() });
            let t = f.on_epoch_end_offset(&self.replicas[i].epochs, diverging);
            self.truncate(i, t);
            return;
        }
        if let Some(proposed) = &effect.isr_expand {
            assert!(proposed.contains(&fetch.replica_id));
        }
        let hw = s.high_watermark();
        let from = req.fetch_offset as usize;
        let to = leader_log.len().min(from + max_records);
        let r = &mut self.replicas[i];
        assert_eq!(r.log[..], leader_log[..from], "validated follower log is a prefix of the leader's");
        for (o, &epoch) in leader_log.iter().enumerate().take(to).skip(from) {
            if r.epochs.latest_epoch().is_none_or(|e| epoch > e) {
                r.epochs.assign(epoch, o as i64).unwrap();
            }
            r.log.push(epoch);
        }
        let f = r.follower.as_mut().unwrap();
        let follower_hw = f.on_fetch_response(hw, r.log.len() as i64);
        assert!(follower_hw <= hw.max(r.hw_seen) && follower_hw <= r.log.len() as i64);
    }

    fn truncate(&mut self, i: usize, t: Truncation) {
        let r = &mut self.replicas[i];
        let f = r.follower.as_mut().unwrap();
        if let Some(offset) = t.offset() {
            let new_len = (offset as usize).min(r.log.len());
            assert!(
                new_len as i64 >= f.high_watermark(),
                "follower {} truncates to {new_len} below its HW {}",
                r.id,
                f.high_watermark()
            );
            if self.isr.contains(&r.id) {
                assert!(
                    new_len as i64 >= self.max_hw,
                    "ISR member {} truncates to {new_len} below HW {}",
                    r.id,
                    self.max_hw
                );
            }
            r.log.truncate(new_len);
            r.durable = r.durable.min(new_len);
            f.truncated(&mut r.epochs, t, new_len as i64).unwrap();
        }
    }

    fn controller_answer(&mut self, accept: bool) {
        let Some(s) = self.state.as_mut() else { return };
        let Some(proposed) = s.pending_isr().map(<[i32]>::to_vec) else { return };
        if accept {
            self.partition_epoch += 1;
            self.isr = proposed.clone();
            s.apply_isr(proposed, self.partition_epoch).unwrap();
        } else {
            s.abort_pending_isr();
        }
    }

    fn crash(&mut self, i: usize, keep_unsynced: usize) {
        let r = &mut self.replicas[i];
        let keep = keep_unsynced.min(r.log.len() - r.durable);
        r.log.truncate(r.durable + keep);
        r.disk.crash(|_, _| 0);
        let (mut epochs, corrupt) = LeaderEpochCache::open(Arc::new(r.disk.clone()), dir()).unwrap();
        assert!(corrupt.is_none());
        assert_eq!(epochs.entries(), r.epochs.entries(), "epoch cache changes are durable");
        epochs.truncate_from_end(r.log.len() as i64).unwrap();
        r.epochs = epochs;
        r.hw_seen = r.hw_seen.min(r.log.len() as i64);
        r.follower = None;
        if self.leader == Some(i) {
            self.leader = None;
            self.state = None;
            self.pending_acks.clear();
        } else if self.leader.is_some() {
            self.start_following(i);
        }
    }

    /// Records newly committed offsets and completes parked acks=all produces.
    fn observe_high_watermark(&mut self) {
        let (Some(l), Some(s)) = (self.leader, self.state.as_ref()) else { return };
        let hw = s.high_watermark();
        let log = &self.replicas[l].log;
        assert!(hw as usize <= log.len());
        if hw > self.max_hw {
            self.committed.extend_from_slice(&log[self.max_hw as usize..hw as usize]);
            self.max_hw = hw;
        }
        self.replicas[l].hw_seen = self.replicas[l].hw_seen.max(hw);
        let acked = &mut self.acked;
        self.pending_acks.retain(|&(required, epoch)| match s.acks_all_ready(required, MIN_INSYNC_REPLICAS) {
            AckCheck::Done => {
                acked.push((required - 1, epoch));
                false
            }
            AckCheck::Wait => true,
            AckCheck::NotEnoughReplicasAfterAppend | AckCheck::NotEnoughReplicas => false,
        });
    }

    fn check_invariants(&self) {
        let hw_max = self.max_hw as usize;
        for &id in &self.isr {
            let r = &self.replicas[Self::idx(id)];
            assert!(r.durable >= hw_max, "ISR member {id} durable {} below committed {hw_max}", r.durable);
            assert_eq!(r.log[..hw_max], self.committed[..], "ISR member {id} differs below the HW");
        }
        for &(offset, epoch) in &self.acked {
            assert!(offset < self.max_hw, "acknowledged offset {offset} not committed");
            assert_eq!(self.committed[offset as usize], epoch, "acknowledged record at {offset} replaced");
        }
        let (Some(l), Some(s)) = (self.leader, self.state.as_ref()) else { return };
        let leader_log = &self.replicas[l].log;
        assert_eq!(s.log_end_offset(), leader_log.len() as i64);
        for &id in s.isr() {
            let durable = self.replicas[Self::idx(id)].durable as i64;
            assert!(s.high_watermark() <= durable, "HW {} above ISR member {id} durable {durable}", s.high_watermark());
        }
        assert_eq!(s.isr(), &self.isr[..]);
        for (i, r) in self.replicas.iter().enumerate() {
            if i == l {
                continue;
            }
            let f = r.follower.as_ref().unwrap();
            if f.phase() == FollowerPhase::Fetching {
                assert!(
                    r.log.len() <= leader_log.len() && r.log[..] == leader_log[..r.log.len()],
                    "follower {} not a prefix",
                    r.id
                );
            }
            assert_eq!(f.fetch_offset(), r.log.len() as i64);
        }
    }

    /// No more faults: elect if offline, then replicate until everything converges.
    fn heal(&mut self) {
        if self.leader.is_none() {
            self.apply(&Op::Elect(0));
        }
        for _ in 0..HEAL_ROUNDS_MAX {
            for i in 0..REPLICA_COUNT {
                self.apply(&Op::Fetch { replica: i, max_records: 1_000, offset_for_leader_epoch: i % 2 == 0 });
                self.apply(&Op::Flush(i));
                self.apply(&Op::ControllerAnswer { accept: true });
            }
            self.apply(&Op::Tick(10));
        }
        let l = self.leader.unwrap();
        let s = self.state.as_ref().unwrap();
        let leader_log = &self.replicas[l].log;
        assert_eq!(s.isr().len(), REPLICA_COUNT, "all replicas back in the ISR");
        assert_eq!(s.high_watermark(), leader_log.len() as i64, "HW reached the LEO");
        for r in &self.replicas {
            assert_eq!(&r.log, leader_log, "replica {} converged", r.id);
        }
        assert!(self.pending_acks.is_empty(), "every parked acks=all completed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: model_cases(), ..ProptestConfig::default() })]

    // Proves the replication safety invariants (module docs) under random faults and elections
    // from the ISR, including a sole ISR survivor that lost unsynced data, and liveness after.
    #[test]
    fn replication_model_is_safe_and_converges(ops in proptest::collection::vec(op(), 1..250)) {
        let mut c = Cluster::new();
        for op in &ops {
            c.apply(op);
        }
        c.heal();
    }
}

// Proves the KIP-966 scenario directly: the ISR shrinks to the leader alone, which
// acknowledges records once *it* fsynced them, crashes losing an unsynced tail, and is
// re-elected; the other replicas (which hold more, unacknowledged data) truncate to it, and no
// acknowledged record is lost. Under Kafka's rule (count in-memory LEO) the ack would have come
// before the fsync and been lost.
#[test]
fn sole_isr_survivor_with_lost_tail_keeps_acknowledged_records() {
    let mut c = Cluster::new();
    c.apply(&Op::Append { count: 3, acks_all: true });
    for i in 0..REPLICA_COUNT {
        c.apply(&Op::Flush(i));
        c.apply(&Op::Fetch { replica: i, max_records: 10, offset_for_leader_epoch: false });
        c.apply(&Op::Flush(i));
        c.apply(&Op::Fetch { replica: i, max_records: 10, offset_for_leader_epoch: false });
    }
    assert_eq!(c.acked.len(), 1);
    // acks=1 appends; the followers stop fetching and the leader is left alone in the ISR.
    c.apply(&Op::Append { count: 2, acks_all: false });
    c.apply(&Op::Tick(LAG_MS + 1));
    c.apply(&Op::ControllerAnswer { accept: true });
    assert_eq!(c.isr, vec![1]);
    // Follower 2 fetches the tail, which the leader never fsyncs.
    c.apply(&Op::Fetch { replica: 1, max_records: 10, offset_for_leader_epoch: false });
    c.apply(&Op::Flush(1));
    assert_eq!(c.state.as_ref().unwrap().high_watermark(), 3, "HW waits for the leader's own fsync");
    c.apply(&Op::Crash { replica: 0, keep_unsynced: 0 });
    c.apply(&Op::Elect(0));
    assert_eq!(c.leader, Some(0));
    c.heal();
    assert_eq!(c.replicas[1].log, vec![1, 1, 1], "follower truncated the unacknowledged tail");
}
