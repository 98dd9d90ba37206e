//! One seed's "swarm": the cluster shape, workload mix, fault rates and the whole fault
//! schedule, drawn up front from madsim's RNG so a run is fully described by this value.
//!
//! A run can write it to a file (`RUNNEL_SIM_SCHEDULE_OUT=path`) and replay it
//! (`RUNNEL_SIM_REPLAY=path`): the replayed run draws the same values from the RNG (so the
//! RNG stream, and with it the workload, stays identical) and then uses the file's values.
//! Editing the file (removing faults, to shrink a failure) gives a different but still
//! deterministic run.

use std::fmt::Write as _;

use madsim::rand::{thread_rng, Rng};
use runnel::runtime::{SimDiskConfig, SimDiskLatency};

/// The broker's node names are `broker-{i}`; clients are `producer-{i}`, `consumer-{i}` and
/// `group-consumer-{i}`.
pub fn broker_name(i: usize) -> String {
    format!("broker-{i}")
}

/// Which faults a test run emphasises. Each is a separate test so CI covers every mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Broker crashes with torn, bit-flipped unsynced tails.
    Crashes,
    /// fsync EIO and ENOSPC plus a few crashes.
    Disk,
    /// Clogged client links, clogged broker, flapping; rare crashes.
    Network,
    /// Idempotent producers retrying through clogs and crashes.
    Idempotent,
    /// Everything at once.
    Mixed,
}

impl Mix {
    pub fn name(self) -> &'static str {
        match self {
            Mix::Crashes => "crashes",
            Mix::Disk => "disk",
            Mix::Network => "network",
            Mix::Idempotent => "idempotent",
            Mix::Mixed => "mixed",
        }
    }

    pub fn parse(s: &str) -> Option<Mix> {
        [Mix::Crashes, Mix::Disk, Mix::Network, Mix::Idempotent, Mix::Mixed].into_iter().find(|m| m.name() == s)
    }
}

/// One producer client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSpec {
    /// -1 (all) or 1 (leader).
    pub acks: i16,
    /// Uses a producer id and sequences (the broker must drop retried duplicates).
    pub idempotent: bool,
    /// Records per batch, 1..=this.
    pub batch_max: u32,
    /// Pause between batches, 0..this ms.
    pub pause_max_ms: u64,
}

/// One scheduled fault action (faults come in pairs: kill/restart, clog/unclog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Kill a broker and lose its unsynced data (power loss).
    Crash(usize),
    /// Start a killed broker again (recovery runs).
    Restart(usize),
    /// Delay every packet to and from a node.
    ClogNode(String),
    UnclogNode(String),
    /// Delay packets in both directions between two nodes.
    ClogLink(String, String),
    UnclogLink(String, String),
    /// A broker's disk becomes slow: every service time is multiplied by the factor.
    SlowDisk(usize, u32),
    /// The broker's disk is back to normal speed.
    FastDisk(usize),
}

/// A fault action at a simulated time (ms after the workload starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub at_ms: u64,
    pub action: Action,
}

/// Everything one run is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mix: Mix,
    pub seed: u64,
    pub brokers: usize,
    pub partitions: i32,
    pub segment_bytes: u64,
    pub flush_messages: i64,
    pub request_timeout_ms: u64,
    pub producers: Vec<ProducerSpec>,
    /// Partitions each consumer is assigned (every partition has at least one consumer).
    pub consumers: Vec<Vec<i32>>,
    /// Consumers that subscribe to the topic in one consumer group (they share its partitions).
    pub group_consumers: usize,
    /// Their session timeout (a member silent this long is evicted and the group rebalances).
    pub group_session_timeout_ms: u64,
    pub safety_ms: u64,
    pub liveness_ms: u64,
    pub disk: SimDiskConfig,
    /// Mean service times of each broker's disk.
    pub latency: SimDiskLatency,
    /// Seed of each broker's disk fault generator.
    pub disk_seed: u64,
    pub schedule: Vec<Fault>,
}

fn chance(per_mille: u32) -> bool {
    thread_rng().gen_range(0..1000) < per_mille
}

