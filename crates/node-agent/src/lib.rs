//! `osmo-agent`: the local node agent (`osmo agent`): runs attempts in sandboxes for the
//! server it dials over a Unix socket (in containers instead, in a pool with
//! `runtime: docker`: see [`docker`]).
//!
//! It runs in its own session so a server restart kills no task. Each result
//! is written to `state_dir/results/` before it is sent and deleted only when
//! the server acknowledges it, so no exit is lost while the server is down.
//! With no attempt left it exits once its server has been gone for
//! [`IDLE_EXIT`] (or at once after the server said it is shutting down), so
//! nothing lingers.

mod attempt;
pub mod entry_server;
mod hosts;
mod log_outbox;
mod network;
mod results;
mod scratch;
mod workers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use attempt::AttemptHandle;
use log_outbox::LogOutbox;
use osmo_proto::{AttemptKey, FromAgent, Phase, ToAgent};
use results::ResultStore;

/// How long an idle agent waits for its server to come back.
pub const IDLE_EXIT: Duration = Duration::from_secs(3);
const RECONNECT_EVERY: Duration = Duration::from_millis(100);

/// `osmo agent` arguments (started by the server; not for users).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Unix socket where the server listens for its agent.
    #[arg(long)]
    pub socket: PathBuf,
    /// Directory for the agent's durable results and attempt scratch space.
    #[arg(long)]
    pub state_dir: PathBuf,
}

/// State shared between the connection loop and the attempt threads.
pub(crate) struct Shared {
    attempts: Mutex<HashMap<AttemptKey, AttemptHandle>>,
    outbox: mpsc::UnboundedSender<FromAgent>,
    results: ResultStore,
    scratch: scratch::ScratchPool,
    node: String,
    /// The workflows' networks, and where their files live.
    networks: Arc<network::Networks>,
    state_dir: PathBuf,
    /// The threads attempts run on.
    workers: workers::Workers,
}

/// Runs the agent until it has no task and its server has been gone a while.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create agent state dir {}", args.state_dir.display()))?;
    std::fs::write(
        args.state_dir.join("agent.pid"),
        std::process::id().to_string(),
    )?;
    // From this thread, which lives as long as the agent: the sandboxes'
    // inits are its children.
    if let Err(e) = osmo_runtime::spawner::start(std::path::Path::new("/proc/self/exe")) {
        eprintln!("osmo agent: no sandbox spawner ({e}); sandboxes are forked directly");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: AgentArgs) -> anyhow::Result<()> {
    // Before this agent makes any: the killed predecessor's are unused.
    network::Networks::remove_leftovers(&args.state_dir);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        attempts: Mutex::new(HashMap::new()),
        outbox: tx,
        results: ResultStore::open(args.state_dir.join("results"))?,
        scratch: scratch::ScratchPool::new(args.state_dir.join("scratch")),
        node: osmo_proto::hostname(),
        networks: Arc::default(),
        state_dir: args.state_dir.clone(),
        workers: workers::Workers::default(),
    });
    entry_server::listen(shared.clone())
        .context("cannot listen for exec and port-forward sessions")?;
    let mut shutting_down = false;
    let mut gone_since = Instant::now();
    let started = osmo_proto::now_ms();
    let mut outbox = LogOutbox::new(format!(
        "agent:{}:{}:{started}",
        shared.node,
        std::process::id()
    ));
    loop {
        // Dial until connected, the server said goodbye and we are idle, or it stayed away too long.
        let stream = loop {
            // Messages that pile up while disconnected: phases are re-sent in Hello,
            // results live on disk, and log lines wait in the outbox.
            let mut waiting = Vec::new();
            while let Ok(msg) = rx.try_recv() {
                waiting.push(msg);
            }
            log_outbox::gather(&mut outbox, waiting);
            let idle = shared.lock_attempts().is_empty();
            if idle && (shutting_down || gone_since.elapsed() >= IDLE_EXIT) {
                shared.networks.remove_all();
                return Ok(());
            }
            match UnixStream::connect(&args.socket).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(RECONNECT_EVERY).await,
            }
        };
        shutting_down = false;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        // What was set up ahead for the last connection's queue goes (and
        // so is not in the Hello): the server that answers now queues anew.
        shared.drop_staged();
        // Unacknowledged results first, so the server never judges an attempt
        // lost whose result is on its way; then what runs now.
        let mut hello = shared.results.pending();
        hello.push(FromAgent::Hello {
            node: shared.node.clone(),
            pid: std::process::id(),
            attempts: shared
                .attempts
                .lock()
                .unwrap()
                .iter()
                .map(|(k, h)| (k.clone(), h.phase()))
                .collect(),
            starts_prepared: true,
        });
        // Log batches the server may not have stored yet go again.
        hello.extend(outbox.resend());
        let mut connected = send_all(&mut write, &hello).await;
        while connected {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match serde_json::from_str::<ToAgent>(&line) {
                        Ok(ToAgent::Shutdown) => {
                            shutting_down = true;
                            shared.drop_staged();
                        }
                        Ok(ToAgent::LogsAck { seq }) => outbox.ack(seq),
                        Ok(msg) => handle(&shared, msg),
                        Err(e) => eprintln!("osmo agent: ignoring a message it cannot read: {e}"),
                    },
                    _ => connected = false,
                },
                Some(msg) = rx.recv() => {
                    let mut batch = vec![msg];
                    while let Ok(more) = rx.try_recv() { batch.push(more); }
                    let batch = log_outbox::gather(&mut outbox, batch);
                    connected = send_all(&mut write, &batch).await;
                }
            }
        }
        gone_since = Instant::now();
    }
}

