//! Cluster scenarios: combined broker+controller nodes (the production `Server::bind` in
//! cluster mode, Raft metadata quorum, replication by follower fetch), each on its own
//! simulated node and [`SimDisk`], a topic with replication factor 3 and
//! min.insync.replicas=2, acks=all producers and consumers, and a fault schedule drawn from
//! the seed.
//!
//! Three tests share this harness (one mix each, see [`ClusterMix`]):
//! - `cluster` and `cluster-disk`: three nodes; fault episodes that never overlap: kill+restart
//!   of a node (often the current leader of a partition, found through metadata by a watcher),
//!   sometimes of two nodes at the same moment (quorum and ISR majorities lost until they
//!   return), network isolation of a node (`clog_node`), sometimes a second fault right after
//!   the previous node came back (before it can have caught up), plus disk faults (torn and
//!   bit-flipped unsynced tails at a crash; in `cluster-disk` also fsync EIO and ENOSPC).
//! - `cluster-overlap`: three or five nodes (with five, nodes 4 and 5 are broker-only and the
//!   controller quorum is nodes 1-3), and episodes drawn independently, so they overlap: a
//!   crash during an isolation, a crash on top of a crash (up to every node down), a second
//!   power loss while a node recovers, a node cut off from the other brokers but not from
//!   clients (split brain), a cut or one-way link between two brokers, a flapping link, a slow
//!   disk; targets include the active controller (found with DescribeQuorum). Overlapping
//!   faults on one resource are counted: a node restarts when the last crash holding it ends.
//!
//! Liveness phase: heal the network, start every node that is down, restart any node whose
//! disk failed (as an operator would), and within [`LIVENESS_MS`] an acks=all write must
//! succeed on every partition, every partition must be read from its leader from log start to
//! high watermark, and the consumers must catch up. The swarm's [`checker`](crate::checker)
//! judges the history: every acknowledged acks=all record must be at its acknowledged offset
//! in the final log (LOST), no offset may show two values (INCONSISTENT), consumers must read
//! densely (SKIP/NONMONOTONIC), and so on.
//!
//! Replay: the settings are written to `target/sim-failures/{mix}-{seed}.schedule` when a run
//! starts and removed when it passes, so any failure leaves its replay file behind
//! (`scripts/sim.sh --replay FILE` replays it; `RUNNEL_SIM_REPLAY=path` is what it sets, and
//! `RUNNEL_SIM_SCHEDULE_OUT=path` keeps a copy of any run's settings, `{seed}` and `{mix}`
//! replaced). `scripts/sim.sh --shrink FILE` removes episodes while the run still fails.
//!
//! Node layout: brokers `10.0.0.{1..n}` (node ids 1..n, broker index 0..n-1), producers
//! `10.0.1.x`, consumers by assign `10.0.2.x`, consumers by subscribe (one group) `10.0.4.x`,
//! helpers (setup, leader watcher, probe, final reader)
//! `10.0.3.x`. `RUNNEL_SIM_LOG=filter` turns on tracing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::{thread_rng, GlobalRng, Rng};
use madsim::runtime::Handle;
use madsim::task::NodeId;
use runnel::client::{codes, Client};
use runnel::config::BrokerConfig;
use runnel::runtime::{SimDisk, SimDiskConfig, SimDiskPlugin};
use runnel::server::Server;

use crate::checker::{self, Liveness};
use crate::history::{Event, History};
use crate::settings::ProducerSpec;
use crate::workload::{self, Ctx, TOPIC};

/// Nodes in the `cluster` and `cluster-disk` tests, and controller voters in every test.
const NODES: usize = 3;
/// The largest cluster a schedule may ask for (`cluster-overlap` draws 3 or 5).
const MAX_NODES: usize = 5;
const BROKER_PORT: u16 = 9092;
const CONTROLLER_PORT: u16 = 9093;
/// Simulated time allowed for setup (controller election, broker registration, topic).
const SETUP_MS: u64 = 30_000;
/// Bound of the liveness phase: produce, final read and consumer catch-up after healing.
const LIVENESS_MS: u64 = 30_000;
/// Time allowed for the producers' last requests after the safety phase.
const DRAIN_MS: u64 = 5_000;
/// How often the fault controller wakes.
const TICK_MS: u64 = 20;
/// How often the leader watcher refreshes metadata.
const WATCH_MS: u64 = 100;

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i as u8 + 1)
}

fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// The three cluster tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMix {
    /// Three nodes, non-overlapping episodes, crashes tear unsynced tails.
    Cluster,
    /// The same plus fsync EIO and ENOSPC.
    ClusterDisk,
    /// Three or five nodes, overlapping episodes of every kind, disk errors in half the seeds.
    ClusterOverlap,
}

impl ClusterMix {
    const ALL: [ClusterMix; 3] = [ClusterMix::Cluster, ClusterMix::ClusterDisk, ClusterMix::ClusterOverlap];

    /// The mix name, as `scripts/sim.sh --mix` and replay files spell it.
    fn name(self) -> &'static str {
        match self {
            ClusterMix::Cluster => "cluster",
            ClusterMix::ClusterDisk => "cluster-disk",
            ClusterMix::ClusterOverlap => "cluster-overlap",
        }
    }
}

/// Which node an episode hits, resolved when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Broker index 0..nodes.
    Node(usize),
    /// The current leader of this partition (per the watcher), or a random node if unknown.
    LeaderOf(i32),
    /// The active controller (per the watcher's DescribeQuorum), or a random voter if unknown.
    Controller,
}

impl Target {
    fn to_text(self) -> String {
        match self {
            Target::Node(i) => format!("node {i}"),
            Target::LeaderOf(p) => format!("leader_of {p}"),
            Target::Controller => "controller -".to_string(),
        }
    }

