//! The HTTP wire types between the server and `osmo exec` (the in-task
//! controller inside a backend's job): `/api/exec/{attempt}` and below.

use osmo_spec::codes::ReportedCode;
use serde::{Deserialize, Serialize};

use crate::agent::Phase;

/// The header `osmo exec` proves itself with (the value is in its environment).
pub const TOKEN_HEADER: &str = "x-osmo-exec-token";
/// The environment variable that carries the token into the job.
pub const TOKEN_ENV: &str = "OSMO_EXEC_TOKEN";

#[derive(Debug, Serialize, Deserialize)]
pub struct FetchQuery {
    #[serde(default)]
    pub node: Option<String>,
    /// `SLURM_RESTART_COUNT`: above 0 the job was requeued.
    #[serde(default)]
    pub restart: u32,
    /// The GPUs Slurm gave the job (`SLURM_JOB_GPUS`, comma-separated indices).
    #[serde(default)]
    pub gpus: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PhaseBody {
    pub phase: Phase,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReleaseQuery {
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// Where each task of the attempt's group runs: its name → the Slurm node
/// (`{{host:TASK}}` on Slurm is `$(OSMO_HOST_<TASK>)`, see [`host_var`]).
/// `complete`: every sibling has told its node; false: ask again.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HostsReply {
    pub hosts: std::collections::BTreeMap<String, String>,
    pub complete: bool,
}

/// The environment variable that holds where `task` runs on Slurm.
pub fn host_var(task: &str) -> String {
    format!("OSMO_HOST_{task}")
}

/// `go`: true to run the command, false to give up; null: ask again.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReleaseReply {
    pub go: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ControlQuery {
    /// The restarts `osmo exec` has already acted on.
    #[serde(default)]
    pub seen: u32,
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// What `osmo exec` must do besides running: restart in place when
/// `restarts` went above what it has seen; stop asking once `over`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ControlReply {
    pub restarts: u32,
    pub reason: String,
    pub over: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExitedBody {
    pub codes: Vec<ReportedCode>,
}
