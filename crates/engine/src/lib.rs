//! `osmo-engine`: the pure state machine of SEMANTICS §2–§5.
//!
//! `WorkflowState::apply(event, now)` → commands. No I/O, no clock (time comes
//! in with each event), no async. The server persists the state and carries
//! out the commands.

pub mod api;

pub use api::*;
