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
use super::scheduler::Footprint;
use crate::proto::exec::{
    ControlQuery, ControlReply, ExitedBody, FetchQuery, PhaseBody, ReleaseQuery, ReleaseReply,
    TOKEN_ENV, TOKEN_HEADER,
};
use crate::proto::{AttemptKey, FromAgent, Launch, LogLine, Phase, ToAgent};

/// Every job osmo submits for one attempt is named
/// `osmo.<workflow>.<group>.<task>.<retry>`.
const JOB_PREFIX: &str = "osmo.";
/// A group's job (one step per task) is named `osmo-gang.<its first attempt>`;
/// its batch script names every attempt (`--attempt '<stem>'`).
const GANG_PREFIX: &str = "osmo-gang.";
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

    /// The node `task` runs on, which Slurm decides after the launch: a
    /// reference `$(OSMO_HOST_<task>)` that `osmo exec` sets, in every step
    /// of the group, to the node each sibling told the server (`/hosts`),
    /// and that commands and arguments expand as any `$(VAR)`.
    fn task_host(&self, _: &PoolConfig, _: &str, task: &str) -> String {
        format!("$({})", osmo_proto::exec::host_var(task))
    }

    /// Slurm places jobs itself: the pool's `cpu_capacity` and
    /// `gpu_capacity` are quotas when set, else every group is handed to
    /// Slurm at once (a job pending in Slurm's queue is still SCHEDULING).
    fn capacity(&self, pool: &PoolConfig) -> Footprint {
        Footprint {
            cpu: pool.cpu_capacity.unwrap_or(1e12),
            gpu: pool.gpu_capacity.unwrap_or(u32::MAX),
            memory_bytes: u64::MAX,
        }
    }

    /// Slurm picks the devices (`--gres=gpu:N`) and sets the job's
    /// `CUDA_VISIBLE_DEVICES`.
    fn gpu_devices(&self, _: &PoolConfig) -> Option<u32> {
        None
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
    /// Its job is a group's (one step per task), shared with its siblings.
    gang: bool,
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
            gang: false,
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
        gangs: HashMap::new(),
    };
    tokio::spawn(driver.run(rx));
    Ok(Some(Slurm {
        links,
        router: router(shared),
    }))
}

/// Sets each Slurm pool's `total_cpu` from its partition (`scontrol show
/// partition`): its CPUs, or fewer where `MaxCPUsPerNode` caps what one
/// node gives it. Left unset when Slurm does not answer.
pub fn size_pools(config: &mut ServiceConfig) {
    for pool in config.pools.values_mut() {
        if pool.backend != BackendKind::Slurm || pool.total_cpu.is_some() {
            continue;
        }
        let partition = SlurmOptions::from_pool(pool).partition;
        let mut cmd = std::process::Command::new("scontrol");
        cmd.args(["show", "partition", "-o"]);
        if let Some(p) = &partition {
            cmd.arg(p);
        }
        let Ok(out) = cmd.stdin(std::process::Stdio::null()).output() else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        pool.total_cpu = partition_cpus(&String::from_utf8_lossy(&out.stdout), partition.is_some());
    }
}