    fn parse(kind: &str, arg: &str) -> Result<Target, String> {
        let num = || arg.parse::<u64>().map_err(|_| format!("expected a number, not {arg}"));
        match kind {
            "node" => Ok(Target::Node(num()? as usize)),
            "leader_of" => Ok(Target::LeaderOf(num()? as i32)),
            "controller" => Ok(Target::Controller),
            _ => Err(format!("unknown episode target {kind}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Power loss (`Handle::kill`; the disk plugin crashes the disk), restart after the episode.
    Crash,
    /// `clog_node` for the episode, then `unclog_node`.
    Isolate,
    /// Power loss of the target and the next node at the same moment (the controller quorum and
    /// every partition's ISR lose their majority), both restarted after the episode.
    CrashTwo,
    /// Power loss, restart after a third of the episode, a second power loss `param` ms after
    /// that restart (while the node recovers its logs and catches up), restart at the end.
    CrashRecovering,
    /// Every link between the target and the other brokers cut both ways; clients still reach
    /// it (a leader that can still be asked to write, split from its followers and quorum).
    Split,
    /// The links between the target and the peer cut both ways.
    Link,
    /// Messages from the target to the peer (or to every other broker without a peer) dropped;
    /// the other direction works.
    OneWay,
    /// The target-peer link cut and restored every `param` ms.
    Flap,
    /// The target's disk `param` times slower (every write, fsync and read).
    SlowDisk,
}

impl Kind {
    const ALL: [(Kind, &'static str); 9] = [
        (Kind::Crash, "crash"),
        (Kind::Isolate, "isolate"),
        (Kind::CrashTwo, "crash_two"),
        (Kind::CrashRecovering, "crash_recovering"),
        (Kind::Split, "split"),
        (Kind::Link, "link"),
        (Kind::OneWay, "one_way"),
        (Kind::Flap, "flap"),
        (Kind::SlowDisk, "slow_disk"),
    ];

    fn name(self) -> &'static str {
        Kind::ALL.iter().find(|(k, _)| *k == self).map(|(_, n)| *n).unwrap_or("?")
    }
}

/// A fault episode during [at_ms, at_ms + dur_ms) after the safety phase starts. In `cluster`
/// and `cluster-disk` episodes never overlap; in `cluster-overlap` they do.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Episode {
    at_ms: u64,
    dur_ms: u64,
    kind: Kind,
    target: Target,
    /// The other end of a `Link`, `OneWay` or `Flap` episode (`OneWay` without one: every
    /// other broker).
    peer: Option<Target>,
    /// Kind-specific: `CrashRecovering`'s delay of the second crash, `Flap`'s period,
    /// `SlowDisk`'s factor; 0 otherwise.
    param: u64,
}

impl std::fmt::Debug for Episode {
    // The first four fields print as the derived Debug did before `peer` and `param` existed,
    // so the trace of the older mixes (which use neither) is unchanged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Episode {{ at_ms: {}, dur_ms: {}, kind: {:?}, target: {:?}",
            self.at_ms, self.dur_ms, self.kind, self.target
        )?;
        if let Some(p) = self.peer {
            write!(f, ", peer: {p:?}")?;
        }
        if self.param != 0 {
            write!(f, ", param: {}", self.param)?;
        }
        write!(f, " }}")
    }
}

impl Episode {
    fn to_text(self) -> String {
        let mut s = format!("{} {} {} {}", self.at_ms, self.dur_ms, self.kind.name(), self.target.to_text());
        if let Some(p) = self.peer {
            let _ = write!(s, " peer {}", p.to_text());
        }
        if self.param != 0 {
            let _ = write!(s, " param {}", self.param);
        }
        s
    }

    /// Parses [`Episode::to_text`]: `at dur kind target arg [peer target arg] [param N]`.
    fn parse(v: &str) -> Result<Episode, String> {
        let w: Vec<&str> = v.split_whitespace().collect();
        if w.len() < 5 {
            return Err("expected at least 5 fields".into());
        }
        let num = |x: &str| x.parse::<u64>().map_err(|_| format!("expected a number, not {x}"));
        let kind = Kind::ALL
            .iter()
            .find(|(_, n)| *n == w[2])
            .map(|(k, _)| *k)
            .ok_or_else(|| format!("unknown episode kind {}", w[2]))?;
        let mut e = Episode {
            at_ms: num(w[0])?,
            dur_ms: num(w[1])?,
            kind,
            target: Target::parse(w[3], w[4])?,
            peer: None,
            param: 0,
        };
        let mut rest = &w[5..];
        while !rest.is_empty() {
            match rest {
                ["peer", t, a, tail @ ..] => {
                    e.peer = Some(Target::parse(t, a)?);
                    rest = tail;
                }
                ["param", n, tail @ ..] => {
                    e.param = num(n)?;
                    rest = tail;
                }
                _ => return Err(format!("unexpected {}", rest.join(" "))),
            }
        }
        Ok(e)
    }
}

/// Everything one cluster run is made of, drawn from the seed (or read from a replay file).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterSettings {
    /// `cluster`, `cluster-disk` or `cluster-overlap` (the test that runs it).
    mix: String,
    seed: u64,
    /// Brokers (3 or 5); the first [`NODES`] are also the controller quorum's voters.
    nodes: usize,
    partitions: i32,
    segment_bytes: u64,
    replica_lag_ms: u64,
    request_timeout_ms: u64,
    producers: Vec<ProducerSpec>,
    consumers: Vec<Vec<i32>>,
    /// Consumers by subscribe (one consumer group; its offsets live in the replicated
    /// `__consumer_offsets`).
    group_consumers: usize,
    group_session_timeout_ms: u64,
    safety_ms: u64,
    disk: SimDiskConfig,
    disk_seed: u64,
    episodes: Vec<Episode>,
}

impl ClusterSettings {
    fn overlap(&self) -> bool {
        self.mix == ClusterMix::ClusterOverlap.name()
    }

