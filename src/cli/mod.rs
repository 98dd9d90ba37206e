//! Command-line subcommands other than `broker` (topics, produce, consume, perf).
