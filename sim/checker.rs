//! A Jepsen-style checker (after Jepsen's Kafka queue workload) over one run's history.
//!
//! Violations (the run fails):
//! - **lost**: an acknowledged acks=all write is not at its acknowledged offset in the final
//!   log; an acks=1 write that vanished although no crash followed its acknowledgement.
//! - **inconsistent**: two different values at one offset within one broker life (acks,
//!   consumer reads and the final read all count), or a read after an acks=all ack that shows
//!   another value at the acknowledged offset.
//! - **duplicate**: an idempotent producer's value at two offsets (also across restarts and
//!   leader changes: producer sequences are rebuilt from the log).
//! - **nonmonotonic** / **skip**: within one consumer session (a consumer reading one
//!   partition in one broker life), offsets must be dense and increasing from where it asked.
//! - **phantom** / **corrupt**: a value nobody wrote, or bytes the client cannot decode.
//! - **log end regressed**: OFFSET_OUT_OF_RANGE within one broker life at an offset already
//!   reached.
//! - **unseen**: an acknowledged acks=all write that no consumer by assign read, although they
//!   caught up after the liveness phase; the same for the subscribing consumers (a consumer
//!   group), except for a record acknowledged after a crash that followed a group read at or
//!   past its offset (the group committed past a tail the crash replaced: on a single node,
//!   whose consumers may read unsynced records, that is expected).
//! - **commit lost**: a read of the group's committed offsets returned something other than
//!   the last acknowledged commit for a partition although no other commit of it was in flight
//!   (commits are fsynced before they are acknowledged, so a crash must not undo them).
//!
//! Subscribing consumers (Jepsen's subscribe mode): each partition a consumer is assigned in
//! one generation is its own session, so re-reading after a rebalance (at-least-once) is
//! allowed, while within one assignment generation offsets must be dense and monotonic.
//! - **liveness**: after faults stop, a partition refuses writes, the final read fails, or
//!   consumers do not catch up, within the bound.
//!
//! Notes (allowed, counted): acks=1 writes lost to a crash; duplicates from the
//! non-idempotent client's retry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::history::{Entry, Event};
use crate::workload::{GROUP_CONSUMER_BASE, PROBE_PRODUCER};

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
    /// `None` without subscribing consumers; else whether the group read every partition to
    /// its final high watermark.
    pub group_caught_up: Option<bool>,
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
    let mut read_by_group: BTreeSet<&str> = BTreeSet::new();
    // Per partition, when a subscribing consumer read up to which offset (for the unseen
    // excuse).
    let mut group_reads: BTreeMap<i32, Vec<(u64, i64)>> = BTreeMap::new();
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
                    if *consumer >= GROUP_CONSUMER_BASE {
                        read_by_group.insert(v.as_str());
                        group_reads.entry(*partition).or_default().push((e.at_ms, *off));
                    } else {
                        read_by_consumers.insert(v.as_str());
                    }
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
        } else {
            // Producer sequences are rebuilt from the log at restart and kept by followers, so
            // a retry is recognised across a crash or a leader change too.
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

    // Unseen by the group.
    if live.group_caught_up == Some(true) {
        for (id, o) in &ops {
            if o.acks != -1 || o.producer == PROBE_PRODUCER {
                continue;
            }
            let Some((base, ack_ms, _)) = o.ack.filter(|a| a.0 >= 0) else { continue };
            for (j, v) in o.values.iter().enumerate() {
                let off = base + j as i64;
                if read_by_group.contains(v.as_str()) {
                    continue;
                }
                let excused = group_reads.get(&o.partition).is_some_and(|reads| {
                    reads.iter().any(|&(read_ms, read_off)| {
                        read_off >= off && faults.crashes.iter().any(|&c| c > read_ms && c < ack_ms)
                    })
                });
                if excused {
                    *notes.entry("acks=all records the group skipped after a crash replaced a tail it had committed past (allowed)").or_default() += 1;
                } else {
                    violations.push(format!(
                        "UNSEEN: acks=all write {v} (op {id}) acknowledged at {}/{off} at t={ack_ms}ms was never read by the consumer group; {}",
                        o.partition,
                        faults.near(o.sent_ms, end_ms)
                    ));
                }
            }
        }
    }

    // Committed offsets: a read must return the last acknowledged commit unless another commit
    // of that partition was in flight.
    let (commit_violations, commit_reads_judged) = check_commits(entries);
    violations.extend(commit_violations);

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
    if live.group_caught_up == Some(false) {
        violations.push(
            "LIVENESS: the consumer group did not read every partition to its high watermark after faults stopped"
                .into(),
        );
    }

    let joins = entries.iter().filter(|e| matches!(e.event, Event::Join { .. })).count();
    let stats = format!(
        "{} ops, {acked_all} acks=all records acknowledged, {acked_one} acks=1, {reads} reads, {joins} group joins, {commit_reads_judged} committed offsets judged, {} crashes, {} fault events",
        ops.len(),
        faults.crashes.len(),
        faults.events.len()
    );
    Report { violations, notes, stats }
}