    /// Draws the settings of one run from madsim's RNG. `cluster` turns fsync EIO and ENOSPC
    /// off after the draw (so `cluster` and `cluster-disk` draw the same sequence for a seed);
    /// `cluster-overlap` draws a node count and a new, overlapping schedule after everything
    /// else.
    fn generate(seed: u64, mix: ClusterMix) -> ClusterSettings {
        let mut rng = thread_rng();
        let partitions = rng.gen_range(1..=3);
        let segment_bytes = [4096u64, 16 * 1024, 1 << 20][rng.gen_range(0..3)];
        let replica_lag_ms = [1_000u64, 3_000, 30_000][rng.gen_range(0..3)];
        let request_timeout_ms = [1_000u64, 3_000][rng.gen_range(0..2)];
        let producers = (0..rng.gen_range(1..=3))
            .map(|_| ProducerSpec {
                acks: -1,
                idempotent: false,
                batch_max: rng.gen_range(1..=5),
                pause_max_ms: rng.gen_range(1..50),
            })
            .collect();
        // One or two consumers; together they cover every partition.
        let consumers = if partitions > 1 && rng.gen_bool(0.5) {
            let split = rng.gen_range(1..partitions);
            vec![(0..split).collect(), (split..partitions).collect()]
        } else {
            vec![(0..partitions).collect()]
        };
        let safety_ms: u64 = rng.gen_range(6_000..12_000);
        let disk = if rng.gen_bool(0.5) {
            SimDiskConfig {
                fsync_eio_per_mille: rng.gen_range(0..3),
                enospc_per_mille: rng.gen_range(0..3),
                tear_per_mille: 500,
                bitflip_per_mille: 200,
            }
        } else {
            SimDiskConfig { tear_per_mille: 500, bitflip_per_mille: 200, ..Default::default() }
        };
        let disk_seed = rng.gen();
        let mut episodes = Vec::new();
        let mut t = rng.gen_range(200..1_000);
        while t < safety_ms.saturating_sub(300) {
            let kind = if rng.gen_bool(0.6) {
                if rng.gen_bool(0.15) {
                    Kind::CrashTwo
                } else {
                    Kind::Crash
                }
            } else {
                Kind::Isolate
            };
            let target = if rng.gen_bool(0.5) {
                Target::LeaderOf(rng.gen_range(0..partitions))
            } else {
                Target::Node(rng.gen_range(0..NODES))
            };
            // Short ones end before the broker session times out (1.5 s); long ones get the
            // node fenced and its leaderships moved.
            let dur_ms = if rng.gen_bool(0.5) { rng.gen_range(100..1_200) } else { rng.gen_range(1_500..4_000) };
            episodes.push(Episode { at_ms: t, dur_ms, kind, target, peer: None, param: 0 });
            // Sometimes the next fault comes right after this one ends: a node that just came
            // back has not caught up (or rejoined the ISR) yet.
            let gap = if rng.gen_bool(0.3) { rng.gen_range(20..300) } else { rng.gen_range(300..2_000) };
            t += dur_ms + gap;
        }
        // Drawn last so the draws above stay what they were before group consumers existed.
        let group_consumers = rng.gen_range(0..=2);
        let group_session_timeout_ms = rng.gen_range(1_000..6_000);
        let mut disk = disk;
        if mix == ClusterMix::Cluster {
            // Crashes still tear and flip unsynced tails; only fsync EIO and ENOSPC are off.
            disk.fsync_eio_per_mille = 0;
            disk.enospc_per_mille = 0;
        }
        let mut nodes = NODES;
        if mix == ClusterMix::ClusterOverlap {
            nodes = if rng.gen_bool(0.4) { MAX_NODES } else { NODES };
            episodes = overlapping_episodes(&mut rng, nodes, partitions, safety_ms);
        }
        ClusterSettings {
            mix: mix.name().to_string(),
            seed,
            nodes,
            partitions,
            segment_bytes,
            replica_lag_ms,
            request_timeout_ms,
            producers,
            consumers,
            group_consumers,
            group_session_timeout_ms,
            safety_ms,
            disk,
            disk_seed,
            episodes,
        }
    }

    /// The replayable text form (`scripts/sim.sh --replay FILE`): `key = value` lines, one
    /// `producer`, `consumer` and `episode` line each.
    fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# runnel cluster simulation schedule; replay with scripts/sim.sh --replay FILE");
        let _ = writeln!(s, "mix = {}", self.mix);
        let _ = writeln!(s, "seed = {}", self.seed);
        let _ = writeln!(s, "nodes = {}", self.nodes);
        let _ = writeln!(s, "partitions = {}", self.partitions);
        let _ = writeln!(s, "segment_bytes = {}", self.segment_bytes);
        let _ = writeln!(s, "replica_lag_ms = {}", self.replica_lag_ms);
        let _ = writeln!(s, "request_timeout_ms = {}", self.request_timeout_ms);
        for p in &self.producers {
            let _ = writeln!(s, "producer = batch_max={} pause_max_ms={}", p.batch_max, p.pause_max_ms);
        }
        for c in &self.consumers {
            let parts: Vec<String> = c.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(s, "consumer = {}", parts.join(","));
        }
        let _ = writeln!(s, "group_consumers = {}", self.group_consumers);
        let _ = writeln!(s, "group_session_timeout_ms = {}", self.group_session_timeout_ms);
        let _ = writeln!(s, "safety_ms = {}", self.safety_ms);
        let d = &self.disk;
        let _ = writeln!(
            s,
            "disk = fsync_eio_per_mille={} enospc_per_mille={} tear_per_mille={} bitflip_per_mille={}",
            d.fsync_eio_per_mille, d.enospc_per_mille, d.tear_per_mille, d.bitflip_per_mille
        );
        let _ = writeln!(s, "disk_seed = {}", self.disk_seed);
        for e in &self.episodes {
            let _ = writeln!(s, "episode = {}", e.to_text());
        }
        s
    }

    /// Parses [`ClusterSettings::to_text`]'s format (a file without a `nodes` line has 3).
    fn parse(text: &str) -> Result<ClusterSettings, String> {
        let mut s = ClusterSettings {
            mix: String::new(),
            seed: 0,
            nodes: NODES,
            partitions: 1,
            segment_bytes: 1 << 20,
            replica_lag_ms: 30_000,
            request_timeout_ms: 1_000,
            producers: Vec::new(),
            consumers: Vec::new(),
            group_consumers: 0,
            group_session_timeout_ms: 6_000,
            safety_ms: 5_000,
            disk: SimDiskConfig::default(),
            disk_seed: 0,
            episodes: Vec::new(),
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
            let (k, v) = line.split_once('=').ok_or_else(|| err("expected key = value"))?;
            let (k, v) = (k.trim(), v.trim());
            let num = |v: &str| v.parse::<u64>().map_err(|_| err("expected a number"));
            let kv = |v: &str| -> Vec<(String, String)> {
                v.split_whitespace()
                    .filter_map(|p| p.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
                    .collect()
            };
            match k {
                "mix" if ClusterMix::ALL.iter().any(|m| m.name() == v) => s.mix = v.to_string(),
                "mix" => return Err(err("unknown cluster mix")),
                "seed" => s.seed = num(v)?,
                "nodes" => match num(v)? as usize {
                    n @ NODES..=MAX_NODES => s.nodes = n,
                    _ => return Err(err(&format!("nodes must be {NODES}..={MAX_NODES}"))),
                },
                "partitions" => s.partitions = num(v)? as i32,
                "segment_bytes" => s.segment_bytes = num(v)?,
                "replica_lag_ms" => s.replica_lag_ms = num(v)?,
                "request_timeout_ms" => s.request_timeout_ms = num(v)?,
                "safety_ms" => s.safety_ms = num(v)?,
                "group_consumers" => s.group_consumers = num(v)? as usize,
                "group_session_timeout_ms" => s.group_session_timeout_ms = num(v)?,
                "disk_seed" => s.disk_seed = num(v)?,
                "producer" => {
                    let mut p = ProducerSpec { acks: -1, idempotent: false, batch_max: 1, pause_max_ms: 10 };
                    for (a, b) in kv(v) {
                        match a.as_str() {
                            "batch_max" => p.batch_max = num(&b)? as u32,
                            "pause_max_ms" => p.pause_max_ms = num(&b)?,
                            _ => return Err(err("unknown producer field")),
                        }
                    }
                    s.producers.push(p);
                }
                "consumer" => {
                    s.consumers.push(v.split(',').map(|p| num(p.trim()).map(|x| x as i32)).collect::<Result<_, _>>()?)
                }
                "disk" => {
                    for (a, b) in kv(v) {
                        let x = num(&b)? as u32;
                        match a.as_str() {
                            "fsync_eio_per_mille" => s.disk.fsync_eio_per_mille = x,
                            "enospc_per_mille" => s.disk.enospc_per_mille = x,
                            "tear_per_mille" => s.disk.tear_per_mille = x,
                            "bitflip_per_mille" => s.disk.bitflip_per_mille = x,
                            _ => return Err(err("unknown disk field")),
                        }
                    }
                }
                "episode" => s.episodes.push(Episode::parse(v).map_err(|e| err(&e))?),
                _ => return Err(err("unknown key")),
            }
        }
        if s.mix.is_empty() {
            return Err("no mix line".into());
        }
        for e in &s.episodes {
            for t in [Some(e.target), e.peer].into_iter().flatten() {
                if let Target::Node(i) = t {
                    if i >= s.nodes {
                        return Err(format!("episode {}: no node {i} in a {}-node cluster", e.to_text(), s.nodes));
                    }
                }
            }
        }
        s.episodes.sort_by_key(|e| e.at_ms);
        Ok(s)
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "nodes={} (voters {NODES}) partitions={} rf=3 min.insync=2 segment_bytes={} replica.lag.time.max.ms={} request_timeout_ms={} producers(acks=all, batch_max, pause_max_ms)=[{}] consumers={:?} group_consumers={} (session {} ms) safety_ms={} disk={:?} episodes={}:",
            self.nodes,
            self.partitions,
            self.segment_bytes,
            self.replica_lag_ms,
            self.request_timeout_ms,
            self.producers.iter().map(|p| format!("({},{})", p.batch_max, p.pause_max_ms)).collect::<Vec<_>>().join(" "),
            self.consumers,
            self.group_consumers,
            self.group_session_timeout_ms,
            self.safety_ms,
            self.disk,
            self.episodes.len()
        );
        for e in &self.episodes {
            let _ = write!(s, " [{}ms +{}ms {:?} {:?}", e.at_ms, e.dur_ms, e.kind, e.target);
            if let Some(p) = e.peer {
                let _ = write!(s, " peer {p:?}");
            }
            if e.param != 0 {
                let _ = write!(s, " param {}", e.param);
            }
            s.push(']');
        }
        s
    }
}

