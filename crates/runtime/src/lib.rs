//! `osmo-runtime`: the in-task controller (OSMO's ctrl), as a library.
//!
//! [`run_attempt`] runs one attempt of one task on this host and returns every
//! exit code it saw, each with its source ([`Outcome`]); the caller resolves
//! the highest (SEMANTICS §2). It blocks; the local agent calls it on a thread
//! per attempt, many at once, and `osmo exec` calls it inside Slurm jobs.
//! The task's `image` is not used here: the command runs over the host's own
//! programs, in a sandbox built from namespaces.
//!
//! # How an attempt runs
//!
//! 1. The controller (`controller.rs`) builds the environment (`env.rs`:
//!    task env + `OSMO_*` + `PATH`/`HOME` defaults, `$(VAR)` expansion),
//!    prepares every path, argv, envp and file content (`plan.rs`), creates
//!    a memory cgroup when a limit is set (`cgroup.rs`), and forks once with
//!    `CLONE_NEWPID | CLONE_NEWNS`.
//! 2. The child is PID 1 of the new PID namespace: a small reaper, not an
//!    exec'd helper (`child.rs`). It joins the cgroup, builds the task's view
//!    of the file system (an overlay over `/` mounted on the scratch
//!    directory, with the upper layer in it; the host's other mounts bound
//!    read-only; a new `/proc`; a private, empty `/tmp` (an opaque directory
//!    of the upper layer) and `/dev/shm`; the output directory read-write and
//!    the input directories read-only at their host paths), pivots into it,
//!    writes the task's files, and runs the preflight tests.
//! 3. It reports "ready"; the controller calls [`Supervisor::setup_done`]
//!    (the group barrier) and sends a go byte; the reaper forks and execs the
//!    user command (never PID 1, so `kill -9 $$` gives 137), reaps every
//!    process, and reports the command's wait status. Then it waits for the
//!    controller's next byte: EOF ends it (the kernel kills whatever is left
//!    in the namespace, and the mounts vanish with it).
//! 4. A restart in place ([`StopHandle::restart`], SEMANTICS §4): the
//!    controller sends a stop byte; the reaper sends SIGTERM to every process
//!    of the namespace, SIGKILL after 5 s, reaps them and reports the stopped
//!    run's status. The controller reports [`Supervisor::run_stopped`], passes
//!    the barrier again and sends another go byte: the command runs again in
//!    the same sandbox (files, `/tmp`, output as the stopped run left them).
//!
//! Meanwhile the controller relays stdout, stderr and the preflight output
//! line by line to [`Supervisor::log`]; [`StopHandle::stop`] kills the
//! reaper and so the whole sandbox.
//!
//! # The root, and its fallbacks
//!
//! The task's root is an overlay: lower = the host's `/`, upper and work
//! directories in the scratch directory, so writes anywhere (the task's
//! `files` included) land in the attempt's own layer and the host is never
//! modified. If the scratch directory cannot hold an upper layer (for
//! example when it is itself on overlayfs, as in a container), the upper
//! layer goes to a tmpfs (its pages count against the memory limit). If no
//! overlay can be mounted at all, the root is a read-only recursive bind of
//! `/`: only `/tmp`, `/dev/shm` and the output directory are writable, and a
//! file elsewhere fails with 257. A log line says when a fallback is used;
//! [`SANDBOX_ROOT_ENV`] forces one.
//!
//! Not isolated: the network (tasks of a group reach each other through the
//! host's), SysV IPC, the hostname, users (the task runs as the controller's
//! user, root). The host's `/dev` and `/sys` are visible read-only (device
//! nodes stay usable: GPUs, `/dev/null`).
//!
//! Requirements: root (`CAP_SYS_ADMIN`) for the namespaces and mounts; Linux
//! 5.9 or later is best (`close_range`, `mount_setattr`; older kernels get
//! slower or shallower fallbacks); x86_64 or aarch64 (the raw `clone` call).

