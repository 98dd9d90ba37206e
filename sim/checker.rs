//! A Jepsen-style checker (after Jepsen's Kafka queue workload) over one run's history.
//!
//! Violations (the run fails):
//! - **lost**: an acknowledged acks=all write is not at its acknowledged offset in the final
//!   log; an acks=1 write that vanished although no crash followed its acknowledgement.
//! - **inconsistent**: two different values at one offset within one broker life (acks,
//!   consumer reads and the final read all count), or a read after an acks=all ack that shows
//!   another value at the acknowledged offset.
//! - **duplicate**: an idempotent producer's value at two offsets, with no broker restart
//!   while the batch was being retried (producer state is not rebuilt after a restart).
//! - **nonmonotonic** / **skip**: within one consumer session (a consumer reading one
//!   partition in one broker life), offsets must be dense and increasing from where it asked.
//! - **phantom** / **corrupt**: a value nobody wrote, or bytes the client cannot decode.
//! - **log end regressed**: OFFSET_OUT_OF_RANGE within one broker life at an offset already
//!   reached.
//! - **unseen**: an acknowledged acks=all write that no consumer read, although consumers
//!   caught up after the liveness phase.
//! - **liveness**: after faults stop, a partition refuses writes, the final read fails, or
//!   consumers do not catch up, within the bound.
//!
//! Notes (allowed, counted): acks=1 writes lost to a crash; duplicates from the
//! non-idempotent client's retry; duplicates of idempotent batches retried across a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::history::{Entry, Event};
use crate::workload::PROBE_PRODUCER;

/// How many fault events a violation lists.
const NEARBY_FAULTS_MAX: usize = 8;
/// How many violations the report prints in full.
const VIOLATIONS_SHOWN_MAX: usize = 25;

struct Op {
    producer: usize,
    acks: i16,
    idempotent: bool,
    partition: i32,
    values: Vec<String>,
    sent_ms: u64,
    send_incarnation: u64,
    ack: Option<(i64, u64, u64)>, // base offset, at ms, incarnation
    last_reply_ms: u64,
}

/// What the liveness phase found, handed to the checker.
#[derive(Default)]
pub struct Liveness {
    pub probe_failed: Vec<i32>,
    pub final_read_failed: bool,
    pub consumers_caught_up: bool,
}

/// The checker's verdict.
pub struct Report {
    pub violations: Vec<String>,
    pub notes: BTreeMap<&'static str, usize>,
    pub stats: String,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "checker: {}", self.stats);
        for (k, v) in &self.notes {
            let _ = writeln!(s, "  note: {k}: {v}");
        }
        if self.violations.is_empty() {
            let _ = writeln!(s, "checker: OK, no violations");
        } else {
            let _ = writeln!(s, "checker: {} VIOLATIONS", self.violations.len());
            for v in self.violations.iter().take(VIOLATIONS_SHOWN_MAX) {
                let _ = writeln!(s, "  - {v}");
            }
            if self.violations.len() > VIOLATIONS_SHOWN_MAX {
                let _ = writeln!(s, "  ... {} more", self.violations.len() - VIOLATIONS_SHOWN_MAX);
            }
        }
        s
    }

    /// The first violation's kind and a short message, for the mutant table.
    pub fn headline(&self) -> String {
        self.violations.first().map(|v| v.chars().take(160).collect()).unwrap_or_default()
    }
}

struct Faults {
    events: Vec<(u64, String)>,
    crashes: Vec<u64>,
}

impl Faults {
    fn near(&self, from_ms: u64, to_ms: u64) -> String {
        let hits: Vec<String> = self
            .events
            .iter()
            .filter(|(t, _)| *t + 200 >= from_ms && *t <= to_ms + 200)
            // A crash's per-file lines matter when a write was torn; the rest is noise here.
            .filter(|(_, w)| !w.contains(": crash: ") || w.contains("tore"))
            .take(NEARBY_FAULTS_MAX)
            .map(|(t, w)| format!("t={t}ms {w}"))
            .collect();
        if hits.is_empty() {
            "no fault events nearby".into()
        } else {
            format!("faults nearby: [{}]", hits.join("; "))
        }
    }

