//! `osmo-spec`: the OSMO workflow file.
//!
//! Passes: Jinja rendering ([`render`]) → YAML into a raw serde model →
//! validation that collects every error with its file, line and column →
//! the resolved [`model::Workflow`]. Also the service configuration
//! ([`config`]) and exit-code lists ([`codes`]). No I/O, no clock, no processes.

pub mod codes;
pub mod config;
pub mod model;

pub use codes::{Action, CodeList, CodeSource, ExitActions, ExitRule, ReportedCode};
pub use config::{PoolConfig, ServiceConfig};
pub use model::{Group, Task, Workflow};
