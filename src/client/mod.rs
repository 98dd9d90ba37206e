//! A Kafka-protocol client used by the CLI, `sim/`, `chaos/` and `benches/`.
