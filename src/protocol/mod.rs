//! Kafka wire protocol: framing, request headers, the ApiVersions table, record batches.
//!
//! Architecture invariant: this module performs no I/O and never panics on hostile bytes.

pub mod batch;