/// `cluster-overlap`'s schedule: episodes at independent times (one every 0.3-1.5 s on
/// average, drawn per seed), so several are often active at once.
fn overlapping_episodes(rng: &mut GlobalRng, nodes: usize, partitions: i32, safety_ms: u64) -> Vec<Episode> {
    let mean_gap = rng.gen_range(300..1_500u64);
    let mut episodes = Vec::new();
    let mut t = rng.gen_range(100..800);
    while t < safety_ms.saturating_sub(300) {
        let kind = match rng.gen_range(0..100) {
            0..=19 => Kind::Crash,
            20..=25 => Kind::CrashTwo,
            26..=37 => Kind::CrashRecovering,
            38..=47 => Kind::Isolate,
            48..=61 => Kind::Split,
            62..=71 => Kind::Link,
            72..=81 => Kind::OneWay,
            82..=91 => Kind::Flap,
            _ => Kind::SlowDisk,
        };
        let dur_ms = if rng.gen_bool(0.5) { rng.gen_range(100..1_200) } else { rng.gen_range(1_500..4_000) };
        let target = draw_target(rng, nodes, partitions);
        let peer = match kind {
            Kind::Link | Kind::Flap => Some(draw_target(rng, nodes, partitions)),
            Kind::OneWay if rng.gen_bool(0.5) => Some(draw_target(rng, nodes, partitions)),
            _ => None,
        };
        let param = match kind {
            // The second crash lands 10-600 ms after the restart: log recovery, controller
            // catch-up, replica truncation and the first fetches happen in that window.
            Kind::CrashRecovering => rng.gen_range(10..600),
            Kind::Flap => rng.gen_range(30..400),
            Kind::SlowDisk => [10, 50, 200][rng.gen_range(0..3)],
            _ => 0,
        };
        let dur_ms = if kind == Kind::CrashRecovering { dur_ms.max(param * 3 / 2 + 300) } else { dur_ms };
        episodes.push(Episode { at_ms: t, dur_ms, kind, target, peer, param });
        t += rng.gen_range(mean_gap / 4..mean_gap * 7 / 4);
    }
    episodes
}

/// A target (or a link episode's peer), resolved when the episode starts: a partition's
/// leader, the active controller or a fixed node.
fn draw_target(rng: &mut GlobalRng, nodes: usize, partitions: i32) -> Target {
    match rng.gen_range(0..100) {
        0..=39 => Target::LeaderOf(rng.gen_range(0..partitions)),
        40..=54 => Target::Controller,
        _ => Target::Node(rng.gen_range(0..nodes)),
    }
}

