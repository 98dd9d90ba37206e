//! Runnel: a Kafka-compatible event-streaming broker.
//!
//! See `docs/ARCHITECTURE.md` for the bird's-eye view and the module map. In short: `protocol`
//! and `log` are pure or storage-seam-only; `broker` routes decoded requests to partition
//! state; `server` owns sockets and tasks; `runtime` is the only module that touches the
//! filesystem or names madsim.

pub mod broker;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod group;
pub mod limits;
pub mod log;
pub mod protocol;
pub mod record_file;
pub mod replication;
pub mod runtime;
pub mod server;
pub mod txn;
