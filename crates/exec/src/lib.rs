//! `osmo exec`: the in-task controller inside a backend's job (a Slurm batch
//! job). It fetches its attempt's launch from the server over HTTP, runs it
//! with the runtime (sandbox, files, preflight, barrier, command), sends its
//! logs in batches, waits at the barrier by long-polling the server, and posts
//! its codes until the server acknowledges them (so a server restart loses no
//! exit). On SIGTERM (scancel, requeue, preemption) it stops the attempt and
//! reports nothing: the server takes Slurm's verdict instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use osmo_runtime::{StopHandle, Supervisor};
use reqwest::StatusCode;
use reqwest::blocking::Client;

use osmo_proto::exec::{
    ControlReply, ExitedBody, HostsReply, PhaseBody, ReleaseReply, TOKEN_ENV, TOKEN_HEADER,
};
use osmo_proto::{AttemptKey, Launch, LogLine, Phase, Stream};

/// `osmo exec` arguments (the Slurm backend writes them; not for users).
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// The server's URL, e.g. http://10.0.0.1:8080.
    #[arg(long)]
    pub server: String,
    /// The attempt, as the server named it (`<workflow>.<group>.<task>.<retry>`).
    #[arg(long)]
    pub attempt: String,
    /// Runs as one step of a group's allocation (gang): the step's GPUs
    /// (`SLURM_STEP_GPUS`) are the task's, not the whole job's.
    #[arg(long)]
    pub step: bool,
}

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

fn terminated() -> bool {
    TERMINATED.load(Ordering::SeqCst)
}

/// How long the server may be away before exec gives up on reaching it.
const SERVER_PATIENCE: Duration = Duration::from_secs(600);
const LOG_EVERY: Duration = Duration::from_millis(200);
/// How long a step waits for its siblings to say where they run (a group's
/// steps start together; one that never starts must not hold the rest).
const HOSTS_PATIENCE: Duration = Duration::from_secs(120);

struct Api {
    http: Client,
    base: String,
    token: String,
}

impl Api {
    fn get(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .header(TOKEN_HEADER, &self.token)
    }

    fn post(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header(TOKEN_HEADER, &self.token)
    }

    /// Sends until the server answers 2xx (true) or a 4xx (false), retrying
    /// while it is unreachable or busy, up to `patience`.
    fn send_until(
        &self,
        patience: Duration,
        make: impl Fn() -> reqwest::blocking::RequestBuilder,
    ) -> bool {
        let start = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match make().send() {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) if r.status().is_client_error() => {
                    eprintln!("osmo exec: the server refused: {}", r.status());
                    return false;
                }
                Ok(_) | Err(_) if start.elapsed() < patience => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Ok(r) => {
                    eprintln!(
                        "osmo exec: the server keeps failing ({}); giving up",
                        r.status()
                    );
                    return false;
                }
                Err(e) => {
                    eprintln!("osmo exec: cannot reach the server: {e}; giving up");
                    return false;
                }
            }
        }
    }
}

struct ExecSupervisor {
    api: Arc<Api>,
    key: AttemptKey,
    task: String,
    logs: Arc<LogBuffer>,
    /// False: no barrier to wait for (see `Launch::barrier`).
    barrier: bool,
}

#[derive(Default)]
struct LogBuffer {
    lines: Mutex<Vec<LogLine>>,
    /// Held while a batch is on its way, so batches keep their order.
    sending: Mutex<()>,
}

impl LogBuffer {
    fn flush(&self, api: &Api) {
        let _order = self.sending.lock().unwrap();
        let batch = std::mem::take(&mut *self.lines.lock().unwrap());
        if batch.is_empty() {
            return;
        }
        // Logs are best effort: a few tries, then they are dropped.
        let body = serde_json::to_vec(&batch).expect("log lines serialize");
        api.send_until(Duration::from_secs(10), || {
            api.post("/logs")
                .header("content-type", "application/json")
                .body(body.clone())
        });
    }
}

