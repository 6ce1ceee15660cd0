//! The server's end of the local backend: a Unix socket its node agent dials,
//! and the agent process itself, started in its own session so that a server
//! restart kills no task.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use crate::proto::{AttemptKey, FromAgent, Launch, ToAgent};
use crate::scheduler::Footprint;

/// What the link tells the manager. `conn` numbers the agent's connections
/// (0: an event the server made itself).
#[derive(Debug)]
pub enum LinkEvent {
    Message {
        conn: u64,
        msg: FromAgent,
    },
    Disconnected {
        conn: u64,
    },
    /// A backend without a connection of its own (Slurm) is ready, with the
    /// attempts it still knows of: `Some(phase)` once started, `None` while
    /// queued in the backend. The manager reconciles that backend's pools
    /// with it, as it does the local agent's `Hello`.
    Ready {
        backend: osmo_spec::config::BackendKind,
        attempts: Vec<(crate::proto::AttemptKey, Option<crate::proto::Phase>)>,
    },
}

/// The agent connection, if any; usable once the manager handled its Hello.
#[derive(Default)]
struct Current {
    conn: u64,
    tx: Option<mpsc::UnboundedSender<Outgoing>>,
    ready: bool,
}

/// What a connection's writer is handed.
enum Outgoing {
    /// The core's message.
    Message(ToAgent),
    /// The agent answered a `Start` with `NotPrepared`: its launch goes in full.
    Resend(AttemptKey),
}

/// The launches one connection's agent was sent to set up ahead: the same
/// launch later goes as a `Start` of a few bytes (the agent parses no launch
/// twice), and is kept until the attempt's end, for an agent that no longer
/// holds it set up (`NotPrepared`).
#[derive(Default)]
struct SetUpAhead {
    prepared: HashMap<AttemptKey, Box<Launch>>,
    started: HashMap<AttemptKey, Box<Launch>>,
}

/// At most this many launches set up ahead are remembered. More means
/// some were neither launched nor stopped (the core gave up on building
/// their launch): they are forgotten, and a launch goes in full.
const MOST_PREPARED: usize = 1024;

impl SetUpAhead {
    /// What goes to the agent for `msg`.
    fn shorten(&mut self, msg: ToAgent) -> ToAgent {
        match msg {
            ToAgent::Launch(mut launch) => match self.prepared.remove(&launch.key) {
                Some(prepared) if launch.same_as_prepared(&prepared) => {
                    let key = launch.key.clone();
                    self.started.insert(key.clone(), launch);
                    ToAgent::Start { key }
                }
                _ => ToAgent::Launch(launch),
            },
            ToAgent::Stop { key } => {
                self.prepared.remove(&key);
                self.started.remove(&key);
                ToAgent::Stop { key }
            }
            // The server holds its result: no `NotPrepared` can follow.
            ToAgent::Ack { key } => {
                self.started.remove(&key);
                ToAgent::Ack { key }
            }
            other => other,
        }
    }

    /// Keeps the launch of a `Prepare` once it is written.
    fn written(&mut self, msg: ToAgent) {
        if let ToAgent::Prepare(launch) = msg {
            if self.prepared.len() >= MOST_PREPARED {
                self.prepared.clear();
            }
            self.prepared.insert(launch.key.clone(), launch);
        }
    }

    /// The full launch for an agent that did not hold `key` set up.
    fn resend(&mut self, key: &AttemptKey) -> Option<ToAgent> {
        self.started.remove(key).map(ToAgent::Launch)
    }
}

/// Sends to the connected agent, if any.
#[derive(Clone)]
pub struct AgentLink {
    current: std::sync::Arc<std::sync::Mutex<Current>>,
}

impl AgentLink {
    /// True when the message was handed to a connected agent.
    pub fn send(&self, msg: ToAgent) -> bool {
        match &self.current.lock().unwrap().tx {
            Some(tx) => tx.send(Outgoing::Message(msg)).is_ok(),
            None => false,
        }
    }

