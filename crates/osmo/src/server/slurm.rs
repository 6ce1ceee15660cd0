//! The Slurm backend: each attempt is one batch job running `osmo exec`, the
//! in-task controller, which reaches the server over HTTP (`/api/exec/...`,
//! served here) for its launch, the group barrier, its logs and its result.
//!
//! Slurm is driven through its CLI (`sbatch --parsable`, `squeue`, `scancel`),
//! not slurmrestd: the CLI needs nothing beyond munge (slurmrestd refuses to
//! run as root, needs JWT set up, and has no requeue endpoint in 22.05), and
//! the only exit code we trust comes from `osmo exec` itself; Slurm's verdict
//! is used only by its job *state* (PREEMPTED, NODE_FAIL, …), which `squeue`
//! reports reliably (sacct's JSON and the accounting endpoint misreport exit
//! codes in 22.05, and sacct needs slurmdbd).
//!
//! Slurm's verdicts map to SEMANTICS codes when `osmo exec` reported nothing:
//! PREEMPTED or a requeue of a started job → 3006 (the requeued job is
//! cancelled: the engine's exit actions decide the next attempt, a new job),
//! NODE_FAIL → 3001, OUT_OF_MEMORY → 3004, BOOT_FAIL → 3003, a rejected
//! `sbatch` → 3003, anything else → 3001. A job still pending in Slurm's queue
//! is SCHEDULING, so the engine's queue timeout applies; cancel → `scancel`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use osmo_engine::{AttemptId, TaskKey};
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};
use osmo_spec::config::{BackendKind, PoolConfig, ServiceConfig};
use tokio::sync::{Notify, Semaphore, mpsc};

use super::agent_link::LinkEvent;
use super::backend::Backend;
use crate::proto::exec::{
    ControlQuery, ControlReply, ExitedBody, FetchQuery, PhaseBody, ReleaseQuery, ReleaseReply,
    TOKEN_ENV, TOKEN_HEADER,
};
use crate::proto::{AttemptKey, FromAgent, Launch, LogLine, Phase, ToAgent};

/// Every job osmo submits is named `osmo.<workflow>.<group>.<task>.<retry>`.
const JOB_PREFIX: &str = "osmo.";
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Polls a job may be missing from `squeue` before it counts as lost.
const MISSING_POLLS: u32 = 8;
/// Memory `osmo exec` needs beside its task, added to the job's `--mem`.
const EXEC_MEMORY_MIB: u64 = 128;
/// `sbatch` calls at once.
const SUBMITTERS: usize = 8;
/// How long `/exited` waits for the manager's commit before asking exec to retry.
const ACK_WAIT: Duration = Duration::from_secs(15);

/// One Slurm pool's link: launches go to `sbatch` with the pool's options.
#[derive(Clone)]
pub struct SlurmLink {
    pool: String,
    tx: mpsc::UnboundedSender<(String, ToAgent)>,
    shared: Arc<Shared>,
}

impl Backend for SlurmLink {
    fn kind(&self) -> BackendKind {
        BackendKind::Slurm
    }

    fn send(&self, msg: ToAgent) -> bool {
        self.tx.send((self.pool.clone(), msg)).is_ok()
    }

    fn connected(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    /// The core reconciled with the backend's `Ready`: launches may go.
    fn set_ready(&self, _: u64) {
        self.shared.ready.store(true, Ordering::SeqCst);
    }

    /// Slurm places jobs itself: the pool's `cpu_capacity` is a quota when
    /// set, else every group is handed to Slurm at once (a job pending in
    /// Slurm's queue is still SCHEDULING).
    fn capacity(&self, pool: &PoolConfig) -> f64 {
        pool.cpu_capacity.unwrap_or(1e12)
    }
}

/// The Slurm pools' options (`options:` in the pool config).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// More `sbatch` arguments, as written.
    pub sbatch_args: Vec<String>,
}

