//! The state document stored with each workflow: the engine's state plus what
//! the server must know to resume after a restart (barrier releases already
//! sent, timers already set). Written in the same transaction as the event.

use std::collections::BTreeSet;

use osmo_engine::{AttemptId, Millis, TimeoutKind, WorkflowState};
use serde::{Deserialize, Serialize};

/// Bump when the document's shape changes.
pub const STATE_VERSION: u32 = 1;

/// Schema version of the engine events stored in the event log.
pub const EVENT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Persisted {
    pub version: u32,
    pub engine: WorkflowState,
    /// Attempts the engine released through their barrier.
    #[serde(default)]
    pub released: BTreeSet<AttemptId>,
    /// Timers the engine asked for: (group, kind, due).
    #[serde(default)]
    pub timers: Vec<(u32, TimeoutKind, Millis)>,
}

impl Persisted {
    pub fn new(engine: WorkflowState) -> Persisted {
        Persisted {
            version: STATE_VERSION,
            engine,
            released: BTreeSet::new(),
            timers: Vec::new(),
        }
    }

    /// Notes what the commands ask for that a restarted server must redo.
    pub fn remember(&mut self, commands: &[osmo_engine::Command]) {
        for command in commands {
            match command {
                osmo_engine::Command::Release { attempts } => self.released.extend(attempts),
                // Back at the barrier: released again later.
                osmo_engine::Command::Restart { attempt, .. } => {
                    self.released.remove(attempt);
                }
                osmo_engine::Command::SetTimer { group, kind, at } => {
                    self.timers.push((*group, *kind, *at))
                }
                _ => {}
            }
        }
    }

    pub fn from_json(value: serde_json::Value) -> anyhow::Result<Persisted> {
        let doc: Persisted = serde_json::from_value(value)?;
        anyhow::ensure!(
            doc.version == STATE_VERSION,
            "stored state has version {}, this server reads version {STATE_VERSION}",
            doc.version
        );
        Ok(doc)
    }
}
