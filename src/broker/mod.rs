//! Broker request handling.
