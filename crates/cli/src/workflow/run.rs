//! `osmo workflow run FILE`: a service of its own in this process, the
//! workflow submitted to it over HTTP, live progress, the final table and
//! each task's last log lines; then the service stops.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use osmo_spec::{PoolConfig, Workflow};

use super::submit::{Priority, submit};
use super::validate::report_diagnostics;
use super::view::workflow_text;
use super::{ValueArgs, is_alive, read_config, read_spec};
use crate::Outcome;
use crate::client::{Client, LogsFilter, SubmitOptions, typed};
use crate::output::{Clock, FormatArgs, duration, print_json};
use osmo_server::ServerOptions;
use osmo_server::api_types::{SubmitResponse, WorkflowDoc};

/// How often the workflow is polled.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// `osmo workflow run` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Run a workflow start to finish without a separate service: starts one in this \
        process (on 127.0.0.1, a free port), submits the file to it, shows each attempt as it \
        starts and ends, then prints every attempt, each task's last log lines, and stops the \
        service. Ctrl-C cancels the workflow (twice: stops waiting).\n\n\
        Exits 0 when the workflow COMPLETED, 1 otherwise.",
    after_help = "Example:\n  osmo workflow run examples/exit-actions.yaml --set code=16"
)]
pub struct RunArgs {
    /// The workflow file (YAML, OSMO version 2).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Pools configuration, as for `osmo server --config`; default: one local pool `default`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The pool to run in.
    #[arg(long, short = 'p', value_name = "POOL", default_value = "default")]
    pub pool: String,
    /// Keep the service's store, logs and outputs here (default: a temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub values: ValueArgs,
    /// Scheduling priority.
    #[arg(long, value_enum, ignore_case = true)]
    pub priority: Option<Priority>,
    /// Log lines of each task to print at the end (0: none).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub log_lines: u32,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let file = read_spec(&args.file)?;
    // Check the file here first: a bad spec needs no service.
    let pool = match &args.config {
        Some(path) => {
            let mut config = read_config(path)?;
            config.pools.remove(&args.pool).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} has no pool `{}`; choose one of {} with --pool",
                    path.display(),
                    args.pool,
                    config.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?
        }
        None if args.pool == "default" => PoolConfig::default(),
        None => anyhow::bail!(
            "without --config the only pool is `default`; give --config to use pool `{}`",
            args.pool
        ),
    };
    let workflow = match file.load(&args.values.values(), Some(&pool)) {
        Ok(w) => w,
        Err(diagnostics) => {
            report_diagnostics(&diagnostics, args.format.json())?;
            return Ok(Outcome::Failure);
        }
    };

    let temp_dir;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp_dir = tempfile::Builder::new()
                .prefix("osmo-run-")
                .tempdir()
                .context("cannot create a temporary data directory; give one with --data-dir")?;
            temp_dir.path().to_path_buf()
        }
    };

    crate::init_tracing("warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // One workflow's service: a server's threads, two at most.
        .worker_threads(crate::server::default_threads().min(2))
        .thread_name("osmo-run")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = ServerOptions {
        config: args.config.clone(),
        data_dir: data_dir.clone(),
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        database_url: None,
        insecure: false,
        tls: None,
    };
    let running = runtime
        .block_on(osmo_server::start(options))
        .context("cannot start the embedded service")?;
    let interrupts = Arc::new(AtomicU32::new(0));
    {
        let interrupts = interrupts.clone();
        runtime.spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                interrupts.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    let result = drive(&running.url, &args, &file, &workflow, &interrupts);

    if let Err(e) = runtime.block_on(running.shutdown()) {
        eprintln!("warning: the embedded service did not stop cleanly: {e:#}");
    }
    runtime.shutdown_timeout(Duration::from_secs(3));
    if let (Ok(_), false, Some(dir)) = (&result, args.format.json(), &args.data_dir) {
        println!(
            "The service's data is kept in {}: `osmo server --data-dir {}` serves it again.",
            dir.display(),
            dir.display()
        );
    }
    result
}

/// Submits, follows the workflow to its end, and prints the outcome.
fn drive(
    url: &str,
    args: &RunArgs,
    file: &super::SpecFile,
    workflow: &Workflow,
    interrupts: &AtomicU32,
) -> anyhow::Result<Outcome> {
    let json = args.format.json();
    let client = Client::new(url)?;
    let options = SubmitOptions {
        priority: args.priority.map(|p| p.as_str().to_string()),
        ..SubmitOptions::default()
    };
    let answer = submit(&client, &args.pool, file, &args.values, &options)?;
    let response: SubmitResponse = typed(&answer, "submit response")?;
    let id = response.name;
    let mut progress = Progress::new(workflow.task_count() as u64, json);
    progress.line(format!(
        "Workflow {id} submitted; running it here (Ctrl-C cancels it)."
    ));

    let mut cancel_sent = false;
    let (value, doc) = loop {
        let value = client.workflow(&id, true)?;
        let doc: WorkflowDoc = typed(&value, "workflow document")?;
        progress.update(&doc);
        if !is_alive(&doc.status) {
            break (value, doc);
        }
        let interrupted = interrupts.load(Ordering::SeqCst);
        if interrupted >= 2 {
            progress.finish();
            anyhow::bail!(
                "stopped waiting for {id} (status {}); the service stops now, with it any task still running",
                doc.status
            );
        }
        if interrupted == 1 && !cancel_sent {
            cancel_sent = true;
            progress.line(format!("Canceling {id} (Ctrl-C again to stop waiting)."));
            if let Err(e) = client.cancel(&id, Some("interrupted in `osmo workflow run`")) {
                progress.line(format!("warning: cannot cancel {id}: {e:#}"));
            }
        }
        std::thread::sleep(POLL_EVERY);
    };
    progress.finish();

    if json {
        print_json(&value)?;
    } else {
        println!();
        print!("{}", workflow_text(&doc, &Clock::system()));
        if args.log_lines > 0 {
            print_logs(&client, &id, workflow, args.log_lines);
        }
        println!(
            "Workflow {id} {} in {}.",
            doc.status,
            doc.duration
                .map(duration)
                .unwrap_or_else(|| "-".to_string())
        );
    }
    Ok(Outcome::from_ok(doc.status == "COMPLETED"))
}

/// The last lines of each task's log, all attempts.
fn print_logs(client: &Client, id: &str, workflow: &Workflow, lines: u32) {
    println!();
    println!("Last {lines} log lines of each task:");
    for (_, task) in workflow.tasks() {
        let filter = LogsFilter {
            task: Some(task.name.clone()),
            retry_id: None,
            last_n_lines: Some(lines),
            errors_only: false,
        };
        println!("── {} ──", task.name);
        match client.logs(id, &filter) {
            Ok(text) if text.is_empty() => println!("(no output)"),
            Ok(text) => print!("{text}{}", if text.ends_with('\n') { "" } else { "\n" }),
            Err(e) => println!("(cannot fetch the logs: {e:#})"),
        }
    }
    println!();
}

/// Live progress: a bar of finished tasks on a terminal, and a line for
/// every attempt that starts or ends (also when stderr is not a terminal).
struct Progress {
    bar: ProgressBar,
    quiet: bool,
    started: HashSet<(String, u32)>,
    ended: HashSet<(String, u32)>,
}

impl Progress {
    fn new(total: u64, quiet: bool) -> Progress {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed:>4} [{bar:24}] {pos}/{len} tasks finished  {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar,
            quiet,
            started: Default::default(),
            ended: Default::default(),
        }
    }

    /// Prints a line above the bar (stdout).
    fn line(&self, text: String) {
        if !self.quiet {
            self.bar.suspend(|| println!("{text}"));
        }
    }

    fn update(&mut self, doc: &WorkflowDoc) {
        let mut latest: Vec<(&str, &str)> = Vec::new();
        for group in &doc.groups {
            for task in &group.tasks {
                let key = (task.name.clone(), task.retry_id);
                if task.start_time.is_some() && self.started.insert(key.clone()) {
                    self.line(format!("  ▶ {} retry {} started", task.name, task.retry_id));
                }
                if is_final(&task.status) && self.ended.insert(key) {
                    let mark = match task.status.as_str() {
                        "COMPLETED" => "✓",
                        "RESCHEDULED" => "↻",
                        _ => "✗",
                    };
                    let code = task
                        .exit_code
                        .map(|c| format!("exit {c}"))
                        .unwrap_or_else(|| "no exit code".into());
                    let message = task
                        .failure_message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default();
                    self.line(format!(
                        "  {mark} {} retry {} {} ({code}){message}",
                        task.name, task.retry_id, task.status
                    ));
                }
                // Attempts come in retry order: the last one of a name is the latest.
                match latest.iter_mut().find(|(name, _)| *name == task.name) {
                    Some(entry) => entry.1 = &task.status,
                    None => latest.push((&task.name, &task.status)),
                }
            }
        }
        let finished = latest
            .iter()
            .filter(|(_, s)| is_final(s) && *s != "RESCHEDULED")
            .count();
        self.bar.set_position(finished as u64);
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for (_, status) in &latest {
            match counts.iter_mut().find(|(s, _)| s == status) {
                Some(entry) => entry.1 += 1,
                None => counts.push((status, 1)),
            }
        }
        let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        self.bar
            .set_message(format!("{} · {}", doc.status, summary.join(", ")));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A status no attempt leaves.
fn is_final(status: &str) -> bool {
    status == "COMPLETED" || status == "RESCHEDULED" || status.starts_with("FAILED")
}