mod cgroup;
mod child;
mod controller;
pub mod data;
mod data_run;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "docker")]
pub mod docker_exec;
#[cfg(feature = "docker")]
pub mod docker_network;
pub mod enter;
pub mod env;
mod error;
pub mod gpu;
mod hidden;
mod kept_root;
mod mountinfo;
mod park;
mod plan;
pub mod policy;
mod realpath;
pub mod relay;
pub mod spawner;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use controller::run_attempt;
pub use data_run::run_with_data;
pub use env::expand_env_refs;
/// Set to `0` in the controller's environment to make a new root for every
/// sandbox (no root kept by the spawner for the next attempt).
pub use kept_root::KEEP_ENV as SANDBOX_KEEP_ROOTS_ENV;
use osmo_spec::codes::ReportedCode;
pub use park::IN_PLACE_ENV as SANDBOX_IN_PLACE_ENV;
/// Set in the controller's environment to `tmpfs` or `readonly` to skip the
/// overlay with its upper layer on disk (or every overlay); see the crate docs.
pub use plan::ROOT_ENV as SANDBOX_ROOT_ENV;
/// A task file's bytes (base64 decoded when it says so); a bad one is 257.
pub use plan::decode_file as file_contents;
pub use plan::recycle_scratch;

/// One attempt of one task, with tokens (`{{output}}`, ...) already replaced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptSpec {
    pub workflow_id: String,
    pub group: String,
    pub task: String,
    pub retry_id: u32,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// The task's own environment; `OSMO_*`, `PATH` and `HOME` are added.
    pub environment: BTreeMap<String, String>,
    /// Written at their paths in the task's own view of the file system.
    pub files: Vec<osmo_spec::model::File>,
    /// Host directory, read-write, at the same path inside.
    pub output_dir: PathBuf,
    /// Host directories, read-only, at the same paths inside.
    pub input_dirs: Vec<PathBuf>,
    /// Host directories of programs every task gets (the service's own
    /// `osmo`), read-only at the same paths inside, as `input_dirs`; the same
    /// for every attempt, so an init that stays in place keeps them mounted.
    pub tool_dirs: Vec<PathBuf>,
    /// The task's `volumeMounts`: host directory → path inside, read-write.
    pub volume_mounts: Vec<(PathBuf, PathBuf)>,
    /// Run in order before the command; `first_attempt_only` ones are skipped
    /// when `retry_id > 0`.
    pub preflight: Vec<osmo_spec::config::PreflightTest>,
    /// Over it the command is killed and the attempt reports 3004.
    pub memory_limit_bytes: Option<u64>,
    /// A per-attempt host directory the runtime may fill (overlay layers,
    /// the private `/tmp`); the caller removes it afterwards.
    pub scratch_dir: PathBuf,
    /// The task's image (the Docker runtime runs it; the host sandbox runs
    /// the host's own programs).
    pub image: String,
    /// CPUs the task asked for (the Docker runtime limits the container to them).
    pub cpu: Option<f64>,
    /// The GPU devices the task is given, as indices on the node: only
    /// these are visible to it (`CUDA_VISIBLE_DEVICES`,
    /// `NVIDIA_VISIBLE_DEVICES`, device nodes, a container's device request).
    pub gpus: Vec<u32>,
    /// Host directories the task must not see (the server's data directory,
    /// `/root`, `/home`, the pool's `hidden_paths`): each is an empty tmpfs
    /// in the task's view, under the task's own output, inputs and mounts
    /// (in a kept root, one with nothing below it is the template's,
    /// read-only).
    pub hidden_paths: Vec<PathBuf>,
    /// The user and group the task runs as on the host sandbox (after its
    /// set-up, which is root's); None: as the runtime's own user. Taken
    /// only when the runtime runs as root.
    pub run_as: Option<(u32, u32)>,
    /// The network the task joins on the host sandbox (None: the host's).
    pub network: Option<TaskNetwork>,
    /// With Docker: the container joins its workflow's network (made when
    /// missing), where the other containers find it by its task name; false:
    /// the host's network.
    pub container_network: bool,
    /// URL inputs, downloaded into their input directories before the
    /// command (see [`run_with_data`]).
    pub downloads: Vec<data::Transfer>,
    /// Outputs, uploaded from their directory after the command whatever its exit code.
    pub uploads: Vec<data::Transfer>,
    /// Paths in the task uploaded while the command runs and once as it ends.
    pub checkpoints: Vec<data::Checkpoint>,
    /// Values never shown in the task's log lines (its credentials' secrets).
    pub secrets: Vec<String>,
}