    /// The manager reconciled with connection `conn` (its Hello): launches may go.
    pub fn set_ready(&self, conn: u64) {
        let mut current = self.current.lock().unwrap();
        if current.conn == conn {
            current.ready = true;
        }
    }

    /// An agent is connected and the manager knows what it runs.
    pub fn connected(&self) -> bool {
        let current = self.current.lock().unwrap();
        current.ready && current.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }
}

/// The local backend: the node agent on this machine.
impl super::backend::Backend for AgentLink {
    fn kind(&self) -> osmo_spec::config::BackendKind {
        osmo_spec::config::BackendKind::Local
    }

    fn send(&self, msg: ToAgent) -> bool {
        AgentLink::send(self, msg)
    }

    fn connected(&self) -> bool {
        AgentLink::connected(self)
    }

    fn set_ready(&self, conn: u64) {
        AgentLink::set_ready(self, conn)
    }

    /// Each workflow has a network of its own where its tasks' names resolve
    /// (on the host sandbox the node agent's `network`, with Docker a network
    /// of the daemon's): the task's name. `network: host`: loopback.
    fn task_host(&self, pool: &osmo_spec::config::PoolConfig, _: &str, task: &str) -> String {
        if gives_networks(pool) {
            task.to_string()
        } else {
            "127.0.0.1".to_string()
        }
    }

    /// Its `cpu_capacity`, else one node's CPUs, else this machine's; its
    /// `gpu_capacity`, else the node's GPUs; the node's memory.
    fn capacity(&self, pool: &osmo_spec::config::PoolConfig) -> Footprint {
        let cpu = pool.cpu_capacity.or(pool.node.cpu).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0)
        });
        let node_gpus = pool.node.gpu.unwrap_or(0);
        Footprint {
            cpu,
            gpu: pool.gpu_capacity.map_or(node_gpus, |q| q.min(node_gpus)),
            memory_bytes: pool.node.memory_bytes.unwrap_or(u64::MAX),
        }
    }

    /// Both runtimes make it, off the core's thread: on a disk where `mkdir`
    /// is slow it held up every launch behind it.
    fn makes_output_dirs(&self) -> bool {
        true
    }
    /// The host sandbox: the agent makes the next queued attempts' sandboxes
    /// while the running ones finish (with Docker, a container made ahead
    /// would be one more the daemon holds; not done).
    fn sets_up_ahead(&self, pool: &osmo_spec::config::PoolConfig) -> bool {
        pool.runtime == osmo_spec::config::RuntimeKind::Sandbox
    }

    /// The agent runs on one node: the core picks each task's devices.
    fn gpu_devices(&self, pool: &osmo_spec::config::PoolConfig) -> Option<u32> {
        Some(pool.node.gpu.unwrap_or(0))
    }
}

