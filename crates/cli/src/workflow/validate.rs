//! `osmo workflow validate FILE`: the spec's passes, locally, no service.

use std::path::PathBuf;

use osmo_spec::{Diagnostics, Workflow};
use serde_json::{Value, json};

use super::{LocalPoolArgs, ValueArgs, read_spec};
use crate::Outcome;
use crate::output::{FormatArgs, print_json, table, table_text};

/// `osmo workflow validate` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Check a workflow file locally, without a service: Jinja rendering with \
        `default-values:` and --set values, the YAML, every field, exit-action code lists and \
        overlaps, group leads and the dependency graph. Every error is listed with its \
        file, line and column. With --config (and --pool), task resources are also checked \
        against the pool's nodes.\n\nExits 0 when the file is valid, 1 when it is not."
)]
pub struct ValidateArgs {
    /// The workflow file (YAML, OSMO version 2).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub values: ValueArgs,
    #[command(flatten)]
    pub pool: LocalPoolArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<Outcome> {
    let file = read_spec(&args.file)?;
    let pool = args.pool.load()?;
    let loaded = file.load(&args.values.values(), pool.as_ref().map(|(_, p)| p));
    match loaded {
        Ok(workflow) => {
            if args.format.json() {
                print_json(&summary_json(&workflow))?;
            } else {
                print!(
                    "{}",
                    summary_text(&workflow, pool.as_ref().map(|(name, _)| name.as_str()))
                );
            }
            Ok(Outcome::Success)
        }
        Err(diagnostics) => {
            report_diagnostics(&diagnostics, args.format.json())?;
            Ok(Outcome::Failure)
        }
    }
}

/// Spec errors: JSON on stdout, or text (with carets) on stderr.
pub fn report_diagnostics(diagnostics: &Diagnostics, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(&diagnostics_json(diagnostics))
    } else {
        eprintln!("{diagnostics}");
        Ok(())
    }
}

pub fn diagnostics_json(diagnostics: &Diagnostics) -> Value {
    let errors: Vec<Value> = diagnostics
        .iter()
        .map(|d| {
            json!({
                "file": d.file,
                "line": d.line,
                "column": d.column,
                "message": d.message,
                "value": d.value,
                "text": d.to_string(),
            })
        })
        .collect();
    json!({"valid": false, "error_count": errors.len(), "errors": errors})
}

fn edge_count(workflow: &Workflow) -> usize {
    workflow.groups.iter().map(|g| g.upstream.len()).sum()
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn summary_text(workflow: &Workflow, pool: Option<&str>) -> String {
    let mut out = format!(
        "workflow `{}` is valid: {}, {}, {}\n",
        workflow.name,
        plural(workflow.groups.len(), "group"),
        plural(workflow.task_count(), "task"),
        plural(edge_count(workflow), "dependency edge"),
    );
    if let Some(pool) = pool {
        out.push_str(&format!("resources fit pool `{pool}`\n"));
    }
    let mut t = table(["Group", "Tasks", "Lead", "Upstream"]);
    for group in &workflow.groups {
        let tasks: Vec<&str> = group.tasks.iter().map(|t| t.name.as_str()).collect();
        let upstream: Vec<&str> = group
            .upstream
            .iter()
            .map(|u| workflow.groups[*u].name.as_str())
            .collect();
        t.add_row([
            group.name.clone(),
            tasks.join(", "),
            group.tasks[group.lead].name.clone(),
            if upstream.is_empty() {
                "-".to_string()
            } else {
                upstream.join(", ")
            },
        ]);
    }
    out.push_str(&table_text(&t));
    out
}

fn summary_json(workflow: &Workflow) -> Value {
    let groups: Vec<Value> = workflow
        .groups
        .iter()
        .map(|group| {
            json!({
                "name": group.name,
                "tasks": group.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
                "lead": group.tasks[group.lead].name,
                "upstream": group.upstream.iter().map(|u| workflow.groups[*u].name.as_str()).collect::<Vec<_>>(),
                "barrier": group.barrier,
                "ignore_nonlead_status": group.ignore_nonlead_status,
            })
        })
        .collect();
    json!({
        "valid": true,
        "name": workflow.name,
        "group_count": workflow.groups.len(),
        "task_count": workflow.task_count(),
        "edge_count": edge_count(workflow),
        "groups": groups,
    })
}
