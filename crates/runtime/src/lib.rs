//! osmo-runtime (being written).