/// A network namespace shared by a workflow's tasks (SEMANTICS §6): ports
/// of its own, names of its tasks in `hosts` and through the resolver
/// `resolv.conf` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNetwork {
    /// The namespace, e.g. `/run/netns/osmo-1234abcd`.
    pub netns: PathBuf,
    /// Bound read-only at `/etc/hosts`.
    pub hosts: PathBuf,
    /// Bound read-only at `/etc/resolv.conf`.
    pub resolv: PathBuf,
}

/// Runs attempts: the host sandbox ([`HostSandbox`]) and, with the `docker`
/// feature, containers ([`DockerRuntime`]). A new runtime implements this
/// and is named in [`for_kind`].
pub trait Runtime: Send + Sync {
    /// Runs one attempt (blocking) and returns every code it saw, each with
    /// its source. `stop` ends it early or restarts its command in place.
    fn run_attempt(&self, spec: &AttemptSpec, sup: &dyn Supervisor, stop: &StopHandle) -> Outcome;
}

/// The command over the host's own programs, in Linux namespaces.
pub struct HostSandbox;

impl Runtime for HostSandbox {
    fn run_attempt(&self, spec: &AttemptSpec, sup: &dyn Supervisor, stop: &StopHandle) -> Outcome {
        controller::run_attempt(spec, sup, stop)
    }
}

/// A container of the task's image, through the Docker Engine API.
#[cfg(feature = "docker")]
pub struct DockerRuntime;

#[cfg(feature = "docker")]
impl Runtime for DockerRuntime {
    fn run_attempt(&self, spec: &AttemptSpec, sup: &dyn Supervisor, stop: &StopHandle) -> Outcome {
        docker::run_attempt(spec, sup, stop)
    }
}

/// The runtime a pool's `runtime:` names.
pub fn for_kind(kind: osmo_spec::config::RuntimeKind) -> &'static dyn Runtime {
    match kind {
        osmo_spec::config::RuntimeKind::Sandbox => &HostSandbox,
        #[cfg(feature = "docker")]
        osmo_spec::config::RuntimeKind::Docker => &DockerRuntime,
        #[cfg(not(feature = "docker"))]
        osmo_spec::config::RuntimeKind::Docker => &NoDocker,
    }
}

/// Stands in for Docker in a build without the `docker` feature.
#[cfg(not(feature = "docker"))]
struct NoDocker;

#[cfg(not(feature = "docker"))]
impl Runtime for NoDocker {
    fn run_attempt(&self, _: &AttemptSpec, sup: &dyn Supervisor, _: &StopHandle) -> Outcome {
        let detail = "this osmo was built without the docker runtime (cargo feature `docker`)";
        sup.log(Stream::Osmo, detail);
        Outcome {
            codes: vec![ReportedCode {
                code: osmo_spec::codes::well_known::BACKEND_ERROR,
                source: osmo_spec::codes::CodeSource::Service,
                detail: Some(detail.to_string()),
            }],
        }
    }
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The controller's own messages, and the preflight tests' output.
    Osmo,
}

