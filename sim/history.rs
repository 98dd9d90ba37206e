//! The run's history: every client operation and fault, in the order the simulation produced
//! them, stamped with simulated time, folded into a trace hash as it is recorded.
//!
//! The hash is the determinism witness: the same seed must print the same hash in two
//! separate processes. It uses `DefaultHasher::new()` (SipHash with fixed zero keys), which
//! is stable within one build.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

use madsim::time::Instant;

/// What happened. Some fields are only read through `Debug` (the trace hash and logs).
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub enum Event {
    /// A producer sent a batch (`op` is unique per batch; retries of one batch share it).
    Send {
        op: u64,
        producer: usize,
        acks: i16,
        idempotent: bool,
        partition: i32,
        values: Vec<String>,
        incarnation: u64,
    },
    /// The broker acknowledged the batch at `base_offset`.
    Ack { op: u64, base_offset: i64, incarnation: u64 },
    /// The send failed (the batch may or may not have been written).
    Fail { op: u64, error: String },
    /// A consumer fetched `records` (offset, value) starting at `from`.
    Read { consumer: usize, partition: i32, session: u64, from: i64, records: Vec<(i64, String)>, incarnation: u64 },
    /// A fetch returned an error (a protocol error here means the broker served bad bytes).
    ReadError { consumer: usize, partition: i32, session: u64, from: i64, error: String, incarnation: u64 },
    /// A fault action (clog, unclog, restart) or a harness note.
    Fault { what: String },
    /// A broker lost power; `incarnation` is the broker life that starts at its restart.
    Crash { broker: usize, incarnation: u64, why: String },
    /// A fault the simulated disk injected, at `at_ms` (it is recorded a little later).
    DiskFault { at_ms: u64, broker: usize, what: String },
    /// The phase changed.
    Phase { name: String },
    /// A subscribing consumer joined generation `generation` of the group and was assigned
    /// `partitions`; its reads in this generation start new sessions.
    Join { consumer: usize, member: String, generation: i32, partitions: Vec<i32>, incarnation: u64 },
    /// A subscribing consumer sent an offset commit (`op` is unique per commit).
    CommitSend { op: u64, consumer: usize, generation: i32, offsets: Vec<(i32, i64)> },
    /// The commit was acknowledged for every partition.
    CommitAck { op: u64 },
    /// The commit failed (it may or may not have been stored).
    CommitFail { op: u64, error: String },
    /// A subscribing consumer read the group's committed offsets (-1: none); it asked at
    /// `sent_ms`.
    Committed { consumer: usize, sent_ms: u64, offsets: Vec<(i32, i64)> },
    /// The final read of a partition after the liveness phase.
    Final { partition: i32, records: Vec<(i64, String)>, high_watermark: i64 },
}

/// One event with its simulated time.
#[derive(Debug, Clone)]
pub struct Entry {
    pub at_ms: u64,
    pub event: Event,
}

struct Inner {
    start: Instant,
    entries: Vec<Entry>,
    hasher: DefaultHasher,
}

/// A shared, append-only history.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
}

impl History {
    pub fn new() -> History {
        History {
            inner: Arc::new(Mutex::new(Inner {
                start: Instant::now(),
                entries: Vec::new(),
                hasher: DefaultHasher::new(),
            })),
        }
    }

    /// Simulated ms since the history started.
    pub fn now_ms(&self) -> u64 {
        self.inner.lock().unwrap().start.elapsed().as_millis() as u64
    }

    pub fn record(&self, event: Event) {
        let mut g = self.inner.lock().unwrap();
        let at_ms = g.start.elapsed().as_millis() as u64;
        let line = format!("{at_ms} {event:?}");
        g.hasher.write(line.as_bytes());
        g.hasher.write_u8(b'\n');
        tracing::debug!(target: "runnel_sim::history", "{line}");
        g.entries.push(Entry { at_ms, event });
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.inner.lock().unwrap().entries.clone()
    }

    /// The hash of every event so far, in order.
    pub fn trace_hash(&self) -> u64 {
        self.inner.lock().unwrap().hasher.clone().finish()
    }
}
