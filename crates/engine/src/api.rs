//! The engine's vocabulary: statuses, events in, commands out, attempt records.
//! Everything is plain data (serde) so the server can persist it as is.

use serde::{Deserialize, Serialize};

pub use osmo_spec::codes::{Action, CodeRange, CodeSource, ExitActions, ReportedCode};

/// Milliseconds since the Unix epoch. Time only enters the engine in events.
pub type Millis = u64;

/// A task of the workflow: indices into `Workflow::groups[group].tasks[task]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    pub group: u32,
    pub task: u32,
}

/// One attempt of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptId {
    pub task: TaskKey,
    pub retry_id: u32,
}

/// Task (attempt) statuses, SEMANTICS §5. Declared in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Submitting,
    Waiting,
    Processing,
    Scheduling,
    Initializing,
    Running,
    Completed,
    Rescheduled,
    Failed,
    FailedCanceled,
    FailedServerError,
    FailedBackendError,
    FailedExecTimeout,
    FailedQueueTimeout,
    FailedImagePull,
    FailedUpstream,
    FailedEvicted,
    FailedStartError,
    FailedStartTimeout,
    FailedPreempted,
}

/// Group statuses: the task statuses less RESCHEDULED.
pub type GroupStatus = TaskStatus;

/// Workflow statuses, SEMANTICS §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkflowStatus {
    Pending,
    Running,
    Completed,
    Failed,
    FailedSubmission,
    FailedServerError,
    FailedExecTimeout,
    FailedQueueTimeout,
    FailedCanceled,
    FailedBackendError,
    FailedImagePull,
    FailedEvicted,
    FailedStartError,
    FailedStartTimeout,
    FailedPreempted,
}

/// Which timeout clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    /// From SCHEDULING until the group has its resources.
    Queue,
    /// From RUNNING.
    Exec,
}

/// What happened, as the server saw it. Events for an attempt that is already
/// finished (or not the task's current one) are ignored: finished never changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The backend placed the attempt and its set-up began (files, inputs, preflight).
    Initializing {
        attempt: AttemptId,
        node: Option<String>,
        /// The GPU devices the attempt was given (indices on its node).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gpus: Vec<u32>,
    },
    /// Set-up finished; the attempt waits at the group barrier for [`Command::Release`].
    SetupDone { attempt: AttemptId },
    /// The user command started (again, after a restart in place: a new run).
    Running { attempt: AttemptId },
    /// A run of the command was stopped for a [`Command::Restart`]; the
    /// attempt goes on, waiting at the barrier for its next run. `codes` are
    /// what the stopped run ended with (recorded in its run, never decisive).
    RunStopped {
        attempt: AttemptId,
        codes: Vec<ReportedCode>,
    },
    /// The attempt ended, with every code it produced (may be several; the highest wins).
    /// An attempt that never reported codes but whose backend lost it reports 3001 (source service).
    Exited {
        attempt: AttemptId,
        codes: Vec<ReportedCode>,
    },
    /// A timer set by [`Command::SetTimer`] fired.
    TimedOut { group: u32, kind: TimeoutKind },
    /// A user canceled the workflow.
    Cancel { by: String, reason: Option<String> },
}

/// What the engine asks the server to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Place and start this attempt (it is SCHEDULING). Commands from one `apply`
    /// that launch tasks of the same group must be admitted together (gang).
    Launch { attempt: AttemptId },
    /// Let these attempts run their commands (the group barrier is passed, or
    /// the group has no barrier). Sent once per attempt.
    Release { attempts: Vec<AttemptId> },
    /// Stop this attempt; its record is already final, so whatever it reports later is ignored.
    Stop { attempt: AttemptId, reason: String },
    /// Restart this attempt in place (SEMANTICS §4): stop its command if it
    /// runs (SIGTERM, then SIGKILL after the grace), keep its sandbox, and wait
    /// at the barrier for the next [`Command::Release`]; then run the command
    /// again. Answered by [`Event::RunStopped`] when a run was stopped.
    Restart { attempt: AttemptId, reason: String },
    /// Send `Event::TimedOut { group, kind }` at `at` (unless the workflow is finished).
    SetTimer {
        group: u32,
        kind: TimeoutKind,
        at: Millis,
    },
    /// The workflow reached its final status; the server may clean up.
    Finished { status: WorkflowStatus },
}

/// Which rule decided an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOrigin {
    /// The task's `exitActions`.
    Task,
    /// The pool's `default_exit_actions`.
    Pool,
    /// No rule listed the code: 0 → COMPLETED, else the status of §2.
    Default,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    pub origin: RuleOrigin,
    /// None for `RuleOrigin::Default`.
    pub action: Option<Action>,
    /// The range that matched as written, e.g. `11-20`; None for the default.
    pub range: Option<String>,
}

/// Why an attempt exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptCause {
    /// retry_id 0.
    First,
    /// Its own exit code matched RESCHEDULE (spends the retry budget).
    Rescheduled,
    /// Its group restarted it (lead rescheduled, or a non-lead with ignoreNonleadStatus false).
    GroupRestart,
}

/// One run of an attempt's command. An attempt restarted in place runs its
/// command more than once; only the last run's exit decides the attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub start_time: Millis,
    pub end_time: Option<Millis>,
    /// The run's own exit code (the user command's, 0–255), when known.
    pub exit_code: Option<u32>,
    /// Why the run was stopped, e.g. `restarted: lead TASK rescheduled`;
    /// None for a run that ended by itself (or with the attempt).
    pub stopped_because: Option<String>,
}

/// One attempt's record. Once `status` is final nothing in it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub retry_id: u32,
    pub cause: AttemptCause,
    pub status: TaskStatus,
    /// Every code reported, with its source.
    pub codes: Vec<ReportedCode>,
    /// The resolved code (highest of `codes`, or the service's code such as 3000).
    pub exit_code: Option<u32>,
    pub rule: Option<RuleMatch>,
    /// The action applied, if any.
    pub action: Option<Action>,
    /// Human message, e.g. `exit code 16 matched RESCHEDULE 11-20 (task); attempt 2 of 4 scheduled`.
    pub failure_message: Option<String>,
    pub node: Option<String>,
    /// The GPU devices it was given, as indices on its node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    pub scheduling_time: Option<Millis>,
    pub initializing_time: Option<Millis>,
    pub start_time: Option<Millis>,
    pub end_time: Option<Millis>,
    /// Every run of the command in this attempt, oldest first.
    #[serde(default)]
    pub runs: Vec<RunRecord>,
}

/// What a decision on an exit code was, for `osmo workflow explain` and for records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub exit_code: u32,
    pub rule: RuleMatch,
    /// The status the attempt ends with (RESCHEDULED when the action is RESCHEDULE and budget remains).
    pub status: TaskStatus,
    /// True when RESCHEDULE matched but the retry budget was spent.
    pub retry_limit_reached: bool,
    pub message: String,
}
