//! `osmo server`: the workflow service, until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use super::Outcome;
use osmo_server::ServerOptions;

/// Where `osmo server` listens unless `--listen` says otherwise (the CLI's default URL).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

/// `osmo server` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Run the workflow service: the REST API (OSMO's paths under /api), the scheduler, \
        the embedded store and the local node agent. Runs until SIGTERM or SIGINT; running tasks \
        survive a restart. Logs go to stderr (RUST_LOG=debug for more)."
)]
pub struct ServerArgs {
    /// Pools configuration (YAML `pools: {NAME: {backend: local, ...}}`); default: one local pool `default`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the store, logs and the agent's state (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./osmo-data")]
    pub data_dir: PathBuf,
    /// Address to serve the REST API on.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Store in this PostgreSQL database (`postgres://...`) instead of SQLite in the data directory.
    #[arg(
        long,
        value_name = "URL",
        env = "OSMO_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Listen on a non-loopback address without `auth: tokens` in the config
    /// (anyone who reaches the port can then run commands on this machine).
    #[arg(long)]
    pub insecure: bool,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key.
    /// Clients trust it through the system's store, or SSL_CERT_FILE.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Threads for the service's own work (the API, the scheduler, the
    /// agents' links); default: half the CPUs, at least one.
    #[arg(
        long,
        value_name = "N",
        env = "OSMO_SERVER_THREADS",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub threads: Option<u16>,
}

/// The service's threads unless told: half the CPUs, at least one. The
/// service's work is mostly one core's (its manager is one task); where its
/// local agent runs tasks on the same machine, more threads than that only
/// hand its tasks from one to another and take CPUs from the tasks (2 CPUs,
/// one 2,000-task workflow: the server's CPU per task 0.57 ms with two
/// threads, 0.52 with one; 8 clients of one-task workflows: 27,100 a minute
/// with two, 29,800 with one).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cpus| (cpus.get() / 2).max(1))
}

pub fn run(args: ServerArgs) -> anyhow::Result<Outcome> {
    super::init_tracing("info");
    let threads = args.threads.map_or_else(default_threads, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("osmo-server")
        .build()
        .context("cannot start the async runtime")?;
    let options = ServerOptions {
        config: args.config,
        data_dir: args.data_dir,
        listen: args.listen,
        database_url: args.database_url,
        insecure: args.insecure,
        tls: args.tls_cert.zip(args.tls_key),
    };
    runtime.block_on(osmo_server::serve(options))?;
    Ok(Outcome::Success)
}
