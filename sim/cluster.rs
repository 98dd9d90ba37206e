//! Cluster scenarios: three combined broker+controller nodes (the production `Server::bind`
//! in cluster mode, Raft metadata quorum, replication by follower fetch), each on its own
//! simulated node and [`SimDisk`], a topic with replication factor 3 and
//! min.insync.replicas=2, acks=all producers and consumers, and a fault schedule drawn from
//! the seed.
//!
//! Safety phase: fault episodes that never overlap: kill+restart of a node (often the current
//! leader of a partition, found through metadata by a watcher), sometimes of two nodes at the
//! same moment (quorum and ISR majorities lost until they return), network isolation of a node
//! (`clog_node`), sometimes a second kill right after the previous node came back (before it
//! can have caught up), plus disk faults (fsync EIO, ENOSPC, torn and bit-flipped unsynced
//! tails at a crash) at low rates. Liveness phase: heal the network, start every node that is
//! down, restart any node whose disk failed (as an operator would), and within
//! [`LIVENESS_MS`] an acks=all write must succeed on every partition, every partition must be
//! read from its leader from log start to high watermark, and the consumers must catch up.
//! The swarm's [`checker`](crate::checker) judges the history: every acknowledged acks=all
//! record must be at its acknowledged offset in the final log (LOST), no offset may show two
//! values (INCONSISTENT), consumers must read densely (SKIP/NONMONOTONIC), and so on.
//!
//! Replay: the settings are written to `target/sim-failures/{mix}-{seed}.schedule` when a run
//! starts and removed when it passes, so any failure leaves its replay file behind
//! (`scripts/sim.sh --replay FILE` replays it; `RUNNEL_SIM_REPLAY=path` is what it sets, and
//! `RUNNEL_SIM_SCHEDULE_OUT=path` keeps a copy of any run's settings, `{seed}` and `{mix}`
//! replaced).
//!
//! Node layout: brokers `10.0.0.{1,2,3}` (node ids 1..3, broker index 0..2), producers
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
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;
use madsim::task::NodeId;
use runnel::client::{codes, Client};
use runnel::config::BrokerConfig;
use runnel::runtime::{SimDisk, SimDiskConfig};
use runnel::server::Server;

use crate::checker::{self, Liveness};
use crate::history::{Event, History};
use crate::settings::ProducerSpec;
use crate::workload::{self, Ctx, TOPIC};

/// Combined nodes in the cluster.
const NODES: usize = 3;
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

/// Which node an episode hits, resolved when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Broker index 0..NODES.
    Node(usize),
    /// The current leader of this partition (per the watcher), or a random node if unknown.
    LeaderOf(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Power loss (kill + `SimDisk::crash`), restart after the episode.
    Crash,
    /// `clog_node` for the episode, then `unclog_node`.
    Isolate,
    /// Power loss of the target and the next node at the same moment (the controller quorum and
    /// every partition's ISR lose their majority), both restarted after the episode.
    CrashTwo,
}

/// A fault episode during [at_ms, at_ms + dur_ms) after the safety phase starts; episodes never
/// overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Episode {
    at_ms: u64,
    dur_ms: u64,
    kind: Kind,
    target: Target,
}