impl ExecSupervisor {
    fn phase(&self, phase: Phase) {
        let body = serde_json::to_vec(&PhaseBody { phase }).expect("phases serialize");
        self.api.send_until(SERVER_PATIENCE, || {
            self.api
                .post("/phase")
                .header("content-type", "application/json")
                .body(body.clone())
        });
    }
}

impl Supervisor for ExecSupervisor {
    fn log(&self, stream: osmo_runtime::Stream, line: &str) {
        let stream = Stream::from(stream);
        self.logs.lines.lock().unwrap().push(LogLine {
            key: self.key.clone(),
            task: self.task.clone(),
            at_ms: osmo_proto::now_ms(),
            stream,
            line: line.to_string(),
        });
    }

    fn setup_done(&self) -> bool {
        self.phase(Phase::SetupDone);
        if !self.barrier {
            return !terminated();
        }
        let start = Instant::now();
        loop {
            if terminated() {
                return false;
            }
            match self
                .api
                .get("/release?wait_ms=20000")
                .send()
                .and_then(|r| r.error_for_status())
            {
                Ok(r) => match r.json::<ReleaseReply>() {
                    Ok(ReleaseReply { go: Some(go) }) => return go,
                    Ok(ReleaseReply { go: None }) => {}
                    Err(e) => eprintln!("osmo exec: unexpected barrier answer: {e}"),
                },
                Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                    eprintln!("osmo exec: the server refused the barrier: {e}");
                    return false;
                }
                Err(e) => {
                    if start.elapsed() > SERVER_PATIENCE {
                        eprintln!(
                            "osmo exec: cannot reach the server at the barrier: {e}; giving up"
                        );
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    fn started(&self) {
        self.phase(Phase::Running);
    }

    fn run_stopped(&self, codes: &[osmo_spec::codes::ReportedCode]) {
        let body = serde_json::to_vec(&ExitedBody {
            codes: codes.to_vec(),
        })
        .expect("codes serialize");
        self.api.send_until(SERVER_PATIENCE, || {
            self.api
                .post("/run-stopped")
                .header("content-type", "application/json")
                .body(body.clone())
        });
    }
}

/// Long-polls the server for restarts in place of this attempt's command
/// and hands them to the runtime, until the attempt is over.
fn watch_restarts(api: &Api, stop: &StopHandle, done: &AtomicBool) {
    let mut seen = 0;
    while !done.load(Ordering::SeqCst) && !terminated() {
        let reply = api
            .get(&format!("/control?seen={seen}&wait_ms=20000"))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json::<ControlReply>());
        match reply {
            Ok(reply) => {
                if reply.restarts > seen {
                    seen = reply.restarts;
                    stop.restart(&reply.reason);
                }
                if reply.over {
                    // Stopped by the server while it runs (a task of a
                    // group's job is stopped alone, without `scancel`).
                    stop.stop();
                    return;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Runs `osmo exec`; returns once the attempt's result is with the server.
pub fn run(args: ExecArgs) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_terminate as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_terminate as *const () as libc::sighandler_t,
        );
    }
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    let api = Arc::new(Api {
        http: Client::builder().timeout(Duration::from_secs(60)).build()?,
        base: format!(
            "{}/api/exec/{}",
            args.server.trim_end_matches('/'),
            args.attempt
        ),
        token,
    });
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| osmo_proto::hostname());
    let restart: u32 = std::env::var("SLURM_RESTART_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    // The GPUs Slurm gave the job (`--gres=gpu:N`), or this step of the
    // group's job: the task sees those only.
    let gpus_var = if args.step {
        "SLURM_STEP_GPUS"
    } else {
        "SLURM_JOB_GPUS"
    };
    let gpus = std::env::var(gpus_var).unwrap_or_default();

    let launch = fetch_launch(&api, &node, restart, &gpus)?;
    let Some(mut launch) = launch else {
        return Ok(());
    };
    launch.gpus = gpus
        .split(',')
        .filter_map(|g| g.trim().parse().ok())
        .collect();
    // `{{host:TASK}}` is `$(OSMO_HOST_<TASK>)` here: where each sibling runs.
    for (task, node) in group_hosts(&api) {
        launch
            .environment
            .insert(osmo_proto::exec::host_var(&task), node);
    }

    let stop = StopHandle::new();
    let done = Arc::new(AtomicBool::new(false));
    let logs = Arc::new(LogBuffer::default());
    // Watches for SIGTERM (stops the sandbox) and flushes logs in batches.
    let helper = std::thread::spawn({
        let (stop, done, logs, api) = (stop.clone(), done.clone(), logs.clone(), api.clone());
        move || {
            while !done.load(Ordering::SeqCst) {
                if terminated() {
                    stop.stop();
                }
                logs.flush(&api);
                std::thread::sleep(LOG_EVERY);
            }
        }
    });

    // Not joined: it may sit in a long poll when the attempt ends.
    std::thread::spawn({
        let (stop, done, api) = (stop.clone(), done.clone(), api.clone());
        move || watch_restarts(&api, &stop, &done)
    });

    let scratch = std::env::temp_dir().join(format!(
        "osmo-exec-{}-{}",
        launch.key.file_stem(),
        std::process::id()
    ));
    let spec = launch.attempt_spec(scratch.clone());
    let supervisor = ExecSupervisor {
        api: api.clone(),
        key: launch.key.clone(),
        task: launch.task.clone(),
        logs: logs.clone(),
        barrier: launch.barrier,
    };
    let runtime = osmo_runtime::for_kind(launch.runtime);
    let outcome = osmo_runtime::run_with_data(runtime, &spec, &supervisor, &stop);
    let _ = std::fs::remove_dir_all(&scratch);
    done.store(true, Ordering::SeqCst);
    let _ = helper.join();
    logs.flush(&api);
    if terminated() {
        eprintln!("osmo exec: terminated by the backend; the server takes its verdict");
        return Ok(());
    }
    let body = serde_json::to_vec(&ExitedBody {
        codes: outcome.codes,
    })
    .expect("codes serialize");
    if !api.send_until(SERVER_PATIENCE, || {
        api.post("/exited")
            .header("content-type", "application/json")
            .body(body.clone())
    }) {
        anyhow::bail!(
            "the result of {} could not be delivered",
            launch.key.file_stem()
        );
    }
    Ok(())
}

/// Where the tasks of this attempt's group run, once all have started
/// (their steps start together); what is known when they take too long.
fn group_hosts(api: &Api) -> std::collections::BTreeMap<String, String> {
    let start = Instant::now();
    let mut known = std::collections::BTreeMap::new();
    while start.elapsed() < HOSTS_PATIENCE && !terminated() {
        let reply = api
            .get("/hosts?wait_ms=20000")
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json::<HostsReply>());
        match reply {
            Ok(reply) if reply.complete => return reply.hosts,
            Ok(reply) => known = reply.hosts,
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    eprintln!("osmo exec: not every task of the group told where it runs; going on with {known:?}");
    known
}

/// The attempt's launch; None when the server says the attempt is over.
fn fetch_launch(api: &Api, node: &str, restart: u32, gpus: &str) -> anyhow::Result<Option<Launch>> {
    let start = Instant::now();
    loop {
        let mut query = vec![("node", node.to_string()), ("restart", restart.to_string())];
        if !gpus.is_empty() {
            query.push(("gpus", gpus.to_string()));
        }
        let sent = api.get("").query(&query).send();
        match sent {
            Ok(r) if r.status().is_success() => {
                return Ok(Some(r.json().context("cannot read the launch")?));
            }
            Ok(r) if r.status() == StatusCode::GONE || r.status() == StatusCode::NOT_FOUND => {
                eprintln!("osmo exec: nothing to run ({})", r.status());
                return Ok(None);
            }
            Ok(r) if r.status().is_client_error() => {
                anyhow::bail!("the server refused: {}", r.status())
            }
            _ if start.elapsed() > SERVER_PATIENCE || terminated() => {
                anyhow::bail!("cannot reach the server at {}", api.base)
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}
