//! `osmo workflow ...`: the workflow commands, one module each, and the
//! arguments they share (template values, the pools file, the service URL).

mod cancel;
mod events;
mod exec;
mod explain;
mod list;
mod logs;
mod port_forward;
mod query;
mod restart;
mod run;
mod spec;
mod submit;
mod tag;
mod validate;
mod view;

use std::path::{Path, PathBuf};

use anyhow::Context;
use osmo_spec::{PoolConfig, ServiceConfig, Values};

use super::Outcome;
use super::client::{Client, DEFAULT_URL};

#[derive(Debug, clap::Subcommand)]
pub enum WorkflowCommand {
    /// Check a workflow file locally (no service): every error with its file, line and column.
    Validate(validate::ValidateArgs),
    /// Show which exit action a task's exit code triggers, and why (no service).
    Explain(explain::ExplainArgs),
    /// Submit a workflow file to the service.
    Submit(submit::SubmitArgs),
    /// Run a workflow file start to finish in this process, with a service of its own.
    Run(run::RunArgs),
    /// Show a workflow's status and its tasks' attempts.
    Query(query::QueryArgs),
    /// List workflows, newest first.
    List(list::ListArgs),
    /// Cancel workflows: every unfinished group ends FAILED_CANCELED.
    Cancel(cancel::CancelArgs),
    /// Print a workflow's task logs.
    Logs(logs::LogsArgs),
    /// Print a workflow's file as submitted.
    Spec(spec::SpecArgs),
    /// Print a workflow's history: placements, runs, exits and what each exit decided.
    Events(events::EventsArgs),
    /// Run a failed or canceled workflow again: only its groups that did not complete.
    Restart(restart::RestartArgs),
    /// Add or remove tags of workflows, or list the tags in use.
    Tag(tag::TagArgs),
    /// Run a command (a shell by default) inside a running task.
    Exec(exec::ExecArgs),
    /// Forward local TCP ports to ports of a running task.
    PortForward(port_forward::PortForwardArgs),
}

impl WorkflowCommand {
    /// True for the commands that only print and exit (no embedded service).
    pub fn only_prints(&self) -> bool {
        !matches!(self, WorkflowCommand::Run(_))
    }
}

pub fn run(command: WorkflowCommand) -> anyhow::Result<Outcome> {
    match command {
        WorkflowCommand::Validate(args) => validate::run(args),
        WorkflowCommand::Explain(args) => explain::run(args),
        WorkflowCommand::Submit(args) => submit::run(args),
        WorkflowCommand::Run(args) => run::run(args),
        WorkflowCommand::Query(args) => query::run(args),
        WorkflowCommand::List(args) => list::run(args),
        WorkflowCommand::Cancel(args) => cancel::run(args),
        WorkflowCommand::Logs(args) => logs::run(args),
        WorkflowCommand::Spec(args) => spec::run(args),
        WorkflowCommand::Events(args) => events::run(args),
        WorkflowCommand::Restart(args) => restart::run(args),
        WorkflowCommand::Tag(args) => tag::run(args),
        WorkflowCommand::Exec(args) => exec::run(args),
        WorkflowCommand::PortForward(args) => port_forward::run(args),
    }
}

/// `--url`: where the service is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address of the osmo service [default: the `osmo login` one, else http://127.0.0.1:8000].
    #[arg(long, value_name = "URL", env = "OSMO_URL")]
    pub url: Option<String>,
}

