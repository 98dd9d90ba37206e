//! Segmented partition logs.