fn node_config(s: &ClusterSettings, i: usize) -> Arc<BrokerConfig> {
    let voters: Vec<String> = (0..NODES).map(|j| format!("{}@{}:{CONTROLLER_PORT}", j + 1, node_ip(j))).collect();
    // The first NODES nodes are combined broker+controller nodes; the others are brokers only.
    let (roles, listeners) = if i < NODES {
        (
            "broker,controller",
            format!("PLAINTEXT://{ip}:{BROKER_PORT},CONTROLLER://{ip}:{CONTROLLER_PORT}", ip = node_ip(i)),
        )
    } else {
        ("broker", format!("PLAINTEXT://{}:{BROKER_PORT}", node_ip(i)))
    };
    Arc::new(
        BrokerConfig::from_pairs([
            ("node.id", (i + 1).to_string()),
            ("process.roles", roles.to_string()),
            ("listeners", listeners),
            ("controller.quorum.voters", voters.join(",")),
            ("log.dirs", "/data".to_string()),
            ("default.replication.factor", "3".to_string()),
            ("min.insync.replicas", "2".to_string()),
            ("offsets.topic.replication.factor", "3".to_string()),
            // Few offsets partitions keep the simulation fast; coordinators still move.
            ("offsets.topic.num.partitions", "3".to_string()),
            ("group.initial.rebalance.delay.ms", "0".to_string()),
            // The group consumers draw session timeouts from 1 s (Kafka's floor is 6 s).
            ("group.min.session.timeout.ms", "500".to_string()),
            ("log.segment.bytes", s.segment_bytes.to_string()),
            ("replica.lag.time.max.ms", s.replica_lag_ms.to_string()),
        ])
        .expect("cluster node config"),
    )
}

struct Node {
    id: NodeId,
    disk: SimDisk,
    up: bool,
    storage_error_since_restart: bool,
    /// Active episodes holding the node down (it restarts when the last one ends).
    down_holds: u32,
    /// Active episodes isolating it (`clog_node`).
    isolate_holds: u32,
    /// Active slow-disk episodes.
    slow_holds: u32,
}

/// One step of an episode, applied by [`Cluster::apply`]; overlapping episodes share nodes and
/// links through the hold counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Take a hold on the node being down; power loss if it was up.
    Down(usize, &'static str),
    /// Release a hold; restart the node when none is left.
    Up(usize),
    Isolate(usize),
    Unisolate(usize),
    /// Cut the directed link from the first node to the second.
    Cut(usize, usize),
    Mend(usize, usize),
    Slow(usize, u32),
    Fast(usize),
}

struct Cluster {
    handle: Handle,
    history: History,
    ctx: Ctx,
    nodes: Vec<Node>,
    /// Holds on cut directed links between brokers.
    cut_holds: BTreeMap<(usize, usize), u32>,
    epoch_ms: i64,
    next_client_ip: u8,
}

impl Cluster {
    fn start(s: &ClusterSettings, history: History) -> Cluster {
        let handle = Handle::current();
        // Every kill of a node power-fails its disk through madsim's plugin hook.
        handle.add_simulator::<SimDiskPlugin>();
        let plugin = madsim::plugin::simulator::<SimDiskPlugin>();
        let mut nodes = Vec::new();
        for i in 0..s.nodes {
            let disk = SimDisk::new(s.disk_seed.wrapping_add(i as u64), s.disk);
            let d = disk.clone();
            let cfg = node_config(s, i);
            let node = handle
                .create_node()
                .name(node_name(i))
                .ip(IpAddr::V4(node_ip(i)))
                .init(move || {
                    let disk = d.clone();
                    let cfg = cfg.clone();
                    async move {
                        // A supervisor restarts a node whose startup fails (recovery may hit
                        // an injected fault).
                        loop {
                            match Server::bind(cfg.clone(), Arc::new(disk.clone())).await {
                                Ok(server) => return server.run(std::future::pending()).await,
                                Err(e) => {
                                    tracing::error!(error = %e, "node failed to start; retrying");
                                    madsim::time::sleep(Duration::from_millis(500)).await;
                                }
                            }
                        }
                    }
                })
                .build();
            plugin.attach(node.id(), disk.clone());
            nodes.push(Node {
                id: node.id(),
                disk,
                up: true,
                storage_error_since_restart: false,
                down_holds: 0,
                isolate_holds: 0,
                slow_holds: 0,
            });
        }
        let bootstrap: Vec<String> = (0..s.nodes).map(|i| format!("{}:{BROKER_PORT}", node_ip(i))).collect();
        let ctx = Ctx::new(history.clone(), bootstrap.join(","), Duration::from_millis(s.request_timeout_ms));
        let epoch_ms = runnel::runtime::now_ms() - history.now_ms() as i64;
        Cluster { handle, history, ctx, nodes, cut_holds: BTreeMap::new(), epoch_ms, next_client_ip: 1 }
    }

    fn client_node(&mut self, name: &str, subnet: u8) -> madsim::runtime::NodeHandle {
        let ip = Ipv4Addr::new(10, 0, subnet, self.next_client_ip);
        self.next_client_ip += 1;
        self.handle.create_node().name(name).ip(IpAddr::V4(ip)).build()
    }