/// One offset commit of one partition.
struct Commit {
    offset: i64,
    sent_ms: u64,
    /// When it was acknowledged; `None` while in flight or if it failed (its fate unknown).
    acked_ms: Option<u64>,
    /// From when it can no longer be applied: its reply (an ack or a Kafka error), or for a
    /// commit that timed out or lost its connection (the request may still reach the broker
    /// and be applied much later) the next broker crash; `None` while it may still apply.
    replied_ms: Option<u64>,
}

/// COMMIT LOST: a committed-offsets read that does not return the last commit of a partition
/// acknowledged before the read was sent. The read is judged only when that is unambiguous: no
/// other commit of the partition was sent after that one (before the read was answered) without
/// being acknowledged before the read (a failed commit may still have been stored), and no
/// earlier commit was still unanswered when that one was sent (the broker may have applied the
/// two in either order; a commit that timed out may reach the broker and be applied any time
/// until the broker next crashes). With no acknowledged commit, the read must say "none" (-1)
/// unless some commit had been sent.
/// Returns the violations and how many partition reads were judged.
fn check_commits(entries: &[Entry]) -> (Vec<String>, usize) {
    let mut judged = 0;
    let mut violations = Vec::new();
    let crashes: Vec<u64> =
        entries.iter().filter(|e| matches!(e.event, Event::Crash { .. })).map(|e| e.at_ms).collect();
    let mut commits: BTreeMap<u64, (Vec<(i32, i64)>, u64)> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<Commit>> = BTreeMap::new();
    let mut index: BTreeMap<(u64, i32), usize> = BTreeMap::new();
    for e in entries {
        match &e.event {
            Event::CommitSend { op, offsets, .. } => {
                commits.insert(*op, (offsets.clone(), e.at_ms));
                for &(p, o) in offsets {
                    let list = by_partition.entry(p).or_default();
                    index.insert((*op, p), list.len());
                    list.push(Commit { offset: o, sent_ms: e.at_ms, acked_ms: None, replied_ms: None });
                }
            }
            Event::CommitAck { op } | Event::CommitFail { op, .. } => {
                let acked = matches!(e.event, Event::CommitAck { .. });
                let settled_ms = match &e.event {
                    Event::CommitFail { error, .. } if !error.starts_with("Kafka error") => {
                        crashes.iter().copied().find(|&c| c >= e.at_ms)
                    }
                    _ => Some(e.at_ms),
                };
                if let Some((offsets, _)) = commits.get(op) {
                    for &(p, _) in offsets {
                        let i = index[&(*op, p)];
                        let c = &mut by_partition.get_mut(&p).unwrap()[i];
                        c.replied_ms = settled_ms;
                        if acked {
                            c.acked_ms = Some(e.at_ms);
                        }
                    }
                }
            }
            Event::Committed { consumer, sent_ms, offsets } => {
                for &(p, got) in offsets {
                    let list = by_partition.get(&p).map(|l| l.as_slice()).unwrap_or(&[]);
                    // Commits of p sent before the read was answered.
                    let before: Vec<&Commit> = list.iter().filter(|c| c.sent_ms <= e.at_ms).collect();
                    let last_acked = before.iter().rev().find(|c| c.acked_ms.is_some_and(|a| a < *sent_ms));
                    let want = match last_acked {
                        Some(c) => {
                            // Another commit sent after it (or a failed one whose fate is
                            // unknown) may legitimately be what the read returns.
                            let ambiguous = before.iter().any(|d| {
                                !std::ptr::eq(*d, *c)
                                    && d.sent_ms >= c.sent_ms
                                    && d.acked_ms.is_none_or(|a| a >= *sent_ms)
                            }) || before
                                .iter()
                                .any(|d| d.sent_ms < c.sent_ms && d.replied_ms.is_none_or(|r| r > c.sent_ms));
                            if ambiguous {
                                continue;
                            }
                            c.offset
                        }
                        None => {
                            if !before.is_empty() {
                                continue;
                            }
                            -1
                        }
                    };
                    judged += 1;
                    if got != want {
                        violations.push(format!(
                            "COMMIT LOST: consumer-{consumer} read committed offset {got} for partition {p} at t={}ms (asked at t={sent_ms}ms); the last acknowledged commit was {want}{}",
                            e.at_ms,
                            last_acked.map(|c| format!(" (sent t={}ms, acknowledged t={}ms)", c.sent_ms, c.acked_ms.unwrap_or(0))).unwrap_or_default()
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    (violations, judged)
}