/// Listens on `socket`; each agent connection replaces the previous one.
pub fn listen(
    socket: &Path,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> anyhow::Result<AgentLink> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen for the agent on {}", socket.display()))?;
    let link = AgentLink {
        current: Default::default(),
    };
    let current = link.current.clone();
    tokio::spawn(async move {
        let mut conn = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conn += 1;
            let (read, mut write) = stream.into_split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
            let resend = tx.clone();
            *current.lock().unwrap() = Current {
                conn,
                tx: Some(tx),
                ready: false,
            };
            // Set by the agent's Hello, before the core hears of it (and so
            // before anything is set up ahead on this connection).
            let starts_prepared = Arc::new(AtomicBool::new(false));
            let shortens = starts_prepared.clone();
            tokio::spawn(async move {
                // What waits is written at once, in one write: a commit's
                // launches and acknowledgements wake the agent once.
                let mut waiting = Vec::new();
                let mut buf = Vec::new();
                let mut ahead = SetUpAhead::default();
                while rx.recv_many(&mut waiting, 256).await > 0 {
                    buf.clear();
                    let shorten = shortens.load(Ordering::Acquire);
                    for out in waiting.drain(..) {
                        let msg = match out {
                            Outgoing::Message(msg) if shorten => ahead.shorten(msg),
                            Outgoing::Message(msg) => msg,
                            Outgoing::Resend(key) => match ahead.resend(&key) {
                                Some(msg) => msg,
                                None => {
                                    tracing::warn!(
                                        "the agent holds no set-up for {}, and no launch of it is at hand",
                                        key.file_stem()
                                    );
                                    continue;
                                }
                            },
                        };
                        crate::metrics::global()
                            .messages_to_agent
                            .get_or_create(&crate::metrics::KindLabels { kind: msg.kind() })
                            .inc();
                        serde_json::to_writer(&mut buf, &msg).expect("messages serialize");
                        buf.push(b'\n');
                        if shorten {
                            ahead.written(msg);
                        }
                    }
                    if write.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
            let events = events.clone();
            let current = current.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<FromAgent>(&line) {
                        Ok(msg) => {
                            crate::metrics::global()
                                .agent_messages
                                .get_or_create(&crate::metrics::KindLabels { kind: msg.kind() })
                                .inc();
                            match msg {
                                FromAgent::NotPrepared { key } => {
                                    let _ = resend.send(Outgoing::Resend(key));
                                    continue;
                                }
                                FromAgent::Hello {
                                    starts_prepared: true,
                                    ..
                                } => starts_prepared.store(true, Ordering::Release),
                                _ => {}
                            }
                            let _ = events.send(LinkEvent::Message { conn, msg });
                        }
                        Err(e) => tracing::warn!("ignoring an agent message it cannot read: {e}"),
                    }
                }
                // Nothing more goes to this connection. The writer alone
                // would notice only when a write fails, and the message it
                // failed to write (a launch) would be lost: its attempt
                // judged lost (3001) when the next agent says hello.
                {
                    let mut now = current.lock().unwrap();
                    if now.conn == conn {
                        now.tx = None;
                        now.ready = false;
                    }
                }
                let _ = events.send(LinkEvent::Disconnected { conn });
            });
        }
    });
    Ok(link)
}

/// Keeps a node agent running for this server: starts `osmo agent` in its
/// own session unless one from an earlier server of this data dir still runs
/// (it will dial back by itself), and starts a new one whenever the agent
/// dies while the server runs (a SIGKILL, a crash). The new agent's `Hello`
/// lists no attempt, so the core ends the lost ones with 3001 and their exit
/// actions apply. Nothing is restarted once `stopping` is set.
pub fn supervise_agent(
    socket: &Path,
    state_dir: &Path,
    stopping: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut child = start_agent_unless_running(socket, state_dir)?;
    let (socket, state_dir) = (socket.to_path_buf(), state_dir.to_path_buf());
    std::thread::Builder::new()
        .name("agent-supervisor".into())
        .spawn(move || {
            let mut restarts = RestartPacing::default();
            loop {
                match child.take() {
                    // Ours: reap it, so it doesn't linger as a zombie.
                    Some(mut c) => {
                        let _ = c.wait();
                    }
                    // An earlier server's: it is not our child, so watch its pid.
                    None => {
                        while running_agent(&state_dir).is_some() {
                            std::thread::sleep(ADOPTED_AGENT_POLL);
                            if stopping.load(Ordering::SeqCst) {
                                return;
                            }
                        }
                    }
                }
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(restarts.next_delay());
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!("the node agent exited while the server runs; starting a new one");
                match start_agent_unless_running(&socket, &state_dir) {
                    Ok(c) => child = c,
                    Err(e) => tracing::error!("cannot restart the node agent: {e:#}"),
                }
            }
        })
        .context("cannot start the agent's supervisor")?;
    Ok(())
}

/// How often an adopted agent (not our child) is checked for life.
const ADOPTED_AGENT_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Restart at once the first time; an agent that keeps dying is restarted
/// at most every few seconds, so a broken one does not spin.
#[derive(Default)]
struct RestartPacing {
    recent: std::collections::VecDeque<std::time::Instant>,
}

impl RestartPacing {
    fn next_delay(&mut self) -> std::time::Duration {
        let now = std::time::Instant::now();
        let window = std::time::Duration::from_secs(30);
        self.recent.retain(|t| now.duration_since(*t) < window);
        self.recent.push_back(now);
        match self.recent.len() {
            0..=3 => std::time::Duration::ZERO,
            n => std::time::Duration::from_millis(500 * (n as u64 - 3)).min(window / 6),
        }
    }
}