/// Everything one cluster run is made of, drawn from the seed (or read from a replay file).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterSettings {
    /// `cluster` or `cluster-disk` (the test that runs it).
    mix: String,
    seed: u64,
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
    /// Draws the settings of one run from madsim's RNG. `disk_errors` false turns fsync EIO and
    /// ENOSPC off after the draw (so both tests draw the same sequence for a seed).
    fn generate(seed: u64, disk_errors: bool) -> ClusterSettings {
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
            episodes.push(Episode { at_ms: t, dur_ms, kind, target });
            // Sometimes the next fault comes right after this one ends: a node that just came
            // back has not caught up (or rejoined the ISR) yet.
            let gap = if rng.gen_bool(0.3) { rng.gen_range(20..300) } else { rng.gen_range(300..2_000) };
            t += dur_ms + gap;
        }
        // Drawn last so the draws above stay what they were before group consumers existed.
        let group_consumers = rng.gen_range(0..=2);
        let group_session_timeout_ms = rng.gen_range(1_000..6_000);
        let mut disk = disk;
        if !disk_errors {
            // Crashes still tear and flip unsynced tails; only fsync EIO and ENOSPC are off.
            disk.fsync_eio_per_mille = 0;
            disk.enospc_per_mille = 0;
        }
        ClusterSettings {
            mix: mix_name(disk_errors).to_string(),
            seed,
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
            let kind = match e.kind {
                Kind::Crash => "crash",
                Kind::Isolate => "isolate",
                Kind::CrashTwo => "crash_two",
            };
            let target = match e.target {
                Target::Node(i) => format!("node {i}"),
                Target::LeaderOf(p) => format!("leader_of {p}"),
            };
            let _ = writeln!(s, "episode = {} {} {kind} {target}", e.at_ms, e.dur_ms);
        }
        s
    }

    /// Parses [`ClusterSettings::to_text`]'s format.
    fn parse(text: &str) -> Result<ClusterSettings, String> {
        let mut s = ClusterSettings {
            mix: String::new(),
            seed: 0,
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
                "mix" if v == mix_name(false) || v == mix_name(true) => s.mix = v.to_string(),
                "mix" => return Err(err("unknown cluster mix")),
                "seed" => s.seed = num(v)?,
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
                "episode" => {
                    let w: Vec<&str> = v.split_whitespace().collect();
                    let [at, dur, kind, target, arg] = w[..] else { return Err(err("expected 5 fields")) };
                    let kind = match kind {
                        "crash" => Kind::Crash,
                        "isolate" => Kind::Isolate,
                        "crash_two" => Kind::CrashTwo,
                        _ => return Err(err("unknown episode kind")),
                    };
                    let target = match target {
                        "node" => match num(arg)? as usize {
                            i if i < NODES => Target::Node(i),
                            _ => return Err(err("no such node")),
                        },
                        "leader_of" => Target::LeaderOf(num(arg)? as i32),
                        _ => return Err(err("unknown episode target")),
                    };
                    s.episodes.push(Episode { at_ms: num(at)?, dur_ms: num(dur)?, kind, target });
                }
                _ => return Err(err("unknown key")),
            }
        }
        if s.mix.is_empty() {
            return Err("no mix line".into());
        }
        s.episodes.sort_by_key(|e| e.at_ms);
        Ok(s)
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "nodes={NODES} partitions={} rf=3 min.insync=2 segment_bytes={} replica.lag.time.max.ms={} request_timeout_ms={} producers(acks=all, batch_max, pause_max_ms)=[{}] consumers={:?} group_consumers={} (session {} ms) safety_ms={} disk={:?} episodes={}:",
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
            let _ = write!(s, " [{}ms +{}ms {:?} {:?}]", e.at_ms, e.dur_ms, e.kind, e.target);
        }
        s
    }
}