    fn collect_disk_events(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            for ev in n.disk.take_events() {
                if ev.what.starts_with("EIO") || ev.what.starts_with("ENOSPC") {
                    n.storage_error_since_restart = true;
                }
                let at_ms = (ev.at_ms - self.epoch_ms).max(0) as u64;
                self.history.record(Event::DiskFault { at_ms, broker: i, what: ev.what });
            }
        }
    }

    fn crash(&mut self, i: usize, why: &str) {
        self.collect_disk_events();
        // The kill power-fails the node's disk: madsim calls SimDiskPlugin::reset_node.
        self.handle.kill(self.nodes[i].id);
        self.nodes[i].up = false;
        let inc = self.ctx.incarnation.fetch_add(1, Ordering::SeqCst) + 1;
        self.history.record(Event::Crash { broker: i, incarnation: inc, why: why.into() });
        self.collect_disk_events();
    }

    fn restart(&mut self, i: usize) {
        self.handle.restart(self.nodes[i].id);
        self.nodes[i].up = true;
        self.nodes[i].storage_error_since_restart = false;
        self.history.record(Event::Fault { what: format!("restart {}", node_name(i)) });
    }

    /// Applies one episode step (see [`Action`]).
    fn apply(&mut self, a: Action) {
        let net = NetSim::current();
        match a {
            Action::Down(i, why) => {
                self.nodes[i].down_holds += 1;
                if self.nodes[i].up {
                    self.crash(i, why);
                }
            }
            Action::Up(i) => {
                let n = &mut self.nodes[i];
                n.down_holds = n.down_holds.saturating_sub(1);
                if n.down_holds == 0 && !n.up {
                    self.restart(i);
                }
            }
            Action::Isolate(i) => {
                self.nodes[i].isolate_holds += 1;
                if self.nodes[i].isolate_holds == 1 {
                    net.clog_node(self.nodes[i].id);
                    self.history.record(Event::Fault { what: format!("isolate {}", node_name(i)) });
                }
            }
            Action::Unisolate(i) => {
                let n = &mut self.nodes[i];
                if n.isolate_holds > 0 {
                    n.isolate_holds -= 1;
                    if n.isolate_holds == 0 {
                        net.unclog_node(n.id);
                        self.history.record(Event::Fault { what: format!("heal {}", node_name(i)) });
                    }
                }
            }
            Action::Cut(a, b) => {
                let holds = self.cut_holds.entry((a, b)).or_insert(0);
                *holds += 1;
                if *holds == 1 {
                    net.clog_link(self.nodes[a].id, self.nodes[b].id);
                    self.history.record(Event::Fault { what: format!("cut {} -> {}", node_name(a), node_name(b)) });
                }
            }
            Action::Mend(a, b) => {
                if let Some(holds) = self.cut_holds.get_mut(&(a, b)) {
                    *holds -= 1;
                    if *holds == 0 {
                        self.cut_holds.remove(&(a, b));
                        net.unclog_link(self.nodes[a].id, self.nodes[b].id);
                        self.history
                            .record(Event::Fault { what: format!("mend {} -> {}", node_name(a), node_name(b)) });
                    }
                }
            }
            Action::Slow(i, factor) => {
                self.nodes[i].slow_holds += 1;
                self.nodes[i].disk.set_slow_factor(factor);
                self.history.record(Event::Fault { what: format!("slow disk {} x{factor}", node_name(i)) });
            }
            Action::Fast(i) => {
                let n = &mut self.nodes[i];
                n.slow_holds = n.slow_holds.saturating_sub(1);
                if n.slow_holds == 0 {
                    n.disk.set_slow_factor(1);
                    self.history.record(Event::Fault { what: format!("disk {} at normal speed", node_name(i)) });
                }
            }
        }
    }

    /// Ends the safety phase: heal the network, stop disk faults, restart nodes whose disk
    /// failed, start every node that is down.
    fn heal(&mut self) {
        self.collect_disk_events();
        for ((a, b), _) in std::mem::take(&mut self.cut_holds) {
            NetSim::current().unclog_link(self.nodes[a].id, self.nodes[b].id);
            self.history.record(Event::Fault { what: format!("mend {} -> {}", node_name(a), node_name(b)) });
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].isolate_holds > 0 {
                self.nodes[i].isolate_holds = 1;
                self.apply(Action::Unisolate(i));
            }
            if self.nodes[i].slow_holds > 0 {
                self.nodes[i].slow_holds = 1;
                self.apply(Action::Fast(i));
            }
            self.nodes[i].down_holds = 0;
            self.nodes[i].disk.set_faults_enabled(false);
            if self.nodes[i].up && self.nodes[i].storage_error_since_restart {
                self.crash(i, "operator restart after a storage error");
            }
            if !self.nodes[i].up {
                self.restart(i);
            }
        }
        self.history.record(Event::Fault { what: "faults stop".into() });
    }
}

/// The steps of an episode that started at `now` (relative ms) on node `i` (and peer `j`,
/// a different node), in time order.
fn episode_steps(e: &Episode, now: u64, i: usize, j: usize, nodes: usize) -> Vec<(u64, Action)> {
    let end = now + e.dur_ms;
    let others = || (0..nodes).filter(move |&k| k != i);
    match e.kind {
        Kind::Crash => vec![(now, Action::Down(i, "power loss")), (end, Action::Up(i))],
        Kind::Isolate => vec![(now, Action::Isolate(i)), (end, Action::Unisolate(i))],
        Kind::CrashTwo => {
            let k = (i + 1) % nodes;
            vec![
                (now, Action::Down(i, "power loss (two nodes at once)")),
                (now, Action::Down(k, "power loss (two nodes at once)")),
                (end, Action::Up(i)),
                (end, Action::Up(k)),
            ]
        }
        Kind::CrashRecovering => {
            let back = now + e.dur_ms / 3;
            vec![
                (now, Action::Down(i, "power loss")),
                (back, Action::Up(i)),
                (back + e.param, Action::Down(i, "power loss while recovering")),
                (end, Action::Up(i)),
            ]
        }
        Kind::Split => {
            let mut v = Vec::new();
            for k in others() {
                v.push((now, Action::Cut(i, k)));
                v.push((now, Action::Cut(k, i)));
            }
            for k in others() {
                v.push((end, Action::Mend(i, k)));
                v.push((end, Action::Mend(k, i)));
            }
            v
        }
        Kind::Link => vec![
            (now, Action::Cut(i, j)),
            (now, Action::Cut(j, i)),
            (end, Action::Mend(i, j)),
            (end, Action::Mend(j, i)),
        ],
        Kind::OneWay => {
            let peers: Vec<usize> = if e.peer.is_some() { vec![j] } else { others().collect() };
            let mut v: Vec<(u64, Action)> = peers.iter().map(|&k| (now, Action::Cut(i, k))).collect();
            v.extend(peers.iter().map(|&k| (end, Action::Mend(i, k))));
            v
        }
        Kind::Flap => {
            let period = e.param.max(1);
            let mut v = Vec::new();
            let mut t = now;
            while t < end {
                v.push((t, Action::Cut(i, j)));
                v.push((t, Action::Cut(j, i)));
                let back = (t + period).min(end);
                v.push((back, Action::Mend(i, j)));
                v.push((back, Action::Mend(j, i)));
                t = back + period;
            }
            v
        }
        Kind::SlowDisk => vec![(now, Action::Slow(i, e.param.max(1) as u32)), (end, Action::Fast(i))],
    }
}

/// What the watcher last saw: each partition's leader (node id) and the active controller.
#[derive(Debug, Default)]
struct Seen {
    leaders: BTreeMap<i32, i32>,
    controller: Option<i32>,
}

type Watched = Arc<Mutex<Seen>>;

