//! `osmo-engine`: the pure state machine of SEMANTICS §2–§5.
//!
//! `WorkflowState::apply(event, now)` → commands. No I/O, no clock (time comes
//! in with each event), no async. The server persists the state and carries
//! out the commands.
//!
//! - [`api`]: the vocabulary: statuses, [`Event`]s in, [`Command`]s out, [`Attempt`] records.
//! - [`decide()`]: the exit-code decision alone (highest code wins, exit actions
//!   task → pool → default, retry budget), also for `osmo workflow explain`.
//! - [`WorkflowState`]: groups, barrier, restarts, DAG, timeouts, cancel, statuses.
//!   Each event costs O(size of the group it touches), never O(workflow)
//!   (a cancel touches every unfinished group, a failure every group downstream).
//! - [`testkit`]: workflow builders, a recording test environment that checks
//!   the invariants after every event, and a random simulator (tests, benches).
//!
//! # Decisions where the semantics leave room
//!
//! - **Barrier.** A task holds its group's barrier back while its current
//!   attempt has not finished set-up. A finished task (say a non-lead FAILED
//!   under `ignoreNonleadStatus: true`) never holds it. After a group restart
//!   every new attempt passes the barrier again; a task rescheduled alone into
//!   a group that is already past it is released as soon as it is set up. An
//!   attempt reported `Running` without a release counts as past the barrier.
//! - **Forward only, also for groups and the workflow.** A group that ran
//!   (an attempt RUNNING or finished) stays RUNNING until it finishes, and the
//!   workflow stays RUNNING from its first running group to its final status
//!   (it does not fall back to PENDING while a later group queues).
//! - **Timers** (SEMANTICS §5, as OSMO). The queue clock starts when a
//!   group starts and stops once no current attempt of it is SCHEDULING; it
//!   is never re-armed (a rescheduled attempt waiting for a node is bounded by
//!   the exec clock only). The exec clock starts once, when the group runs
//!   (a task ran or finished); restarts do not reset it. A `TimedOut` acts
//!   only when `now` has reached the deadline in force
//!   ([`WorkflowState::pending_timers`]).
//! - **Restarts in place** (SEMANTICS §4). A sibling past the barrier is sent
//!   [`Command::Restart`]: the same attempt, its open run closed with the
//!   reason, back at the barrier; the backend answers [`Event::RunStopped`]
//!   with the stopped run's code, and a later `Running` opens the next run. An
//!   `Exited` that crosses a restart (the run had ended by itself) ends the
//!   attempt RESCHEDULED and the task gets a new attempt, as a finished
//!   sibling does.
//! - **Messages.** Every attempt decided by its own exit keeps the message of
//!   its decision, a COMPLETED one too (`exit code 16 matched COMPLETE 16
//!   (task)`). Attempts stopped because their lead finished
//!   get `lead task X finished STATUS`, even when they take COMPLETED; runs
//!   stopped for a restart get `restarted: lead X rescheduled` or `restarted:
//!   non-lead X rescheduled`; a strict group's siblings get `task X failed`. A group's failure
//!   message is `task X STATUS: <its message>` for the task that decided it.
//!   Downstream groups name the group whose failure started the cascade. In
//!   `attempt N of M scheduled`, M counts the attempts the task's remaining own
//!   budget allows (group restarts may add more).
//! - **Codes.** An attempt that exits with no code at all gets 4000 (unknown).
//!   Exit actions never apply to 3000 and 3002, even when listed.

pub mod api;
mod decide;
mod sanity;
mod state;
mod status;
pub mod testkit;

pub use api::*;
pub use decide::{Rules, decide, describe_code, resolve_code, status_for_code};
pub use state::WorkflowState;
