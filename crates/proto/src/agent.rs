//! The local backend's wire protocol between the server and its node agent:
//! JSON lines over a Unix socket in the server's data directory. The agent
//! dials the server (so it can outlive a server restart and reconnect).
//! [`Launch`] also travels to `osmo exec` (see [`crate::exec`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use osmo_engine::AttemptId;
use osmo_spec::codes::ReportedCode;
use osmo_spec::config::{PreflightTest, RuntimeKind};
use osmo_spec::model::File;
use serde::{Deserialize, Serialize};

/// An attempt, named across processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptKey {
    pub workflow_id: String,
    pub attempt: AttemptId,
}

impl AttemptKey {
    /// A file-name-safe rendering, used for result files.
    pub fn file_stem(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.workflow_id,
            self.attempt.task.group,
            self.attempt.task.task,
            self.attempt.retry_id
        )
    }
}

/// Everything the agent needs to run one attempt; paths are host paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    pub key: AttemptKey,
    pub group: String,
    pub task: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub files: Vec<File>,
    pub output_dir: PathBuf,
    pub input_dirs: Vec<PathBuf>,
    /// Directories of programs the service gives every task (its own
    /// `osmo`), read-only at their paths: the same for every attempt.
    #[serde(default)]
    pub tool_dirs: Vec<PathBuf>,
    /// The task's `volumeMounts`, checked against the pool at submit: host path → path inside.
    #[serde(default)]
    pub volume_mounts: Vec<(PathBuf, PathBuf)>,
    pub preflight: Vec<PreflightTest>,
    pub memory_limit_bytes: Option<u64>,
    /// CPUs the task asked for (backends that place by CPUs, e.g. Slurm).
    #[serde(default)]
    pub cpu: Option<f64>,
    /// The task's image (used by the Docker runtime).
    #[serde(default)]
    pub image: String,
    /// How the agent runs the attempt: its sandbox, or a container of `image`.
    #[serde(default = "sandbox_runtime")]
    pub runtime: RuntimeKind,
    /// Wait at the barrier for a `Release` after set-up. False when the task's
    /// group has no barrier to wait for (one task, or `barrier: false`): the
    /// command starts as soon as it is set up, saving a round trip.
    #[serde(default = "yes")]
    pub barrier: bool,
    /// GPUs the task asked for (Slurm is asked for them with `--gres`).
    #[serde(default)]
    pub gpu: u32,
    /// The GPU devices the task is given, as indices on its node, when the
    /// server picks them (the local backend); empty on Slurm, whose job
    /// says which it was given.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// How many launches of this task's group are handed over together
    /// (its first start, a group restart): backends that allocate a group
    /// whole (Slurm) wait for all of them and allocate them at once.
    #[serde(default)]
    pub gang: u32,
    /// Host directories the task must not see (see `AttemptSpec::hidden_paths`).
    #[serde(default)]
    pub hidden_paths: Vec<PathBuf>,
    /// The user and group the task runs as (see `AttemptSpec::run_as`).
    #[serde(default)]
    pub run_as: Option<(u32, u32)>,
    /// A network of the workflow's own, where these names (its group's
    /// tasks, `{{host:TASK}}`) resolve; None: the host's network.
    #[serde(default)]
    pub network: Option<Vec<String>>,
    /// URL inputs to download, outputs and checkpoints to upload (see
    /// `osmo_runtime::run_with_data`), with the credentials that open them.
    #[serde(default)]
    pub downloads: Vec<osmo_runtime::data::Transfer>,
    #[serde(default)]
    pub uploads: Vec<osmo_runtime::data::Transfer>,
    #[serde(default)]
    pub checkpoints: Vec<osmo_runtime::data::Checkpoint>,
    /// Values masked in the task's log lines.
    #[serde(default)]
    pub secrets: Vec<String>,
}

fn yes() -> bool {
    true
}

fn sandbox_runtime() -> RuntimeKind {
    RuntimeKind::Sandbox
}

impl Launch {
    /// Whether this launch asks for the same attempt as `prepared`, which
    /// an agent set up ahead ([`ToAgent::Prepare`]): it runs what it set up
    /// only then (not so when a credential changed meanwhile, say), and the
    /// server then tells it only to start ([`ToAgent::Start`]). How many of
    /// its group go together (`gang`) is the backend's concern, not the
    /// attempt's, and is left out.
    pub fn same_as_prepared(&mut self, prepared: &Launch) -> bool {
        let gang = std::mem::replace(&mut self.gang, prepared.gang);
        let same = self == prepared;
        self.gang = gang;
        same
    }

    /// What the runtime runs for this launch, with `scratch_dir` as the
    /// attempt's scratch space: the one conversion the node agent and
    /// `osmo exec` share.
    pub fn attempt_spec(&self, scratch_dir: PathBuf) -> osmo_runtime::AttemptSpec {
        osmo_runtime::AttemptSpec {
            workflow_id: self.key.workflow_id.clone(),
            group: self.group.clone(),
            task: self.task.clone(),
            retry_id: self.key.attempt.retry_id,
            command: self.command.clone(),
            args: self.args.clone(),
            environment: self.environment.clone(),
            files: self.files.clone(),
            output_dir: self.output_dir.clone(),
            input_dirs: self.input_dirs.clone(),
            tool_dirs: self.tool_dirs.clone(),
            volume_mounts: self.volume_mounts.clone(),
            preflight: self.preflight.clone(),
            memory_limit_bytes: self.memory_limit_bytes,
            scratch_dir,
            image: self.image.clone(),
            cpu: self.cpu,
            gpus: self.gpus.clone(),
            hidden_paths: self.hidden_paths.clone(),
            run_as: self.run_as,
            // The backend that runs it decides (the node agent's network).
            network: None,
            container_network: false,
            downloads: self.downloads.clone(),
            uploads: self.uploads.clone(),
            checkpoints: self.checkpoints.clone(),
            secrets: self.secrets.clone(),
        }
    }
}

