//! Command-line subcommands other than `broker` (topics, produce, consume, perf, groups, quorum).
//!
//! Each entry point takes the arguments after its subcommand word, answers `--help` with its
//! usage, rejects unknown flags by name, and returns an error (so the binary exits non-zero)
//! on any failure. All broker traffic goes through [`crate::client`].

pub mod args;
mod consume;
mod groups;
mod perf;
mod produce;
pub mod quorum;
mod topics;

pub use consume::consume;
pub use groups::groups;
pub use perf::perf;
pub use produce::produce;
pub use quorum::quorum;
pub use topics::topics;

/// Client id the CLI announces to brokers.
const CLIENT_ID: &str = "runnel-cli";

/// Milliseconds since the Unix epoch, for record timestamps (CLI only: the client itself
/// never reads a clock).
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
