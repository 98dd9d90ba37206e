//! A fault-injecting in-memory [`Disk`] for deterministic simulation (`sim/`).
//!
//! Model, per file: a page cache (`cache`, what reads see) and the durable contents
//! (`durable`, what survives a crash), plus the ordered list of writes and length changes made
//! since the last successful `sync_data` (`pending`).
//! - `sync_data` applies `pending` to `durable`. With probability `fsync_eio_per_mille` it
//!   fails with EIO instead, and, as Linux does, the pending writes are dropped: the cache
//!   still shows them but they will never reach the disk, and a later successful fsync does
//!   not bring them back. A caller that retries the fsync and trusts it loses data.
//! - `write_at` fails with ENOSPC with probability `enospc_per_mille` (nothing is written).
//! - [`SimDisk::crash`] (power loss) keeps, per file, a random prefix of the pending
//!   operations; with probability `tear_per_mille` the next write is torn: a prefix of its
//!   512-byte sectors survives, or (disks do not promise sector order) a random subset of them;
//!   with probability `bitflip_per_mille` one bit of the torn region flips.
//! - Directory operations (create, rename, remove) are durable at once; `sync_dir` is a no-op.
//!   Missing: lost directory entries of files whose directory was never synced.
//! - Latency ([`SimDiskLatency`], off by default): every write, fsync and read draws a service
//!   time (uniform in half to one and a half times the configured mean, times the slow-disk
//!   factor of [`SimDisk::set_slow_factor`]). Writes and fsyncs occupy one device queue after
//!   whatever is already queued (writeback), so an fsync completes only once the writes queued
//!   before it are done; reads run beside the queue. The [`File`] trait is synchronous, so nothing can sleep inside
//!   it: the completion time is left in a thread-local, and `runtime::blocking` (the async
//!   seam every fsync on the produce and commit paths goes through) sleeps until it with
//!   madsim's clock. Operations outside that seam (appends and fetch reads, served from the
//!   page cache) return at once but still occupy the queue. The data of an fsync becomes
//!   durable when the call is made, not when its latency has elapsed (a crash during the
//!   sleep keeps it: safe for callers, which only learn of success after the sleep).
//!
//! Determinism: every random choice comes from one SplitMix64 generator seeded by the caller
//! (the simulator seeds it from madsim's RNG), and every fault is logged as a [`DiskEvent`]
//! with the simulated time, so a seed replays the same faults.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::disk::{Disk, File};

/// The sector size at which a crash may tear a write.
pub const SECTOR_BYTES: usize = 512;

/// Fault rates of a [`SimDisk`], in events per thousand operations of the kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimDiskConfig {
    /// Chance that `sync_data` fails with EIO (and drops the pending writes).
    pub fsync_eio_per_mille: u32,
    /// Chance that `write_at` fails with ENOSPC.
    pub enospc_per_mille: u32,
    /// Chance, per file with pending writes, that a crash tears the first lost write.
    pub tear_per_mille: u32,
    /// Chance that a torn write also has one bit flipped.
    pub bitflip_per_mille: u32,
}

/// Mean service times of a [`SimDisk`]'s operations, in microseconds (0: instant). Each
/// operation draws uniformly from half to one and a half times the mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimDiskLatency {
    /// Per `write_at` (including `set_len`).
    pub write_us: u32,
    /// Per `sync_data` that has something to sync.
    pub sync_us: u32,
    /// Per `read_at`.
    pub read_us: u32,
}

/// The kinds of operation that take time.
#[derive(Clone, Copy)]
enum OpKind {
    Write,
    Sync,
    Read,
}

thread_local! {
    /// When the disk operations made on this thread since the last
    /// [`take_disk_wait_until`] complete (the latest of their completion times).
    static WAIT_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Takes the completion time of the simulated disk operations made on this thread since the
/// last call (`None` if there were none or they took no time). `runtime::blocking` sleeps until
/// it under madsim.
pub fn take_disk_wait_until() -> Option<Instant> {
    WAIT_UNTIL.with(|w| w.take())
}

/// A fault the disk injected, for the simulator's history and failure reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEvent {
    /// Simulated time in ms since the Unix epoch ([`super::now_ms`]).
    pub at_ms: i64,
    /// What happened, naming the file.
    pub what: String,
}

