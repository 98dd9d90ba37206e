//! `runnel perf produce|consume`: throughput and latency measurements.
//!
//! Produce pre-builds record batches of random letters, then keeps up to `--in-flight`
//! produce requests pipelined on one connection per partition leader (one task per leader,
//! each with its own client), timing each request from write to response. Consume reads every
//! partition from the earliest offset. Both print a progress line every
//! [`PROGRESS_INTERVAL`] and end with one summary line in a stable format:
//! `produce: N records, S B each, X MB/s, R rec/s, latency ms p50 A p95 B p99 C max D`
//! (MB = 2^20 bytes, as in Kafka's perf tools).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::Rng;
use tokio::time::Instant;

use super::args::{self, parse, value, Flag, BOOTSTRAP};
use super::{now_ms, CLIENT_ID};
use crate::client::{
    codes, encode_batch, produce_base_offset, produce_request, produce_version, Client, ClientError, Compression,
    ProduceRecord, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP,
};

/// How often a long run prints progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Distinct pre-built batches cycled through (so payloads vary without per-send encoding).
const DISTINCT_BATCHES: usize = 8;
/// Highest latency the histograms track, in microseconds (longer values are clamped).
const LATENCY_MAX_US: u64 = 600_000_000;
/// Consume gives up when no record arrives for this long.
const CONSUME_IDLE_TIMEOUT_DEFAULT_MS: u64 = 10_000;
/// How long to wait for a created topic's leaders to appear in metadata.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "\
usage: runnel perf produce --topic T --num-records N --record-size BYTES [options]
       runnel perf consume --topic T [options]

produce options:
  --acks 0|1|all               acknowledgements to wait for (default all)
  --batch-size BYTES           record bytes per produce request (default 16384)
  --in-flight K                requests in flight per connection (default 5; also
                               spelled --partitions-in-flight)
  --throughput LIMIT           records per second at most (default: unlimited)
  --compression none|gzip|snappy|lz4|zstd   (default none)
  --partitions N               partitions when the topic must be created (default 1)
consume options:
  --num-records N              records to read (default: all present at start)
  --fetch-max-bytes B          bytes per fetch (default 4194304)
  --timeout-ms MS              give up after this long without records (default 10000)
common:
  -b, --bootstrap-server HOST:PORT   broker to contact (default 127.0.0.1:9092)
  -t, --topic T                topic (created if missing)
  -h, --help                   this text";

const FLAGS: &[Flag] = &[
    BOOTSTRAP,
    value(&["--topic", "-t"]),
    value(&["--num-records"]),
    value(&["--record-size"]),
    value(&["--acks"]),
    value(&["--batch-size"]),
    value(&["--in-flight", "--partitions-in-flight"]),
    value(&["--throughput"]),
    value(&["--compression"]),
    value(&["--partitions"]),
    value(&["--fetch-max-bytes"]),
    value(&["--timeout-ms"]),
];

/// `runnel perf produce|consume ...`.
pub async fn perf(argv: &[String]) -> Result<()> {
    let p = parse(argv, FLAGS)?;
    if p.help {
        println!("{USAGE}");
        return Ok(());
    }
    match p.positional.as_slice() {
        [mode] if mode == "produce" => perf_produce(&p).await,
        [mode] if mode == "consume" => perf_consume(&p).await,
        [] => bail!("missing mode: produce or consume\n\n{USAGE}"),
        other => bail!("unexpected arguments {other:?} (try --help)"),
    }
}

/// Settings of a produce run.
#[derive(Clone)]
struct ProduceSettings {
    bootstrap: String,
    topic: String,
    acks: i16,
    in_flight: usize,
    /// Records per second for this worker, or 0 for unlimited.
    throughput: f64,
}

/// What one worker measured.
struct WorkerStats {
    records: u64,
    bytes: u64,
    latency_us: Histogram<u64>,
}

