//! Three real broker+controller processes on 127.0.0.1: SIGKILL the partition leader (which is
//! often also the active controller) round after round under acks=all load, restart it, and
//! check that every acknowledged record is still readable at its offset.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel::client::{Client, Compression, ProduceRecord};

use crate::support::{free_port, rt, temp_dir, BrokerProcess};

fn cluster_overrides(id: i32, ports: &[(u16, u16)]) -> Vec<String> {
    let voters: Vec<String> = ports.iter().enumerate().map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1)).collect();
    let (b, c) = ports[(id - 1) as usize];
    vec![
        format!("node.id={id}"),
        "process.roles=broker,controller".into(),
        format!("listeners=PLAINTEXT://127.0.0.1:{b},CONTROLLER://127.0.0.1:{c}"),
        format!("controller.quorum.voters={}", voters.join(",")),
        "default.replication.factor=3".into(),
        "min.insync.replicas=2".into(),
    ]
}

async fn leader_of(bootstrap: &str, topic: &str) -> Option<i32> {
    let mut c = Client::connect(bootstrap, "chaos-meta").await.ok()?;
    let t = c.topic_metadata(topic).await.ok()?;
    t.partitions.first().map(|p| p.leader_id).filter(|l| *l >= 0)
}

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

// Proves no acknowledged acks=all record (replication factor 3, min.insync.replicas 2) is lost
// or moved across repeated SIGKILLs of the partition leader with restarts.
#[test]
fn leader_kills_lose_no_acknowledged_record() {
    let rounds: usize = std::env::var("RUNNEL_CHAOS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let dir = temp_dir("cluster");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut nodes: Vec<BrokerProcess> = Vec::new();
    for id in 1..=3 {
        let node_dir = dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let extra = cluster_overrides(id, &ports);
        let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        nodes.push(BrokerProcess::start_on(&node_dir, ports[(id - 1) as usize].0, &extra_refs));
    }
    let bootstrap: String = ports.iter().map(|(b, _)| format!("127.0.0.1:{b}")).collect::<Vec<_>>().join(",");
    let rt = rt();
    let topic = "chaos-cluster";
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = Client::connect(&bootstrap, "chaos-admin").await {
                match c.create_topic(topic, 1, 3, vec![]).await {
                    Ok(()) => break,
                    Err(e) if e.to_string().contains("TOPIC_ALREADY_EXISTS") => break,
                    Err(_) => {}
                }
            }
            assert!(Instant::now() < deadline, "cluster did not accept a topic within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut acked: Vec<(i64, Bytes)> = Vec::new();
    let mut kills = 0;
    for round in 0..rounds {
        let b = bootstrap.clone();
        // Produce in the background for the whole round, retrying through the failover.
        let producer = std::thread::spawn(move || {
            crate::support::rt().block_on(async move {
                let mut got = Vec::new();
                let until = Instant::now() + Duration::from_millis(2500);
                let mut client: Option<Client> = None;
                let mut i = 0;
                while Instant::now() < until {
                    if client.is_none() {
                        client = Client::connect(&b, "chaos-producer").await.ok();
                    }
                    let Some(c) = client.as_mut() else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let v = Bytes::from(format!("r{round}-{i}"));
                    i += 1;
                    let rec = ProduceRecord { key: None, value: Some(v.clone()), headers: vec![], timestamp_ms: 0 };
                    match c.produce(topic, 0, -1, vec![rec], Compression::None).await {
                        Ok(offset) => got.push((offset, v)),
                        Err(_) => {
                            client = None;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                got
            })
        });
        std::thread::sleep(Duration::from_millis(700));
        if let Some(leader) = rt.block_on(leader_of(&bootstrap, topic)) {
            nodes[(leader - 1) as usize].kill9();
            kills += 1;
        }
        acked.extend(producer.join().unwrap());
        for n in nodes.iter_mut() {
            if n.child.is_none() {
                n.restart();
            }
        }
        let log = rt.block_on(read_all(&bootstrap, topic));
        for (off, v) in &acked {
            assert_eq!(
                log.get(off),
                Some(v),
                "round {round}: acknowledged record {v:?} at offset {off} lost or moved; node logs:\n{}",
                nodes.iter().map(|n| n.log_tail()).collect::<Vec<_>>().join("\n-----\n")
            );
        }
        // Let the restarted replica catch up into the ISR before the next kill.
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert!(kills >= rounds / 2, "only {kills} leader kills happened in {rounds} rounds");
    assert!(acked.len() > 100, "only {} records acknowledged: the run proves little", acked.len());
    eprintln!("{} records acknowledged across {kills} leader kills, none lost", acked.len());
}
