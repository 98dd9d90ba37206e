//! Three real broker+controller processes on 127.0.0.1 under acks=all load (replication factor
//! 3, min.insync.replicas 2), with a checker that reads the whole partition back and requires
//! every acknowledged record at its acknowledged offset:
//!
//! - `leader_and_controller_kills_lose_no_acknowledged_record`: round after round, SIGKILL the
//!   partition leader (even rounds) or the active controller found with DescribeQuorum (odd
//!   rounds; often the same process), restart it, check. `RUNNEL_CHAOS_ROUNDS` rounds (8 by
//!   default; run 20 or more by hand).
//! - `network_partitions_lose_no_acknowledged_record`: every connection (node to node, client
//!   to node) goes through per-destination proxies ([`Network`]); each round isolates the
//!   partition leader from everyone, or from its peers only (the producing client can still
//!   reach it), or isolates the active controller from its peers, or cuts the leader one way
//!   (peers cannot reach it, it reaches them), keeps producing, heals, waits until all three
//!   replicas are back in the ISR, and checks. Rounds alternate the fault between connection
//!   resets and a blackhole (connections stall, only timeouts notice).
//!   `RUNNEL_CHAOS_PARTITION_ROUNDS` rounds (8 by default: every kind with both faults).
//!
//! Each test prints one `chaos summary:` line with what it measured.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel::cli::quorum::describe_quorum;
use runnel::client::{Client, Compression, ProduceRecord};

use crate::support::{free_port, rt, temp_dir, BrokerProcess, Fault, Network};

const NODES: [i32; 3] = [1, 2, 3];

/// A three-node cluster of real processes, optionally behind proxies.
struct Cluster {
    nodes: Vec<BrokerProcess>,
    bootstrap: String,
    net: Option<Network>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts nodes 1-3. With `proxied`, clients and nodes reach every node's broker and
    /// controller listener only through a [`Network`] proxy.
    fn start(name: &str, proxied: bool) -> Cluster {
        let dir = temp_dir(name);
        let real: Vec<(u16, u16)> = NODES.iter().map(|_| (free_port(), free_port())).collect();
        let net = proxied.then(Network::new);
        // The addresses others use: the proxies when proxied, else the real listeners.
        let public: Vec<(u16, u16)> = match &net {
            Some(n) => NODES.iter().zip(&real).map(|(&id, &(b, c))| (n.proxy(id, b), n.proxy(id, c))).collect(),
            None => real.clone(),
        };
        let voters: Vec<String> = NODES.iter().zip(&public).map(|(id, (_, c))| format!("{id}@127.0.0.1:{c}")).collect();
        let mut nodes = Vec::new();
        for (i, &id) in NODES.iter().enumerate() {
            let node_dir = dir.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let (b, c) = real[i];
            let extra = [
                format!("node.id={id}"),
                "process.roles=broker,controller".into(),
                format!("listeners=PLAINTEXT://127.0.0.1:{b},CONTROLLER://127.0.0.1:{c}"),
                format!("advertised.listeners=PLAINTEXT://127.0.0.1:{}", public[i].0),
                format!("controller.quorum.voters={}", voters.join(",")),
                "default.replication.factor=3".into(),
                "min.insync.replicas=2".into(),
            ];
            let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
            let node = BrokerProcess::start_on(&node_dir, b, &extra_refs);
            if let (Some(n), Some(pid)) = (&net, node.pid()) {
                n.set_pid(id, pid);
            }
            nodes.push(node);
        }
        let bootstrap = public.iter().map(|(b, _)| format!("127.0.0.1:{b}")).collect::<Vec<_>>().join(",");
        Cluster { nodes, bootstrap, net, _dir: dir }
    }

    fn node(&mut self, id: i32) -> &mut BrokerProcess {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Restarts every node that is not running.
    fn restart_dead(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.child.is_none() {
                n.restart();
                if let (Some(net), Some(pid)) = (&self.net, n.pid()) {
                    net.set_pid(NODES[i], pid);
                }
            }
        }
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(|n| n.log_tail()).collect::<Vec<_>>().join("\n-----\n")
    }
}

