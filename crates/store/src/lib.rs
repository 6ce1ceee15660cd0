//! osmo-store (being written).
