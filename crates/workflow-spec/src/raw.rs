//! The raw serde models: what a workflow file and a service configuration
//! file may contain, key by key, before any check. Unknown keys are refused
//! (`deny_unknown_fields`; the reader reports all of them). Leaves are
//! [`Scalar`]s and nested parts are [`Checked`], so that validation sees
//! everything that could be read and reports every problem with its place.

use serde::Deserialize;

use crate::de::{Checked, Entries, Scalar};

type List<T> = Checked<Vec<Checked<T>>>;

/// A workflow file (after rendering).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub version: Option<Scalar>,
    /// Consumed by rendering; only its shape is checked here.
    #[serde(rename = "default-values")]
    pub default_values: Option<Scalar>,
    pub workflow: Option<Checked<RawWorkflow>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkflow {
    pub name: Option<Scalar>,
    /// Accepted and ignored: the pool comes from the submission, as in OSMO.
    pub pool: Option<Scalar>,
    /// Accepted (string values), not used yet.
    pub labels: Option<Checked<Entries<Scalar>>>,
    pub resources: Option<Checked<Entries<Checked<RawResource>>>>,
    pub timeout: Option<Checked<RawTimeout>>,
    pub tasks: Option<List<RawTask>>,
    pub groups: Option<List<RawGroup>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawResource {
    pub cpu: Option<Scalar>,
    pub gpu: Option<Scalar>,
    pub memory: Option<Scalar>,
    pub storage: Option<Scalar>,
    pub platform: Option<Scalar>,
    pub nodes_excluded: Option<Checked<Vec<Scalar>>>,
    /// Accepted for OSMO compatibility; not used by our schedulers.
    pub topology: Option<List<RawTopology>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawTopology {
    pub key: Option<Scalar>,
    pub group: Option<Scalar>,
    pub requirement_type: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeout {
    pub exec_timeout: Option<Scalar>,
    pub queue_timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawGroup {
    pub name: Option<Scalar>,
    pub tasks: Option<List<RawTask>>,
    pub barrier: Option<Scalar>,
    pub ignore_nonlead_status: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawTask {
    pub name: Option<Scalar>,
    pub image: Option<Scalar>,
    pub command: Option<Checked<Vec<Scalar>>>,
    pub args: Option<Checked<Vec<Scalar>>>,
    pub lead: Option<Scalar>,
    pub environment: Option<Checked<Entries<Scalar>>>,
    pub files: Option<List<RawFileEntry>>,
    pub inputs: Option<List<RawInput>>,
    pub outputs: Option<List<RawOutput>>,
    pub exit_actions: Option<Checked<Entries<Scalar>>>,
    pub resource: Option<Scalar>,
    pub credentials: Option<Checked<Entries<Checked<serde_json::Value>>>>,
    pub checkpoint: Option<List<RawCheckpoint>>,
    pub privileged: Option<Scalar>,
    pub host_network: Option<Scalar>,
    pub volume_mounts: Option<Checked<Vec<Scalar>>>,
    /// Undocumented OSMO fields: accepted, ignored.
    #[expect(dead_code, reason = "accepted for OSMO compatibility, not used")]
    pub kpis: Option<Checked<serde_json::Value>>,
    pub download_type: Option<Scalar>,
    pub cache_size: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFileEntry {
    pub path: Option<Scalar>,
    pub contents: Option<Scalar>,
    pub base64: Option<Scalar>,
    /// The OSMO CLI inlines local files; here it must already be done.
    pub localpath: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    pub task: Option<Scalar>,
    pub url: Option<Scalar>,
    /// OSMO's older dataset inputs: parsed so they get one clear refusal.
    pub dataset: Option<Checked<serde_json::Value>>,
    pub regex: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutput {
    pub url: Option<Scalar>,
    pub regex: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheckpoint {
    pub path: Option<Scalar>,
    pub url: Option<Scalar>,
    pub frequency: Option<Scalar>,
    pub regex: Option<Scalar>,
}

/// The service configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub pools: Option<Checked<Entries<Checked<RawPool>>>>,
    pub auth: Option<Scalar>,
    pub rate_limit: Option<Checked<RawRateLimit>>,
    pub workflow_tags: Option<Checked<Vec<Scalar>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub requests_per_second: Option<Scalar>,
    pub burst: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub backend: Option<Scalar>,
    pub runtime: Option<Scalar>,
    pub max_retry_per_task: Option<Scalar>,
    pub max_tasks_per_workflow: Option<Scalar>,
    pub default_exit_actions: Option<Checked<Entries<Scalar>>>,
    pub preflight: Option<List<RawPreflight>>,
    pub node: Option<Checked<RawNode>>,
    pub cpu_capacity: Option<Scalar>,
    pub gpu_capacity: Option<Scalar>,
    pub default_exec_timeout: Option<Scalar>,
    pub default_queue_timeout: Option<Scalar>,
    pub platforms: Option<Checked<Vec<Scalar>>>,
    #[serde(default)]
    pub allowed_mounts: Option<Checked<Vec<Scalar>>>,
    #[serde(default)]
    pub hidden_paths: Option<Checked<Vec<Scalar>>>,
    pub run_as_root: Option<Scalar>,
    pub network: Option<Scalar>,
    pub options: Option<Checked<Entries<Checked<serde_json::Value>>>>,
    /// Slurm settings, kept in `options`.
    pub partition: Option<Scalar>,
    pub account: Option<Scalar>,
    pub qos: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPreflight {
    pub name: Option<Scalar>,
    pub command: Option<Checked<Vec<Scalar>>>,
    pub first_attempt_only: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub cpu: Option<Scalar>,
    pub gpu: Option<Scalar>,
    pub memory: Option<Scalar>,
    pub storage: Option<Scalar>,
}
