//! `osmo-server`: the workflow service — the REST API (`api`), the async
//! shell (`manager`) around the synchronous core (`core`) that owns every
//! engine state, the gang scheduler, and the backends behind one trait
//! (`backend`): the local node agent's link (`agent_link`) and Slurm
//! (`slurm`). `docs/architecture.md` draws the arrows.

mod agent_link;
mod api;
pub mod auth;
pub mod backend;
mod core;
mod credentials;
mod devices;
mod docs;
mod events;
mod exec_router;
mod labels;
mod launch;
mod manager;
mod metrics;
mod persisted;
mod pools;
mod profile;
mod rate_limit;
mod scheduler;
pub mod slurm;
mod task_bin;
mod tls;
mod ui;
mod workflow_config;

pub mod api_types;
pub mod machine;
pub mod render_guard;

pub use scheduler::Footprint;

pub use osmo_proto as proto;
pub use osmo_proto::now_ms;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use osmo_spec::config::{PoolConfig, ServiceConfig};
use tokio::sync::{mpsc, oneshot};

/// How `osmo server` (and `osmo workflow run`'s embedded server) starts.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub config: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `postgres://…` selects PostgreSQL; None: the SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Listen beyond loopback without `auth: tokens`.
    pub insecure: bool,
    /// Serve HTTPS with this PEM certificate chain and private key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A server started in this process (for `osmo workflow run`).
pub struct RunningServer {
    pub url: String,
    stop: oneshot::Sender<()>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    link: agent_link::AgentLink,
    /// Set on shutdown: the agent is told to go and is not restarted.
    agent_stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl RunningServer {
    /// Stops serving and tells the agent to exit once no task runs.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.agent_stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.link.send(crate::proto::ToAgent::Shutdown);
        let _ = self.stop.send(());
        self.http.await??;
        Ok(())
    }
}

/// The configuration file, or one local pool named `default`. A local pool
/// that does not say how big its node is gets this machine's CPUs and memory,
/// so a task asking for more is refused at submit instead of waiting forever.
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<ServiceConfig> {
    let mut config = match path {
        None => {
            let pools = [("default".to_string(), PoolConfig::default())]
                .into_iter()
                .collect();
            ServiceConfig {
                pools,
                auth: Default::default(),
                rate_limit: Default::default(),
                workflow_tags: None,
            }
        }
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("cannot read the configuration file {}", path.display())
            })?;
            osmo_spec::load_config(&text, &path.display().to_string())
                .map_err(|d| anyhow::anyhow!("{d}"))?
        }
    };
    crate::machine::size_local_pools(&mut config);
    crate::slurm::size_pools(&mut config);
    Ok(config)
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(opts: ServerOptions) -> anyhow::Result<()> {
    let running = start(opts).await?;
    tracing::info!("osmo server listening on {}", running.url);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    running.shutdown().await
}