async fn perf_produce(p: &args::Parsed) -> Result<()> {
    let topic = p.required("--topic")?.to_string();
    let num_records: u64 = p.required("--num-records")?.parse().context("--num-records")?;
    let record_size: usize = p.required("--record-size")?.parse().context("--record-size")?;
    let acks = args::parse_acks(p.get("--acks").unwrap_or("all"))?;
    let batch_size: usize = p.parse_or("--batch-size", 16_384)?;
    let in_flight: usize = p.parse_or("--in-flight", 5)?;
    let throughput: f64 = p.parse_or("--throughput", -1.0)?;
    let partitions_if_created: i32 = p.parse_or("--partitions", 1)?;
    let compression_name = p.get("--compression").unwrap_or("none");
    let compression = crate::client::records::parse_compression(compression_name)
        .with_context(|| format!("unknown compression {compression_name:?}"))?;
    if num_records == 0 || record_size == 0 || in_flight == 0 {
        bail!("--num-records, --record-size and --in-flight must be positive");
    }

    let mut client = Client::connect(p.bootstrap(), CLIENT_ID).await?;
    let partitions = ensure_topic(&mut client, &topic, partitions_if_created).await?;
    // One worker per leader, each with its share of partitions and records.
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for (partition, leader) in &partitions {
        by_leader.entry(*leader).or_default().push(*partition);
    }
    let records_per_batch = (batch_size / record_size).max(1);
    let batches = Arc::new(build_batches(records_per_batch, record_size, compression)?);

    let progress = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let printer = tokio::spawn(print_progress("produce", progress.clone(), record_size as u64));
    let workers = by_leader.len() as u64;
    let mut handles = Vec::new();
    for (i, (_leader, parts)) in by_leader.into_iter().enumerate() {
        let share = num_records / workers + u64::from((i as u64) < num_records % workers);
        let settings = ProduceSettings {
            bootstrap: p.bootstrap().to_string(),
            topic: topic.clone(),
            acks,
            in_flight,
            throughput: if throughput > 0.0 { throughput / workers as f64 } else { 0.0 },
        };
        let (batches, progress) = (batches.clone(), progress.clone());
        handles.push(tokio::spawn(async move {
            produce_worker(settings, parts, share, batches, record_size, progress).await
        }));
    }
    let mut total = WorkerStats { records: 0, bytes: 0, latency_us: new_histogram() };
    let mut failure = None;
    for h in handles {
        match h.await {
            Ok(Ok(stats)) => {
                total.records += stats.records;
                total.bytes += stats.bytes;
                total.latency_us.add(&stats.latency_us).expect("same histogram bounds");
            }
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(anyhow::anyhow!("producer task failed: {e}")),
        }
    }
    printer.abort();
    if let Some(e) = failure {
        return Err(e);
    }
    println!("{}", summary("produce", &total, record_size as u64, start.elapsed()));
    Ok(())
}

/// Sends `num_records` records to `partitions` (all led by one broker) in pipelined requests.
async fn produce_worker(
    s: ProduceSettings,
    partitions: Vec<i32>,
    num_records: u64,
    batches: Arc<Vec<(Bytes, u64)>>,
    record_size: usize,
    progress: Arc<AtomicU64>,
) -> Result<WorkerStats> {
    let mut stats = WorkerStats { records: 0, bytes: 0, latency_us: new_histogram() };
    if num_records == 0 {
        return Ok(stats);
    }
    let mut client = Client::connect(&s.bootstrap, CLIENT_ID).await?;
    let metadata = client.topic_metadata(&s.topic).await?;
    let (leader, _) = client.leader_for(&s.topic, partitions[0]).await?;
    let timeout = client.request_timeout();
    let records_per_batch = batches[0].1;
    // The last request carries the remainder, built on demand.
    let remainder = num_records % records_per_batch;
    let tail =
        if remainder > 0 { Some(build_batch(remainder as usize, record_size, Compression::None)?) } else { None };
    let mut pending = VecDeque::new();
    let mut sent: u64 = 0;
    let mut next = 0usize;
    let start = Instant::now();
    let conn = client.connection_to(leader).await?;
    let version = produce_version(conn, &metadata)?;
    while sent < num_records || !pending.is_empty() {
        // Fill the pipeline.
        while pending.len() < s.in_flight && sent < num_records {
            if s.throughput > 0.0 {
                let due = start + Duration::from_secs_f64(sent as f64 / s.throughput);
                if Instant::now() < due {
                    if !pending.is_empty() {
                        break; // Collect a response while waiting.
                    }
                    tokio::time::sleep_until(due).await;
                }
            }
            let (batch, count) = if num_records - sent >= records_per_batch {
                batches[next % batches.len()].clone()
            } else {
                tail.clone().expect("remainder batch exists")
            };
            let partition = partitions[next % partitions.len()];
            next += 1;
            let bytes = count * record_size as u64;
            let request = produce_request(&metadata, partition, s.acks, timeout, batch);
            let t0 = Instant::now();
            if s.acks == 0 {
                conn.send_without_response(&request, version).await?;
                record_latency(&mut stats.latency_us, t0.elapsed());
                stats.records += count;
                stats.bytes += bytes;
                progress.fetch_add(count, Ordering::Relaxed);
            } else {
                let in_flight = conn.start_versioned(&request, version).await?;
                pending.push_back((in_flight, t0, partition, count, bytes));
            }
            sent += count;
        }
        if let Some((in_flight, t0, partition, count, bytes)) = pending.pop_front() {
            let response = conn.finish(in_flight).await?;
            produce_base_offset(&response, partition)
                .with_context(|| format!("producing to {}-{partition}", s.topic))?;
            record_latency(&mut stats.latency_us, t0.elapsed());
            stats.records += count;
            stats.bytes += bytes;
            progress.fetch_add(count, Ordering::Relaxed);
        }
    }
    Ok(stats)
}