/// Polls metadata on a helper node and records each partition's leader; with `quorum`, also
/// the active controller (DescribeQuorum).
async fn watch_leaders(ctx: Ctx, seen: Watched, quorum: bool) {
    let mut client: Option<Client> = None;
    loop {
        if client.is_none() {
            client = Client::connect_with_timeout(&ctx.bootstrap, "sim-watcher", Duration::from_millis(500)).await.ok();
        }
        if let Some(c) = client.as_mut() {
            match c.metadata(Some(vec![TOPIC.to_string()])).await {
                Ok(m) => {
                    let mut w = seen.lock().unwrap();
                    for t in m.topics.iter().filter(|t| t.name == TOPIC) {
                        for p in &t.partitions {
                            if p.leader_id >= 0 {
                                w.leaders.insert(p.partition, p.leader_id);
                            }
                        }
                    }
                }
                Err(_) => client = None,
            }
        }
        if quorum {
            if let Some(c) = client.as_mut() {
                match runnel::cli::quorum::describe_quorum(c).await {
                    Ok(q) if q.leader_id >= 0 => seen.lock().unwrap().controller = Some(q.leader_id),
                    Ok(_) => {}
                    Err(e) if e.kafka_code().is_none() => client = None,
                    Err(_) => {}
                }
            }
        }
        madsim::time::sleep(Duration::from_millis(WATCH_MS)).await;
    }
}