/// The CPUs of the named partition (the only line) or of the default one,
/// from `scontrol show partition -o`.
fn partition_cpus(text: &str, named: bool) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| named || l.split_whitespace().any(|f| f == "Default=YES"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    let total: f64 = field("TotalCPUs")?.parse().ok()?;
    let capped = match (
        field("MaxCPUsPerNode").and_then(|v| v.parse::<f64>().ok()),
        field("TotalNodes").and_then(|v| v.parse::<f64>().ok()),
    ) {
        (Some(per_node), Some(nodes)) => total.min(per_node * nodes),
        _ => total,
    };
    Some(capped)
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
    crate::secret_file(&data_dir.join("exec.token"))
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
    /// Launches of a group waiting for their siblings, to go as one job.
    gangs: HashMap<(String, u32), Vec<Arc<Launch>>>,
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

/// The `sbatch` arguments every job of a pool gets: its partition, account,
/// QOS, its own `sbatch_args`, and the nodes to avoid.
fn pool_args(options: &SlurmOptions, exclude: &[String]) -> Vec<String> {
    let mut args = Vec::new();
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
    args
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
    if launch.gpu > 0 {
        // Slurm picks the devices and tells the job (`SLURM_JOB_GPUS`).
        args.push(format!("--gres=gpu:{}", launch.gpu));
    }
    if let Some(bytes) = launch.memory_limit_bytes {
        // The task's limit is enforced by the runtime (3004); the job gets
        // headroom for `osmo exec` itself, so Slurm's own limit, if it
        // enforces one, does not strike first.
        let mib = bytes.div_ceil(1024 * 1024).max(1) + EXEC_MEMORY_MIB;
        args.push(format!("--mem={mib}M"));
    }
    args.extend(pool_args(options, exclude));
    args.push(format!(
        "--wrap=exec {} exec --server {} --attempt {}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(server_url),
        shell_quote(&stem)
    ));
    args
}

/// The `sbatch` arguments for a group's tasks allocated together: one job of
/// one Slurm task per osmo task, each sized for the largest (CPUs, memory,
/// GPUs), whose batch script runs each attempt's `osmo exec` as a step of
/// its own size (`srun --exact`). Slurm starts the job when all of it fits,
/// so a group never holds part of a cluster while the rest pends.
fn gang_sbatch_args(
    launches: &[Arc<Launch>],
    options: &SlurmOptions,
    exclude: &[String],
    out_dir: &Path,
    exe: &Path,
    server_url: &str,
) -> Vec<String> {
    let cpus = |l: &Launch| l.cpu.map_or(1, |c| (c.ceil() as u64).max(1));
    let memory_mib = |l: &Launch| {
        l.memory_limit_bytes
            .map(|b| b.div_ceil(1024 * 1024).max(1) + EXEC_MEMORY_MIB)
    };
    let max_cpus = launches.iter().map(|l| cpus(l)).max().unwrap_or(1);
    let max_memory = launches.iter().filter_map(|l| memory_mib(l)).max();
    let max_gpus = launches.iter().map(|l| l.gpu).max().unwrap_or(0);
    let first = launches[0].key.file_stem();
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={GANG_PREFIX}{first}"),
        format!(
            "--output={}",
            out_dir.join(format!("{first}.gang.out")).display()
        ),
        format!("--chdir={}", out_dir.display()),
        format!("--ntasks={}", launches.len()),
        format!("--cpus-per-task={max_cpus}"),
    ];
    // Per CPU, so that the allocation holds the largest task's memory in
    // every task's share wherever Slurm places it.
    let mem_per_cpu = max_memory.map(|m| m.div_ceil(max_cpus));
    if let Some(m) = mem_per_cpu {
        args.push(format!("--mem-per-cpu={m}M"));
    }
    if max_gpus > 0 {
        args.push(format!("--gpus-per-task={max_gpus}"));
    }
    args.extend(pool_args(options, exclude));
    let mut script = String::new();
    for launch in launches {
        let stem = launch.key.file_stem();
        let gres = if launch.gpu > 0 {
            format!("gpu:{}", launch.gpu)
        } else {
            "none".to_string()
        };
        // Its own memory, else a share like its siblings' (a step without
        // one would take the whole allocation's memory on its node).
        let memory = match (memory_mib(launch), mem_per_cpu) {
            (Some(m), _) => format!(" --mem={m}M"),
            (None, Some(m)) => format!(" --mem-per-cpu={m}M"),
            (None, None) => String::new(),
        };
        script.push_str(&format!(
            "srun --exact --ntasks=1 --nodes=1 --cpus-per-task={}{memory} --gres={gres} --output={} {} exec --step --server {} --attempt {} &\n",
            cpus(launch),
            shell_quote(&out_dir.join(format!("{stem}.out")).to_string_lossy()),
            shell_quote(&exe.to_string_lossy()),
            shell_quote(server_url),
            shell_quote(&stem),
        ));
    }
    script.push_str("wait\n");
    args.push(format!("--wrap={script}"));
    args
}