/// Starts the server in this process and returns once it accepts work.
pub async fn start(opts: ServerOptions) -> anyhow::Result<RunningServer> {
    let config = Arc::new(load_config(opts.config.as_deref())?);
    if config.auth == osmo_spec::config::AuthMode::None && !opts.listen.ip().is_loopback() {
        if !opts.insecure {
            anyhow::bail!(
                "refusing to listen on {} without authentication: anyone who reaches it could run \
                 commands on this machine. Set `auth: tokens` in the config (and `osmo token \
                 create`), listen on 127.0.0.1, or pass --insecure",
                opts.listen
            );
        }
        tracing::warn!(
            "listening on {} without authentication (--insecure): anyone who reaches it can run commands here",
            opts.listen
        );
    }
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls::config(cert, key).await?),
        None => None,
    };
    if tls.is_none()
        && config.auth == osmo_spec::config::AuthMode::Tokens
        && !opts.listen.ip().is_loopback()
    {
        tracing::warn!(
            "tokens travel in clear text to {}: give --tls-cert and --tls-key to serve HTTPS",
            opts.listen
        );
    }
    std::fs::create_dir_all(&opts.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            opts.data_dir.display()
        )
    })?;
    let data_dir = std::fs::canonicalize(&opts.data_dir)?;
    let url = match &opts.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}?mode=rwc", data_dir.join("osmo.db").display()),
    };
    let store = osmo_store::Store::open(&url)
        .await
        .context("cannot open the store")?;

    // Bound first: the Slurm backend tells its jobs where the server is.
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let local_addr = listener.local_addr()?;

    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let socket = agent_link::socket_path(&data_dir);
    let link = agent_link::listen(&socket, link_tx.clone())?;
    let slurm = slurm::start(
        &config,
        &data_dir,
        &exec_url(local_addr, tls.is_some()),
        link_tx.clone(),
    )?;
    let (slurm_links, slurm_router) = match slurm {
        Some(s) => (s.links, Some(s.router)),
        None => (Default::default(), None),
    };
    // Every pool's backend: its Slurm link, or the local node agent.
    let mut backends: HashMap<String, Arc<dyn backend::Backend>> = HashMap::new();
    for name in config.pools.keys() {
        let backend: Arc<dyn backend::Backend> = match slurm_links.get(name) {
            Some(link) => Arc::new(link.clone()),
            None => Arc::new(link.clone()),
        };
        backends.insert(name.clone(), backend);
    }
    let vault = credentials::Vault::load(&data_dir, &store)
        .await
        .context("cannot open the credentials")?;
    let manager = manager::Manager::new(
        store.clone(),
        config.clone(),
        backends,
        link_tx,
        data_dir.clone(),
        Some(exec_url(local_addr, tls.is_some())),
        vault.clone(),
    )
    .await?;
    let (requests_tx, requests_rx) = mpsc::channel(256);
    tokio::spawn(manager.run(requests_rx, link_rx));
    let agent_stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    agent_link::supervise_agent(&socket, &data_dir.join("agent"), agent_stopping.clone())?;

    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local_addr}");
    let config_rate_limit = config.rate_limit;
    let auth = auth::Auth::new(
        config.auth,
        store.clone(),
        auth::TaskTokens::load(&data_dir)?,
    );
    let workflow_config = workflow_config::WorkflowConfig::load(&store).await?;
    let mut app = api::router(api::AppState {
        vault,
        runs_dir: data_dir.join("runs"),
        workflow_config,
        store,
        requests: requests_tx,
        config,
        profiles: Default::default(),
        exec: Arc::new(exec_router::Sessions::new(
            data_dir.join("agent").join("exec.sock"),
            tls.is_some(),
        )),
    });
    if let Some(exec) = slurm_router {
        app = app.merge(exec);
    }
    app = app.merge(ui::router());
    let limiter = rate_limit::Limiter::new(config_rate_limit);
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::authenticate,
        ))
        // Outermost: a flood is refused before anything else is done for it.
        .layer(axum::middleware::from_fn_with_state(
            limiter,
            rate_limit::limit,
        ));
    let (stop, stopped) = oneshot::channel::<()>();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let http = match tls {
        None => tokio::spawn(async move {
            axum::serve(listener, service)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        }),
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                let _ = stopped.await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            let listener = listener.into_std()?;
            tokio::spawn(async move {
                axum_server::from_tcp_rustls(listener, tls)
                    .handle(handle)
                    .serve(service)
                    .await
            })
        }
    };
    Ok(RunningServer {
        url,
        stop,
        http,
        link,
        agent_stopping,
    })
}

/// A secret kept in `path` (mode 0600) so that it survives restarts: read
/// back when it is there, else 24 random bytes in hex, written first.
pub(crate) fn secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(secret) = std::fs::read_to_string(path)
        && secret.trim().len() >= 32
    {
        return Ok(secret.trim().to_string());
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, secret.as_bytes())?;
    Ok(secret)
}

/// Where `osmo exec` in a backend's job reaches this server: `OSMO_EXEC_URL`,
/// else the listening address (this host's name when it listens on all addresses).
fn exec_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if let Ok(url) = std::env::var("OSMO_EXEC_URL")
        && !url.is_empty()
    {
        return url;
    }
    if addr.ip().is_unspecified() {
        format!("{scheme}://{}:{}", crate::proto::hostname(), addr.port())
    } else {
        format!("{scheme}://{addr}")
    }
}
