//! The swarm test: one seed draws a whole run ([`Settings`]), the production broker runs on
//! simulated nodes over a [`SimDisk`], client workloads run on their own nodes, a fault
//! schedule is played during the safety phase, then faults stop and the liveness phase
//! demands that the broker serves and that everything acknowledged is readable. The
//! [`checker`](crate::checker) judges the history; the trace hash is printed last.
//!
//! Node layout (fixed addresses, so more brokers and clients plug in): brokers at
//! 10.0.0.{i+1}, producers at 10.0.1.{i+1}, consumers by assign at 10.0.2.{i+1}, subscribing
//! (consumer group) consumers at 10.0.4.{i+1}, helpers at 10.0.3.x.
//!
//! Environment: `RUNNEL_SIM_SCHEDULE_OUT=path` writes the settings and schedule (`{seed}` and
//! `{mix}` in the path are replaced); `RUNNEL_SIM_REPLAY=path` replays one; a failing run
//! always writes `target/sim-failures/{mix}-{seed}.schedule`. `RUNNEL_SIM_LOG=filter` turns on
//! tracing (stamped with simulated time), e.g. `RUNNEL_SIM_LOG=info,runnel_sim=debug`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use madsim::time::Instant;
use runnel::client::Client;
use runnel::config::BrokerConfig;
use runnel::runtime::{SimDisk, SimDiskPlugin};
use runnel::server::Server;

use crate::checker::{self, Liveness};
use crate::history::{Event, History};
use crate::settings::{broker_name, Action, Mix, Settings};
use crate::workload::{self, Ctx, TOPIC};

const PORT: u16 = 9092;
/// Simulated time allowed for the workload's stragglers to finish after the safety phase.
const DRAIN_MS: u64 = 5_000;
/// How often the fault controller wakes to play the schedule and collect disk events.
const TICK_MS: u64 = 20;

fn broker_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

fn broker_config(s: &Settings, i: usize) -> Arc<BrokerConfig> {
    Arc::new(
        BrokerConfig::from_pairs([
            ("listeners", format!("PLAINTEXT://{}:{PORT}", broker_ip(i))),
            ("log.dirs", "/data".to_string()),
            ("log.segment.bytes", s.segment_bytes.to_string()),
            ("log.flush.interval.messages", s.flush_messages.to_string()),
            // Short group timings, so rebalances and session expiries happen within a run.
            ("group.initial.rebalance.delay.ms", "100".to_string()),
            ("group.min.session.timeout.ms", "500".to_string()),
        ])
        .expect("broker config"),
    )
}

/// Tracing with simulated time: seconds since the run started.
struct SimTime;

static RUN_START: OnceLock<Mutex<Option<Instant>>> = OnceLock::new();

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let start = RUN_START.get().and_then(|m| *m.lock().unwrap());
        match start {
            Some(s) => write!(w, "{:>9.3}s", s.elapsed().as_secs_f64()),
            None => write!(w, "        -"),
        }
    }
}