impl Settings {
    /// Draws a swarm for `mix` from madsim's RNG.
    pub fn generate(mix: Mix, seed: u64) -> Settings {
        let mut rng = thread_rng();
        let brokers = 1;
        let partitions = rng.gen_range(1..=4);
        let segment_bytes = *[1024u64, 4096, 16 * 1024, 1 << 20].get(rng.gen_range(0..4)).unwrap();
        let flush_messages = if chance(300) { rng.gen_range(1..50) } else { i64::MAX / 2 };
        let n_producers = rng.gen_range(1..=4);
        let producers = (0..n_producers)
            .map(|_| ProducerSpec {
                acks: if chance(700) { -1 } else { 1 },
                idempotent: match mix {
                    Mix::Idempotent => true,
                    Mix::Mixed => chance(400),
                    _ => false,
                },
                batch_max: rng.gen_range(1..=8),
                pause_max_ms: rng.gen_range(1..=40),
            })
            .collect();
        let n_consumers = rng.gen_range(1..=3);
        let mut consumers: Vec<Vec<i32>> = vec![Vec::new(); n_consumers];
        for p in 0..partitions {
            consumers[rng.gen_range(0..n_consumers)].push(p);
            for c in consumers.iter_mut() {
                if chance(300) && !c.contains(&p) {
                    c.push(p);
                }
            }
        }
        consumers.retain(|c| !c.is_empty());
        for c in consumers.iter_mut() {
            c.sort_unstable();
        }
        let group_consumers = rng.gen_range(1..=3);
        let group_session_timeout_ms = rng.gen_range(1_000..6_000);
        let safety_ms = rng.gen_range(3_000..8_000);
        let disk = match mix {
            Mix::Crashes => SimDiskConfig { tear_per_mille: 500, bitflip_per_mille: 300, ..Default::default() },
            Mix::Disk | Mix::Mixed => SimDiskConfig {
                fsync_eio_per_mille: rng.gen_range(1..30),
                enospc_per_mille: rng.gen_range(0..10),
                tear_per_mille: 500,
                bitflip_per_mille: 300,
            },
            Mix::Network | Mix::Idempotent => {
                SimDiskConfig { tear_per_mille: 300, bitflip_per_mille: 100, ..Default::default() }
            }
        };
        let (crashes, clogs) = match mix {
            Mix::Crashes => (rng.gen_range(1..=5), 0),
            Mix::Disk => (rng.gen_range(0..=3), 0),
            Mix::Network => (rng.gen_range(0..=1), rng.gen_range(2..=8)),
            Mix::Idempotent => (rng.gen_range(0..=2), rng.gen_range(1..=5)),
            Mix::Mixed => (rng.gen_range(1..=4), rng.gen_range(1..=6)),
        };
        let mut schedule = Vec::new();
        // Crashes never overlap: each one's restart comes before the next crash.
        let mut t = 0;
        for _ in 0..crashes {
            let at = t + rng.gen_range(100..safety_ms / (crashes as u64 + 1) + 200);
            if at >= safety_ms {
                break;
            }
            let down = rng.gen_range(10..800);
            schedule.push(Fault { at_ms: at, action: Action::Crash(0) });
            schedule.push(Fault { at_ms: at + down, action: Action::Restart(0) });
            t = at + down;
        }
        let clients: Vec<String> = (0..n_producers)
            .map(|i| format!("producer-{i}"))
            .chain((0..consumers.len()).map(|i| format!("consumer-{i}")))
            .chain((0..group_consumers).map(|i| format!("group-consumer-{i}")))
            .collect();
        for _ in 0..clogs {
            let at = rng.gen_range(0..safety_ms);
            // Short clogs flap; long ones outlast the request timeout.
            let len = if chance(500) { rng.gen_range(5..200) } else { rng.gen_range(200..4000) };
            let (on, off) = match rng.gen_range(0..3) {
                0 => {
                    let n = broker_name(0);
                    (Action::ClogNode(n.clone()), Action::UnclogNode(n))
                }
                1 => {
                    let c = clients[rng.gen_range(0..clients.len())].clone();
                    (Action::ClogNode(c.clone()), Action::UnclogNode(c))
                }
                _ => {
                    let c = clients[rng.gen_range(0..clients.len())].clone();
                    (Action::ClogLink(c.clone(), broker_name(0)), Action::UnclogLink(c, broker_name(0)))
                }
            };
            schedule.push(Fault { at_ms: at, action: on });
            schedule.push(Fault { at_ms: (at + len).min(safety_ms), action: off });
        }
        // Disk latency: an SSD-like device (tens of microseconds per write, milliseconds per
        // fsync); the disk-heavy mixes add "slow disk" episodes (a dying or saturated device).
        let latency = SimDiskLatency {
            write_us: rng.gen_range(10..200),
            sync_us: rng.gen_range(200..5_000),
            read_us: rng.gen_range(10..100),
        };
        let slow_episodes = match mix {
            Mix::Disk | Mix::Mixed => rng.gen_range(0..=2),
            _ => 0,
        };
        for _ in 0..slow_episodes {
            let at = rng.gen_range(0..safety_ms);
            let len = rng.gen_range(200..3_000);
            let factor = *[10u32, 50, 200].get(rng.gen_range(0..3)).unwrap();
            schedule.push(Fault { at_ms: at, action: Action::SlowDisk(0, factor) });
            schedule.push(Fault { at_ms: (at + len).min(safety_ms), action: Action::FastDisk(0) });
        }
        schedule.sort_by_key(|f| f.at_ms);
        Settings {
            mix,
            seed,
            brokers,
            partitions,
            segment_bytes,
            flush_messages,
            request_timeout_ms: rng.gen_range(500..3_000),
            producers,
            consumers,
            group_consumers,
            group_session_timeout_ms,
            safety_ms,
            liveness_ms: 30_000,
            disk,
            latency,
            disk_seed: rng.gen(),
            schedule,
        }
    }