/// What the runtime tells its caller while the attempt runs. Called from the
/// thread that runs [`run_attempt`].
pub trait Supervisor: Send + Sync {
    /// One call per line (without the newline), in order within a stream.
    fn log(&self, stream: Stream, line: &str);
    /// Set-up (files, preflight tests) finished; block until the group
    /// barrier is passed. Return false to abort: the command never starts.
    fn setup_done(&self) -> bool;
    /// The user command was executed (again, after a restart in place).
    fn started(&self);
    /// The command ended and its sandbox still stands (its last checkpoint
    /// is taken here). Blocks the sandbox's teardown while it runs.
    fn run_ended(&self) {}
    /// A run of the command was stopped for a restart in place
    /// ([`StopHandle::restart`]) and ended with `codes`; the attempt goes on:
    /// [`Supervisor::setup_done`] is called again before the next run.
    fn run_stopped(&self, codes: &[ReportedCode]) {
        let _ = codes;
    }
}

/// Every code the attempt produced, with its source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub codes: Vec<ReportedCode>,
}

impl Outcome {
    /// The code that decides the attempt's status: the highest.
    pub fn highest(&self) -> Option<&ReportedCode> {
        self.codes.iter().max_by_key(|c| c.code)
    }
}

/// Stops an attempt from another thread: the sandbox's init is killed, and
/// with it every process of the sandbox; [`run_attempt`] then returns (its
/// codes are meaningless and may be empty). Stopping before the attempt
/// starts makes it return at once. One handle per attempt.
///
/// It also asks for a restart in place ([`StopHandle::restart`], SEMANTICS
/// §4): the running command is stopped (SIGTERM, SIGKILL after a grace), the
/// sandbox and its files stay, and the command runs again once
/// [`Supervisor::setup_done`] lets it through the barrier again.
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    inner: Arc<Mutex<StopState>>,
}

#[derive(Debug, Default)]
struct StopState {
    stopped: bool,
    /// The sandbox's init while it runs and is not yet reaped.
    pid: Option<libc::pid_t>,
    /// A restart in place asked for and not yet taken, with its reason.
    restart: Option<String>,
    /// An eventfd the runner polls, poked by [`StopHandle::restart`].
    wake: Option<libc::c_int>,
    /// How to reach into the attempt, once it is set up and while it lasts.
    entry: Option<enter::Entry>,
}

impl StopHandle {
    pub fn new() -> StopHandle {
        StopHandle::default()
    }

    pub fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        if let Some(pid) = state.pid {
            // The pid cannot have been reused: it is cleared before the
            // zombie is reaped, under this lock.
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Asks for a restart in place of the attempt's command, for `reason`.
    /// A later request before the runner took it replaces it.
    pub fn restart(&self, reason: &str) {
        let mut state = self.lock();
        if state.stopped {
            return;
        }
        state.restart = Some(reason.to_string());
        if let Some(fd) = state.wake {
            let one: u64 = 1;
            // SAFETY: write(2) of 8 bytes to our eventfd; it stays open while registered.
            unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
        }
    }

    /// Takes the pending restart request, if any (for runtimes).
    pub fn take_restart(&self) -> Option<String> {
        self.lock().restart.take()
    }

    /// Registers the descriptor [`StopHandle::restart`] pokes; None unregisters it.
    fn set_wake(&self, fd: Option<libc::c_int>) {
        self.lock().wake = fd;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StopState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the init; kills it at once if a stop came first.
    fn attach(&self, pid: libc::pid_t) {
        let mut state = self.lock();
        state.pid = Some(pid);
        if state.stopped {
            // SAFETY: plain kill(2) of our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn detach(&self) {
        let mut state = self.lock();
        state.pid = None;
        state.entry = None;
    }

    /// How to reach into the running attempt (`osmo workflow exec`,
    /// `port-forward`): None before its set-up is done and after it ended.
    pub fn entry(&self) -> Option<enter::Entry> {
        self.lock().entry.clone()
    }

    /// Published by the runtime once the attempt is set up; None withdraws it.
    pub fn set_entry(&self, entry: Option<enter::Entry>) {
        let mut state = self.lock();
        state.entry = entry.filter(|_| !state.stopped);
    }
}