async fn send_all(write: &mut tokio::net::unix::OwnedWriteHalf, msgs: &[FromAgent]) -> bool {
    let mut buf = Vec::new();
    for msg in msgs {
        serde_json::to_writer(&mut buf, msg).expect("messages serialize");
        buf.push(b'\n');
    }
    write.write_all(&buf).await.is_ok()
}

fn handle(shared: &Arc<Shared>, msg: ToAgent) {
    match msg {
        ToAgent::Launch(mut launch) => {
            {
                let mut attempts = shared.lock_attempts();
                if let Some(h) = attempts.get(&launch.key).filter(|h| h.is_staged()) {
                    if h.staged_for
                        .as_ref()
                        .is_some_and(|staged| launch.same_as_prepared(staged))
                    {
                        h.launch(shared, &launch.key);
                        return;
                    }
                    // Set up for another launch than this one: made anew.
                    take_out_and_stop(&mut attempts, &launch.key);
                }
            }
            let running = shared.lock_attempts().contains_key(&launch.key);
            let ended = shared.results.has(&launch.key);
            if !running && !ended {
                attempt::spawn(shared.clone(), *launch, false);
            } else {
                eprintln!(
                    "osmo agent: launch of {} ignored: it {}",
                    launch.key.file_stem(),
                    if running {
                        "runs"
                    } else {
                        "ended, its result not yet acknowledged"
                    }
                );
            }
        }
        ToAgent::Start { key } => {
            if let Some(h) = shared.lock_attempts().get(&key) {
                // Set up ahead: it goes on. (One that runs already ignores
                // this, as it would a second launch.)
                h.launch(shared, &key);
                return;
            }
            if shared.results.has(&key) {
                eprintln!(
                    "osmo agent: start of {} ignored: it ended, its result not yet acknowledged",
                    key.file_stem()
                );
                return;
            }
            // Its wait for the launch ran out, or its set-up failed: the
            // server sends the launch in full, and it is set up anew.
            shared.send(FromAgent::NotPrepared { key });
        }
        ToAgent::Prepare(launch) => {
            let known = shared.lock_attempts().contains_key(&launch.key);
            if !known && !shared.results.has(&launch.key) {
                attempt::spawn(shared.clone(), *launch, true);
            }
        }
        ToAgent::Release { key } => {
            if let Some(h) = shared.lock_attempts().get(&key) {
                h.release();
            }
        }
        ToAgent::Stop { key } => {
            let mut attempts = shared.lock_attempts();
            if attempts.get(&key).is_some_and(AttemptHandle::is_staged) {
                take_out_and_stop(&mut attempts, &key);
            } else if let Some(h) = attempts.get(&key) {
                h.stop();
            }
        }
        ToAgent::Restart { key, reason } => {
            // An attempt that already ended sent its result: the server sorts that out.
            if let Some(h) = shared.lock_attempts().get(&key) {
                h.restart(&reason);
            }
        }
        ToAgent::Ack { key } => shared.results.forget(&key),
        ToAgent::LogsAck { .. } | ToAgent::Shutdown => {}
    }
}

/// Stops an attempt set up ahead and takes it out of the list at once (it
/// ends silently): a later launch of its key sets it up anew.
fn take_out_and_stop(attempts: &mut HashMap<AttemptKey, AttemptHandle>, key: &AttemptKey) {
    if let Some(h) = attempts.remove(key) {
        h.stop();
    }
}

impl Shared {
    /// The attempts, also after a panic on an attempt's thread (a poisoned
    /// lock must not take every other attempt down with it).
    fn lock_attempts(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptKey, AttemptHandle>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the attempts set up ahead and not launched: they leave the
    /// list at once and end silently.
    fn drop_staged(&self) {
        let mut attempts = self.lock_attempts();
        let staged: Vec<AttemptKey> = attempts
            .iter()
            .filter(|(_, h)| h.is_staged())
            .map(|(k, _)| k.clone())
            .collect();
        for key in staged {
            take_out_and_stop(&mut attempts, &key);
        }
    }

    fn send(&self, msg: FromAgent) {
        // The receiver lives as long as the agent; a send can only fail at exit.
        let _ = self.outbox.send(msg);
    }

    fn set_phase(&self, key: &AttemptKey, phase: Phase) {
        self.send(FromAgent::Phase {
            key: key.clone(),
            phase,
            node: None,
            gpus: None,
        });
    }
}