/// The attempts a group's job runs, from its batch script.
fn gang_attempts(script: &str) -> Vec<AttemptKey> {
    script
        .split("--attempt '")
        .skip(1)
        .filter_map(|rest| parse_stem(rest.split('\'').next()?))
        .collect()
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

mod driver;

fn squeue_args() -> Vec<String> {
    ["-h", "--me", "-t", "all", "-o", SQUEUE_FORMAT]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

mod exec_api;
use exec_api::router;

#[cfg(test)]
mod tests {
    use super::*;

    /// `osmo exec`'s HTTP inputs, fuzzed: any path, query, body and token
    /// on the exec API gets an answer below 500 (but /exited's 503, which
    /// asks exec to send again) and no panic.
    mod exec_inputs {
        use proptest::prelude::*;
        use tower::ServiceExt;

        use super::*;

        const ENDPOINTS: [(&str, &str); 7] = [
            ("GET", ""),
            ("POST", "/phase"),
            ("POST", "/logs"),
            ("GET", "/release"),
            ("GET", "/control"),
            ("POST", "/run-stopped"),
            ("POST", "/exited"),
        ];

        fn shared() -> (Arc<Shared>, String) {
            let key = AttemptKey {
                workflow_id: "wf-1".into(),
                attempt: AttemptId {
                    task: TaskKey { group: 0, task: 0 },
                    retry_id: 0,
                },
            };
            let stem = key.file_stem();
            let mut inner = Inner::default();
            inner
                .jobs
                .insert(stem.clone(), Job::new(key, "slurm".into()));
            let (events, _) = mpsc::unbounded_channel();
            let shared = Arc::new(Shared {
                inner: Mutex::new(inner),
                changed: Notify::new(),
                events,
                token: "right".into(),
                instance: "osmo-test".into(),
                ready: AtomicBool::new(true),
            });
            (shared, stem)
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                Just(br#"{"phase":"running"}"#.to_vec()),
                Just(br#"{"codes":[{"code":0,"source":"user"}]}"#.to_vec()),
                Just(
                    br#"{"codes":[{"code":4294967295,"source":"runtime","detail":"x"}]}"#.to_vec()
                ),
                Just(br#"[{"at_ms":1,"stream":"stdout","line":"x"}]"#.to_vec()),
                r#"[a-z{}\[\]":,0-9 ]{0,48}"#.prop_map(String::into_bytes),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn any_request_gets_an_answer_below_500(
                endpoint in 0usize..ENDPOINTS.len(),
                stem_choice in 0u8..4,
                stem_text in "[a-zA-Z0-9._-]{0,24}",
                query in prop_oneof![
                    Just(String::new()),
                    (0u64..100_000).prop_map(|n| format!("?wait_ms={n}")),
                    any::<u32>().prop_map(|n| format!("?restart={n}&seen={n}")),
                    "[a-z0-9,=&]{0,20}".prop_map(|q| format!("?gpus={q}&node={q}")),
                    "[a-z=&%0-9]{0,20}".prop_map(|q| format!("?{q}")),
                ],
                body in body(),
                right_token in prop::bool::weighted(0.8),
                method_flip in prop::bool::weighted(0.1),
            ) {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .unwrap();
                let (shared, stem) = shared();
                let stem = match stem_choice {
                    0 | 1 => stem,
                    2 => stem_text,
                    _ => format!("{stem}{stem_text}"),
                };
                let (method, suffix) = ENDPOINTS[endpoint];
                let method = match (method, method_flip) {
                    ("GET", true) => "POST",
                    ("POST", true) => "GET",
                    (m, _) => m,
                };
                let request = axum::http::Request::builder()
                    .method(method)
                    .uri(format!("/api/exec/{stem}{suffix}{query}"))
                    .header("content-type", "application/json")
                    .header(TOKEN_HEADER, if right_token { "right" } else { "wrong" })
                    .body(axum::body::Body::from(body))
                    .unwrap();
                let status = runtime
                    .block_on(router(shared).oneshot(request))
                    .unwrap()
                    .status();
                // 503 from /exited is its "not recorded yet, send it again"
                // (no manager acknowledges here); anything else must be < 500.
                let retry = suffix == "/exited" && status.as_u16() == 503;
                prop_assert!(status.as_u16() < 500 || retry, "{method} {suffix}: {status}");
            }
        }
    }

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
        let launch = launch(0, 1.5, 2, Some(1 << 30));
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
            "--job-name=osmo.wf-1.2.0.0",
            "--cpus-per-task=2",
            "--gres=gpu:2",
            "--mem=1152M",
            "--partition=gpu",
            "--account=acct",
            "--qos=high",
            "--exclude=n1",
            "--time=10",
            "--wrap=exec '/bin/osmo' exec --server 'http://h:1' --attempt 'wf-1.2.0.0'",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
    }

    fn launch(task: u32, cpu: f64, gpu: u32, memory: Option<u64>) -> Arc<Launch> {
        Arc::new(Launch {
            key: AttemptKey {
                workflow_id: "wf-1".to_string(),
                attempt: AttemptId {
                    task: TaskKey { group: 2, task },
                    retry_id: 0,
                },
            },
            group: "g".into(),
            task: format!("t{task}"),
            command: vec!["true".into()],
            args: vec![],
            environment: Default::default(),
            files: vec![],
            output_dir: "/o".into(),
            input_dirs: vec![],
            tool_dirs: vec![],
            preflight: vec![],
            memory_limit_bytes: memory,
            cpu: Some(cpu),
            volume_mounts: vec![],
            image: "ubuntu".into(),
            runtime: osmo_spec::config::RuntimeKind::Sandbox,
            barrier: true,
            gpu,
            gpus: vec![],
            gang: 3,
            hidden_paths: vec![],
            run_as: None,
            network: None,
            downloads: vec![],
            uploads: vec![],
            checkpoints: vec![],
            secrets: vec![],
        })
    }

    #[test]
    fn a_group_is_one_job_with_a_step_per_task() {
        let launches = [
            launch(0, 1.0, 0, None),
            launch(1, 2.0, 1, Some(1 << 30)),
            launch(2, 0.5, 0, None),
        ];
        let args = gang_sbatch_args(
            &launches,
            &SlurmOptions::default(),
            &[],
            Path::new("/d"),
            Path::new("/bin/osmo"),
            "http://h:1",
        );
        for want in [
            "--job-name=osmo-gang.wf-1.2.0.0",
            "--ntasks=3",
            "--cpus-per-task=2",
            "--mem-per-cpu=576M",
            "--gpus-per-task=1",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
        let script = args.last().unwrap().strip_prefix("--wrap=").unwrap();
        assert_eq!(script.matches("srun --exact").count(), 3, "{script}");
        assert!(
            script.contains("--cpus-per-task=2 --mem=1152M --gres=gpu:1"),
            "{script}"
        );
        assert!(
            script.contains("--cpus-per-task=1 --mem-per-cpu=576M --gres=none"),
            "{script}"
        );
        assert!(script.ends_with("wait\n"), "{script}");
        let keys: Vec<String> = gang_attempts(script)
            .iter()
            .map(AttemptKey::file_stem)
            .collect();
        assert_eq!(keys, ["wf-1.2.0.0", "wf-1.2.1.0", "wf-1.2.2.0"]);
    }

    #[test]
    fn a_partition_size_comes_from_scontrol() {
        let text = "PartitionName=debug Default=YES MaxCPUsPerNode=UNLIMITED TotalCPUs=16 TotalNodes=1\n\
                    PartitionName=gang3 MaxCPUsPerNode=3 TotalCPUs=16 TotalNodes=1\n";
        assert_eq!(partition_cpus(text, false), Some(16.0));
        let gang3 = text.lines().nth(1).unwrap();
        assert_eq!(partition_cpus(gang3, true), Some(3.0));
        assert_eq!(partition_cpus("garbage", false), None);
    }
}