async fn create_topic(bootstrap: &str, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::connect(bootstrap, "chaos-admin").await {
            match c.create_topic(topic, 1, 3, vec![]).await {
                Ok(()) => return,
                Err(e) if e.to_string().contains("TOPIC_ALREADY_EXISTS") => return,
                Err(_) => {}
            }
        }
        assert!(Instant::now() < deadline, "cluster did not accept a topic within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The partition's (leader, leader epoch, ISR) as the first reachable broker of `bootstrap`
/// reports them.
async fn partition_state(bootstrap: &str, topic: &str) -> Option<(i32, i32, Vec<i32>)> {
    let mut c = Client::connect_with_timeout(bootstrap, "chaos-meta", Duration::from_secs(2)).await.ok()?;
    let t = c.topic_metadata(topic).await.ok()?;
    t.partitions.first().filter(|p| p.leader_id >= 0).map(|p| (p.leader_id, p.leader_epoch, p.isr.clone()))
}

async fn leader_of(bootstrap: &str, topic: &str) -> Option<i32> {
    partition_state(bootstrap, topic).await.map(|(l, _, _)| l)
}

/// The active controller, found the Kafka way (DescribeQuorum through any broker), retrying
/// through elections for up to 10 s.
async fn active_controller(bootstrap: &str) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut c) = Client::connect_with_timeout(bootstrap, "chaos-quorum", Duration::from_secs(3)).await {
            if let Ok(q) = describe_quorum(&mut c).await {
                return Some(q.leader_id);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Reads the partition from offset 0 up to its high watermark.
async fn read_all(bootstrap: &str, topic: &str) -> BTreeMap<i64, Bytes> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut c = Client::connect(bootstrap, "chaos-reader").await.ok()?;
            let mut out = BTreeMap::new();
            let mut offset = 0;
            loop {
                let r = c.fetch(topic, 0, offset, 0, 1, 8 << 20).await.ok()?;
                for rec in r.records {
                    offset = rec.offset + 1;
                    out.insert(rec.offset, rec.value.unwrap_or_default());
                }
                if offset >= r.high_watermark {
                    return Some(out);
                }
            }
        };
        if let Some(out) = attempt.await {
            return out;
        }
        assert!(Instant::now() < deadline, "could not read the topic back within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One acknowledged record: offset, value, when the acknowledgement arrived.
type Ack = (i64, Bytes, Instant);

/// Produces single-record batches with acks=all for `run`, reconnecting after any error, and
/// returns what was acknowledged and why produce requests failed.
fn spawn_producer(
    bootstrap: &str,
    topic: &'static str,
    round: usize,
    run: Duration,
    request_timeout: Duration,
) -> std::thread::JoinHandle<(Vec<Ack>, Vec<String>)> {
    let b = bootstrap.to_string();
    std::thread::spawn(move || {
        crate::support::rt().block_on(async move {
            let mut got = Vec::new();
            let mut failures = Vec::new();
            let until = Instant::now() + run;
            let mut client: Option<Client> = None;
            let mut i = 0;
            while Instant::now() < until {
                if client.is_none() {
                    client = Client::connect_with_timeout(&b, "chaos-producer", request_timeout).await.ok();
                }
                let Some(c) = client.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let v = Bytes::from(format!("r{round}-{i}"));
                i += 1;
                let rec = ProduceRecord { key: None, value: Some(v.clone()), headers: vec![], timestamp_ms: 0 };
                match c.produce(topic, 0, -1, vec![rec], Compression::None).await {
                    Ok(offset) => got.push((offset, v, Instant::now())),
                    Err(e) => {
                        failures.push(e.to_string());
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (got, failures)
        })
    })
}

/// The acknowledged records missing from `log` or holding another value there.
fn lost(acked: &[Ack], log: &BTreeMap<i64, Bytes>) -> Vec<String> {
    acked
        .iter()
        .filter(|(off, v, _)| log.get(off) != Some(v))
        .map(|(off, v, _)| format!("{v:?} at offset {off} (found {:?})", log.get(off)))
        .collect()
}

/// The longest wait between consecutive acknowledgements of a round (failover time as the
/// client sees it, including its retries).
fn longest_gap(acks: &[Ack]) -> Duration {
    acks.windows(2).map(|w| w[1].2.saturating_duration_since(w[0].2)).max().unwrap_or_default()
}

fn env_rounds(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// Proves no acknowledged acks=all record (replication factor 3, min.insync.replicas 2) is lost
// or moved across repeated SIGKILLs of the partition leader and of the active controller (found
// with DescribeQuorum), with restarts.
#[test]
fn leader_and_controller_kills_lose_no_acknowledged_record() {
    let started = Instant::now();
    let rounds = env_rounds("RUNNEL_CHAOS_ROUNDS", 8);
    let mut cluster = Cluster::start("cluster", false);
    let rt = rt();
    let topic = "chaos-cluster";
    rt.block_on(create_topic(&cluster.bootstrap, topic));
    let mut acked: Vec<Ack> = Vec::new();
    // Kills of a node that was only the partition leader, only the active controller, or both.
    let (mut leader_kills, mut controller_kills, mut both) = (0, 0, 0);
    let mut gaps = Vec::new();
    for round in 0..rounds {
        let producer =
            spawn_producer(&cluster.bootstrap, topic, round, Duration::from_millis(2500), Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(700));
        let leader = rt.block_on(leader_of(&cluster.bootstrap, topic));
        let controller = rt.block_on(active_controller(&cluster.bootstrap));
        let victim = if round % 2 == 0 { leader } else { controller };
        if let Some(v) = victim {
            cluster.node(v).kill9();
            if Some(v) == leader && Some(v) == controller {
                both += 1;
            } else if Some(v) == leader {
                leader_kills += 1;
            } else {
                controller_kills += 1;
            }
        }
        let (acks, _) = producer.join().unwrap();
        gaps.push(longest_gap(&acks));
        acked.extend(acks);
        cluster.restart_dead();
        let log = rt.block_on(read_all(&cluster.bootstrap, topic));
        let missing = lost(&acked, &log);
        assert!(
            missing.is_empty(),
            "round {round} (leader {leader:?}, controller {controller:?}, killed {victim:?}): {} acknowledged \
             records lost or moved: {:?}; node logs:\n{}",
            missing.len(),
            &missing[..missing.len().min(20)],
            cluster.logs()
        );
        // Let the restarted replica catch up into the ISR before the next kill.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let kills = leader_kills + controller_kills + both;
    assert!(kills >= rounds / 2, "only {kills} kills in {rounds} rounds");
    assert!(acked.len() > 100, "only {} records acknowledged: the run proves little", acked.len());
    eprintln!(
        "chaos summary: kills test: {rounds} rounds, {kills} SIGKILLs (partition leader only {leader_kills}, \
         active controller only {controller_kills}, both at once {both}), {} records acknowledged, 0 lost; \
         longest ack gap per round max {:?} median {:?}; took {:?}",
        acked.len(),
        gaps.iter().max().copied().unwrap_or_default(),
        median(&mut gaps),
        started.elapsed()
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Which node a partition round isolates, and from whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// The partition leader, from its peers and from the clients.
    LeaderFromAll,
    /// The partition leader from its peers only: the producing client still reaches it.
    LeaderFromPeers,
    /// The active controller from its peers only.
    ControllerFromPeers,
    /// One way: the peers cannot open connections to the partition leader (no replica fetches,
    /// no Raft messages to it), while its own connections to them (heartbeats, metadata, Raft
    /// messages from it) and the clients' connections still work.
    LeaderUnreachableFromPeers,
}

/// Polls `bootstrap` (the majority side) every 50 ms for `run`: the last leader it named and the
/// longest stretch in which it named none (or could not answer).
fn watch_leader(
    bootstrap: String,
    topic: &'static str,
    run: Duration,
) -> std::thread::JoinHandle<(Option<i32>, Duration)> {
    std::thread::spawn(move || {
        crate::support::rt().block_on(async move {
            let start = Instant::now();
            let (mut last, mut longest, mut since) = (None, Duration::ZERO, None::<Instant>);
            while start.elapsed() < run {
                match leader_of(&bootstrap, topic).await {
                    Some(l) => {
                        last = Some(l);
                        if let Some(s) = since.take() {
                            longest = longest.max(s.elapsed());
                        }
                    }
                    None => {
                        since.get_or_insert_with(Instant::now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(s) = since {
                longest = longest.max(s.elapsed());
            }
            (last, longest)
        })
    })
}

/// Waits until every node, asked on its own, reports the same leader and leader epoch with all
/// three replicas in the ISR (a node that was cut off may still serve a stale image); returns
/// when.
async fn wait_converged(bootstrap: &str, topic: &str, within: Duration) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < within {
        let mut views = Vec::new();
        for addr in bootstrap.split(',') {
            views.push(partition_state(addr, topic).await);
        }
        let agreed = views.windows(2).all(|w| w[0] == w[1]);
        if agreed && views[0].as_ref().is_some_and(|(_, _, isr)| isr.len() == NODES.len()) {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

// Proves that isolating one node through the proxies (the partition leader from everyone, the
// leader from its peers while the client still reaches it, the active controller from its
// peers, or the leader one way) under acks=all load loses no acknowledged record, and that after healing all three
// replicas return to the ISR.
#[test]
fn network_partitions_lose_no_acknowledged_record() {
    let started = Instant::now();
    let rounds = env_rounds("RUNNEL_CHAOS_PARTITION_ROUNDS", 8);
    let cluster = Cluster::start("partition", true);
    let rt = rt();
    let topic = "chaos-partition";
    rt.block_on(create_topic(&cluster.bootstrap, topic));
    rt.block_on(wait_converged(&cluster.bootstrap, topic, Duration::from_secs(30))).expect("initial ISR of 3");
    let mut acked: Vec<Ack> = Vec::new();
    let mut leader_moves = 0;
    let mut converge_times = Vec::new();
    let mut acked_during = 0;
    // Records the isolated (stale) leader acknowledged to a client that could still reach it.
    let mut stale_acks = 0;
    let mut stale_failures = 0;
    let mut longest_leaderless = Duration::ZERO;
    for round in 0..rounds {
        let kind = [
            Isolation::LeaderFromAll,
            Isolation::LeaderFromPeers,
            Isolation::ControllerFromPeers,
            Isolation::LeaderUnreachableFromPeers,
        ][round % 4];
        // Every kind meets both faults within eight rounds.
        let fault = if (round + round / 4) % 2 == 0 { Fault::Reset } else { Fault::Blackhole };
        let producer =
            spawn_producer(&cluster.bootstrap, topic, round, Duration::from_millis(7000), Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(1000));
        let leader = rt
            .block_on(async {
                for _ in 0..50 {
                    if let Some(l) = leader_of(&cluster.bootstrap, topic).await {
                        return Some(l);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None
            })
            .expect("a leader before the partition");
        let target = match kind {
            Isolation::ControllerFromPeers => {
                rt.block_on(active_controller(&cluster.bootstrap)).expect("an active controller")
            }
            _ => leader,
        };
        let net = cluster.net.as_ref().unwrap();
        let refused_from_nodes = net.counts().1;
        net.set_fault(fault);
        let cut_at = Instant::now();
        if kind == Isolation::LeaderUnreachableFromPeers {
            for &n in NODES.iter().filter(|n| **n != target) {
                net.block(n, target);
            }
        } else {
            net.isolate(target, &NODES, kind == Isolation::LeaderFromAll);
        }
        let majority: Vec<String> = cluster
            .bootstrap
            .split(',')
            .enumerate()
            .filter(|(i, _)| NODES[*i] != target)
            .map(|(_, a)| a.to_string())
            .collect();
        let watcher = watch_leader(majority.join(","), topic, Duration::from_millis(2900));
        // When the client can still reach the isolated leader, probe it directly once the
        // majority has had time to elect a new leader: it still believes it leads, and must not
        // acknowledge an acks=all record the majority does not have (anything it does
        // acknowledge joins the checked set).
        if kind == Isolation::LeaderFromPeers {
            std::thread::sleep(Duration::from_millis(1200));
            let stale = cluster.bootstrap.split(',').nth((target - 1) as usize).unwrap().to_string();
            let probe =
                spawn_producer(&stale, topic, 1000 + round, Duration::from_millis(1200), Duration::from_secs(1));
            let (probe_acks, failures) = probe.join().unwrap();
            stale_acks += probe_acks.len();
            eprintln!(
                "partition round {round}: probing isolated leader {target} directly: {} acknowledged, \
                 failures {failures:?}",
                probe_acks.len()
            );
            stale_failures += failures.len();
            acked.extend(probe_acks);
        }
        // Hold the partition well past the broker session timeout (1 s) and a Raft election.
        std::thread::sleep(Duration::from_millis(3000).saturating_sub(cut_at.elapsed()));
        // Who led, according to the majority side, and how long it had no leader.
        let (leader_during, leaderless) = watcher.join().unwrap();
        longest_leaderless = longest_leaderless.max(leaderless);
        // The proxies told node connections from client ones: peers were refused.
        assert!(
            fault == Fault::Blackhole || net.counts().1 > refused_from_nodes,
            "round {round}: no node-to-node connection was refused while node {target} was isolated"
        );
        let healed_at = Instant::now();
        net.heal();
        let converged = rt.block_on(wait_converged(&cluster.bootstrap, topic, Duration::from_secs(30)));
        let (acks, _) = producer.join().unwrap();
        acked_during += acks.iter().filter(|a| a.2 > cut_at && a.2 < healed_at).count();
        if leader_during.is_some_and(|l| l != leader) {
            leader_moves += 1;
        }
        acked.extend(acks);
        let log = rt.block_on(read_all(&cluster.bootstrap, topic));
        let missing = lost(&acked, &log);
        assert!(
            missing.is_empty(),
            "round {round} ({kind:?}, {fault:?}, node {target}, leader {leader} then {leader_during:?}): \
             {} acknowledged records lost or moved: {:?}; node logs:\n{}",
            missing.len(),
            &missing[..missing.len().min(20)],
            cluster.logs()
        );
        let Some(took) = converged.map(|at| at.saturating_duration_since(healed_at)) else {
            panic!(
                "round {round} ({kind:?}, {fault:?}) of node {target}: the ISR did not return to 3 within 30 s \
                 after healing; node logs:\n{}",
                cluster.logs()
            );
        };
        converge_times.push(took);
        eprintln!(
            "partition round {round}: {kind:?} ({fault:?}) of node {target} (leader {leader}, during the \
             partition {leader_during:?}), longest without a leader on the majority side {leaderless:?}, ISR of 3 \
             again {took:?} after healing"
        );
    }
    let (accepted_nodes, refused_nodes, accepted_clients, refused_clients) = cluster.net.as_ref().unwrap().counts();
    // The proxies must have told nodes from clients (else no peer was ever really cut off).
    assert!(accepted_nodes > 0 && accepted_clients > 0, "proxies saw no node or no client connections");
    assert!(acked.len() > 100, "only {} records acknowledged: the run proves little", acked.len());
    eprintln!(
        "chaos summary: partition test: {rounds} rounds, leader moved during {leader_moves} of them, {} records \
         acknowledged ({acked_during} while a node was isolated; {stale_acks} by an isolated leader to a client \
         probing it directly, {stale_failures} probes refused or timed out), 0 lost; longest stretch without a \
         leader on the majority side {longest_leaderless:?}; ISR of 3 again after healing within \
         max {:?}; proxies accepted {accepted_nodes} connections from nodes and {accepted_clients} from \
         clients, refused or held {refused_nodes} from nodes and {refused_clients} from clients; took {:?}",
        acked.len(),
        converge_times.iter().max().copied().unwrap_or_default(),
        started.elapsed()
    );
}

// Proves DescribeQuorum works end to end on a real cluster: `runnel quorum describe` prints the
// leader every broker names, with the three voters, and (when RUNNEL_ACCEPTANCE_PYTHON names a
// Python with kafka-python >= 3) kafka-python's `describe_metadata_quorum` decodes our answer
// and agrees.
#[test]
fn quorum_is_described_by_the_cli_and_kafka_python() {
    let cluster = Cluster::start("quorum", false);
    let rt = rt();
    let leader = rt.block_on(active_controller(&cluster.bootstrap)).expect("an active controller");
    for addr in cluster.bootstrap.split(',') {
        let out = std::process::Command::new(crate::support::runnel_bin())
            .args(["quorum", "describe", "--status", "--replication", "-b", addr])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "runnel quorum describe -b {addr}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("LeaderId:               {leader}\n")), "{addr}: {text}");
        assert!(text.contains("CurrentVoters:          [1,2,3]\n"), "{addr}: {text}");
        assert!(text.contains("\tLeader\n"), "{addr}: {text}");
    }
    let Some(python) = std::env::var_os("RUNNEL_ACCEPTANCE_PYTHON").filter(|p| !p.is_empty()) else {
        eprintln!("RUNNEL_ACCEPTANCE_PYTHON not set; skipping the kafka-python check");
        return;
    };
    let script = r#"
import sys
from kafka.admin import KafkaAdminClient
if not hasattr(KafkaAdminClient, "describe_metadata_quorum"):
    print("SKIP"); sys.exit(0)
a = KafkaAdminClient(bootstrap_servers=sys.argv[1])
p = a.describe_metadata_quorum()["topics"][0]["partitions"][0]
print(p["leader_id"], p["leader_epoch"], sorted(v["replica_id"] for v in p["current_voters"]))
"#;
    let out = std::process::Command::new(python).args(["-c", script, &cluster.bootstrap]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "kafka-python failed: {}", String::from_utf8_lossy(&out.stderr));
    if text == "SKIP" {
        eprintln!("kafka-python has no describe_metadata_quorum; skipping");
        return;
    }
    let want_prefix = format!("{leader} ");
    assert!(text.starts_with(&want_prefix) && text.ends_with("[1, 2, 3]"), "kafka-python saw {text:?}");
}
