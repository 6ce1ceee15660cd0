//! The service configuration file (`osmo server --config FILE`): its pools.
//! Validated like a spec (unknown keys, bad code lists and overlaps are errors
//! with file, line and column).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codes::ExitActions;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceConfig {
    pub pools: BTreeMap<String, PoolConfig>,
    /// Who may call the API (`auth:`; default `none`).
    #[serde(default)]
    pub auth: AuthMode,
    /// Requests each client (address) may make (`rate_limit:`).
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// The tags users may put on workflows (`workflow_tags:`, set by the
    /// admin, as OSMO's workflow configuration); None: any tag.
    #[serde(default)]
    pub workflow_tags: Option<Vec<String>>,
}

/// A token bucket per client address: `requests_per_second` refill, up to
/// `burst` at once; `requests_per_second: 0` turns the limit off. A client
/// over it gets 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    /// Far above what one honest client sends, low enough that one client
    /// cannot take the whole server.
    fn default() -> Self {
        RateLimit {
            requests_per_second: 1000,
            burst: 2000,
        }
    }
}

/// Where a pool's tasks listen (SEMANTICS §6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A network namespace per workflow: ports of its own, `{{host:TASK}}`
    /// names that resolve, NAT to the outside.
    #[default]
    Workflow,
    /// The host's network: `{{host:TASK}}` is 127.0.0.1.
    Host,
}

/// `auth: none` takes the caller's name on trust (`x-osmo-user`); `auth:
/// tokens` wants a bearer token on every call and knows the caller by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    None,
    Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Local,
    Slurm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// A Linux namespace sandbox over the host's own programs (the default).
    Sandbox,
    /// A container per attempt from the task's image.
    Docker,
}

/// A pool's `max_tasks_per_workflow` unless it says otherwise.
pub const DEFAULT_MAX_TASKS_PER_WORKFLOW: u32 = 10_000;

/// One pool. Defaults are those of SEMANTICS §7 and the conformance README.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub backend: BackendKind,
    pub runtime: RuntimeKind,
    /// Default 3.
    pub max_retry_per_task: u32,
    /// The most tasks one workflow may have (default [`DEFAULT_MAX_TASKS_PER_WORKFLOW`]);
    /// a larger one is refused at submit.
    pub max_tasks_per_workflow: u32,
    pub default_exit_actions: ExitActions,
    pub preflight: Vec<PreflightTest>,
    /// What one node of the pool has; tasks asking more are refused at submit.
    /// Defaults to this machine (its CPUs and memory) for the local backend.
    pub node: NodeCapacity,
    /// CPUs the scheduler may hand out at once (default: `node.cpu`).
    pub cpu_capacity: Option<f64>,
    /// GPUs the scheduler may hand out at once (default: `node.gpu` on the
    /// local backend, unlimited on Slurm, which places GPUs itself).
    #[serde(default)]
    pub gpu_capacity: Option<u32>,
    /// The CPUs of all the pool's nodes together, where the server finds
    /// them (a Slurm partition's, at start): a group whose tasks ask more in
    /// all could never be allocated whole, and is refused at submit.
    #[serde(default)]
    pub total_cpu: Option<f64>,
    pub default_exec_timeout: Option<Duration>,
    pub default_queue_timeout: Option<Duration>,
    /// Platforms the pool offers (empty: any `platform` is refused).
    pub platforms: Vec<String>,
    /// Host paths tasks may mount with `volumeMounts` (themselves or below them).
    pub allowed_mounts: Vec<String>,
    /// Host directories tasks must not see, besides the server's data
    /// directory, `/root` and `/home` (always hidden on the host sandbox).
    #[serde(default)]
    pub hidden_paths: Vec<String>,
    /// The local backend's host sandbox gives each workflow a network of
    /// its own (default), or runs tasks on the host's (`network: host`).
    #[serde(default)]
    pub network: NetworkMode,
    /// Let tasks on the host sandbox run as root (default: as `nobody`,
    /// uid and gid 65534, once their set-up is done).
    #[serde(default)]
    pub run_as_root: bool,
    /// Backend-specific settings kept as written (e.g. Slurm `partition`).
    pub options: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// None: not limited / detected at run time.
    pub cpu: Option<f64>,
    pub gpu: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub storage_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightTest {
    pub name: String,
    pub command: Vec<String>,
    /// Skipped when `retry_id > 0` (the seed's NCCL bandwidth test). Default false.
    pub first_attempt_only: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            backend: BackendKind::Local,
            runtime: RuntimeKind::Sandbox,
            max_retry_per_task: 3,
            max_tasks_per_workflow: DEFAULT_MAX_TASKS_PER_WORKFLOW,
            default_exit_actions: ExitActions::default(),
            preflight: Vec::new(),
            node: NodeCapacity::default(),
            cpu_capacity: None,
            gpu_capacity: None,
            total_cpu: None,
            default_exec_timeout: None,
            default_queue_timeout: None,
            platforms: Vec::new(),
            allowed_mounts: Vec::new(),
            hidden_paths: Vec::new(),
            run_as_root: false,
            network: NetworkMode::default(),
            options: BTreeMap::new(),
        }
    }
}
