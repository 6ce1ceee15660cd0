//! `osmo workflow submit FILE`: `POST /api/pool/{pool}/workflow`.

use std::path::PathBuf;

use serde_json::Value;

use super::{ServiceArgs, SpecFile, ValueArgs, read_spec};
use crate::Outcome;
use crate::client::{Client, SubmitOptions, typed};
use crate::output::{FormatArgs, print_json};
use osmo_server::api_types::{SubmitRequest, SubmitResponse};

/// Scheduling priority of a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Priority {
    /// Scheduled before NORMAL and LOW.
    High,
    /// The default.
    Normal,
    /// Scheduled last; may be preempted.
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "HIGH",
            Priority::Normal => "NORMAL",
            Priority::Low => "LOW",
        }
    }
}

/// `osmo workflow submit` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Submit a workflow file to the service (--url or OSMO_URL). The service renders \
        the Jinja template with `default-values:` and --set values, validates the result, and \
        either rejects it whole (every error with its file, line and column; exit 1) or stores it \
        and starts it. Prints the workflow ID.",
    after_help = "Examples:\n  osmo workflow submit wf.yaml\n  osmo workflow submit wf.yaml --set n=3 --priority HIGH -t json"
)]
pub struct SubmitArgs {
    /// The workflow file (YAML, OSMO version 2), or the ID of an earlier workflow
    /// (`train-3`) to submit its file again as it was rendered.
    #[arg(value_name = "FILE|ID")]
    pub file: PathBuf,
    /// The pool to run in [default: your profile's pool (`osmo profile set pool`), else `default`].
    #[arg(long, short = 'p', value_name = "POOL")]
    pub pool: Option<String>,
    #[command(flatten)]
    pub values: ValueArgs,
    /// Set environment variables in every task, over the file's (several after one flag;
    /// repeatable): `--set-env WANDB_MODE=offline SEED=7`.
    #[arg(long, value_name = "NAME=VALUE", value_parser = super::key_value, num_args = 1..)]
    pub set_env: Vec<(String, String)>,
    /// Label the workflow (repeatable): `--label team=robotics --label stage=eval`;
    /// `workflow list --label` selects by them.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = super::key_value)]
    pub labels: Vec<(String, String)>,
    /// Scheduling priority (the service's default is NORMAL).
    #[arg(long, value_enum, ignore_case = true)]
    pub priority: Option<Priority>,
    /// Validate and render only, print the rendered spec; nothing is stored or run.
    #[arg(long)]
    pub dry_run: bool,
    /// Validate only; nothing is stored or run.
    #[arg(long)]
    pub validation_only: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

/// What goes with the file: priority, the dry-run flags, `--set-env`, `--label`.
/// (Resubmitting by ID refuses the dry-run flags before it gets here.)
fn options(args: &SubmitArgs) -> SubmitOptions {
    let pairs =
        |items: &[(String, String)]| items.iter().map(|(k, v)| format!("{k}={v}")).collect();
    SubmitOptions {
        priority: args.priority.map(|p| p.as_str().to_string()),
        dry_run: args.dry_run,
        validation_only: args.validation_only,
        env_vars: pairs(&args.set_env),
        labels: pairs(&args.labels),
    }
}

/// The caller's default pool as the service keeps it, else `default`.
fn default_pool(client: &crate::client::Client) -> String {
    client
        .get_json(&["api", "profile", "settings"], &[])
        .ok()
        .and_then(|v| v["profile"]["pool"].as_str().map(str::to_string))
        .unwrap_or_else(|| "default".to_string())
}

/// `name-N`: what a workflow ID looks like (a file of that name wins).
fn workflow_id(path: &std::path::Path) -> Option<&str> {
    let text = path.to_str()?;
    let (name, n) = text.rsplit_once('-')?;
    let plausible = !name.is_empty()
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && !text.contains('/')
        && !path.exists();
    plausible.then_some(text)
}

pub fn run(args: SubmitArgs) -> anyhow::Result<Outcome> {
    if let Some(id) = workflow_id(&args.file) {
        return resubmit(args.clone(), id);
    }
    let file = read_spec(&args.file)?;
    let client = args.service.client()?;
    let options = options(&args);
    let pool = match args.pool {
        Some(pool) => pool,
        None => default_pool(&client),
    };
    let answer = submit(&client, &pool, &file, &args.values, &options)?;
    if args.format.json() {
        print_json(&answer)?;
        return Ok(Outcome::Success);
    }
    let response: SubmitResponse = typed(&answer, "submit response")?;
    for warning in &response.warnings {
        eprintln!("warning: {warning}");
    }
    if args.dry_run {
        match &response.spec {
            Some(spec) => print!("{spec}{}", if spec.ends_with('\n') { "" } else { "\n" }),
            None => println!("Workflow {} is valid.", response.name),
        }
    } else if args.validation_only {
        println!("Workflow {} is valid.", response.name);
    } else {
        print!("{}", success_text(&client, &response));
    }
    Ok(Outcome::Success)
}

/// Sends the file; the answer as received.
pub fn submit(
    client: &Client,
    pool: &str,
    file: &SpecFile,
    values: &ValueArgs,
    options: &SubmitOptions,
) -> anyhow::Result<Value> {
    let request = SubmitRequest {
        file: file.source.clone(),
        set_variables: values.set_variables(),
        set_string_variables: values.set_string_variables(),
        file_name: Some(file.base_name.clone()),
        uploaded_templated_spec: None,
    };
    client.submit(pool, &request, options)
}

/// OSMO's answer text: `Workflow submit successful.` and where to look.
pub fn success_text(client: &Client, response: &SubmitResponse) -> String {
    let overview =
        if response.overview.starts_with("http://") || response.overview.starts_with("https://") {
            response.overview.clone()
        } else if response.overview.is_empty() {
            format!("{}/api/workflow/{}", client.url(), response.name)
        } else {
            format!(
                "{}/{}",
                client.url(),
                response.overview.trim_start_matches('/')
            )
        };
    format!(
        "Workflow submit successful.\nWorkflow ID - {}\nWorkflow Overview - {overview}\n",
        response.name
    )
}

/// `osmo workflow submit ID`: the workflow's file, as it was rendered, again.
fn resubmit(args: SubmitArgs, id: &str) -> anyhow::Result<Outcome> {
    if args.dry_run
        || args.validation_only
        || !args.values.set.is_empty()
        || !args.values.set_string.is_empty()
    {
        anyhow::bail!(
            "`{id}` is a workflow ID: its file is submitted again as it was rendered, so \
             --dry-run, --validation-only, --set and --set-string do not apply"
        );
    }
    let client = args.service.client()?;
    let options = options(&args);
    let pool = match &args.pool {
        Some(pool) => pool.clone(),
        None => default_pool(&client),
    };
    let answer = client.resubmit(&pool, id, &options)?;
    if args.format.json() {
        print_json(&answer)?;
    } else {
        let response: SubmitResponse = typed(&answer, "submit response")?;
        print!("{}", success_text(&client, &response));
    }
    Ok(Outcome::Success)
}
