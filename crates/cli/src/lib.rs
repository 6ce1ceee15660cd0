//! The `osmo` command line.
//!
//! One binary plays every role: the workflow service (`osmo server`), the
//! node agent it starts (`osmo agent`, hidden), and the user's commands
//! (`osmo workflow ...`, `osmo completion ...`).
//!
//! Each command is a module holding its clap arguments and a `run` function
//! that returns an [`Outcome`] or an error; [`main`] alone turns those into
//! the process exit codes of [`exit`]. Commands that talk to a service go
//! through [`Client`]; text output helpers (tables, times) are in `output`.

mod client;
mod codes;
mod completion;
mod credential;
pub mod exit;
mod login;
mod output;
mod pool;
mod profile;
mod resource;
mod server;
mod task;
mod token;
mod version;
mod workflow;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use client::{ApiError, Client, DEFAULT_URL};
pub use codes::describe_code;
pub use exit::Outcome;

/// `osmo`: run workflows of tasks, with per-exit-code actions, on a local
/// service.
#[derive(Debug, Parser)]
#[command(
    name = "osmo",
    version,
    about = "Run OSMO workflows: the service, its agent and the user's CLI in one binary",
    long_about = "Run OSMO workflows: the service, its agent and the user's CLI in one binary.\n\n\
        Start a service with `osmo server`, then use `osmo workflow submit/query/list/logs/cancel` \
        against it (--url or OSMO_URL). `osmo workflow run FILE` does both in one process, and \
        `osmo workflow validate` / `osmo workflow explain` work on a file without any service.",
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the workflow service: REST API, scheduler and local node agent.
    Server(server::ServerArgs),
    /// Validate, explain, submit, watch and manage workflows.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completion(completion::CompletionArgs),
    /// Keep a service's address and token for the commands that follow.
    Login(login::LoginArgs),
    /// Forget the stored login.
    Logout,
    /// API tokens for servers with `auth: tokens` (run on the server's machine).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The pools: what each hands out and what is in use.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// The nodes behind the pools.
    #[command(subcommand)]
    Resource(resource::ResourceCommand),
    /// Tasks across workflows: where they run, in what status.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Your profile: user, roles, default pool.
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// This client's version and the service's.
    Version(version::VersionArgs),
    /// Your credentials: object store keys for data URLs, and secrets for tasks.
    #[command(subcommand)]
    Credential(credential::CredentialCommand),
    /// Internal: the node agent the service starts for the local backend.
    #[command(hide = true)]
    Agent(osmo_agent::AgentArgs),
    /// Internal: the in-task controller inside a backend's job (Slurm).
    #[command(hide = true)]
    Exec(osmo_exec::ExecArgs),
}

/// Parses the command line, runs the command, and maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            });
        }
    };
    match run(cli) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Server(args) => server::run(args),
        Command::Workflow(command) => {
            if command.only_prints() {
                output::die_quietly_on_broken_pipe();
            }
            workflow::run(command)
        }
        Command::Completion(args) => {
            output::die_quietly_on_broken_pipe();
            completion::run(args)
        }
        Command::Login(args) => login::login(args),
        Command::Logout => login::logout(),
        Command::Token(command) => token::run(command),
        Command::Pool(command) => pool::run(command),
        Command::Resource(command) => resource::run(command),
        Command::Task(command) => task::run(command),
        Command::Profile(command) => profile::run(command),
        Command::Version(args) => version::run(args),
        Command::Credential(command) => credential::run(command),
        Command::Agent(args) => {
            init_tracing("warn");
            osmo_agent::run(args)?;
            Ok(Outcome::Success)
        }
        Command::Exec(args) => {
            init_tracing("warn");
            osmo_exec::run(args)?;
            Ok(Outcome::Success)
        }
    }
}

/// An error with its causes, `outer: inner: innermost`, skipping causes
/// whose text the outer message already holds.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Logs to stderr; `RUST_LOG` overrides `default` (e.g. `info`).
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_threads_are_at_least_one_and_default_to_half_the_cpus() {
        let threads = |args: &[&str]| {
            Cli::try_parse_from(["osmo", "server"].iter().chain(args)).map(|cli| {
                match cli.command {
                    Command::Server(a) => a.threads,
                    _ => unreachable!("parsed as `osmo server`"),
                }
            })
        };
        assert_eq!(threads(&["--threads", "3"]).unwrap(), Some(3));
        let refused = threads(&["--threads", "0"]).unwrap_err().to_string();
        assert!(refused.contains("0 is not in 1..=1024"), "{refused}");
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(server::default_threads(), (cpus / 2).max(1));
    }
}
