//! Broker configuration.
