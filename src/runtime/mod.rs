//! The seams between deterministic logic and the outside world: storage, clock and task spawning.
//!
//! Architecture invariant: this is the only module that touches the filesystem or names
//! `cfg(madsim)`. Everything else reaches disks through [`Disk`] / [`File`] and time through
//! [`now_ms`], so the same code runs on real tokio and inside madsim's simulated cluster
//! (where a simulated disk with fault injection stands in for [`StdDisk`]).
//!
//! [`watch`] replaces `tokio::sync::watch`, whose wake-up order depends on a process-global
//! counter and so breaks replay; use it for every watch channel.

mod disk;
mod simdisk;
pub mod watch;

pub use disk::{Disk, File, MemDisk, StdDisk};
#[cfg(madsim)]
pub use simdisk::SimDiskPlugin;
pub use simdisk::{take_disk_wait_until, DiskEvent, SimDisk, SimDiskConfig, SimDiskLatency, SECTOR_BYTES};

/// Milliseconds since the Unix epoch. Under madsim the libc clock is intercepted, so this is
/// simulated time and a seed reproduces it exactly.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs blocking work (fsync) off the async worker threads. Under madsim it runs inline (what
/// determinism wants) and then sleeps, on madsim's clock, until the simulated disk operations it
/// made complete ([`SimDisk`] latency).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    #[cfg(madsim)]
    {
        let _ = simdisk::take_disk_wait_until(); // operations made outside this seam do not wait
        let out = f();
        if let Some(until) = simdisk::take_disk_wait_until() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                tokio::time::sleep(left).await;
            }
        }
        out
    }
    #[cfg(not(madsim))]
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C). Under madsim only Ctrl-C
/// is simulated, so that is all this waits for there.
pub async fn shutdown_signal() {
    #[cfg(not(madsim))]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    biased;
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(madsim)]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A random u64 for ids and seeds. Under madsim it comes from the simulator's RNG (so a seed
/// replays exactly, even when several seeds run in one process); in production from the
/// operating system via rand's thread RNG.
pub fn random_u64() -> u64 {
    #[cfg(madsim)]
    {
        madsim::rand::random::<u64>()
    }
    #[cfg(not(madsim))]
    {
        rand::random::<u64>()
    }
}

/// A random u128 (see [`random_u64`]).
pub fn random_u128() -> u128 {
    ((random_u64() as u128) << 64) | random_u64() as u128
}

/// Reads a whole text file from the real filesystem (configuration files at startup).
pub fn read_text_file(path: &str) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}