/// Starts `osmo agent` unless one already runs for `state_dir`; returns the
/// child it started.
fn start_agent_unless_running(
    socket: &Path,
    state_dir: &Path,
) -> anyhow::Result<Option<std::process::Child>> {
    if let Some(pid) = running_agent(state_dir) {
        tracing::info!("reusing the running agent (pid {pid})");
        return Ok(None);
    }
    std::fs::create_dir_all(state_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("agent.log"))?;
    let exe = std::env::current_exe().context("cannot find the osmo binary to start the agent")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("agent")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the node agent")?;
    tracing::info!("started the node agent (pid {})", child.id());
    Ok(Some(child))
}

fn running_agent(state_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(state_dir.join("agent.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_agent = cmdline.split(|b| *b == 0).any(|arg| arg == b"agent");
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    (is_agent && !zombie).then_some(pid)
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.sock")
}

/// Whether the node agent gives `pool`'s workflows networks of their own.
pub fn gives_networks(pool: &osmo_spec::config::PoolConfig) -> bool {
    pool.network == osmo_spec::config::NetworkMode::Workflow
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(retry_id: u32) -> Box<Launch> {
        let key = serde_json::json!({
            "workflow_id": "wf-1",
            "attempt": {"task": {"group": 0, "task": 0}, "retry_id": retry_id}
        });
        Box::new(
            serde_json::from_value(serde_json::json!({
                "key": key, "group": "g", "task": "t", "command": ["true"], "args": [],
                "environment": {}, "files": [], "output_dir": "/o", "input_dirs": [],
                "preflight": [], "memory_limit_bytes": null,
            }))
            .unwrap(),
        )
    }

    /// What goes on the wire for `msg`, as the writer does.
    fn send(ahead: &mut SetUpAhead, msg: ToAgent) -> ToAgent {
        let out = ahead.shorten(msg);
        ahead.written(out.clone());
        out
    }

    #[test]
    fn the_launch_of_what_was_set_up_ahead_goes_as_a_start_and_is_kept_until_its_ack() {
        let mut ahead = SetUpAhead::default();
        send(&mut ahead, ToAgent::Prepare(launch(0)));
        let mut again = launch(0);
        again.gang = 3;
        let key = again.key.clone();
        assert!(
            matches!(send(&mut ahead, ToAgent::Launch(again)), ToAgent::Start { key: k } if k == key)
        );
        // The agent no longer held it: the launch goes in full, once.
        assert!(matches!(ahead.resend(&key), Some(ToAgent::Launch(l)) if l.gang == 3));
        assert!(ahead.resend(&key).is_none());

        send(&mut ahead, ToAgent::Prepare(launch(1)));
        let key = launch(1).key;
        send(&mut ahead, ToAgent::Launch(launch(1)));
        send(&mut ahead, ToAgent::Ack { key: key.clone() });
        assert!(ahead.resend(&key).is_none(), "forgotten with its result");
    }

    #[test]
    fn a_launch_that_differs_from_what_was_set_up_or_was_stopped_goes_in_full() {
        let mut ahead = SetUpAhead::default();
        send(&mut ahead, ToAgent::Prepare(launch(0)));
        let mut changed = launch(0);
        changed
            .environment
            .insert("SECRET".into(), "rotated meanwhile".into());
        assert!(matches!(
            send(&mut ahead, ToAgent::Launch(changed)),
            ToAgent::Launch(_)
        ));

        send(&mut ahead, ToAgent::Prepare(launch(1)));
        send(&mut ahead, ToAgent::Stop { key: launch(1).key });
        assert!(matches!(
            send(&mut ahead, ToAgent::Launch(launch(1))),
            ToAgent::Launch(_)
        ));
        // Never set up ahead at all.
        assert!(matches!(
            send(&mut ahead, ToAgent::Launch(launch(2))),
            ToAgent::Launch(_)
        ));
    }
}
