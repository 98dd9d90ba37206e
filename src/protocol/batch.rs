//! Record batch v2 parsing and validation.
