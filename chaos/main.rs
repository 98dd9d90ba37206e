//! Real-process tests.
