//! Kill -9 during acks=all produce: everything acknowledged must be readable after restart,
//! at the offset it was acknowledged at, and a clean restart must keep everything too.

use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel::client::{Client, Compression, ProduceRecord};

use crate::support::{rt, temp_dir, BrokerProcess};

async fn read_all(bootstrap: &str, topic: &str, partition: i32) -> Vec<(i64, Bytes)> {
    let mut c = Client::connect(bootstrap, "chaos-reader").await.unwrap();
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = c.fetch(topic, partition, offset, 0, 1, 8 << 20).await.unwrap();
        for rec in r.records {
            out.push((rec.offset, rec.value.unwrap_or_default()));
            offset = rec.offset + 1;
        }
        if offset >= r.high_watermark {
            return out;
        }
    }
}

// Proves no record acknowledged with acks=all is lost or moved when the broker is SIGKILLed
// mid-stream, over several kill/restart rounds.
#[test]
fn acks_all_records_survive_kill_dash_nine() {
    let dir = temp_dir("crash");
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let rt = rt();
    let topic = "crash-test";
    rt.block_on(async {
        let mut c = Client::connect(&broker.bootstrap(), "chaos").await.unwrap();
        c.create_topic(topic, 2, 1, vec![]).await.unwrap();
    });
    let mut acked: Vec<(i32, i64, Bytes)> = Vec::new();
    let mut seq = 0u64;
    for round in 0..4 {
        // Produce for a while from two concurrent producers, then kill without warning.
        let bootstrap = broker.bootstrap();
        let start_seq = seq;
        let results = rt.block_on(async {
            let mut tasks = Vec::new();
            for partition in 0..2 {
                let bootstrap = bootstrap.clone();
                tasks.push(tokio::spawn(async move {
                    let mut c = Client::connect(&bootstrap, "chaos-producer").await.unwrap();
                    let mut mine = Vec::new();
                    let until = Instant::now() + Duration::from_millis(700);
                    let mut i = 0u64;
                    while Instant::now() < until {
                        let recs: Vec<ProduceRecord> = (0..20)
                            .map(|j| ProduceRecord {
                                key: None,
                                value: Some(Bytes::from(format!("r{round}-p{partition}-{i}-{j}"))),
                                headers: vec![],
                                timestamp_ms: 0,
                            })
                            .collect();
                        let vals: Vec<Bytes> = recs.iter().map(|r| r.value.clone().unwrap()).collect();
                        match c.produce(topic, partition, -1, recs, Compression::None).await {
                            Ok(base) => {
                                for (k, v) in vals.into_iter().enumerate() {
                                    mine.push((partition, base + k as i64, v));
                                }
                            }
                            Err(e) => panic!("produce failed before the kill: {e}"),
                        }
                        i += 1;
                    }
                    mine
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        });
        seq += results.len() as u64;
        acked.extend(results);
        // Keep producing while the kill lands, so some requests are in flight at the moment.
        let b2 = broker.bootstrap();
        let inflight = std::thread::spawn(move || {
            let late_rt = crate::support::rt();
            late_rt.block_on(async {
                let mut got = Vec::new();
                if let Ok(mut c) = Client::connect(&b2, "chaos-late").await {
                    for i in 0..10_000 {
                        let rec = ProduceRecord {
                            key: None,
                            value: Some(Bytes::from(format!("late-{round}-{i}"))),
                            headers: vec![],
                            timestamp_ms: 0,
                        };
                        let v = rec.value.clone().unwrap();
                        match c.produce(topic, 0, -1, vec![rec], Compression::None).await {
                            Ok(off) => got.push((0, off, v)),
                            Err(_) => break,
                        }
                    }
                }
                got
            })
        });
        std::thread::sleep(Duration::from_millis(150));
        broker.kill9();
        acked.extend(inflight.join().unwrap());
        broker.restart();
        let _ = start_seq;
        // Every acknowledged record is at its offset.
        let bootstrap = broker.bootstrap();
        for partition in 0..2 {
            let log = rt.block_on(read_all(&bootstrap, topic, partition));
            let by_offset: std::collections::BTreeMap<i64, Bytes> = log.into_iter().collect();
            for (p, off, v) in acked.iter().filter(|(p, _, _)| *p == partition) {
                assert_eq!(
                    by_offset.get(off),
                    Some(v),
                    "round {round}: acknowledged record {v:?} at {p}/{off} lost after kill -9; broker log:\n{}",
                    broker.log_tail()
                );
            }
        }
    }
    assert!(acked.len() > 100, "too few records acknowledged ({}) to prove anything", acked.len());
    // A clean shutdown keeps everything and restarts without error.
    assert!(broker.terminate().success(), "SIGTERM did not exit cleanly");
    broker.restart();
    let total: usize = (0..2).map(|p| rt.block_on(read_all(&broker.bootstrap(), topic, p)).len()).sum();
    assert!(total >= acked.len(), "clean restart lost records: {total} < {}", acked.len());
}
