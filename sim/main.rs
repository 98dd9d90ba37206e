//! Deterministic simulation tests: the production broker and client run unchanged inside
//! madsim's simulated network and clock, on an in-memory disk that models what fsync promises.
//!
//! Build and run with `cargo simtest --test sim` (a `--cfg madsim` build). Each test prints its
//! seed first; `MADSIM_TEST_SEED=N` replays one exactly, `MADSIM_TEST_NUM=K` sweeps K seeds.
#![cfg(madsim)]

mod single_node;