fn node_config(s: &ClusterSettings, i: usize) -> Arc<BrokerConfig> {
    let voters: Vec<String> = (0..NODES).map(|j| format!("{}@{}:{CONTROLLER_PORT}", j + 1, node_ip(j))).collect();
    Arc::new(
        BrokerConfig::from_pairs([
            ("node.id", (i + 1).to_string()),
            ("process.roles", "broker,controller".to_string()),
            (
                "listeners",
                format!("PLAINTEXT://{ip}:{BROKER_PORT},CONTROLLER://{ip}:{CONTROLLER_PORT}", ip = node_ip(i)),
            ),
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
    isolated: bool,
    storage_error_since_restart: bool,
}

struct Cluster {
    handle: Handle,
    history: History,
    ctx: Ctx,
    nodes: Vec<Node>,
    epoch_ms: i64,
    next_client_ip: u8,
}

impl Cluster {
    fn start(s: &ClusterSettings, history: History) -> Cluster {
        let handle = Handle::current();
        let mut nodes = Vec::new();
        for i in 0..NODES {
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
            nodes.push(Node { id: node.id(), disk, up: true, isolated: false, storage_error_since_restart: false });
        }
        let bootstrap: Vec<String> = (0..NODES).map(|i| format!("{}:{BROKER_PORT}", node_ip(i))).collect();
        let ctx = Ctx::new(history.clone(), bootstrap.join(","), Duration::from_millis(s.request_timeout_ms));
        let epoch_ms = runnel::runtime::now_ms() - history.now_ms() as i64;
        Cluster { handle, history, ctx, nodes, epoch_ms, next_client_ip: 1 }
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
        self.handle.kill(self.nodes[i].id);
        self.nodes[i].disk.crash();
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

    fn isolate(&mut self, i: usize) {
        NetSim::current().clog_node(self.nodes[i].id);
        self.nodes[i].isolated = true;
        self.history.record(Event::Fault { what: format!("isolate {}", node_name(i)) });
    }

    fn unisolate(&mut self, i: usize) {
        NetSim::current().unclog_node(self.nodes[i].id);
        self.nodes[i].isolated = false;
        self.history.record(Event::Fault { what: format!("heal {}", node_name(i)) });
    }

    /// Ends the safety phase: heal the network, stop disk faults, restart nodes whose disk
    /// failed, start every node that is down.
    fn heal(&mut self) {
        self.collect_disk_events();
        for i in 0..NODES {
            if self.nodes[i].isolated {
                self.unisolate(i);
            }
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

/// Leaders per partition, as the watcher last saw them (node id), with the time it saw them.
type Leaders = Arc<Mutex<BTreeMap<i32, i32>>>;

/// Polls metadata on a helper node and records each partition's leader.
async fn watch_leaders(ctx: Ctx, leaders: Leaders) {
    let mut client: Option<Client> = None;
    loop {
        if client.is_none() {
            client = Client::connect_with_timeout(&ctx.bootstrap, "sim-watcher", Duration::from_millis(500)).await.ok();
        }
        if let Some(c) = client.as_mut() {
            match c.metadata(Some(vec![TOPIC.to_string()])).await {
                Ok(m) => {
                    let mut l = leaders.lock().unwrap();
                    for t in m.topics.iter().filter(|t| t.name == TOPIC) {
                        for p in &t.partitions {
                            if p.leader_id >= 0 {
                                l.insert(p.partition, p.leader_id);
                            }
                        }
                    }
                }
                Err(_) => client = None,
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

/// The mix name of a test, as `scripts/sim.sh --mix` and replay files spell it.
fn mix_name(disk_errors: bool) -> &'static str {
    if disk_errors {
        "cluster-disk"
    } else {
        "cluster"
    }
}

/// Runs one seed (or the replay file in `RUNNEL_SIM_REPLAY`). Panics (failing the test,
/// printing the seed and the replay file) on a violation.
///
/// The settings are written to `target/sim-failures/{mix}-{seed}.schedule` before the run and
/// removed when it passes, so the file is left behind by any failure, a checker violation or a
/// panic inside a node alike.
pub async fn run(disk_errors: bool) {
    let seed = Handle::current().seed();
    let mix = mix_name(disk_errors);
    // Drawn even when replaying, so the RNG stream after it is the one the seed produces.
    let generated = ClusterSettings::generate(seed, disk_errors);
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
    let leaders: Leaders = Arc::new(Mutex::new(BTreeMap::new()));
    let watcher = cluster.client_node("watcher", 3);
    watcher.spawn(watch_leaders(cluster.ctx.clone(), leaders.clone()));
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

    // Safety phase: play the episodes; at most one episode at a time (one node down or
    // isolated, or two nodes down at once in a CrashTwo episode).
    let t0 = history.now_ms();
    let mut next = 0;
    let mut active: Option<(u64, Kind, usize)> = None; // end time, kind, node
    while history.now_ms() < t0 + s.safety_ms {
        let now = history.now_ms() - t0;
        if let Some((end, kind, i)) = active {
            if now >= end {
                match kind {
                    Kind::Crash => cluster.restart(i),
                    Kind::Isolate => cluster.unisolate(i),
                    Kind::CrashTwo => {
                        cluster.restart(i);
                        cluster.restart((i + 1) % NODES);
                    }
                }
                active = None;
            }
        }
        if active.is_none() && next < s.episodes.len() && s.episodes[next].at_ms <= now {
            let e = s.episodes[next];
            next += 1;
            let i = match e.target {
                Target::Node(i) => i,
                Target::LeaderOf(p) => match leaders.lock().unwrap().get(&p) {
                    Some(&id) if (1..=NODES as i32).contains(&id) => id as usize - 1,
                    _ => thread_rng().gen_range(0..NODES),
                },
            };
            history.record(Event::Fault { what: format!("episode {e:?} hits {}", node_name(i)) });
            match e.kind {
                Kind::Crash => cluster.crash(i, "power loss"),
                Kind::Isolate => cluster.isolate(i),
                Kind::CrashTwo => {
                    cluster.crash(i, "power loss (two nodes at once)");
                    cluster.crash((i + 1) % NODES, "power loss (two nodes at once)");
                }
            }
            active = Some((now + e.dur_ms, e.kind, i));
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

// Proves that acknowledged acks=all writes to a 3-node cluster (rf=3, min.insync=2) survive
// kills of leaders and followers, isolation of a node and disk faults, and that the cluster
// serves again once faults stop.
#[madsim::test]
async fn faults() {
    run(false).await;
}

// Proves the same with fsync EIO and ENOSPC injected on the brokers' and controllers' disks
// (metadata log, partition logs and the other stores): nodes whose storage failed fence the
// failed part, and the cluster serves again once an operator restarts them. Sweep it with
// `scripts/sim.sh --mix cluster-disk`.
#[madsim::test]
async fn faults_with_disk_errors() {
    run(true).await;
}