/// The fault-injecting disk. Cloning shares the same files: keep one clone outside the
/// simulated node so the contents survive a kill and restart.
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<Namespace>>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Namespace {
    files: BTreeMap<PathBuf, Arc<SimFile>>,
    dirs: BTreeSet<PathBuf>,
}

struct Shared {
    rng: Mutex<SplitMix64>,
    config: Mutex<SimDiskConfig>,
    faults_enabled: AtomicBool,
    events: Mutex<Vec<DiskEvent>>,
    /// The device queue: latencies, the slow-disk factor, when the queue drains, and its own
    /// generator (so turning latency on does not change which faults a seed injects).
    device: Mutex<Device>,
}

struct Device {
    latency: SimDiskLatency,
    slow_factor: u32,
    busy_until: Option<Instant>,
    rng: SplitMix64,
}

impl Shared {
    /// True with probability `per_mille / 1000`, if faults are enabled.
    fn roll(&self, per_mille: u32) -> bool {
        per_mille > 0
            && self.faults_enabled.load(Ordering::Acquire)
            && self.rng.lock().unwrap().below(1000) < per_mille as u64
    }

    fn event(&self, what: String) {
        self.events.lock().unwrap().push(DiskEvent { at_ms: super::now_ms(), what });
    }

    /// Queues one operation on the device and records its completion time for the caller.
    fn charge(&self, kind: OpKind) {
        let mut d = self.device.lock().unwrap();
        let mean = match kind {
            OpKind::Write => d.latency.write_us,
            OpKind::Sync => d.latency.sync_us,
            OpKind::Read => d.latency.read_us,
        } as u64;
        if mean == 0 {
            return;
        }
        let us = (mean / 2 + d.rng.below(mean + 1)) * d.slow_factor.max(1) as u64;
        let now = Instant::now();
        let done = match kind {
            // Reads run beside the queue (a device serves reads in parallel with writeback,
            // and most are page-cache hits): they delay only a caller that waits for them.
            OpKind::Read => now + Duration::from_micros(us),
            OpKind::Write | OpKind::Sync => {
                let done = d.busy_until.filter(|&b| b > now).unwrap_or(now) + Duration::from_micros(us);
                d.busy_until = Some(done);
                done
            }
        };
        WAIT_UNTIL.with(|w| w.set(Some(w.get().map_or(done, |t| t.max(done)))));
    }
}

/// SplitMix64: tiny, seedable, good enough to pick faults.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

enum Op {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

impl Op {
    fn apply(&self, to: &mut Vec<u8>) {
        match self {
            Op::Write { offset, data } => write_into(to, *offset, data),
            Op::SetLen(len) => to.resize(*len, 0),
        }
    }
}

fn write_into(to: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if to.len() < end {
        to.resize(end, 0);
    }
    to[offset..end].copy_from_slice(data);
}

#[derive(Default)]
struct FileState {
    cache: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Op>,
}

struct SimFile {
    path: Mutex<PathBuf>,
    state: Mutex<FileState>,
    shared: Arc<Shared>,
}

impl File for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.shared.charge(OpKind::Read);
        let s = self.state.lock().unwrap();
        let off = offset as usize;
        if off >= s.cache.len() {
            return Ok(0);
        }
        let n = buf.len().min(s.cache.len() - off);
        buf[..n].copy_from_slice(&s.cache[off..off + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let cfg = *self.shared.config.lock().unwrap();
        if self.shared.roll(cfg.enospc_per_mille) {
            let path = self.path.lock().unwrap().display().to_string();
            self.shared.event(format!("ENOSPC writing {} bytes at {offset} of {path}", buf.len()));
            return Err(io::Error::from_raw_os_error(28));
        }
        self.shared.charge(OpKind::Write);
        let mut s = self.state.lock().unwrap();
        write_into(&mut s.cache, offset as usize, buf);
        s.pending.push(Op::Write { offset: offset as usize, data: buf.to_vec() });
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().cache.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.shared.charge(OpKind::Write);
        let mut s = self.state.lock().unwrap();
        s.cache.resize(len as usize, 0);
        s.pending.push(Op::SetLen(len as usize));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let cfg = *self.shared.config.lock().unwrap();
        let mut s = self.state.lock().unwrap();
        if s.pending.is_empty() {
            return Ok(());
        }
        self.shared.charge(OpKind::Sync);
        if self.shared.roll(cfg.fsync_eio_per_mille) {
            let dropped = s.pending.len();
            s.pending.clear();
            drop(s);
            let path = self.path.lock().unwrap().display().to_string();
            self.shared.event(format!("EIO on fsync of {path}: {dropped} unsynced writes dropped"));
            return Err(io::Error::from_raw_os_error(5));
        }
        let pending = std::mem::take(&mut s.pending);
        for op in &pending {
            op.apply(&mut s.durable);
        }
        Ok(())
    }
}

impl SimDisk {
    /// An empty disk whose faults are drawn from a generator seeded with `seed`. Faults start
    /// disabled; see [`SimDisk::set_faults_enabled`].
    pub fn new(seed: u64, config: SimDiskConfig) -> Self {
        SimDisk {
            inner: Arc::new(Mutex::new(Namespace::default())),
            shared: Arc::new(Shared {
                rng: Mutex::new(SplitMix64(seed)),
                config: Mutex::new(config),
                faults_enabled: AtomicBool::new(false),
                events: Mutex::new(Vec::new()),
                device: Mutex::new(Device {
                    latency: SimDiskLatency::default(),
                    slow_factor: 1,
                    busy_until: None,
                    rng: SplitMix64(seed ^ 0x6C61_7465_6E63_7921),
                }),
            }),
        }
    }

