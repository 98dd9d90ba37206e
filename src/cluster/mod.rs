//! Cluster mode: the network shell around the controller quorum and the broker's side of it
//! (registration, heartbeats, metadata, replica fetching).
//!
//! The cores it drives are sans-IO: `controller` (Raft quorum + metadata image + controller
//! decisions) and `replication` (leader/follower partition state). This module owns their
//! sockets and timers.

pub mod agent;
pub mod controller;
pub mod rpc;
pub mod transport;
