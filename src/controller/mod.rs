//! The controller: the cluster metadata log replicated by a Raft quorum of controllers, and the
//! active controller's decisions (broker registration, heartbeats and fencing, topic placement,
//! leader and ISR changes).
//!
//! - [`metadata`]: the records of the metadata log, their encoding, and [`MetadataImage`], the
//!   state after applying them in order.
//! - [`quorum`]: [`ControllerQuorum`], a raft-rs `RawNode` over [`storage::DiskStorage`], in the
//!   raft-rs shape (`tick` / `step` / `propose` / `ready`).
//! - [`logic`]: [`ActiveController`], pure functions from the image to records to propose.
//!
//! Architecture invariant: this module performs no networking, spawns no task, reads no clock
//! and never sleeps. Time arrives as ticks and `now_ms`, randomness from seeds, storage through
//! `Arc<dyn Disk>`. The network shell (not here) moves `ready()` messages between controllers,
//! calls `tick()` on a timer, and feeds broker requests to [`ActiveController`] on the leader.

pub mod logic;
pub mod metadata;
pub mod quorum;
pub mod storage;

#[cfg(test)]
mod tests;

pub use logic::{ActiveController, BrokerSession, LogicError, RegisterBrokerRequest};
pub use metadata::{
    ApplyError, BrokerRegistration, CodecError, MetadataImage, MetadataRecord, PartitionImage, TopicImage,
};
pub use quorum::{decode_message, encode_message, ControllerError, ControllerQuorum, ControllerReady, RejectedRecord};
