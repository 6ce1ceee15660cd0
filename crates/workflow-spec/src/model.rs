//! The validated, resolved workflow: what the engine, the server and the
//! runtime consume. Produced only by [`crate::load`]; every invariant listed on
//! a type holds for values it returns.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codes::ExitActions;

/// A validated workflow.
///
/// Invariants: at least one group; every group has at least one task and
/// exactly one lead; names are unique case-insensitively with `-` = `_`;
/// `upstream` edges form a DAG; every task's `resource` names an entry of
/// `resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub name: String,
    /// `labels:` of the file; the submit's `--label`s override them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub resources: BTreeMap<String, Resource>,
    pub timeout: Timeouts,
    /// In file order. Plain `tasks:` become one group per task named `<task>-group`.
    pub groups: Vec<Group>,
}

impl Workflow {
    /// All tasks with their group index, in file order.
    pub fn tasks(&self) -> impl Iterator<Item = (usize, &Task)> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| group.tasks.iter().map(move |t| (g, t)))
    }

    pub fn task_count(&self) -> usize {
        self.groups.iter().map(|g| g.tasks.len()).sum()
    }

    /// Finds a task by its exact name: (group index, task index).
    pub fn find_task(&self, name: &str) -> Option<(usize, usize)> {
        self.groups.iter().enumerate().find_map(|(g, group)| {
            group
                .tasks
                .iter()
                .position(|t| t.name == name)
                .map(|t| (g, t))
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    #[serde(default, with = "opt_secs")]
    pub exec: Option<Duration>,
    #[serde(default, with = "opt_secs")]
    pub queue: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub tasks: Vec<Task>,
    /// Index of the lead in `tasks`.
    pub lead: usize,
    pub barrier: bool,
    pub ignore_nonlead_status: bool,
    /// Indices of upstream groups (owners of the tasks named in `inputs: [{task}]`), sorted, no duplicates.
    pub upstream: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub lead: bool,
    pub environment: BTreeMap<String, String>,
    pub files: Vec<File>,
    pub inputs: Vec<Input>,
    pub outputs: Vec<Output>,
    pub exit_actions: ExitActions,
    /// Name of an entry of [`Workflow::resources`].
    pub resource: String,
    /// Kept, not yet acted on: `{cred: "/path"}` or `{cred: {ENV: key}}`.
    pub credentials: BTreeMap<String, serde_json::Value>,
    pub checkpoint: Vec<Checkpoint>,
    pub privileged: bool,
    pub host_network: bool,
    pub volume_mounts: Vec<String>,
}

/// A `volumeMounts` entry, `/src[:/dst]`: (host path, path in the task).
/// None when it is not two absolute paths (or one, mounted at the same place).
pub fn parse_volume_mount(entry: &str) -> Option<(String, String)> {
    let absolute = |p: &str| p.starts_with('/') && !p.split('/').any(|part| part == "..");
    match entry.split(':').collect::<Vec<_>>()[..] {
        [src] if absolute(src) => Some((src.to_string(), src.to_string())),
        [src, dst] if absolute(src) && absolute(dst) => Some((src.to_string(), dst.to_string())),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    pub path: String,
    /// As written in the spec; when `base64` is true it is base64 text.
    pub contents: String,
    pub base64: bool,
}

/// How an input from another workflow's task (`task: wf-3:train`) is kept
/// until the service resolves it at submit: `osmo-task://wf-3/train`.
pub const OTHER_WORKFLOW_TASK: &str = "osmo-task://";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// A dependency and data edge: the named task's `{{output}}`.
    Task {
        task: String,
        regex: Option<String>,
    },
    Url {
        url: String,
        regex: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub url: String,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub path: String,
    pub url: String,
    pub frequency: Option<String>,
    pub regex: Option<String>,
}

/// A named resource request. Quantities are normalised: memory and storage in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub cpu: f64,
    pub gpu: u32,
    pub memory_bytes: Option<u64>,
    pub storage_bytes: Option<u64>,
    pub platform: Option<String>,
    pub nodes_excluded: Vec<String>,
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.map(Duration::from_secs_f64))
    }
}