    /// Turns EIO and ENOSPC injection on or off (crashes still lose unsynced data; tearing and
    /// bit flips at a crash follow this switch too).
    pub fn set_faults_enabled(&self, on: bool) {
        self.shared.faults_enabled.store(on, Ordering::Release);
    }

    /// Replaces the fault rates.
    pub fn set_config(&self, config: SimDiskConfig) {
        *self.shared.config.lock().unwrap() = config;
    }

    /// Sets the mean service times (see [`SimDiskLatency`]).
    pub fn set_latency(&self, latency: SimDiskLatency) {
        self.shared.device.lock().unwrap().latency = latency;
    }

    /// Multiplies every service time by `factor` (1: normal; a "slow disk" episode uses more).
    pub fn set_slow_factor(&self, factor: u32) {
        self.shared.device.lock().unwrap().slow_factor = factor.max(1);
    }

    /// Takes the fault events logged since the last call.
    pub fn take_events(&self) -> Vec<DiskEvent> {
        std::mem::take(&mut *self.shared.events.lock().unwrap())
    }

    /// Bytes written but not yet durable, over all files.
    pub fn unsynced_ops(&self) -> usize {
        let ns = self.inner.lock().unwrap();
        ns.files.values().map(|f| f.state.lock().unwrap().pending.len()).sum()
    }

    /// Power loss: the device queue empties; every file falls back to its durable contents plus a random prefix of its
    /// pending operations, the next write possibly torn and bit-flipped. Call it while the
    /// node that uses this disk is dead (right after `Handle::kill`).
    pub fn crash(&self) {
        let cfg = *self.shared.config.lock().unwrap();
        self.shared.device.lock().unwrap().busy_until = None;
        let ns = self.inner.lock().unwrap();
        for (path, f) in &ns.files {
            let mut s = f.state.lock().unwrap();
            let pending = std::mem::take(&mut s.pending);
            let n = pending.len();
            if n == 0 {
                s.cache = s.durable.clone();
                continue;
            }
            let keep = self.shared.rng.lock().unwrap().below(n as u64 + 1) as usize;
            let mut durable = std::mem::take(&mut s.durable);
            for op in &pending[..keep] {
                op.apply(&mut durable);
            }
            let mut what = format!("crash: {} kept {keep} of {n} unsynced ops", path.display());
            if let Some(Op::Write { offset, data }) = pending.get(keep) {
                if self.shared.roll(cfg.tear_per_mille) {
                    what.push_str(&self.tear(&mut durable, *offset, data, cfg));
                }
            }
            self.shared.event(what);
            s.cache = durable.clone();
            s.durable = durable;
        }
    }