/// How far an attempt got, as the agent last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Initializing,
    /// Set-up done; waiting for the barrier.
    SetupDone,
    Running,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
    Osmo,
}

impl From<osmo_runtime::Stream> for Stream {
    fn from(stream: osmo_runtime::Stream) -> Stream {
        match stream {
            osmo_runtime::Stream::Stdout => Stream::Stdout,
            osmo_runtime::Stream::Stderr => Stream::Stderr,
            osmo_runtime::Stream::Osmo => Stream::Osmo,
        }
    }
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Osmo => "osmo",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub key: AttemptKey,
    pub task: String,
    pub at_ms: u64,
    pub stream: Stream,
    pub line: String,
}

/// Server → agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    /// Start this attempt (ignored when the agent already runs it; one it
    /// set up ahead runs from where it waits).
    Launch(Box<Launch>),
    /// Set this attempt up ahead, before its resources are free: its
    /// sandbox is made and waits, and the agent tells nothing of it (no
    /// phase, log or exit) until its `Launch` comes. Sent only for an
    /// attempt next in its pool's queue; a `Stop` drops it, and so does the
    /// agent itself when its server goes away (the queue is the server's).
    Prepare(Box<Launch>),
    /// Start the attempt set up ahead for this key, as its `Prepare` asked:
    /// sent instead of the same launch in full, and only to an agent whose
    /// `Hello` said `starts_prepared`. One that no longer holds it (its wait
    /// ran out, or its set-up failed) answers [`FromAgent::NotPrepared`],
    /// and the full launch follows.
    Start { key: AttemptKey },
    /// The barrier is passed: run the command.
    Release { key: AttemptKey },
    /// Kill the attempt's sandbox.
    Stop { key: AttemptKey },
    /// Restart the attempt in place: stop its command, keep its sandbox,
    /// wait at the barrier for the next `Release`, run the command again.
    Restart { key: AttemptKey, reason: String },
    /// The server has the result; the agent may forget it.
    Ack { key: AttemptKey },
    /// The server stored every log batch up to and including `seq`.
    LogsAck { seq: u64 },
    /// The server is stopping: exit as soon as no attempt runs.
    Shutdown,
}

/// Agent → server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromAgent {
    /// Sent on every connection, after the unacknowledged results (as
    /// `Exited` messages): what runs now.
    Hello {
        node: String,
        pid: u32,
        attempts: Vec<(AttemptKey, Phase)>,
        /// The agent understands [`ToAgent::Start`]. An agent of an
        /// earlier version leaves it out (false): it gets full launches.
        #[serde(default)]
        starts_prepared: bool,
    },
    /// The attempt reached `phase`. The server records every phase up to
    /// it, so the agent leaves out one the next follows at once (set-up
    /// done, where the command starts without a barrier).
    Phase {
        key: AttemptKey,
        phase: Phase,
        /// Where the attempt runs, when the backend knows better than the
        /// server's own host name (Slurm).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// The GPU devices the attempt was given, when the backend chose
        /// them (Slurm); the server knows those it picked itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gpus: Option<Vec<u32>>,
    },
    Logs {
        lines: Vec<LogLine>,
        /// The agent instance and its batch number: the agent keeps the batch
        /// until `LogsAck` and sends it again after a reconnection (the server
        /// stores each batch once). None: best effort.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<(String, u64)>,
    },
    /// A run of the attempt's command was stopped for a `Restart`; the
    /// attempt waits at the barrier for its next run.
    RunStopped {
        key: AttemptKey,
        codes: Vec<ReportedCode>,
    },
    /// The attempt ended; kept on disk by the agent until `Ack`.
    Exited {
        key: AttemptKey,
        codes: Vec<ReportedCode>,
    },
    /// A [`ToAgent::Start`] named an attempt the agent does not hold set
    /// up: the server sends its launch in full.
    NotPrepared { key: AttemptKey },
}

impl FromAgent {
    /// The message's kind, as its `type` on the wire (for counting).
    pub fn kind(&self) -> &'static str {
        match self {
            FromAgent::Hello { .. } => "hello",
            FromAgent::Phase { .. } => "phase",
            FromAgent::Logs { .. } => "logs",
            FromAgent::RunStopped { .. } => "run_stopped",
            FromAgent::Exited { .. } => "exited",
            FromAgent::NotPrepared { .. } => "not_prepared",
        }
    }
}

impl ToAgent {
    /// The message's kind, as its `type` on the wire (for counting).
    pub fn kind(&self) -> &'static str {
        match self {
            ToAgent::Launch(_) => "launch",
            ToAgent::Prepare(_) => "prepare",
            ToAgent::Start { .. } => "start",
            ToAgent::Release { .. } => "release",
            ToAgent::Stop { .. } => "stop",
            ToAgent::Restart { .. } => "restart",
            ToAgent::Ack { .. } => "ack",
            ToAgent::LogsAck { .. } => "logs_ack",
            ToAgent::Shutdown => "shutdown",
        }
    }
}