/// Creates the topic, retrying until a controller is elected and brokers are registered, then
/// waits until every partition has a leader and a full ISR. Returns an error text on timeout.
async fn setup_topic(bootstrap: String, partitions: i32, deadline_ms: u64, history: History) -> Result<(), String> {
    let mut client: Option<Client> = None;
    let mut created = false;
    let mut last = String::from("never connected");
    while history.now_ms() < deadline_ms {
        if client.is_none() {
            match Client::connect_with_timeout(&bootstrap, "sim-setup", Duration::from_secs(2)).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    last = e.to_string();
                    madsim::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = client.as_mut().unwrap();
        if !created {
            match c.create_topic(TOPIC, partitions, 3, vec![("min.insync.replicas".into(), "2".into())]).await {
                Ok(()) => created = true,
                Err(e) if e.kafka_code() == Some(codes::TOPIC_ALREADY_EXISTS) => created = true,
                Err(e) => {
                    last = format!("create topic: {e}");
                    if e.kafka_code().is_none() {
                        client = None;
                    }
                    madsim::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        match c.metadata(Some(vec![TOPIC.to_string()])).await {
            Ok(m) => {
                let ready = m.topics.iter().find(|t| t.name == TOPIC).is_some_and(|t| {
                    t.partitions.len() == partitions as usize
                        && t.partitions.iter().all(|p| p.leader_id >= 0 && p.replicas.len() == 3 && p.isr.len() == 3)
                });
                if ready {
                    history.record(Event::Fault { what: format!("setup: topic ready: {m:?}") });
                    return Ok(());
                }
                last = format!("metadata not ready: {:?}", m.topics);
            }
            Err(e) => {
                last = format!("metadata: {e}");
                client = None;
            }
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// Runs one seed of `mix` (or the replay file in `RUNNEL_SIM_REPLAY`). Panics (failing the
/// test, printing the seed and the replay file) on a violation.
///
/// The settings are written to `target/sim-failures/{mix}-{seed}.schedule` before the run and
/// removed when it passes, so the file is left behind by any failure, a checker violation or a
/// panic inside a node alike.
pub async fn run(cluster_mix: ClusterMix) {
    let seed = Handle::current().seed();
    let mix = cluster_mix.name();
    // Drawn even when replaying, so the RNG stream after it is the one the seed produces.
    let generated = ClusterSettings::generate(seed, cluster_mix);
    let s = match std::env::var("RUNNEL_SIM_REPLAY") {
        Ok(path) => {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
            let s = ClusterSettings::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            if s.mix != mix {
                println!("replay {path} is for mix {}; skipping mix {mix}", s.mix);
                return;
            }
            assert_eq!(
                s.seed, seed,
                "replay {path} needs MADSIM_TEST_SEED={} (scripts/sim.sh --replay sets it)",
                s.seed
            );
            if s != generated {
                println!("replay: the settings differ from what seed {seed} generates (edited file)");
            }
            s
        }
        Err(_) => generated,
    };
    let disk_errors = s.disk.fsync_eio_per_mille > 0 || s.disk.enospc_per_mille > 0;
    println!("seed {seed} mix {mix} disk_errors={disk_errors}");
    println!("settings: {}", s.summary());
    let dir = std::path::Path::new("target/sim-failures");
    let schedule_path = dir.join(format!("{mix}-{seed}.schedule"));
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(&schedule_path, s.to_text());
    if let Ok(t) = std::env::var("RUNNEL_SIM_SCHEDULE_OUT") {
        let path = t.replace("{seed}", &seed.to_string()).replace("{mix}", mix);
        std::fs::write(&path, s.to_text()).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
    // Always installed (filter "off" by default), so turning logs on does not change what the
    // first seed of a process draws from the RNG (the subscriber's hash maps do).
    let filter = std::env::var("RUNNEL_SIM_LOG").unwrap_or_else(|_| "off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(true)
        .with_ansi(false)
        .try_init();

    let history = History::new();
    let mut cluster = Cluster::start(&s, history.clone());

    // Setup, before faults.
    let setup = cluster.client_node("setup", 3);
    let deadline = history.now_ms() + SETUP_MS;
    let setup_result = setup
        .spawn(setup_topic(cluster.ctx.bootstrap.clone(), s.partitions, deadline, history.clone()))
        .await
        .expect("setup");
    if let Err(e) = setup_result {
        println!(
            "SIM-FAILURE seed={seed} mix={mix} schedule={} first=LIVENESS: setup did not complete in {SETUP_MS} ms: {e}",
            schedule_path.display()
        );
        panic!(
            "seed {seed} mix {mix}: cluster setup failed: {e} (replay: scripts/sim.sh --replay {})",
            schedule_path.display()
        );
    }
    let seen: Watched = Arc::new(Mutex::new(Seen::default()));
    let watcher = cluster.client_node("watcher", 3);
    // Only the overlap mix asks for the controller, so the older mixes' traces are unchanged.
    watcher.spawn(watch_leaders(cluster.ctx.clone(), seen.clone(), s.overlap()));
    history.record(Event::Phase { name: "safety".into() });
    for n in &cluster.nodes {
        n.disk.set_faults_enabled(true);
    }

    // Workloads.
    let mut producers = Vec::new();
    for (i, spec) in s.producers.iter().enumerate() {
        let node = cluster.client_node(&format!("producer-{i}"), 1);
        producers.push(node.spawn(workload::producer(cluster.ctx.clone(), i, spec.clone(), s.partitions)));
    }
    let mut consumers = Vec::new();
    for (i, parts) in s.consumers.iter().enumerate() {
        let node = cluster.client_node(&format!("consumer-{i}"), 2);
        consumers.push(node.spawn(workload::consumer(cluster.ctx.clone(), i, parts.clone())));
    }
    for i in 0..s.group_consumers {
        let node = cluster.client_node(&format!("group-consumer-{i}"), 4);
        consumers.push(node.spawn(workload::group_consumer(cluster.ctx.clone(), i, s.group_session_timeout_ms)));
    }

    // Safety phase: play the episodes. An episode starts at its time (in `cluster` and
    // `cluster-disk` only once the previous one has ended) and becomes timed steps; steps due
    // are applied before the next episode starts.
    let t0 = history.now_ms();
    let mut next = 0;
    let mut steps: BTreeMap<(u64, u64), Action> = BTreeMap::new();
    let mut step_seq = 0u64;
    while history.now_ms() < t0 + s.safety_ms {
        let now = history.now_ms() - t0;
        while let Some(entry) = steps.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let a = entry.remove();
            cluster.apply(a);
        }
        if (s.overlap() || steps.is_empty()) && next < s.episodes.len() && s.episodes[next].at_ms <= now {
            let e = s.episodes[next];
            next += 1;
            let i = resolve(e.target, &seen, s.nodes);
            let j = match e.peer {
                Some(p) => match resolve(p, &seen, s.nodes) {
                    j if j == i => (i + thread_rng().gen_range(1..s.nodes)) % s.nodes,
                    j => j,
                },
                None => i,
            };
            let peer = if e.peer.is_some() { format!(" and {}", node_name(j)) } else { String::new() };
            history.record(Event::Fault { what: format!("episode {e:?} hits {}{peer}", node_name(i)) });
            for (at, a) in episode_steps(&e, now, i, j, s.nodes) {
                if at <= now {
                    cluster.apply(a);
                } else {
                    steps.insert((at, step_seq), a);
                    step_seq += 1;
                }
            }
        }
        cluster.collect_disk_events();
        madsim::time::sleep(Duration::from_millis(TICK_MS)).await;
    }

    // Liveness phase.
    cluster.ctx.stop_producers.store(true, Ordering::SeqCst);
    cluster.heal();
    history.record(Event::Phase { name: "liveness".into() });
    let heal_ms = history.now_ms();
    let deadline = heal_ms + LIVENESS_MS;
    for p in producers {
        let _ = madsim::time::timeout(Duration::from_millis(DRAIN_MS), p).await;
    }
    let mut live = Liveness::default();
    let probe = cluster.client_node("probe", 3);
    live.probe_failed = probe.spawn(workload::probe(cluster.ctx.clone(), s.partitions, deadline)).await.expect("probe");
    let probe_ms = history.now_ms() - heal_ms;
    let reader = cluster.client_node("final-reader", 3);
    let finals = reader.spawn(workload::final_read(cluster.ctx.clone(), s.partitions, deadline)).await.expect("final");
    live.final_read_failed = finals.is_none();
    let hws: BTreeMap<i32, i64> = finals.iter().flatten().map(|(p, (hw, _))| (*p, *hw)).collect();
    // Consumers by assign on each of their partitions, and the group (some member) on every
    // partition, must catch up with the final high watermarks.
    (live.consumers_caught_up, live.group_caught_up) =
        workload::wait_for_catch_up(&cluster.ctx, &s.consumers, s.group_consumers > 0, s.partitions, &hws, deadline)
            .await;
    cluster.ctx.stop_consumers.store(true, Ordering::SeqCst);
    for c in consumers {
        let _ = madsim::time::timeout(Duration::from_millis(DRAIN_MS), c).await;
    }
    cluster.collect_disk_events();

    let end_ms = history.now_ms();
    let entries = history.entries();
    let report = checker::check(&entries, &live, end_ms);
    print!("{}", report.render());
    println!(
        "cluster: final high watermarks {hws:?}; probe acknowledged {:.1}s after healing",
        probe_ms as f64 / 1000.0
    );
    println!(
        "seed {seed} mix {mix}: simulated {:.1}s; {} events; trace hash {:016x}",
        end_ms as f64 / 1000.0,
        entries.len(),
        history.trace_hash()
    );
    if !report.ok() {
        println!("SIM-FAILURE seed={seed} mix={mix} schedule={} first={}", schedule_path.display(), report.headline());
        panic!(
            "seed {seed} mix {mix}: {} violations (replay: scripts/sim.sh --replay {})",
            report.violations.len(),
            schedule_path.display()
        );
    }
    let _ = std::fs::remove_file(&schedule_path);
}

/// The broker index an episode's target names now (the watcher's view), or a random one
/// (a random voter for the controller) when the watcher has not seen it.
fn resolve(t: Target, seen: &Watched, nodes: usize) -> usize {
    let known = |id: Option<i32>| id.filter(|&id| (1..=nodes as i32).contains(&id)).map(|id| id as usize - 1);
    match t {
        Target::Node(i) => i,
        Target::LeaderOf(p) => {
            let id = seen.lock().unwrap().leaders.get(&p).copied();
            known(id).unwrap_or_else(|| thread_rng().gen_range(0..nodes))
        }
        Target::Controller => {
            let id = seen.lock().unwrap().controller;
            known(id).unwrap_or_else(|| thread_rng().gen_range(0..NODES))
        }
    }
}

// Proves that acknowledged acks=all writes to a 3-node cluster (rf=3, min.insync=2) survive
// kills of leaders and followers, isolation of a node and disk faults, and that the cluster
// serves again once faults stop.
#[madsim::test]
async fn faults() {
    run(ClusterMix::Cluster).await;
}

// Proves the same with fsync EIO and ENOSPC injected on the brokers' and controllers' disks
// (metadata log, partition logs and the other stores): nodes whose storage failed fence the
// failed part, and the cluster serves again once an operator restarts them. Sweep it with
// `scripts/sim.sh --mix cluster-disk`.
#[madsim::test]
async fn faults_with_disk_errors() {
    run(ClusterMix::ClusterDisk).await;
}

// Proves the same under overlapping faults on 3- or 5-node clusters: crashes during
// isolations and during recovery, several nodes down at once (up to all), split brain (a node
// cut from the other brokers but not from clients), cut, one-way and flapping links between
// brokers, slow disks, the active controller as a target. Sweep it with
// `scripts/sim.sh --mix cluster-overlap`.
#[madsim::test]
async fn overlapping_faults() {
    run(ClusterMix::ClusterOverlap).await;
}
