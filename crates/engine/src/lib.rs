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
//! - [`testkit`]: workflow builders, a recording test environment that checks
//!   the invariants after every event, and a random simulator (tests, benches).

pub mod api;
mod decide;
mod sanity;
mod state;
mod status;
pub mod testkit;

pub use api::*;
pub use decide::{Rules, decide, describe_code, resolve_code, status_for_code};
pub use state::WorkflowState;
