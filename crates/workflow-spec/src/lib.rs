//! `osmo-spec`: the OSMO workflow file and the service configuration file.
//!
//! [`load`] runs the passes in order:
//!
//! 1. [`render`] (`render.rs`): the whole file is rendered as Jinja in a
//!    sandbox, with `default-values:` and `--set` values; reserved tokens
//!    (`{{output}}`, `{{input:N}}`, ...) are left for per-task substitution
//!    ([`substitute_tokens`], `tokens.rs`).
//! 2. YAML → marked tree (`yaml.rs`, every node with its line and column).
//! 3. Tree → raw serde model (`raw.rs`, read by `de.rs`): unknown keys and
//!    wrong shapes are reported, all of them, with their places.
//! 4. Validation (`validate.rs`, value checks in `check.rs`, units in
//!    `units.rs`) and resolution (`resolve.rs`: names, leads, dependencies,
//!    tokens, pool limits) into the [`model::Workflow`].
//!
//! Every problem becomes a [`Diagnostic`] (`FILE:LINE:COL: message`, with
//! the source line); a file with problems yields all of them at once as
//! [`Diagnostics`] (`error.rs`, placed by `report.rs`). [`load_config`] reads
//! the service configuration ([`config`]) the same way. Exit-code lists are
//! in [`codes`]. A client inlines `localpath` files with
//! [`inline_local_files`] before submitting. No I/O, no clock, no processes.

mod check;
pub mod codes;
pub mod config;
mod de;
mod error;
pub mod labels;
mod load_config;
mod local_files;
pub mod model;
mod raw;
mod render;
mod report;
mod resolve;
mod tokens;
pub mod units;
mod validate;
mod yaml;

pub use codes::{Action, CodeList, CodeSource, ExitActions, ExitRule, ReportedCode};
pub use config::{
    BackendKind, NodeCapacity, PoolConfig, PreflightTest, RuntimeKind, ServiceConfig,
};
pub use error::{Diagnostic, Diagnostics};
pub use load_config::load_config;
pub use local_files::inline_local_files;
pub use model::{Group, Task, Workflow};
pub use render::{FUEL, MAX_INPUT_BYTES, MAX_OUTPUT_BYTES, Values, is_plain, render};
pub use tokens::{Tokens, substitute_tokens};
pub use units::{parse_cpu, parse_duration, parse_quantity};

use report::Report;
use yaml::Mark;

/// Renders, parses, validates and resolves the workflow file `source`
/// (named `file` in messages). With `pool`, also refuses resources that no
/// node of the pool has, and platforms it does not offer.
pub fn load(
    source: &str,
    file: &str,
    values: &Values,
    pool: Option<&PoolConfig>,
) -> Result<Workflow, Diagnostics> {
    let rendered = render(source, file, values)?;
    load_rendered(source, &rendered, file, pool)
}

/// Like [`load`], for a file already rendered (`rendered`, made from
/// `source` by [`render`]): the server renders in a resource-limited child
/// process, then validates here. Locations still point into `source`.
pub fn load_rendered(
    source: &str,
    rendered: &str,
    file: &str,
    pool: Option<&PoolConfig>,
) -> Result<Workflow, Diagnostics> {
    let (raw, root, mut report) = read_yaml::<raw::RawFile>(source, rendered, file)?;
    let draft = raw
        .as_ref()
        .and_then(|raw| validate::file(raw, root, &mut report));
    let workflow = draft.and_then(|draft| resolve::workflow(draft, pool, &mut report));
    report.finish()?;
    if let (Some(pool), Some(workflow)) = (pool, &workflow) {
        let tasks: usize = workflow.groups.iter().map(|g| g.tasks.len()).sum();
        if tasks > pool.max_tasks_per_workflow as usize {
            return Err(Diagnostics::single(Diagnostic::whole_file(
                file,
                format!(
                    "workflow `{}` has {tasks} tasks; the pool allows at most {} in one workflow \
                     (its `max_tasks_per_workflow`): split the work into several workflows, or \
                     raise the limit in the pool's configuration",
                    workflow.name, pool.max_tasks_per_workflow
                ),
            )));
        }
    }
    // Without errors, resolution always yields the workflow.
    workflow.ok_or_else(|| {
        Diagnostics::single(Diagnostic::whole_file(
            file,
            "the workflow could not be read",
        ))
    })
}

/// YAML text (`rendered`, made from `source`) → raw model `T`, with a report
/// holding every problem found so far. A syntax error ends here, alone.
fn read_yaml<'a, T: serde::de::DeserializeOwned>(
    source: &'a str,
    rendered: &'a str,
    file: &'a str,
) -> Result<(Option<T>, Mark, Report<'a>), Diagnostics> {
    let mut report = Report::new(file, source, rendered);
    let (root, problems) = match yaml::parse(rendered) {
        Ok(parsed) => parsed,
        Err(problem) => {
            report.problem(problem);
            return Err(report.finish().unwrap_err());
        }
    };
    let Some(root) = root else {
        report.error_at(0, 0, "the file is empty; expected a yaml mapping", None);
        return Err(report.finish().unwrap_err());
    };
    for problem in problems {
        report.problem(problem);
    }
    let (value, problems) = de::read::<T>(&root);
    for problem in problems {
        report.problem(problem);
    }
    Ok((value, root.mark, report))
}
