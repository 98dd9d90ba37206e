//! Micro-benchmark of the partition log on the real filesystem: appends of 16 KiB batches of
//! 1 KiB records (offsets assigned, one write per append), then a sequential read of
//! everything, then appends with a `sync_data` of the unflushed files every 1 MiB.
//! Prints MB/s for each phase; bounded to stay well under 10 s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use runnel::log::{Log, LogConfig};
use runnel::protocol::batch::{build_batch, validate_produce, RecordSpec, ValidateOptions};
use runnel::runtime::{Disk, StdDisk};

/// Bytes appended in each phase.
const PHASE_BYTES: usize = 512 * 1024 * 1024;
/// Bytes between syncs in the durable phase.
const SYNC_EVERY_BYTES: usize = 1024 * 1024;
/// Bytes appended in the durable phase (fsyncs are slow on some disks).
const SYNC_PHASE_BYTES: usize = 128 * 1024 * 1024;

fn opts() -> ValidateOptions {
    ValidateOptions {
        max_message_bytes: 1 << 20,
        require_keys: false,
        now_ms: 0,
        log_append_time: false,
        timestamp_before_max_ms: i64::MAX,
        timestamp_after_max_ms: i64::MAX,
    }
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn append_phase(log: &mut Log, template: &[u8], total: usize, sync_every: Option<usize>) -> f64 {
    let headers = validate_produce(template, &opts()).unwrap();
    let mut buf = template.to_vec();
    let mut since_sync = 0;
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        buf.copy_from_slice(template);
        log.append(&mut buf, &headers, 0, 0, false).unwrap();
        done += buf.len();
        since_sync += buf.len();
        if sync_every.is_some_and(|n| since_sync >= n) {
            since_sync = 0;
            if let Some((files, offset)) = log.unflushed() {
                for f in files {
                    f.sync_data().unwrap();
                }
                log.mark_flushed(offset);
            }
        }
    }
    mbps(done, start.elapsed().as_secs_f64())
}

fn main() {
    let dir = std::env::temp_dir().join(format!("runnel-bench-{}-{}", std::process::id(), rand::random::<u64>()));
    let disk: Arc<dyn Disk> = Arc::new(StdDisk);
    let value = vec![0x5au8; 1000];
    let records: Vec<RecordSpec> = (0..16).map(|_| (Some(&b"key-0001"[..]), Some(&value[..]), vec![])).collect();
    let template = build_batch(&records, 1, 0);
    println!("batch: {} bytes, 16 records of ~1 KiB", template.len());

    let part: PathBuf = dir.join("bench-0");
    let mut log = Log::open(disk.clone(), part.clone(), LogConfig::default(), 0).unwrap();
    let append = append_phase(&mut log, &template, PHASE_BYTES, None);
    println!("append (no sync):        {append:8.0} MB/s");

    let start = Instant::now();
    let mut offset = log.log_start_offset();
    let mut read = 0;
    while offset < log.log_end_offset() {
        let r = log.read(offset, 1 << 20, i64::MAX, true).unwrap();
        read += r.records.len();
        // Advance past the last batch returned.
        let mut pos = 0;
        while pos < r.records.len() {
            let h = runnel::protocol::batch::BatchHeader::parse(&r.records[pos..]).unwrap();
            offset = h.last_offset() + 1;
            pos += h.total_len();
        }
    }
    println!("sequential read (1 MiB): {:8.0} MB/s", mbps(read, start.elapsed().as_secs_f64()));
    log.close().unwrap();

    let part2 = dir.join("bench-1");
    let mut log = Log::open(disk.clone(), part2, LogConfig::default(), 0).unwrap();
    let synced = append_phase(&mut log, &template, SYNC_PHASE_BYTES, Some(SYNC_EVERY_BYTES));
    println!("append + sync per 1 MiB: {synced:8.0} MB/s");
    log.close().unwrap();
    let _ = disk.remove_dir_all(&dir);
}