    /// The replayable text form: `key = value` lines, then one `fault` line per action.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# runnel simulation schedule; replay with scripts/sim.sh --replay FILE");
        let _ = writeln!(s, "mix = {}", self.mix.name());
        let _ = writeln!(s, "seed = {}", self.seed);
        let _ = writeln!(s, "brokers = {}", self.brokers);
        let _ = writeln!(s, "partitions = {}", self.partitions);
        let _ = writeln!(s, "segment_bytes = {}", self.segment_bytes);
        let _ = writeln!(s, "flush_messages = {}", self.flush_messages);
        let _ = writeln!(s, "request_timeout_ms = {}", self.request_timeout_ms);
        for p in &self.producers {
            let _ = writeln!(
                s,
                "producer = acks={} idempotent={} batch_max={} pause_max_ms={}",
                p.acks, p.idempotent, p.batch_max, p.pause_max_ms
            );
        }
        for c in &self.consumers {
            let parts: Vec<String> = c.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(s, "consumer = {}", parts.join(","));
        }
        let _ = writeln!(s, "group_consumers = {}", self.group_consumers);
        let _ = writeln!(s, "group_session_timeout_ms = {}", self.group_session_timeout_ms);
        let _ = writeln!(s, "safety_ms = {}", self.safety_ms);
        let _ = writeln!(s, "liveness_ms = {}", self.liveness_ms);
        let d = &self.disk;
        let _ = writeln!(
            s,
            "disk = fsync_eio_per_mille={} enospc_per_mille={} tear_per_mille={} bitflip_per_mille={}",
            d.fsync_eio_per_mille, d.enospc_per_mille, d.tear_per_mille, d.bitflip_per_mille
        );
        let l = &self.latency;
        let _ = writeln!(s, "latency = write_us={} sync_us={} read_us={}", l.write_us, l.sync_us, l.read_us);
        let _ = writeln!(s, "disk_seed = {}", self.disk_seed);
        for f in &self.schedule {
            let a = match &f.action {
                Action::Crash(b) => format!("crash {b}"),
                Action::Restart(b) => format!("restart {b}"),
                Action::ClogNode(n) => format!("clog_node {n}"),
                Action::UnclogNode(n) => format!("unclog_node {n}"),
                Action::ClogLink(a, b) => format!("clog_link {a} {b}"),
                Action::UnclogLink(a, b) => format!("unclog_link {a} {b}"),
                Action::SlowDisk(b, f) => format!("slow_disk {b} {f}"),
                Action::FastDisk(b) => format!("fast_disk {b}"),
            };
            let _ = writeln!(s, "fault = {} {a}", f.at_ms);
        }
        s
    }

    /// Parses [`Settings::to_text`]'s format.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let mut s = Settings {
            mix: Mix::Mixed,
            seed: 0,
            brokers: 1,
            partitions: 1,
            segment_bytes: 1 << 20,
            flush_messages: i64::MAX / 2,
            request_timeout_ms: 1000,
            producers: Vec::new(),
            consumers: Vec::new(),
            group_consumers: 0,
            group_session_timeout_ms: 6_000,
            safety_ms: 5000,
            liveness_ms: 30_000,
            disk: SimDiskConfig::default(),
            latency: SimDiskLatency::default(),
            disk_seed: 0,
            schedule: Vec::new(),
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
            let (k, v) = line.split_once('=').ok_or_else(|| err("expected key = value"))?;
            let (k, v) = (k.trim(), v.trim());
            let num = |v: &str| v.parse::<i64>().map_err(|_| err("expected a number"));
            let kv = |v: &str| -> Vec<(String, String)> {
                v.split_whitespace()
                    .filter_map(|p| p.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
                    .collect()
            };
            match k {
                "mix" => s.mix = Mix::parse(v).ok_or_else(|| err("unknown mix"))?,
                "seed" => s.seed = v.parse().map_err(|_| err("expected a number"))?,
                "brokers" => s.brokers = num(v)? as usize,
                "partitions" => s.partitions = num(v)? as i32,
                "segment_bytes" => s.segment_bytes = num(v)? as u64,
                "flush_messages" => s.flush_messages = num(v)?,
                "request_timeout_ms" => s.request_timeout_ms = num(v)? as u64,
                "safety_ms" => s.safety_ms = num(v)? as u64,
                "group_consumers" => s.group_consumers = num(v)? as usize,
                "group_session_timeout_ms" => s.group_session_timeout_ms = num(v)? as u64,
                "latency" => {
                    for (a, b) in kv(v) {
                        let x = num(&b)? as u32;
                        match a.as_str() {
                            "write_us" => s.latency.write_us = x,
                            "sync_us" => s.latency.sync_us = x,
                            "read_us" => s.latency.read_us = x,
                            _ => return Err(err("unknown latency field")),
                        }
                    }
                }
                "liveness_ms" => s.liveness_ms = num(v)? as u64,
                "disk_seed" => s.disk_seed = v.parse().map_err(|_| err("expected a number"))?,
                "producer" => {
                    let mut p = ProducerSpec { acks: -1, idempotent: false, batch_max: 1, pause_max_ms: 10 };
                    for (a, b) in kv(v) {
                        match a.as_str() {
                            "acks" => p.acks = num(&b)? as i16,
                            "idempotent" => p.idempotent = b == "true",
                            "batch_max" => p.batch_max = num(&b)? as u32,
                            "pause_max_ms" => p.pause_max_ms = num(&b)? as u64,
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
                "fault" => {
                    let w: Vec<&str> = v.split_whitespace().collect();
                    let at_ms = num(w.first().ok_or_else(|| err("missing time"))?)? as u64;
                    let arg = |i: usize| w.get(i).map(|x| x.to_string()).ok_or_else(|| err("missing argument"));
                    let action = match w.get(1).copied() {
                        Some("crash") => Action::Crash(num(&arg(2)?)? as usize),
                        Some("restart") => Action::Restart(num(&arg(2)?)? as usize),
                        Some("clog_node") => Action::ClogNode(arg(2)?),
                        Some("unclog_node") => Action::UnclogNode(arg(2)?),
                        Some("clog_link") => Action::ClogLink(arg(2)?, arg(3)?),
                        Some("unclog_link") => Action::UnclogLink(arg(2)?, arg(3)?),
                        Some("slow_disk") => Action::SlowDisk(num(&arg(2)?)? as usize, num(&arg(3)?)? as u32),
                        Some("fast_disk") => Action::FastDisk(num(&arg(2)?)? as usize),
                        _ => return Err(err("unknown fault")),
                    };
                    s.schedule.push(Fault { at_ms, action });
                }
                _ => return Err(err("unknown key")),
            }
        }
        s.schedule.sort_by_key(|f| f.at_ms);
        Ok(s)
    }

    /// One line per setting, for the start of a run's output.
    pub fn summary(&self) -> String {
        let acks: Vec<String> =
            self.producers.iter().map(|p| format!("{}{}", p.acks, if p.idempotent { "i" } else { "" })).collect();
        format!(
            "mix={} brokers={} partitions={} segment_bytes={} flush_messages={} request_timeout_ms={} producers(acks)=[{}] consumers={:?} group_consumers={} (session {} ms) safety_ms={} disk={:?} latency={:?} faults={}",
            self.mix.name(),
            self.brokers,
            self.partitions,
            self.segment_bytes,
            self.flush_messages,
            self.request_timeout_ms,
            acks.join(","),
            self.consumers,
            self.group_consumers,
            self.group_session_timeout_ms,
            self.safety_ms,
            self.disk,
            self.latency,
            self.schedule.len()
        )
    }
}