impl SlurmOptions {
    pub fn from_pool(pool: &PoolConfig) -> SlurmOptions {
        let text = |k: &str| match pool.options.get(k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        let sbatch_args = match pool.options.get("sbatch_args") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect(),
            Some(serde_json::Value::String(s)) => {
                s.split_whitespace().map(str::to_string).collect()
            }
            _ => Vec::new(),
        };
        SlurmOptions {
            partition: text("partition"),
            account: text("account"),
            qos: text("qos"),
            sbatch_args,
        }
    }
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
    events: mpsc::UnboundedSender<LinkEvent>,
    token: String,
    /// Marks this server's jobs (`--comment`), so servers sharing a cluster
    /// and a user never adopt or cancel each other's jobs.
    instance: String,
    ready: AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// By attempt stem (`AttemptKey::file_stem`).
    jobs: HashMap<String, Job>,
    /// Nodes where a preflight test failed, per workflow: later jobs avoid them.
    bad_nodes: HashMap<String, BTreeSet<String>>,
}

struct Job {
    key: AttemptKey,
    pool: String,
    launch: Option<Arc<Launch>>,
    job_id: Option<u64>,
    /// `osmo exec` fetched its launch: the job runs.
    started: bool,
    node: Option<String>,
    released: bool,
    stopped: bool,
    /// Restarts in place asked for so far, and the latest one's reason
    /// (`osmo exec` long-polls `/control` for them).
    restarts: u32,
    restart_reason: String,
    /// An `Exited` went to the manager (from exec, or Slurm's verdict).
    reported: bool,
    /// The report came from exec (re-sent when exec retries).
    codes: Option<Vec<ReportedCode>>,
    missing: u32,
}

impl Job {
    fn new(key: AttemptKey, pool: String) -> Job {
        Job {
            key,
            pool,
            launch: None,
            job_id: None,
            started: false,
            node: None,
            released: false,
            stopped: false,
            restarts: 0,
            restart_reason: String::new(),
            reported: false,
            codes: None,
            missing: 0,
        }
    }
}

impl Shared {
    fn emit(&self, msg: FromAgent) {
        let _ = self.events.send(LinkEvent::Message { conn: 0, msg });
    }

    /// Reports Slurm's verdict for a job exec said nothing about.
    fn report(&self, job: &mut Job, code: u32, detail: String) {
        if job.reported {
            return;
        }
        job.reported = true;
        let codes = vec![ReportedCode {
            code,
            source: CodeSource::Service,
            detail: Some(detail),
        }];
        self.emit(FromAgent::Exited {
            key: job.key.clone(),
            codes,
        });
        self.changed.notify_waiters();
    }
}

/// Everything the server needs of the Slurm backend.
pub struct Slurm {
    pub links: HashMap<String, SlurmLink>,
    pub router: Router,
}

/// Starts the driver for the config's Slurm pools (None when there are none).
/// `server_url` is where `osmo exec` reaches this server.
pub fn start(
    config: &ServiceConfig,
    data_dir: &Path,
    server_url: &str,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> anyhow::Result<Option<Slurm>> {
    let pools: HashMap<String, SlurmOptions> = config
        .pools
        .iter()
        .filter(|(_, p)| p.backend == BackendKind::Slurm)
        .map(|(name, p)| (name.clone(), SlurmOptions::from_pool(p)))
        .collect();
    if pools.is_empty() {
        return Ok(None);
    }
    let out_dir = data_dir.join("slurm");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner::default()),
        changed: Notify::new(),
        events,
        token: exec_token(data_dir)?,
        instance: instance_tag(data_dir),
        ready: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let links = pools
        .keys()
        .map(|pool| {
            (
                pool.clone(),
                SlurmLink {
                    pool: pool.clone(),
                    tx: tx.clone(),
                    shared: shared.clone(),
                },
            )
        })
        .collect();
    let driver = Driver {
        shared: shared.clone(),
        pools,
        out_dir,
        exe: std::env::current_exe().context("cannot find the osmo binary for `osmo exec`")?,
        server_url: server_url.to_string(),
        submitters: Arc::new(Semaphore::new(SUBMITTERS)),
        partition_nodes: HashMap::new(),
    };
    tokio::spawn(driver.run(rx));
    Ok(Some(Slurm {
        links,
        router: router(shared),
    }))
}