async fn perf_consume(p: &args::Parsed) -> Result<()> {
    let topic = p.required("--topic")?.to_string();
    let fetch_max_bytes: i32 = p.parse_or("--fetch-max-bytes", 4 * 1024 * 1024)?;
    let idle_timeout = Duration::from_millis(p.parse_or("--timeout-ms", CONSUME_IDLE_TIMEOUT_DEFAULT_MS)?);
    let partitions_if_created: i32 = p.parse_or("--partitions", 1)?;
    let mut client = Client::connect(p.bootstrap(), CLIENT_ID).await?;
    let partitions = ensure_topic(&mut client, &topic, partitions_if_created).await?;
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut available: u64 = 0;
    for &partition in partitions.keys() {
        let earliest = client.list_offsets(&topic, partition, EARLIEST_TIMESTAMP).await?.0;
        let latest = client.list_offsets(&topic, partition, LATEST_TIMESTAMP).await?.0;
        available += (latest - earliest).max(0) as u64;
        positions.insert(partition, earliest);
    }
    let num_records: u64 = match p.get("--num-records") {
        Some(n) => n.parse().context("--num-records")?,
        None => available,
    };
    let progress = Arc::new(AtomicU64::new(0));
    let mut stats = WorkerStats { records: 0, bytes: 0, latency_us: new_histogram() };
    let start = Instant::now();
    let printer = tokio::spawn(print_progress("consume", progress.clone(), 0));
    let mut last_progress = Instant::now();
    let wait_ms = if positions.len() > 1 { 100 } else { 500 };
    'outer: while stats.records < num_records {
        for (&partition, position) in positions.iter_mut() {
            let t0 = Instant::now();
            let result = client
                .fetch(&topic, partition, *position, wait_ms, 1, fetch_max_bytes)
                .await
                .with_context(|| format!("fetching {topic}-{partition}"))?;
            record_latency(&mut stats.latency_us, t0.elapsed());
            *position = result.next_offset.max(*position);
            for r in &result.records {
                stats.records += 1;
                stats.bytes += (r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len())) as u64;
                if stats.records >= num_records {
                    break;
                }
            }
            if !result.records.is_empty() {
                last_progress = Instant::now();
                progress.store(stats.records, Ordering::Relaxed);
            }
            if stats.records >= num_records {
                break 'outer;
            }
        }
        if last_progress.elapsed() > idle_timeout {
            printer.abort();
            bail!("no records for {} ms after {} of {num_records} records", idle_timeout.as_millis(), stats.records);
        }
    }
    printer.abort();
    let each = stats.bytes.checked_div(stats.records).unwrap_or(0);
    println!("{}", summary("consume", &stats, each, start.elapsed()));
    Ok(())
}