    /// Applies part of a write: whole sectors (aligned to file offsets), either a prefix of
    /// them or a random subset, then maybe flips one bit in what was written. Returns a note.
    fn tear(&self, to: &mut Vec<u8>, offset: usize, data: &[u8], cfg: SimDiskConfig) -> String {
        let mut rng = self.shared.rng.lock().unwrap();
        // Pieces of the write split at sector boundaries of the file.
        let mut pieces = Vec::new();
        let mut start = offset;
        while start < offset + data.len() {
            let end = ((start / SECTOR_BYTES + 1) * SECTOR_BYTES).min(offset + data.len());
            pieces.push((start, end));
            start = end;
        }
        let scattered = rng.below(2) == 0;
        let prefix = rng.below(pieces.len() as u64 + 1) as usize;
        let mut written = Vec::new();
        for (i, &(a, b)) in pieces.iter().enumerate() {
            let keep = if scattered { rng.below(2) == 0 } else { i < prefix };
            if keep {
                write_into(to, a, &data[a - offset..b - offset]);
                written.push((a, b));
            }
        }
        let mut note = format!(
            ", tore the next write ({} bytes at {offset}) keeping {} of {} sectors ({})",
            data.len(),
            written.len(),
            pieces.len(),
            if scattered { "scattered" } else { "prefix" }
        );
        let flip = cfg.bitflip_per_mille > 0
            && self.shared.faults_enabled.load(Ordering::Acquire)
            && rng.below(1000) < cfg.bitflip_per_mille as u64;
        if flip && !written.is_empty() {
            let (a, b) = written[rng.below(written.len() as u64) as usize];
            let byte = a + rng.below((b - a) as u64) as usize;
            let bit = rng.below(8) as u8;
            to[byte] ^= 1 << bit;
            note.push_str(&format!(", flipped bit {bit} of byte {byte}"));
        }
        note
    }
}

impl Disk for SimDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let mut ns = self.inner.lock().unwrap();
        if let Some(f) = ns.files.get(path) {
            return Ok(f.clone());
        }
        if !create {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display())));
        }
        let f = Arc::new(SimFile {
            path: Mutex::new(path.to_path_buf()),
            state: Mutex::new(FileState::default()),
            shared: self.shared.clone(),
        });
        ns.files.insert(path.to_path_buf(), f.clone());
        Ok(f)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut ns = self.inner.lock().unwrap();
        let mut p = Some(path);
        while let Some(d) = p {
            ns.dirs.insert(d.to_path_buf());
            p = d.parent();
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let ns = self.inner.lock().unwrap();
        let mut out = BTreeSet::new();
        for p in ns.files.keys().chain(ns.dirs.iter()) {
            if p.parent() == Some(dir) {
                if let Some(n) = p.file_name() {
                    out.insert(n.to_string_lossy().into_owned());
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let ns = self.inner.lock().unwrap();
        ns.files.contains_key(path) || ns.dirs.contains(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut ns = self.inner.lock().unwrap();
        ns.files.remove(path).map(|_| ()).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut ns = self.inner.lock().unwrap();
        ns.files.retain(|p, _| !p.starts_with(path));
        ns.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut ns = self.inner.lock().unwrap();
        let f = ns.files.remove(from).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        *f.path.lock().unwrap() = to.to_path_buf();
        ns.files.insert(to.to_path_buf(), f);
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

/// madsim's plugin hook for node kills: registered in a running simulation with
/// `Handle::add_simulator::<SimDiskPlugin>()` (madsim is patched for that, see
/// `sim/shims/madsim/README.runnel.md`), it power-fails a node's attached [`SimDisk`] whenever
/// madsim kills the node (`Handle::kill` calls every plugin's `reset_node`), so no kill can
/// forget the disk. `Handle::restart` of a dead node does not call it: the power-loss happened
/// at the kill.
#[cfg(madsim)]
#[derive(Default)]
pub struct SimDiskPlugin {
    disks: Mutex<BTreeMap<madsim::task::NodeId, SimDisk>>,
}

#[cfg(madsim)]
impl SimDiskPlugin {
    /// Makes `disk` the disk that power-fails when `node` is killed.
    pub fn attach(&self, node: madsim::task::NodeId, disk: SimDisk) {
        self.disks.lock().unwrap().insert(node, disk);
    }
}

#[cfg(madsim)]
impl madsim::plugin::Simulator for SimDiskPlugin {
    fn new(_rand: &madsim::rand::GlobalRng, _time: &madsim::time::TimeHandle, _config: &madsim::Config) -> Self {
        SimDiskPlugin::default()
    }

    fn reset_node(&self, id: madsim::task::NodeId) {
        let disk = self.disks.lock().unwrap().get(&id).cloned();
        if let Some(disk) = disk {
            disk.crash();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves that only synced data survives a crash and that a failed fsync loses its writes
    // for good, even when a later fsync succeeds.
    #[test]
    fn durability_and_eio() {
        let d = SimDisk::new(7, SimDiskConfig { fsync_eio_per_mille: 1000, ..Default::default() });
        let f = d.open(Path::new("/a"), true).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap(); // faults disabled: succeeds
        d.set_faults_enabled(true);
        f.write_at(b" world", 5).unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
        d.set_faults_enabled(false);
        assert_eq!(f.len().unwrap(), 11, "the cache still shows the dropped write");
        f.sync_data().unwrap(); // nothing pending: the dropped write is not retried
        d.crash();
        let mut buf = vec![0; 11];
        let n = f.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"hello");
    }

    // Proves that a crash keeps a prefix of the pending writes, in order, and nothing after.
    #[test]
    fn crash_keeps_a_prefix() {
        for seed in 0..50 {
            let d = SimDisk::new(seed, SimDiskConfig::default());
            let f = d.open(Path::new("/a"), true).unwrap();
            for i in 0..10u8 {
                f.write_at(&[i; 100], i as u64 * 100).unwrap();
            }
            d.crash();
            let len = f.len().unwrap() as usize;
            assert_eq!(len % 100, 0);
            let mut buf = vec![0; len];
            f.read_exact_at(&mut buf, 0).unwrap();
            for (i, chunk) in buf.chunks(100).enumerate() {
                assert!(chunk.iter().all(|&b| b == i as u8));
            }
        }
    }

    // Proves the device queue: an fsync completes after the writes queued before it, a slow
    // factor stretches service times, and with no latency configured nothing waits.
    #[test]
    fn latency_queues_behind_writes() {
        let d = SimDisk::new(3, SimDiskConfig::default());
        let f = d.open(Path::new("/a"), true).unwrap();
        f.write_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        assert_eq!(take_disk_wait_until(), None);
        d.set_latency(SimDiskLatency { write_us: 1_000_000, sync_us: 2_000_000, read_us: 0 });
        let t0 = Instant::now();
        for i in 0..4 {
            f.write_at(b"y", i).unwrap();
        }
        f.sync_data().unwrap();
        let done = take_disk_wait_until().expect("queued operations take time");
        // Four writes (>= 0.5 s each) and an fsync (>= 1 s) at half their means or more.
        assert!(done >= t0 + Duration::from_millis(3_000), "{:?}", done - t0);
        assert!(done <= t0 + Duration::from_secs(10) + Duration::from_secs(1));
        d.set_slow_factor(100);
        f.write_at(b"z", 0).unwrap();
        let slow = take_disk_wait_until().unwrap();
        assert!(slow >= done + Duration::from_secs(50), "a slow write takes 100x as long");
    }

    // Proves that tears happen at sector granularity and are reported.
    #[test]
    fn tears_at_sectors() {
        let cfg = SimDiskConfig { tear_per_mille: 1000, bitflip_per_mille: 1000, ..Default::default() };
        let mut torn = 0;
        for seed in 0..50 {
            let d = SimDisk::new(seed, cfg);
            d.set_faults_enabled(true);
            let f = d.open(Path::new("/a"), true).unwrap();
            f.write_at(&[1; 3000], 0).unwrap();
            d.crash();
            let ev = d.take_events();
            if ev.iter().any(|e| e.what.contains("tore")) {
                torn += 1;
            }
        }
        assert!(torn > 0);
    }
}
