//! `osmo-proto`: the wire types between the parts that run in different
//! processes — the server, the local node agent (`agent`: JSON lines over a
//! Unix socket) and `osmo exec` inside a backend's job (`exec`: HTTP). Types
//! only, no behaviour: every side depends on this crate, none on another's.

pub mod agent;
pub mod exec;

pub use agent::*;

/// This machine's host name, as attempts report where they ran.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Milliseconds since the Unix epoch: the one clock every process of osmo
/// reads (times cross processes as these numbers).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
