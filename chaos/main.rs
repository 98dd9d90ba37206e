//! Real-process tests: start the real `runnel` binary on 127.0.0.1, drive it with the project's
//! client and with kcat, kill it with SIGKILL, restart it, and check what survived.
//!
//! Not built under madsim (these need real processes and sockets).
#![cfg(not(madsim))]

mod cluster;
mod crash;
mod kcat;
mod support;