/// `osmo-<hash of the data dir>`: the same for every server of that data dir.
fn instance_tag(data_dir: &Path) -> String {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("osmo-{h:016x}")
}

/// The secret `osmo exec` shows; kept in the data dir so it survives restarts.
fn exec_token(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("exec.token");
    if let Ok(token) = std::fs::read_to_string(&path)
        && token.trim().len() >= 32
    {
        return Ok(token.trim().to_string());
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut file, token.as_bytes())?;
    Ok(token)
}

struct Driver {
    shared: Arc<Shared>,
    pools: HashMap<String, SlurmOptions>,
    out_dir: PathBuf,
    exe: PathBuf,
    server_url: String,
    submitters: Arc<Semaphore>,
    /// Nodes of each partition ("" = the default one), looked up once.
    partition_nodes: HashMap<String, Vec<String>>,
}

/// One line of `squeue`.
#[derive(Debug, Clone, PartialEq)]
struct JobRow {
    id: u64,
    state: String,
    nodes: String,
    comment: String,
    name: String,
}

const SQUEUE_FORMAT: &str = "%i|%T|%N|%k|%j";

fn parse_squeue(text: &str) -> Vec<JobRow> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().splitn(5, '|');
            let id = parts.next()?.trim().parse().ok()?;
            let state = parts.next()?.trim().to_string();
            let nodes = parts.next()?.trim().to_string();
            let comment = parts.next()?.trim().to_string();
            let name = parts.next()?.trim().to_string();
            Some(JobRow {
                id,
                state,
                nodes,
                comment,
                name,
            })
        })
        .collect()
}

/// `osmo.<workflow>.<group>.<task>.<retry>` back to the attempt.
pub fn parse_job_name(name: &str) -> Option<AttemptKey> {
    let stem = name.strip_prefix(JOB_PREFIX)?;
    parse_stem(stem)
}

fn parse_stem(stem: &str) -> Option<AttemptKey> {
    let mut parts = stem.rsplitn(4, '.');
    let retry_id = parts.next()?.parse().ok()?;
    let task = parts.next()?.parse().ok()?;
    let group = parts.next()?.parse().ok()?;
    let workflow_id = parts.next()?.to_string();
    if workflow_id.is_empty() {
        return None;
    }
    Some(AttemptKey {
        workflow_id,
        attempt: AttemptId {
            task: TaskKey { group, task },
            retry_id,
        },
    })
}

/// What a job's Slurm state means for an attempt exec has not reported.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Still queued or running: nothing to do.
    Wait,
    /// Requeued after it started (or preempted with REQUEUE): 3006, and
    /// the requeued job must go (the engine schedules a new attempt).
    Requeued,
    /// Ended: report this code.
    Ended(u32, &'static str),
}

fn verdict(state: &str, started: bool) -> Verdict {
    match state {
        "PENDING" | "CONFIGURING" if started => Verdict::Requeued,
        "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" => Verdict::Requeued,
        "PREEMPTED" => Verdict::Ended(well_known::PREEMPTED, "Slurm preempted the job"),
        "NODE_FAIL" => Verdict::Ended(well_known::BACKEND_ERROR, "Slurm: the job's node failed"),
        "OUT_OF_MEMORY" => {
            Verdict::Ended(well_known::EVICTED, "Slurm killed the job: out of memory")
        }
        "BOOT_FAIL" => Verdict::Ended(
            well_known::START_ERROR,
            "Slurm could not boot the job's node",
        ),
        "TIMEOUT" | "DEADLINE" => Verdict::Ended(
            well_known::BACKEND_ERROR,
            "Slurm ended the job at its time limit",
        ),
        "CANCELLED" => Verdict::Ended(
            well_known::BACKEND_ERROR,
            "the Slurm job was cancelled outside osmo",
        ),
        "COMPLETED" | "FAILED" | "SPECIAL_EXIT" => Verdict::Ended(
            well_known::BACKEND_ERROR,
            "the Slurm job ended without a result from osmo exec",
        ),
        _ => Verdict::Wait,
    }
}

