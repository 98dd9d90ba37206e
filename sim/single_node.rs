//! One broker, several producers with acks=all, random crashes that keep a random part of the
//! unsynced writes: every acknowledged record must be readable at its acknowledged offset.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;
use runnel::client::{Client, Compression, ProduceRecord};
use runnel::config::BrokerConfig;
use runnel::runtime::MemDisk;
use runnel::server::Server;

const BROKER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const PORT: u16 = 9092;

fn broker_config() -> Arc<BrokerConfig> {
    Arc::new(
        BrokerConfig::from_pairs([
            ("listeners", format!("PLAINTEXT://{}:{PORT}", BROKER_IP)),
            ("log.dirs", "/data".to_string()),
            ("num.partitions", "2".to_string()),
        ])
        .unwrap(),
    )
}

type Acked = Arc<Mutex<Vec<(i32, i64, Bytes)>>>;

// Proves, for each seed, that acks=all records survive crashes that drop unsynced data and
// tear the unsynced tail at arbitrary byte boundaries.
#[madsim::test]
async fn acks_all_survive_crashes() {
    let seed = Handle::current().seed();
    println!("seed {seed}");
    let handle = Handle::current();
    let disk = MemDisk::new();
    let d2 = disk.clone();
    let broker = handle
        .create_node()
        .name("broker")
        .ip(BROKER_IP)
        .init(move || {
            let disk = d2.clone();
            async move {
                let server = Server::bind(broker_config(), Arc::new(disk)).await.expect("broker starts");
                server.run(std::future::pending()).await;
            }
        })
        .build();
    madsim::time::sleep(Duration::from_millis(100)).await;

    let acked: Acked = Arc::new(Mutex::new(Vec::new()));
    let addr = SocketAddr::new(BROKER_IP, PORT).to_string();
    let setup = handle.create_node().name("setup").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1))).build();
    let a2 = addr.clone();
    setup
        .spawn(async move {
            let mut c = Client::connect(&a2, "sim-setup").await.expect("setup connects");
            c.create_topic("sim", 2, 1, vec![]).await.expect("create topic");
        })
        .await
        .unwrap();
    let producers: usize = thread_rng().gen_range(1..4);
    println!("settings: producers={producers}");
    let mut tasks = Vec::new();
    for i in 0..producers {
        let acked = acked.clone();
        let addr = addr.clone();
        let node = handle
            .create_node()
            .name(format!("producer-{i}"))
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, i as u8 + 1)))
            .build();
        tasks.push(node.spawn(async move {
            let mut n = 0u64;
            let mut client: Option<Client> = None;
            for _ in 0..400 {
                if client.is_none() {
                    client = Client::connect(&addr, "sim-producer").await.ok();
                    if client.is_none() {
                        madsim::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let c = client.as_mut().unwrap();
                let partition = (n % 2) as i32;
                let count = thread_rng().gen_range(1..10);
                let recs: Vec<ProduceRecord> = (0..count)
                    .map(|j| ProduceRecord {
                        key: None,
                        value: Some(Bytes::from(format!("p{i}-{n}-{j}"))),
                        headers: vec![],
                        timestamp_ms: 0,
                    })
                    .collect();
                let vals: Vec<Bytes> = recs.iter().map(|r| r.value.clone().unwrap()).collect();
                match c.produce("sim", partition, -1, recs, Compression::None).await {
                    Ok(base) => {
                        let mut a = acked.lock().unwrap();
                        for (k, v) in vals.into_iter().enumerate() {
                            a.push((partition, base + k as i64, v));
                        }
                    }
                    Err(_) => client = None,
                }
                n += 1;
                madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(0..20))).await;
            }
        }));
    }

    // Fault phase: crash the broker a few times, keeping a random prefix of unsynced bytes.
    let crashes = thread_rng().gen_range(1..4);
    for c in 0..crashes {
        madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(200..1500))).await;
        handle.kill(broker.id());
        disk.crash(|_, unsynced| if unsynced == 0 { 0 } else { thread_rng().gen_range(0..=unsynced) });
        println!("crash {c} at {:?}", madsim::time::Instant::now());
        madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(10..300))).await;
        handle.restart(broker.id());
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Check: every acknowledged record is at its offset.
    let checker = handle.create_node().name("checker").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1))).build();
    let acked = acked.lock().unwrap().clone();
    let n_acked = acked.len();
    assert!(n_acked > 0, "seed {seed}: no record was acknowledged, the run proves nothing");
    checker
        .spawn(async move {
            let mut c = Client::connect(&addr, "sim-checker").await.expect("checker connects");
            for partition in 0..2 {
                let mut log = BTreeMap::new();
                let mut offset = 0;
                loop {
                    let r = c.fetch("sim", partition, offset, 0, 1, 1 << 20).await.expect("fetch");
                    for rec in r.records {
                        offset = rec.offset + 1;
                        log.insert(rec.offset, rec.value.unwrap_or_default());
                    }
                    if offset >= r.high_watermark {
                        break;
                    }
                }
                for (p, off, v) in acked.iter().filter(|(p, _, _)| *p == partition) {
                    assert_eq!(log.get(off), Some(v), "seed {seed}: acknowledged record lost or moved at {p}/{off}");
                }
            }
        })
        .await
        .unwrap();
    println!("seed {seed}: {n_acked} acknowledged records verified after {crashes} crashes");
}