/// Partition -> leader for `topic`, creating the topic first if it does not exist.
async fn ensure_topic(client: &mut Client, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i32>> {
    match client.topic_metadata(topic).await {
        Err(ClientError::Kafka { code, .. }) if code == codes::UNKNOWN_TOPIC_OR_PARTITION => {
            match client.create_topic(topic, partitions, 1, Vec::new()).await {
                Ok(()) => eprintln!("created topic {topic} with {partitions} partition(s)"),
                Err(e) if e.kafka_code() == Some(codes::TOPIC_ALREADY_EXISTS) => {}
                Err(e) => return Err(e).context("creating topic"),
            }
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        let metadata = client.metadata(Some(vec![topic.to_string()])).await?;
        if let Some(t) = metadata.topics.iter().find(|t| t.name == topic) {
            let leaders: BTreeMap<i32, i32> = t.partitions.iter().map(|p| (p.partition, p.leader_id)).collect();
            if t.error_code == 0 && !leaders.is_empty() && leaders.values().all(|l| *l >= 0) {
                return Ok(leaders);
            }
        }
        if Instant::now() > deadline {
            bail!("topic {topic} has no leader for every partition after {TOPIC_READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `DISTINCT_BATCHES` batches of `records_per_batch` records, with their record counts.
fn build_batches(records_per_batch: usize, record_size: usize, compression: Compression) -> Result<Vec<(Bytes, u64)>> {
    (0..DISTINCT_BATCHES).map(|_| build_batch(records_per_batch, record_size, compression)).collect()
}

/// One batch of `count` records whose values are `record_size` random capital letters.
fn build_batch(count: usize, record_size: usize, compression: Compression) -> Result<(Bytes, u64)> {
    let mut rng = rand::rng();
    let timestamp_ms = now_ms();
    let records: Vec<ProduceRecord> = (0..count)
        .map(|_| {
            let value: Vec<u8> = (0..record_size).map(|_| rng.random_range(b'A'..=b'Z')).collect();
            ProduceRecord { key: None, value: Some(Bytes::from(value)), headers: Vec::new(), timestamp_ms }
        })
        .collect();
    Ok((encode_batch(&records, compression)?, count as u64))
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

fn record_latency(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).clamp(1, LATENCY_MAX_US));
}

/// Prints records so far every [`PROGRESS_INTERVAL`] until aborted.
async fn print_progress(what: &'static str, progress: Arc<AtomicU64>, record_size: u64) {
    let start = Instant::now();
    let mut last = 0u64;
    loop {
        tokio::time::sleep(PROGRESS_INTERVAL).await;
        let now = progress.load(Ordering::Relaxed);
        let rate = (now - last) as f64 / PROGRESS_INTERVAL.as_secs_f64();
        last = now;
        let mb = if record_size > 0 {
            format!(", {:.1} MB/s", rate * record_size as f64 / (1024.0 * 1024.0))
        } else {
            String::new()
        };
        eprintln!("{what}: {now} records after {:.0} s, {rate:.0} rec/s{mb}", start.elapsed().as_secs_f64());
    }
}

/// The final summary line.
fn summary(what: &str, stats: &WorkerStats, record_size: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ms = |q: f64| stats.latency_us.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{what}: {} records, {record_size} B each, {:.1} MB/s, {:.0} rec/s, latency ms p50 {:.2} p95 {:.2} p99 {:.2} max {:.2}",
        stats.records,
        stats.bytes as f64 / (1024.0 * 1024.0) / secs,
        stats.records as f64 / secs,
        ms(0.50),
        ms(0.95),
        ms(0.99),
        stats.latency_us.max() as f64 / 1000.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_format_is_stable() {
        // Proves the summary shape scripts parse.
        let mut h = new_histogram();
        for us in [1000, 2000, 3000, 20_000] {
            h.record(us).unwrap();
        }
        let stats = WorkerStats { records: 1000, bytes: 1000 * 1024, latency_us: h };
        let s = summary("produce", &stats, 1024, Duration::from_secs(1));
        assert!(
            s.starts_with("produce: 1000 records, 1024 B each, 1.0 MB/s, 1000 rec/s, latency ms p50 2.00 p95 "),
            "{s}"
        );
        assert!(s.contains(" max 20.0"), "{s}");
    }

    #[test]
    fn built_batches_have_the_requested_shape() {
        // Proves a pre-built batch decodes to `count` records of `record_size` bytes.
        let (batch, n) = build_batch(10, 100, Compression::None).unwrap();
        let got = crate::client::decode_batches(batch, 0).unwrap().records;
        assert_eq!((n, got.len()), (10, 10));
        assert!(got.iter().all(|r| r.value.as_ref().unwrap().len() == 100));
    }
}