impl ServiceArgs {
    /// `--url`/`OSMO_URL` with `OSMO_TOKEN`; else the stored login's address
    /// and token; else the default address.
    pub fn client(&self) -> anyhow::Result<Client> {
        let env_token = std::env::var("OSMO_TOKEN").ok().filter(|t| !t.is_empty());
        let login = crate::login::load();
        // `--method dev`'s user name, unless OSMO_USER says otherwise.
        let dev_user = login
            .as_ref()
            .and_then(|l| l.username.clone())
            .filter(|_| std::env::var("OSMO_USER").map_or(true, |u| u.is_empty()));
        let client = match (&self.url, login) {
            (Some(url), Some(login)) if login.url == url.trim_end_matches('/') => {
                Client::with_token(url, env_token.or(login.token))
            }
            (Some(url), _) => Client::with_token(url, env_token),
            (None, Some(login)) => Client::with_token(&login.url, env_token.or(login.token)),
            (None, None) => Client::with_token(DEFAULT_URL, env_token),
        };
        client.map(|mut c| {
            if let Some(user) = &dev_user {
                c.set_user(user);
            }
            c
        })
    }
}

/// `--set` / `--set-string`: values for the file's Jinja template.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ValueArgs {
    /// Set template values, overriding `default-values:`; integers and numbers are typed
    /// (several after one flag, as OSMO's CLI takes them: `--set a=1 b=2`; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value, num_args = 1..)]
    pub set: Vec<(String, String)>,
    /// Set template values that stay strings, e.g. `--set-string tag=007` (several after one
    /// flag; repeatable).
    #[arg(long = "set-string", value_name = "KEY=VALUE", value_parser = key_value, num_args = 1..)]
    pub set_string: Vec<(String, String)>,
}

impl ValueArgs {
    pub fn values(&self) -> Values {
        Values {
            set: self.set.clone(),
            set_string: self.set_string.clone(),
        }
    }