/// The nodes to `--exclude`: those that failed a preflight test in this
/// workflow, unless that would leave the partition no node at all (then a
/// node is avoided, not forbidden: the attempt runs where it can).
fn exclusions(bad: Option<&BTreeSet<String>>, partition_nodes: &[String]) -> Vec<String> {
    let Some(bad) = bad else { return Vec::new() };
    if !partition_nodes.is_empty() && partition_nodes.iter().all(|n| bad.contains(n)) {
        return Vec::new();
    }
    bad.iter().cloned().collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sbatch` arguments for one attempt.
fn sbatch_args(
    launch: &Launch,
    options: &SlurmOptions,
    exclude: &[String],
    out_dir: &Path,
    exe: &Path,
    server_url: &str,
) -> Vec<String> {
    let stem = launch.key.file_stem();
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={JOB_PREFIX}{stem}"),
        format!("--output={}", out_dir.join(format!("{stem}.out")).display()),
        format!("--chdir={}", out_dir.display()),
        "--ntasks=1".to_string(),
        format!(
            "--cpus-per-task={}",
            launch.cpu.map_or(1, |c| (c.ceil() as u64).max(1))
        ),
    ];
    if let Some(bytes) = launch.memory_limit_bytes {
        // The task's limit is enforced by the runtime (3004); the job gets
        // headroom for `osmo exec` itself, so Slurm's own limit, if it
        // enforces one, does not strike first.
        let mib = bytes.div_ceil(1024 * 1024).max(1) + EXEC_MEMORY_MIB;
        args.push(format!("--mem={mib}M"));
    }
    if let Some(p) = &options.partition {
        args.push(format!("--partition={p}"));
    }
    if let Some(a) = &options.account {
        args.push(format!("--account={a}"));
    }
    if let Some(q) = &options.qos {
        args.push(format!("--qos={q}"));
    }
    if !exclude.is_empty() {
        args.push(format!("--exclude={}", exclude.join(",")));
    }
    args.extend(options.sbatch_args.iter().cloned());
    args.push(format!(
        "--wrap=exec {} exec --server {} --attempt {}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(server_url),
        shell_quote(&stem)
    ));
    args
}

async fn run_cmd(program: &str, args: &[String]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn scancel(job_id: u64) {
    tokio::spawn(async move {
        if let Err(e) = run_cmd("scancel", &[job_id.to_string()]).await {
            tracing::warn!("cannot cancel Slurm job {job_id}: {e:#}");
        }
    });
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<(String, ToAgent)>) {
        self.adopt().await;
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some((pool, msg)) => self.handle(pool, msg).await,
                    None => return,
                },
                _ = tick.tick() => self.poll().await,
            }
        }
    }

    /// At start: take over the jobs an earlier server of ours left, and tell
    /// the manager what Slurm still has.
    async fn adopt(&mut self) {
        let mut attempts = Vec::new();
        // Until Slurm answers, its pools launch nothing: judging attempts lost
        // because slurmctld is briefly away would fail them for nothing.
        let mut tries = 0u32;
        let text = loop {
            match run_cmd("squeue", &squeue_args()).await {
                Ok(text) => break text,
                Err(e) => {
                    if tries.is_multiple_of(30) {
                        tracing::error!("cannot list Slurm jobs (retrying every second): {e:#}");
                    }
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        {
            let mut inner = self.shared.inner.lock().unwrap();
            for row in parse_squeue(&text) {
                if row.comment != self.shared.instance {
                    continue;
                }
                let Some(key) = parse_job_name(&row.name) else {
                    continue;
                };
                if matches!(verdict(&row.state, false), Verdict::Ended(..)) {
                    continue;
                }
                let started = row.state != "PENDING";
                let mut job = Job::new(key.clone(), String::new());
                job.job_id = Some(row.id);
                job.started = started;
                attempts.push((key.clone(), started.then_some(Phase::Initializing)));
                inner.jobs.insert(key.file_stem(), job);
            }
        }
        if !attempts.is_empty() {
            tracing::info!("found {} Slurm job(s) of an earlier server", attempts.len());
        }
        let _ = self.shared.events.send(LinkEvent::Ready {
            backend: BackendKind::Slurm,
            attempts,
        });
    }

    async fn handle(&mut self, pool: String, msg: ToAgent) {
        match msg {
            ToAgent::Launch(launch) => self.launch(pool, *launch).await,
            ToAgent::Release { key } => {
                if let Some(job) = self
                    .shared
                    .inner
                    .lock()
                    .unwrap()
                    .jobs
                    .get_mut(&key.file_stem())
                {
                    job.released = true;
                }
                self.shared.changed.notify_waiters();
            }
            ToAgent::Stop { key } => {
                let mut inner = self.shared.inner.lock().unwrap();
                if let Some(job) = inner.jobs.get_mut(&key.file_stem()) {
                    job.stopped = true;
                    if let Some(id) = job.job_id {
                        scancel(id);
                    }
                }
                drop(inner);
                self.shared.changed.notify_waiters();
            }
            ToAgent::Restart { key, reason } => {
                if let Some(job) = self
                    .shared
                    .inner
                    .lock()
                    .unwrap()
                    .jobs
                    .get_mut(&key.file_stem())
                {
                    // Back at the barrier until the engine releases it again.
                    job.released = false;
                    job.restarts += 1;
                    job.restart_reason = reason;
                }
                self.shared.changed.notify_waiters();
            }
            ToAgent::Ack { key } => {
                self.shared
                    .inner
                    .lock()
                    .unwrap()
                    .jobs
                    .remove(&key.file_stem());
                self.shared.changed.notify_waiters();
            }
            ToAgent::LogsAck { .. } | ToAgent::Shutdown => {}
        }
    }

    async fn nodes_of(&mut self, partition: Option<&str>) -> Vec<String> {
        let name = partition.unwrap_or("").to_string();
        if let Some(nodes) = self.partition_nodes.get(&name) {
            return nodes.clone();
        }
        let mut args = vec![
            "-h".to_string(),
            "-N".to_string(),
            "-o".to_string(),
            "%N".to_string(),
        ];
        if let Some(p) = partition {
            args.push(format!("--partition={p}"));
        }
        let nodes: Vec<String> = match run_cmd("sinfo", &args).await {
            Ok(text) => {
                let mut v: Vec<String> = text
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                v.sort();
                v.dedup();
                v
            }
            Err(e) => {
                tracing::warn!("cannot list the nodes of the Slurm partition: {e:#}");
                return Vec::new();
            }
        };
        self.partition_nodes.insert(name, nodes.clone());
        nodes
    }

    async fn launch(&mut self, pool: String, launch: Launch) {
        let stem = launch.key.file_stem();
        let options = self.pools.get(&pool).cloned().unwrap_or_default();
        let launch = Arc::new(launch);
        let bad = {
            let mut inner = self.shared.inner.lock().unwrap();
            if let Some(job) = inner.jobs.get_mut(&stem) {
                // Adopted from an earlier server: the job exists; give it its launch.
                job.launch = Some(launch);
                job.pool = pool;
                return;
            }
            let mut job = Job::new(launch.key.clone(), pool);
            job.launch = Some(launch.clone());
            inner.jobs.insert(stem.clone(), job);
            inner.bad_nodes.get(&launch.key.workflow_id).cloned()
        };
        let exclude = if bad.is_some() {
            let nodes = self.nodes_of(options.partition.as_deref()).await;
            exclusions(bad.as_ref(), &nodes)
        } else {
            Vec::new()
        };
        let mut args = sbatch_args(
            &launch,
            &options,
            &exclude,
            &self.out_dir,
            &self.exe,
            &self.server_url,
        );
        args.insert(1, format!("--comment={}", self.shared.instance));
        let shared = self.shared.clone();
        let submitters = self.submitters.clone();
        tokio::spawn(async move {
            let _permit = submitters.acquire().await;
            let result = tokio::process::Command::new("sbatch")
                .args(&args)
                .env(TOKEN_ENV, &shared.token)
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            let mut inner = shared.inner.lock().unwrap();
            let Some(job) = inner.jobs.get_mut(&stem) else {
                return;
            };
            let failure = match result {
                Ok(out) if out.status.success() => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    // --parsable prints `id` or `id;cluster`.
                    match text
                        .trim()
                        .split(';')
                        .next()
                        .and_then(|id| id.trim().parse::<u64>().ok())
                    {
                        Some(id) => {
                            job.job_id = Some(id);
                            if job.stopped {
                                scancel(id);
                            }
                            None
                        }
                        None => Some(format!("sbatch printed no job id: {}", text.trim())),
                    }
                }
                Ok(out) => Some(format!(
                    "sbatch failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Some(format!("cannot run sbatch: {e}")),
            };
            if let Some(detail) = failure {
                tracing::warn!("{stem}: {detail}");
                shared.report(job, well_known::START_ERROR, detail);
            }
        });
    }

    async fn poll(&mut self) {
        let watched = {
            let inner = self.shared.inner.lock().unwrap();
            inner
                .jobs
                .values()
                .any(|j| j.job_id.is_some() && !j.reported)
        };
        if !watched {
            return;
        }
        let text = match run_cmd("squeue", &squeue_args()).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!("cannot poll Slurm: {e:#}");
                return;
            }
        };
        let rows: HashMap<u64, JobRow> =
            parse_squeue(&text).into_iter().map(|r| (r.id, r)).collect();
        let mut inner = self.shared.inner.lock().unwrap();
        for job in inner.jobs.values_mut() {
            let Some(id) = job.job_id else { continue };
            if job.reported {
                continue;
            }
            let Some(row) = rows.get(&id) else {
                job.missing += 1;
                if job.missing >= MISSING_POLLS {
                    let detail = format!("Slurm job {id} is gone and osmo exec reported nothing");
                    self.shared.report(job, well_known::BACKEND_ERROR, detail);
                }
                continue;
            };
            job.missing = 0;
            if job.node.is_none() && !row.nodes.is_empty() && row.state == "RUNNING" {
                job.node = Some(row.nodes.clone());
            }
            match verdict(&row.state, job.started) {
                Verdict::Wait => {}
                Verdict::Requeued => {
                    scancel(id);
                    let detail = format!(
                        "Slurm requeued job {id} (preempted); a new attempt decides what follows"
                    );
                    self.shared.report(job, well_known::PREEMPTED, detail);
                }
                Verdict::Ended(code, what) => {
                    let detail = if job.stopped {
                        format!("Slurm job {id} stopped ({})", row.state)
                    } else {
                        format!("{what} (job {id}, {})", row.state)
                    };
                    self.shared.report(job, code, detail);
                }
            }
        }
    }
}

fn squeue_args() -> Vec<String> {
    ["-h", "--me", "-t", "all", "-o", SQUEUE_FORMAT]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

// ---- the HTTP side: what `osmo exec` calls ----

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/exec/{stem}", get(fetch_launch))
        .route("/api/exec/{stem}/phase", post(phase))
        .route("/api/exec/{stem}/logs", post(logs))
        .route("/api/exec/{stem}/release", get(release))
        .route("/api/exec/{stem}/control", get(control))
        .route("/api/exec/{stem}/run-stopped", post(run_stopped))
        .route("/api/exec/{stem}/exited", post(exited))
        .with_state(shared)
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let given = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    given == shared.token
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "osmo exec: bad or missing token").into_response()
}

async fn fetch_launch(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    Query(query): Query<FetchQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let mut inner = shared.inner.lock().unwrap();
    let Some(job) = inner.jobs.get_mut(&stem) else {
        return (StatusCode::NOT_FOUND, "no such attempt").into_response();
    };
    if job.reported || job.stopped {
        return (StatusCode::GONE, "this attempt is over").into_response();
    }
    if query.restart > 0 || job.started {
        // Slurm requeued the job: this attempt was preempted; the engine decides what follows.
        if let Some(id) = job.job_id {
            scancel(id);
        }
        let detail = format!("Slurm requeued job {} (preempted)", job.job_id.unwrap_or(0));
        shared.report(job, well_known::PREEMPTED, detail);
        return (StatusCode::GONE, "this attempt was preempted").into_response();
    }
    let Some(launch) = job.launch.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "the server lost this attempt's launch",
        )
            .into_response();
    };
    job.started = true;
    if let Some(node) = query.node.filter(|n| !n.is_empty()) {
        job.node = Some(node);
    }
    shared.emit(FromAgent::Phase {
        key: job.key.clone(),
        phase: Phase::Initializing,
        node: job.node.clone(),
    });
    Json(&*launch).into_response()
}

async fn phase(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<PhaseBody>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let inner = shared.inner.lock().unwrap();
    match inner.jobs.get(&stem) {
        Some(job) if !job.reported => {
            shared.emit(FromAgent::Phase {
                key: job.key.clone(),
                phase: body.phase,
                node: job.node.clone(),
            });
            StatusCode::OK.into_response()
        }
        Some(_) => StatusCode::OK.into_response(),
        None => (StatusCode::NOT_FOUND, "no such attempt").into_response(),
    }
}

async fn logs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(lines): Json<Vec<LogLine>>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    if !lines.is_empty() {
        shared.emit(FromAgent::Logs { lines, batch: None });
    }
    StatusCode::OK.into_response()
}

async fn release(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    Query(query): Query<ReleaseQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(20_000).min(30_000));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let go = {
            let inner = shared.inner.lock().unwrap();
            match inner.jobs.get(&stem) {
                None => Some(false),
                Some(job) if job.stopped || job.reported => Some(false),
                Some(job) if job.released => Some(true),
                Some(_) => None,
            }
        };
        if go.is_some() {
            return Json(ReleaseReply { go }).into_response();
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Json(ReleaseReply { go: None }).into_response();
        }
    }
}

/// Long-polls for a restart in place of the job's command (or its end).
async fn control(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    Query(query): Query<ControlQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(20_000).min(30_000));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let reply = {
            let inner = shared.inner.lock().unwrap();
            match inner.jobs.get(&stem) {
                None => ControlReply {
                    restarts: query.seen,
                    reason: String::new(),
                    over: true,
                },
                Some(job) => ControlReply {
                    restarts: job.restarts,
                    reason: job.restart_reason.clone(),
                    over: job.stopped || job.reported,
                },
            }
        };
        if reply.over || reply.restarts > query.seen {
            return Json(reply).into_response();
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Json(reply).into_response();
        }
    }
}

/// `osmo exec` stopped a run of the command for a restart in place.
async fn run_stopped(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<ExitedBody>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let inner = shared.inner.lock().unwrap();
    match inner.jobs.get(&stem) {
        Some(job) if !job.reported => {
            shared.emit(FromAgent::RunStopped {
                key: job.key.clone(),
                codes: body.codes,
            });
            StatusCode::OK.into_response()
        }
        Some(_) => StatusCode::OK.into_response(),
        None => (StatusCode::NOT_FOUND, "no such attempt").into_response(),
    }
}

async fn exited(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<ExitedBody>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let Some(key) = parse_stem(&stem) else {
        return (StatusCode::BAD_REQUEST, "not an attempt").into_response();
    };
    {
        let mut inner = shared.inner.lock().unwrap();
        let Inner { jobs, bad_nodes } = &mut *inner;
        // Unknown after a server restart: the manager decides whether it still matters.
        let job = jobs
            .entry(stem.clone())
            .or_insert_with(|| Job::new(key.clone(), String::new()));
        if job.reported && job.codes.is_none() {
            // Slurm's verdict (e.g. preempted) came first and stands.
            return StatusCode::OK.into_response();
        }
        if body
            .codes
            .iter()
            .any(|c| c.code == well_known::PREFLIGHT || c.source == CodeSource::Preflight)
            && let Some(node) = &job.node
        {
            bad_nodes
                .entry(key.workflow_id.clone())
                .or_default()
                .insert(node.clone());
        }
        job.reported = true;
        job.codes = Some(body.codes.clone());
        // Sent again on each retry until the manager acknowledges (it ignores repeats).
        shared.emit(FromAgent::Exited {
            key: key.clone(),
            codes: body.codes,
        });
    }
    shared.changed.notify_waiters();
    let deadline = tokio::time::Instant::now() + ACK_WAIT;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if !shared.inner.lock().unwrap().jobs.contains_key(&stem) {
            return StatusCode::OK.into_response();
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not yet recorded; send it again",
            )
                .into_response();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_round_trip() {
        let key = AttemptKey {
            workflow_id: "my-wf_2-17".to_string(),
            attempt: AttemptId {
                task: TaskKey { group: 3, task: 1 },
                retry_id: 2,
            },
        };
        assert_eq!(
            parse_job_name(&format!("osmo.{}", key.file_stem())),
            Some(key)
        );
        assert_eq!(parse_job_name("wrap"), None);
        assert_eq!(parse_job_name("osmo.x.1.2"), None);
    }

    #[test]
    fn squeue_lines_parse() {
        let rows =
            parse_squeue("12|RUNNING|vm|osmo-1|osmo.wf-1.0.0.0\n13|PENDING||(null)|wrap\nnoise\n");
        assert_eq!(rows.len(), 2);
        let want = JobRow {
            id: 12,
            state: "RUNNING".into(),
            nodes: "vm".into(),
            comment: "osmo-1".into(),
            name: "osmo.wf-1.0.0.0".into(),
        };
        assert_eq!(rows[0], want);
        assert_eq!(rows[1].nodes, "");
    }

    #[test]
    fn slurm_states_map_to_codes() {
        assert_eq!(verdict("PENDING", false), Verdict::Wait);
        assert_eq!(verdict("RUNNING", true), Verdict::Wait);
        assert_eq!(verdict("PENDING", true), Verdict::Requeued);
        assert_eq!(verdict("REQUEUED", true), Verdict::Requeued);
        assert!(matches!(
            verdict("PREEMPTED", true),
            Verdict::Ended(3006, _)
        ));
        assert!(matches!(
            verdict("NODE_FAIL", true),
            Verdict::Ended(3001, _)
        ));
        assert!(matches!(
            verdict("OUT_OF_MEMORY", true),
            Verdict::Ended(3004, _)
        ));
        assert!(matches!(
            verdict("BOOT_FAIL", false),
            Verdict::Ended(3003, _)
        ));
        assert!(matches!(
            verdict("COMPLETED", true),
            Verdict::Ended(3001, _)
        ));
    }

    #[test]
    fn failed_nodes_are_avoided_but_never_leave_the_partition_empty() {
        let bad: BTreeSet<String> = ["n1".to_string()].into();
        assert_eq!(
            exclusions(Some(&bad), &["n1".into(), "n2".into()]),
            vec!["n1".to_string()]
        );
        assert!(exclusions(Some(&bad), &["n1".into()]).is_empty());
        assert!(exclusions(None, &["n1".into()]).is_empty());
    }

    #[test]
    fn sbatch_gets_the_pool_options() {
        let key = AttemptKey {
            workflow_id: "wf-1".to_string(),
            attempt: AttemptId {
                task: TaskKey { group: 0, task: 0 },
                retry_id: 0,
            },
        };
        let launch = Launch {
            key,
            group: "g".into(),
            task: "t".into(),
            command: vec!["true".into()],
            args: vec![],
            environment: Default::default(),
            files: vec![],
            output_dir: "/o".into(),
            input_dirs: vec![],
            preflight: vec![],
            memory_limit_bytes: Some(1 << 30),
            cpu: Some(1.5),
            volume_mounts: vec![],
            image: "ubuntu".into(),
            runtime: osmo_spec::config::RuntimeKind::Sandbox,
            barrier: false,
        };
        let options = SlurmOptions {
            partition: Some("gpu".into()),
            account: Some("acct".into()),
            qos: Some("high".into()),
            sbatch_args: vec!["--time=10".into()],
        };
        let args = sbatch_args(
            &launch,
            &options,
            &["n1".into()],
            Path::new("/d"),
            Path::new("/bin/osmo"),
            "http://h:1",
        );
        for want in [
            "--job-name=osmo.wf-1.0.0.0",
            "--cpus-per-task=2",
            "--mem=1152M",
            "--partition=gpu",
            "--account=acct",
            "--qos=high",
            "--exclude=n1",
            "--time=10",
            "--wrap=exec '/bin/osmo' exec --server 'http://h:1' --attempt 'wf-1.0.0.0'",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
    }
}