    fn crash_between(&self, from_ms: u64, to_ms: u64) -> bool {
        self.crashes.iter().any(|&t| t >= from_ms && t <= to_ms)
    }

    fn first_crash_after(&self, t: u64) -> Option<u64> {
        self.crashes.iter().copied().find(|&c| c >= t)
    }
}

/// Checks one history. `end_ms` is when the history ended.
pub fn check(entries: &[Entry], live: &Liveness, end_ms: u64) -> Report {
    let mut violations = Vec::new();
    let mut notes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut ops: BTreeMap<u64, Op> = BTreeMap::new();
    let mut faults = Faults { events: Vec::new(), crashes: Vec::new() };
    let mut finals: BTreeMap<i32, BTreeMap<i64, String>> = BTreeMap::new();
    let mut final_incarnation = 0;
    for e in entries {
        match &e.event {
            Event::Send { op, producer, acks, idempotent, partition, values, incarnation } => {
                ops.insert(
                    *op,
                    Op {
                        producer: *producer,
                        acks: *acks,
                        idempotent: *idempotent,
                        partition: *partition,
                        values: values.clone(),
                        sent_ms: e.at_ms,
                        send_incarnation: *incarnation,
                        ack: None,
                        last_reply_ms: e.at_ms,
                    },
                );
            }
            Event::Ack { op, base_offset, incarnation } => {
                if let Some(o) = ops.get_mut(op) {
                    o.ack = Some((*base_offset, e.at_ms, *incarnation));
                    o.last_reply_ms = e.at_ms;
                }
            }
            Event::Fail { op, .. } => {
                if let Some(o) = ops.get_mut(op) {
                    o.last_reply_ms = e.at_ms;
                }
            }
            Event::Crash { broker, incarnation, why } => {
                faults.crashes.push(e.at_ms);
                faults.events.push((e.at_ms, format!("crash broker-{broker} ({why}) -> life {incarnation}")));
                final_incarnation = *incarnation;
            }
            Event::DiskFault { at_ms, broker, what } => {
                faults.events.push((*at_ms, format!("disk of broker-{broker}: {what}")))
            }
            Event::Fault { what } => faults.events.push((e.at_ms, what.clone())),
            Event::Final { partition, records, .. } => {
                finals.insert(*partition, records.iter().cloned().collect());
            }
            _ => {}
        }
    }
    faults.events.sort_by_key(|(t, _)| *t);

    // Every value ever written, to find phantoms.
    let mut written: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, o) in &ops {
        for v in &o.values {
            written.insert(v.as_str(), *id);
        }
    }

    // Observations of (partition, offset) per broker life: value and where it was seen.
    let mut seen: BTreeMap<(i32, i64, u64), BTreeMap<String, String>> = BTreeMap::new();
    let mut note_seen = |p: i32, off: i64, inc: u64, v: &str, src: String| {
        seen.entry((p, off, inc)).or_default().entry(v.to_string()).or_insert(src);
    };
    for o in ops.values() {
        if let Some((base, at, inc)) = o.ack {
            if inc == o.send_incarnation && base >= 0 {
                for (j, v) in o.values.iter().enumerate() {
                    note_seen(
                        o.partition,
                        base + j as i64,
                        inc,
                        v,
                        format!("ack to producer-{} at t={at}ms", o.producer),
                    );
                }
            }
        }
    }
    let mut read_by_consumers: BTreeSet<&str> = BTreeSet::new();
    let mut sessions: BTreeMap<(usize, i32, u64), i64> = BTreeMap::new();
    let mut reads = 0usize;
    for e in entries {
        match &e.event {
            Event::Read { consumer, partition, session, from, records, incarnation } => {
                reads += 1;
                let key = (*consumer, *partition, *session);
                let mut expect = sessions.get(&key).map(|l| l + 1).unwrap_or(*from);
                if expect != *from {
                    violations.push(format!(
                        "harness: consumer-{consumer} session {session} asked for {from} after reading up to {}",
                        expect - 1
                    ));
                    expect = *from;
                }
                for (off, v) in records {
                    if *off < expect {
                        violations.push(format!(
                            "NONMONOTONIC: consumer-{consumer} read {partition}/{off} = {v} at t={}ms after offset {} in the same session; {}",
                            e.at_ms,
                            expect - 1,
                            faults.near(e.at_ms.saturating_sub(2000), e.at_ms)
                        ));
                    } else if *off > expect {
                        violations.push(format!(
                            "SKIP: consumer-{consumer} reading {partition} from {from} skipped offsets {expect}..{} (next record {off} = {v}) at t={}ms; {}",
                            off - 1,
                            e.at_ms,
                            faults.near(e.at_ms.saturating_sub(2000), e.at_ms)
                        ));
                    }
                    expect = expect.max(off + 1);
                    note_seen(
                        *partition,
                        *off,
                        *incarnation,
                        v,
                        format!("read by consumer-{consumer} at t={}ms", e.at_ms),
                    );
                    if !written.contains_key(v.as_str()) {
                        violations.push(format!(
                            "PHANTOM: consumer-{consumer} read {partition}/{off} = {v:?}, a value nobody wrote, at t={}ms; {}",
                            e.at_ms,
                            faults.near(e.at_ms.saturating_sub(3000), e.at_ms)
                        ));
                    }
                    read_by_consumers.insert(v.as_str());
                }
                sessions.insert(key, expect - 1);
            }
            Event::ReadError { consumer, partition, session, from, error, .. } => {
                if error.contains("OFFSET_OUT_OF_RANGE") {
                    if sessions.get(&(*consumer, *partition, *session)).is_some_and(|last| *from <= last + 1) {
                        violations.push(format!(
                            "LOG END REGRESSED: consumer-{consumer} got OFFSET_OUT_OF_RANGE at {partition}/{from} at t={}ms, an offset it reached in the same broker life; {}",
                            e.at_ms,
                            faults.near(e.at_ms.saturating_sub(3000), e.at_ms)
                        ));
                    }
                } else if error.contains("protocol error") {
                    violations.push(format!(
                        "CORRUPT: consumer-{consumer} fetching {partition}/{from} at t={}ms: {error}; {}",
                        e.at_ms,
                        faults.near(e.at_ms.saturating_sub(3000), e.at_ms)
                    ));
                }
            }
            _ => {}
        }
    }
    for (p, log) in &finals {
        for (off, v) in log {
            note_seen(*p, *off, final_incarnation, v, "final read".into());
            if !written.contains_key(v.as_str()) {
                violations.push(format!(
                    "PHANTOM: final log has {p}/{off} = {v:?}, a value nobody wrote; {}",
                    faults.near(0, end_ms)
                ));
            }
        }
    }
    for ((p, off, inc), values) in &seen {
        if values.len() > 1 {
            let list: Vec<String> = values.iter().map(|(v, src)| format!("{v} ({src})")).collect();
            violations.push(format!("INCONSISTENT: offset {p}/{off} held {} in broker life {inc}", list.join(" and ")));
        }
    }

    // Acknowledged writes against the final log and later reads.
    let mut acked_all = 0usize;
    let mut acked_one = 0usize;
    for (id, o) in &ops {
        let Some((base, ack_ms, _)) = o.ack else { continue };
        if base < 0 {
            continue;
        }
        let log = finals.get(&o.partition);
        for (j, v) in o.values.iter().enumerate() {
            let off = base + j as i64;
            let got = log.and_then(|l| l.get(&off));
            if o.acks == -1 {
                acked_all += 1;
            } else {
                acked_one += 1;
            }
            if got == Some(v) || log.is_none() {
                continue;
            }
            let found = match got {
                Some(w) => format!("the final log has {w} there"),
                None => "the final log has no record there".into(),
            };
            if o.acks == -1 {
                let until = faults.first_crash_after(ack_ms).unwrap_or(end_ms);
                violations.push(format!(
                    "LOST: acks=all write {v} (op {id}, producer-{}) acknowledged at {}/{off} at t={ack_ms}ms; {found}; {}",
                    o.producer,
                    o.partition,
                    faults.near(o.sent_ms, until)
                ));
            } else if faults.crash_between(o.sent_ms, end_ms) {
                // (From the send: an ack can arrive just after the crash that loses it.)
                *notes.entry("acks=1 writes lost to a crash (allowed)").or_default() += 1;
            } else {
                violations.push(format!(
                    "LOST: acks=1 write {v} acknowledged at {}/{off} at t={ack_ms}ms vanished with no crash after it; {found}; {}",
                    o.partition,
                    faults.near(o.sent_ms, end_ms)
                ));
            }
        }
    }
    // Reads after an acks=all ack must show the acknowledged value (any broker life).
    let mut acked_at: BTreeMap<(i32, i64), (&str, u64)> = BTreeMap::new();
    for o in ops.values().filter(|o| o.acks == -1) {
        if let Some((base, ack_ms, _)) = o.ack.filter(|a| a.0 >= 0) {
            for (j, v) in o.values.iter().enumerate() {
                acked_at.insert((o.partition, base + j as i64), (v.as_str(), ack_ms));
            }
        }
    }
    for e in entries {
        if let Event::Read { consumer, partition, records, .. } = &e.event {
            for (off, v) in records {
                if let Some(&(want, ack_ms)) = acked_at.get(&(*partition, *off)) {
                    if ack_ms < e.at_ms && want != v {
                        violations.push(format!(
                            "INCONSISTENT: consumer-{consumer} read {partition}/{off} = {v} at t={}ms, after {want} was acknowledged there with acks=all at t={ack_ms}ms; {}",
                            e.at_ms,
                            faults.near(ack_ms, e.at_ms)
                        ));
                    }
                }
            }
        }
    }

    // Duplicates in the final log.
    let mut positions: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
    for (p, log) in &finals {
        for (off, v) in log {
            positions.entry(v.as_str()).or_default().push((*p, *off));
        }
    }
    for (v, at) in &positions {
        if at.len() < 2 {
            continue;
        }
        let Some(o) = written.get(v).and_then(|id| ops.get(id)) else { continue };
        if !o.idempotent {
            *notes.entry("duplicates from the non-idempotent client's retry (allowed)").or_default() += 1;
        } else if faults.crash_between(o.sent_ms, o.last_reply_ms) {
            *notes.entry("idempotent duplicates across a broker restart (allowed: state not rebuilt)").or_default() +=
                1;
        } else {
            violations.push(format!(
                "DUPLICATE: idempotent producer-{}'s {v} is at {at:?} in the final log (sent t={}ms, last reply t={}ms); {}",
                o.producer,
                o.sent_ms,
                o.last_reply_ms,
                faults.near(o.sent_ms, o.last_reply_ms)
            ));
        }
    }

    // Unseen: acknowledged acks=all writes no consumer read, although consumers caught up.
    if live.consumers_caught_up {
        for (id, o) in &ops {
            if o.acks != -1 || o.producer == PROBE_PRODUCER || o.ack.is_none_or(|(b, _, _)| b < 0) {
                continue;
            }
            for v in &o.values {
                if !read_by_consumers.contains(v.as_str()) {
                    violations.push(format!(
                        "UNSEEN: acks=all write {v} (op {id}) acknowledged at {}/{} was never read by a consumer",
                        o.partition,
                        o.ack.map(|a| a.0).unwrap_or(-1)
                    ));
                }
            }
        }
    }

    // Liveness.
    for p in &live.probe_failed {
        violations.push(format!("LIVENESS: partition {p} did not acknowledge an acks=all write after faults stopped"));
    }
    if live.final_read_failed {
        violations.push("LIVENESS: the final read did not complete after faults stopped".into());
    }
    if !live.consumers_caught_up {
        violations.push("LIVENESS: consumers did not catch up with the high watermark after faults stopped".into());
    }

    let stats = format!(
        "{} ops, {acked_all} acks=all records acknowledged, {acked_one} acks=1, {reads} reads, {} crashes, {} fault events",
        ops.len(),
        faults.crashes.len(),
        faults.events.len()
    );
    Report { violations, notes, stats }
}
