//! The engine state as stored in a workflow's snapshot. Between snapshots
//! the store keeps the events; a restarted server replays them on top of the
//! latest snapshot. What a restart must redo (releases, timers) it derives
//! from the engine state itself ([`WorkflowState::is_released`],
//! [`WorkflowState::pending_timers`]).

use osmo_engine::WorkflowState;
use serde::{Deserialize, Serialize};

/// Bump when the document's shape changes. Version 1 documents (which also
/// listed releases and timers) read as version 2: those lists are ignored.
pub const STATE_VERSION: u32 = 2;

/// Schema version of the engine events stored in the event log.
pub const EVENT_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
pub struct Persisted {
    pub version: u32,
    pub engine: WorkflowState,
}

/// The document to write, borrowing the live state (no copy of it).
#[derive(Serialize)]
struct PersistedRef<'a> {
    version: u32,
    engine: &'a WorkflowState,
}

impl Persisted {
    /// The JSON text of a snapshot of `engine`.
    pub fn to_text(engine: &WorkflowState) -> String {
        serde_json::to_string(&PersistedRef {
            version: STATE_VERSION,
            engine,
        })
        .expect("the engine state serializes")
    }

    pub fn from_json(value: serde_json::Value) -> anyhow::Result<Persisted> {
        let doc: Persisted = serde_json::from_value(value)?;
        anyhow::ensure!(
            doc.version == 1 || doc.version == STATE_VERSION,
            "stored state has version {}, this server reads versions 1 and {STATE_VERSION}",
            doc.version
        );
        Ok(doc)
    }
}