    /// As the API takes them: `["k=v", ...]`.
    pub fn set_variables(&self) -> Vec<String> {
        self.set.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    pub fn set_string_variables(&self) -> Vec<String> {
        self.set_string
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{text}` is not KEY=VALUE; write e.g. `--set n=3`")),
    }
}

/// `--config POOLS.yaml --pool P`: check against a pool's limits and rules, locally.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LocalPoolArgs {
    /// Pools configuration, as given to `osmo server --config`; its pool's limits and exit rules apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Pool of the configuration to use (default: `default`, or the only pool).
    #[arg(long, short = 'p', value_name = "POOL", requires = "config")]
    pub pool: Option<String>,
}

impl LocalPoolArgs {
    /// The chosen pool, with its name; None without `--config`.
    pub fn load(&self) -> anyhow::Result<Option<(String, PoolConfig)>> {
        let Some(path) = &self.config else {
            return Ok(None);
        };
        let config = read_config(path)?;
        choose_pool(config, self.pool.as_deref(), path).map(Some)
    }
}

/// Reads and validates a pools configuration file.
pub fn read_config(path: &Path) -> anyhow::Result<ServiceConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the pools configuration {}", path.display()))?;
    let mut config = osmo_spec::load_config(&text, &path.display().to_string()).map_err(|d| {
        anyhow::anyhow!("the pools configuration is not valid; fix these and retry:\n{d}")
    })?;
    // As the server does, so `validate` refuses what a submit would.
    osmo_server::machine::size_local_pools(&mut config);
    Ok(config)
}

fn choose_pool(
    mut config: ServiceConfig,
    pool: Option<&str>,
    path: &Path,
) -> anyhow::Result<(String, PoolConfig)> {
    let names = || config.pools.keys().cloned().collect::<Vec<_>>().join(", ");
    let name = match pool {
        Some(p) if config.pools.contains_key(p) => p.to_string(),
        Some(p) => anyhow::bail!(
            "{} has no pool `{p}`; its pools: {}",
            path.display(),
            names()
        ),
        None if config.pools.contains_key("default") => "default".to_string(),
        None if config.pools.len() == 1 => config.pools.keys().next().cloned().unwrap_or_default(),
        None => anyhow::bail!(
            "{} has pools {}; choose one with --pool",
            path.display(),
            names()
        ),
    };
    let pool = config.pools.remove(&name).expect("the name was just found");
    Ok((name, pool))
}

/// A workflow file read from disk.
#[derive(Debug, Clone)]
pub struct SpecFile {
    /// The text as written.
    pub source: String,
    /// The path as given, for messages (`wf.yaml:7:5: ...`).
    pub display: String,
    /// The file name alone, for the service's messages.
    pub base_name: String,
}

impl SpecFile {
    /// Renders (in the resource-limited child) and validates the file, as the
    /// server would, against `pool` when one is given.
    pub fn load(
        &self,
        values: &osmo_spec::Values,
        pool: Option<&PoolConfig>,
    ) -> Result<osmo_spec::Workflow, osmo_spec::Diagnostics> {
        osmo_server::render_guard::load(&self.source, &self.display, values, pool).map(|(w, _)| w)
    }
}

/// Reads a workflow file, refusing one over the spec's size limit before
/// reading it, and inlines the files its tasks name by `localpath`.
pub fn read_spec(path: &Path) -> anyhow::Result<SpecFile> {
    let display = path.display().to_string();
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the workflow file {display}"))?;
    if meta.is_dir() {
        anyhow::bail!("{display} is a directory; give the path of a workflow YAML file");
    }
    let limit = osmo_spec::MAX_INPUT_BYTES as u64;
    if meta.len() > limit {
        anyhow::bail!(
            "{display} is {} bytes but a workflow file may be at most {} MiB ({limit} bytes); make it smaller",
            meta.len(),
            limit >> 20
        );
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read the workflow file {display}"))?;
    let source = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{display} is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })?;
    // Like OSMO's CLI: `files: [{localpath: x}]` is read relative to the
    // workflow file and sent inline, so the service needs no access to it.
    let dir = path.parent().unwrap_or(Path::new("."));
    let source = osmo_spec::inline_local_files(&source, &display, |local| {
        let full = dir.join(local);
        std::fs::read_to_string(&full).map_err(|e| format!("cannot read {}: {e}", full.display()))
    })
    .map_err(|diagnostics| anyhow::anyhow!("{diagnostics}"))?;
    let base_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| display.clone());
    Ok(SpecFile {
        source,
        display,
        base_name,
    })
}

/// Workflow statuses (SEMANTICS §5), for `--status`.
pub const WORKFLOW_STATUSES: [&str; 16] = [
    "PENDING",
    "RUNNING",
    "WAITING",
    "COMPLETED",
    "FAILED",
    "FAILED_SUBMISSION",
    "FAILED_SERVER_ERROR",
    "FAILED_EXEC_TIMEOUT",
    "FAILED_QUEUE_TIMEOUT",
    "FAILED_CANCELED",
    "FAILED_BACKEND_ERROR",
    "FAILED_IMAGE_PULL",
    "FAILED_EVICTED",
    "FAILED_START_ERROR",
    "FAILED_START_TIMEOUT",
    "FAILED_PREEMPTED",
];

/// Task statuses (SEMANTICS §5), for `task list --status`.
pub const TASK_STATUSES: [&str; 20] = [
    "SUBMITTING",
    "WAITING",
    "PROCESSING",
    "SCHEDULING",
    "INITIALIZING",
    "RUNNING",
    "COMPLETED",
    "RESCHEDULED",
    "FAILED",
    "FAILED_CANCELED",
    "FAILED_SERVER_ERROR",
    "FAILED_BACKEND_ERROR",
    "FAILED_EXEC_TIMEOUT",
    "FAILED_QUEUE_TIMEOUT",
    "FAILED_IMAGE_PULL",
    "FAILED_UPSTREAM",
    "FAILED_EVICTED",
    "FAILED_START_ERROR",
    "FAILED_START_TIMEOUT",
    "FAILED_PREEMPTED",
];

/// True while a workflow may still change.
pub fn is_alive(status: &str) -> bool {
    matches!(status, "PENDING" | "RUNNING" | "WAITING")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(key_value("a=1"), Ok(("a".into(), "1".into())));
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(key_value("a="), Ok(("a".into(), "".into())));
        assert!(key_value("=1").is_err());
        assert!(key_value("a").unwrap_err().contains("KEY=VALUE"));
    }
}
