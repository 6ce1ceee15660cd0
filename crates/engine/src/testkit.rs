//! Support for tests and benchmarks of the engine and of its users (the
//! server's tests may use it too):
//!
//! - [`WorkflowBuilder`] / [`GroupBuilder`]: resolved [`osmo_spec::Workflow`]
//!   values without YAML.
//! - [`TestEnv`]: drives a [`crate::WorkflowState`], records every command,
//!   round-trips events and commands through JSON, and after every event runs
//!   [`crate::WorkflowState::sanity_check`] plus the [`Checker`]'s history
//!   checks (statuses only move forward, finished attempts never change,
//!   every command is consistent with the state).
//! - [`simulate`]: answers the engine's commands with random (or scripted)
//!   events until the workflow finishes; [`random_workflow`] makes workflows.

mod builder;
mod check;
mod env;
mod rng;
mod sim;

pub use builder::{GroupBuilder, WorkflowBuilder, actions, code, task};
pub use check::Checker;
pub use env::TestEnv;
pub use rng::{Choices, Rng, Script};
pub use sim::{SimConfig, SimReport, random_rules, random_workflow, simulate};
