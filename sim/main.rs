//! Deterministic simulation tests: the production broker and client run unchanged inside
//! madsim's simulated network and clock, on a simulated disk that models what fsync promises
//! (and what it does not: EIO drops dirty pages, a crash keeps a torn prefix of unsynced
//! writes).
//!
//! Build and run with `cargo simtest --test sim` (a `--cfg madsim` build), or
//! `scripts/sim.sh`. Each test prints its seed and settings first and a trace hash last;
//! `MADSIM_TEST_SEED=N` replays one exactly, `MADSIM_TEST_NUM=K` sweeps K seeds. See
//! docs/SIMULATION.md.
#![cfg(madsim)]

mod checker;
mod cluster;
mod history;
mod settings;
mod single_node;
mod swarm;
mod workload;
