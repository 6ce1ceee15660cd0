//! `osmo`: one binary for every role — the workflow service (`osmo server`),
//! the local node agent (`osmo agent`), the in-task controller (`osmo exec`)
//! and the user's CLI (`osmo workflow ...`).

pub mod agent;
pub mod api_types;
pub mod cli;
pub mod exec;
pub mod machine;
pub use osmo_proto as proto;
pub mod render_guard;
pub mod server;

/// Milliseconds since the Unix epoch: the only clock the service reads.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