fn init_tracing() {
    *RUN_START.get_or_init(|| Mutex::new(None)).lock().unwrap() = Some(Instant::now());
    let filter = std::env::var("RUNNEL_SIM_LOG").unwrap_or_else(|_| "off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_timer(SimTime)
        .with_target(true)
        .with_ansi(false)
        .try_init();
}

/// One broker node and the disk that outlives its restarts.
struct BrokerNode {
    id: NodeId,
    disk: SimDisk,
    /// Set when its disk failed an fsync (EIO) or a write (ENOSPC) since the last restart: the
    /// broker takes the log offline until it restarts, as Kafka does with a failed log dir.
    storage_error_since_restart: bool,
    up: bool,
}

struct Cluster {
    handle: Handle,
    history: History,
    ctx: Ctx,
    brokers: Vec<BrokerNode>,
    nodes: BTreeMap<String, NodeId>,
    /// History-relative ms of the disk clock's zero (disk events carry `runtime::now_ms`).
    epoch_ms: i64,
    clogged_nodes: Vec<String>,
    clogged_links: Vec<(String, String)>,
}

impl Cluster {
    fn start(s: &Settings, history: History) -> Cluster {
        let handle = Handle::current();
        // Every kill of a broker node power-fails its disk through madsim's plugin hook.
        handle.add_simulator::<SimDiskPlugin>();
        let plugin = madsim::plugin::simulator::<SimDiskPlugin>();
        let mut brokers = Vec::new();
        let mut nodes = BTreeMap::new();
        for i in 0..s.brokers {
            let disk = SimDisk::new(s.disk_seed.wrapping_add(i as u64), s.disk);
            disk.set_latency(s.latency);
            let d = disk.clone();
            let cfg = broker_config(s, i);
            let node = handle
                .create_node()
                .name(broker_name(i))
                .ip(broker_ip(i))
                .init(move || {
                    let disk = d.clone();
                    let cfg = cfg.clone();
                    async move {
                        // A supervisor would restart a broker that fails to start (its
                        // recovery may hit an injected fault); so does this loop.
                        loop {
                            match Server::bind(cfg.clone(), Arc::new(disk.clone())).await {
                                Ok(server) => return server.run(std::future::pending()).await,
                                Err(e) => {
                                    tracing::error!(error = %e, "broker failed to start; retrying");
                                    madsim::time::sleep(Duration::from_millis(500)).await;
                                }
                            }
                        }
                    }
                })
                .build();
            plugin.attach(node.id(), disk.clone());
            nodes.insert(broker_name(i), node.id());
            brokers.push(BrokerNode { id: node.id(), disk, storage_error_since_restart: false, up: true });
        }
        let bootstrap: Vec<String> = (0..s.brokers).map(|i| SocketAddr::new(broker_ip(i), PORT).to_string()).collect();
        let ctx = Ctx::new(history.clone(), bootstrap.join(","), Duration::from_millis(s.request_timeout_ms));
        let epoch_ms = runnel::runtime::now_ms() - history.now_ms() as i64;
        Cluster { handle, history, ctx, brokers, nodes, epoch_ms, clogged_nodes: Vec::new(), clogged_links: Vec::new() }
    }

    fn client_node(&mut self, name: &str, ip: Ipv4Addr) -> madsim::runtime::NodeHandle {
        let node = self.handle.create_node().name(name).ip(IpAddr::V4(ip)).build();
        self.nodes.insert(name.to_string(), node.id());
        node
    }

    fn node(&self, name: &str) -> NodeId {
        *self.nodes.get(name).unwrap_or_else(|| panic!("schedule names unknown node {name}"))
    }

    /// Moves the disks' fault logs into the history.
    fn collect_disk_events(&mut self) {
        for (i, b) in self.brokers.iter_mut().enumerate() {
            for ev in b.disk.take_events() {
                if ev.what.starts_with("EIO") || ev.what.starts_with("ENOSPC") {
                    b.storage_error_since_restart = true;
                }
                let at_ms = (ev.at_ms - self.epoch_ms).max(0) as u64;
                self.history.record(Event::DiskFault { at_ms, broker: i, what: ev.what });
            }
        }
    }

    fn crash(&mut self, b: usize, why: &str) {
        self.collect_disk_events();
        // The kill power-fails the node's disk: madsim calls SimDiskPlugin::reset_node.
        self.handle.kill(self.brokers[b].id);
        self.brokers[b].up = false;
        let inc = self.ctx.incarnation.fetch_add(1, Ordering::SeqCst) + 1;
        self.history.record(Event::Crash { broker: b, incarnation: inc, why: why.into() });
        self.collect_disk_events();
    }

    fn restart(&mut self, b: usize) {
        self.handle.restart(self.brokers[b].id);
        self.brokers[b].up = true;
        self.brokers[b].storage_error_since_restart = false;
        self.history.record(Event::Fault { what: format!("restart {}", broker_name(b)) });
    }

    fn apply(&mut self, action: &Action) {
        let net = NetSim::current();
        match action {
            Action::Crash(b) if self.brokers[*b].up => self.crash(*b, "power loss"),
            Action::Restart(b) if !self.brokers[*b].up => self.restart(*b),
            Action::Crash(_) | Action::Restart(_) => return,
            Action::ClogNode(n) => {
                net.clog_node(self.node(n));
                self.clogged_nodes.push(n.clone());
            }
            Action::UnclogNode(n) => {
                net.unclog_node(self.node(n));
                self.clogged_nodes.retain(|x| x != n);
            }
            Action::ClogLink(a, b) => {
                net.clog_link(self.node(a), self.node(b));
                net.clog_link(self.node(b), self.node(a));
                self.clogged_links.push((a.clone(), b.clone()));
            }
            Action::UnclogLink(a, b) => {
                net.unclog_link(self.node(a), self.node(b));
                net.unclog_link(self.node(b), self.node(a));
                self.clogged_links.retain(|x| x != &(a.clone(), b.clone()));
            }
            Action::SlowDisk(b, factor) => self.brokers[*b].disk.set_slow_factor(*factor),
            Action::FastDisk(b) => self.brokers[*b].disk.set_slow_factor(1),
        }
        if !matches!(action, Action::Crash(_) | Action::Restart(_)) {
            self.history.record(Event::Fault { what: format!("{action:?}") });
        }
    }

    /// Ends the safety phase: heal the network, start dead brokers, stop disk faults, and
    /// restart (as an operator would) any broker whose disk failed an fsync.
    fn heal(&mut self) {
        let net = NetSim::current();
        for n in std::mem::take(&mut self.clogged_nodes) {
            net.unclog_node(self.node(&n));
        }
        for (a, b) in std::mem::take(&mut self.clogged_links) {
            net.unclog_link(self.node(&a), self.node(&b));
            net.unclog_link(self.node(&b), self.node(&a));
        }
        self.collect_disk_events();
        for b in 0..self.brokers.len() {
            self.brokers[b].disk.set_faults_enabled(false);
            self.brokers[b].disk.set_slow_factor(1);
            if self.brokers[b].up && self.brokers[b].storage_error_since_restart {
                self.crash(b, "operator restart after a storage error");
            }
            if !self.brokers[b].up {
                self.restart(b);
            }
        }
        self.history.record(Event::Fault { what: "faults stop".into() });
    }
}

fn schedule_path(template: &str, s: &Settings) -> String {
    template.replace("{seed}", &s.seed.to_string()).replace("{mix}", s.mix.name())
}

/// Runs one seed of `mix`. Panics (failing the test, printing the seed) on a violation.
pub async fn run(mix: Mix) {
    let seed = Handle::current().seed();
    init_tracing();
    let generated = Settings::generate(mix, seed);
    let settings = match std::env::var("RUNNEL_SIM_REPLAY") {
        Ok(path) => {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
            let s = Settings::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            if s.mix != mix {
                println!("replay {path} is for mix {}; skipping mix {}", s.mix.name(), mix.name());
                return;
            }
            assert_eq!(
                s.seed, seed,
                "replay {path} needs MADSIM_TEST_SEED={} (scripts/sim.sh --replay sets it)",
                s.seed
            );
            if s != generated {
                println!("replay: the schedule differs from what seed {seed} generates (edited file)");
            }
            s
        }
        Err(_) => generated,
    };
    println!("seed {seed} mix {}", mix.name());
    println!("settings: {}", settings.summary());
    if let Ok(t) = std::env::var("RUNNEL_SIM_SCHEDULE_OUT") {
        let path = schedule_path(&t, &settings);
        std::fs::write(&path, settings.to_text()).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }

    let history = History::new();
    let mut cluster = Cluster::start(&settings, history.clone());
    madsim::time::sleep(Duration::from_millis(100)).await;

    // Setup, before faults: the topic.
    let setup = cluster.client_node("setup", Ipv4Addr::new(10, 0, 3, 1));
    let (boot, parts) = (cluster.ctx.bootstrap.clone(), settings.partitions);
    setup
        .spawn(async move {
            let mut c = Client::connect(&boot, "sim-setup").await.expect("setup connects");
            c.create_topic(TOPIC, parts, 1, vec![]).await.expect("create topic");
        })
        .await
        .expect("setup");
    history.record(Event::Phase { name: "safety".into() });
    for b in &cluster.brokers {
        b.disk.set_faults_enabled(true);
    }

    // Workloads.
    let mut producers = Vec::new();
    for (i, spec) in settings.producers.iter().enumerate() {
        let node = cluster.client_node(&format!("producer-{i}"), Ipv4Addr::new(10, 0, 1, i as u8 + 1));
        producers.push(node.spawn(workload::producer(cluster.ctx.clone(), i, spec.clone(), settings.partitions)));
    }
    let mut consumers = Vec::new();
    for (i, parts) in settings.consumers.iter().enumerate() {
        let node = cluster.client_node(&format!("consumer-{i}"), Ipv4Addr::new(10, 0, 2, i as u8 + 1));
        consumers.push(node.spawn(workload::consumer(cluster.ctx.clone(), i, parts.clone())));
    }
    for i in 0..settings.group_consumers {
        let node = cluster.client_node(&format!("group-consumer-{i}"), Ipv4Addr::new(10, 0, 4, i as u8 + 1));
        let session_ms = settings.group_session_timeout_ms;
        consumers.push(node.spawn(workload::group_consumer(cluster.ctx.clone(), i, session_ms)));
    }

    // Safety phase: play the schedule.
    let t0 = history.now_ms();
    let mut next = 0;
    while history.now_ms() < t0 + settings.safety_ms {
        while next < settings.schedule.len() && t0 + settings.schedule[next].at_ms <= history.now_ms() {
            let action = settings.schedule[next].action.clone();
            cluster.apply(&action);
            next += 1;
        }
        cluster.collect_disk_events();
        madsim::time::sleep(Duration::from_millis(TICK_MS)).await;
    }

    // Liveness phase.
    cluster.ctx.stop_producers.store(true, Ordering::SeqCst);
    cluster.heal();
    history.record(Event::Phase { name: "liveness".into() });
    let deadline = history.now_ms() + settings.liveness_ms;
    for p in producers {
        let _ = madsim::time::timeout(Duration::from_millis(DRAIN_MS), p).await;
    }
    let mut live = Liveness::default();
    let probe = cluster.client_node("probe", Ipv4Addr::new(10, 0, 3, 2));
    live.probe_failed =
        probe.spawn(workload::probe(cluster.ctx.clone(), settings.partitions, deadline)).await.expect("probe");
    let reader = cluster.client_node("final-reader", Ipv4Addr::new(10, 0, 3, 3));
    let finals =
        reader.spawn(workload::final_read(cluster.ctx.clone(), settings.partitions, deadline)).await.expect("final");
    live.final_read_failed = finals.is_none();
    // Consumers must catch up with the final high watermarks: each consumer by assign on each
    // of its partitions, and the group (some member) on every partition.
    let hws: BTreeMap<i32, i64> = finals.iter().flatten().map(|(p, (hw, _))| (*p, *hw)).collect();
    (live.consumers_caught_up, live.group_caught_up) = workload::wait_for_catch_up(
        &cluster.ctx,
        &settings.consumers,
        settings.group_consumers > 0,
        settings.partitions,
        &hws,
        deadline,
    )
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
        "seed {seed} mix {}: simulated {:.1}s; {} events; trace hash {:016x}",
        mix.name(),
        end_ms as f64 / 1000.0,
        entries.len(),
        history.trace_hash()
    );
    if !report.ok() {
        let dir = std::path::Path::new("target/sim-failures");
        let _ = std::fs::create_dir_all(dir);
        let path = dir.join(format!("{}-{seed}.schedule", mix.name()));
        let _ = std::fs::write(&path, settings.to_text());
        println!("SIM-FAILURE seed={seed} mix={} schedule={} first={}", mix.name(), path.display(), report.headline());
        panic!(
            "seed {seed} mix {}: {} violations (replay: scripts/sim.sh --replay {})",
            mix.name(),
            report.violations.len(),
            path.display()
        );
    }
}

// Each test is one fault mix; MADSIM_TEST_NUM seeds of each run in CI.

// Proves that acknowledged writes survive broker crashes that tear and corrupt unsynced tails.
#[madsim::test]
async fn crashes() {
    run(Mix::Crashes).await;
}

// Proves that fsync EIO and ENOSPC never lose acknowledged writes and that the broker serves
// again after a restart.
#[madsim::test]
async fn disk() {
    run(Mix::Disk).await;
}

// Proves that clogged client links and a clogged broker cause no anomalies.
#[madsim::test]
async fn network() {
    run(Mix::Network).await;
}

// Proves that idempotent producers retrying through clogs and crashes leave no duplicates.
#[madsim::test]
async fn idempotent() {
    run(Mix::Idempotent).await;
}

// Proves the invariants under every fault at once.
#[madsim::test]
async fn mixed() {
    run(Mix::Mixed).await;
}
