//! The sandbox spawner: this binary started once more as a small process
//! that forks each sandbox's init for the controller.
//!
//! Why: a fork copies the page tables of the process that forks, and the
//! init lives as long as its attempt, so every page the controller's
//! threads write afterwards is copied again on the write (copy on write),
//! and the init's exit tears its copy down. Forked from the agent, a busy
//! process of many threads, that was about a seventh of all the CPU time of
//! a workflow of trivial tasks; forked from the spawner, whose memory is a
//! few pages of heap, it is next to nothing.
//!
//! How: the controller sends the finished [`ChildPlan`] (postcard) and the
//! descriptors it names (`SCM_RIGHTS`) over a socket; one of the spawner's
//! worker threads forks the init with `CLONE_PARENT`, so the init is the
//! controller's child as before (it waits for and reaps it, and the init
//! dies with the agent through `PR_SET_PDEATHSIG`), and answers the pid or
//! the errno of the fork, with whether the init may stay after the attempt
//! ([`crate::park`]: the controller then lets it go without reaping it).
//! The init shares the spawner's memory (`CLONE_VM`: see [`Workers`] for
//! why and what that asks).
//!
//! The spawner has a mount namespace of its own, which each sandbox's
//! namespace copies: the host's, receiving the host's later mounts (a
//! slave), less the namespace handles no task sees (`/run/netns/NAME`, one
//! per workflow network: [`mountinfo::is_namespace_handle`]). Each copied
//! mount is made, walked and torn down again by every sandbox, so without
//! them the cost of a sandbox does not grow with the workflows that run.
//! It also keeps each scratch directory's last root, in namespaces of their
//! own, for the next attempt there to copy ([`crate::kept_root`]), and lets
//! the init of an attempt in such a root stay for the next attempt of the
//! same shape ([`crate::park`]).
//!
//! Without a spawner (a program that did not [`start`] one: tests,
//! benches), or once it has failed, the controller forks the init itself.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::ptr;
use std::sync::Mutex;

use libc::{c_int, pid_t};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::child::{self, ChildPlan};
use crate::kept_root::KeptRoots;
use crate::mountinfo::{self, Watched};
use crate::park::{self, Parked, WarmKey};

/// The argument that makes this binary the spawner ([`serve_if_asked`]).
pub const SPAWNER_ARG: &str = "__osmo-sandbox-spawner";

/// The spawner's end of the socket, as it finds it.
const SOCKET_FD: RawFd = 3;

/// Descriptors one plan may hand over (`SCM_RIGHTS` carries at most 253).
const MAX_FDS: usize = 200;

struct Spawner {
    socket: UnixStream,
    process: Child,
}

static SPAWNER: Mutex<Option<Spawner>> = Mutex::new(None);

/// Inits this process let stay after their attempts ([`release`]), not yet
/// reaped: each is reaped here once it has ended, or taken off when it is
/// handed out again. Used under the [`SPAWNER`] lock.
static RELEASED: Mutex<Vec<pid_t>> = Mutex::new(Vec::new());

/// Wakes the reaper of released inits ([`reap_released_now_and_then`]).
static RELEASED_ADDED: std::sync::Condvar = std::sync::Condvar::new();

fn spawner() -> std::sync::MutexGuard<'static, Option<Spawner>> {
    SPAWNER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the spawner from `exe` (this program's binary, which must call
/// [`serve_if_asked`] first thing in `main`). Call it from the thread that
/// lives as long as the process: the inits are that thread's children and
/// are killed when it ends.
pub fn start(exe: &Path) -> io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .arg0("osmo-spawner")
        .arg(SPAWNER_ARG)
        // Nothing of the agent's environment; the sandboxes get theirs from the plan.
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: dup2 and prctl only, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(theirs_fd, SOCKET_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Gone with the agent (the agent's end closing would also end it).
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    let process = command.spawn()?;
    drop(theirs);
    *spawner() = Some(Spawner {
        socket: ours,
        process,
    });
    // Inits that stayed end while no attempt comes: reaped all the same.
    std::thread::Builder::new()
        .name("osmo-init-reaper".into())
        .spawn(reap_released_now_and_then)?;
    Ok(())
}

/// While inits are released, reaps those that have ended, now and then:
/// they end [`park::IDLE`] after their last attempt when no other comes,
/// and nothing else would reap them until the next attempt.
fn reap_released_now_and_then() {
    loop {
        let mut list = released();
        while list.is_empty() {
            list = RELEASED_ADDED.wait(list).unwrap_or_else(|e| e.into_inner());
        }
        drop(list);
        std::thread::sleep(park::IDLE + std::time::Duration::from_secs(1));
        // Under the spawner's lock, as every change of the list.
        let _guard = spawner();
        reap_released();
    }
}

/// Forks the init of `plan` through the spawner: `None` when there is no
/// spawner (the caller forks it itself), else the init's pid and the
/// answer's flags ([`park::MAY_STAY`], [`park::REUSED`]), or the errno that
/// stopped it.
pub(crate) fn fork_init(plan: &ChildPlan) -> Option<Result<(pid_t, u32), c_int>> {
    let mut guard = spawner();
    reap_released();
    let spawner = guard.as_mut()?;
    let payload = match postcard::to_allocvec(plan) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("osmo: cannot encode a sandbox's plan for the spawner: {e}");
            return Some(Err(libc::EINVAL));
        }
    };
    let failed = |guard: &mut Option<Spawner>, what: &str, e: io::Error| {
        eprintln!(
            "osmo: the sandbox spawner failed ({what}: {e}); sandboxes are forked directly from now on"
        );
        if let Some(mut s) = guard.take() {
            let _ = s.process.kill();
            let _ = s.process.wait();
        }
    };
    if let Err(e) = send_plan(&spawner.socket, &payload, &plan.keep_fds) {
        // Nothing was forked: the caller may fork it itself.
        failed(&mut guard, "sending a plan", e);
        return None;
    }
    let mut reply = [0u8; 8];
    match (&spawner.socket).read_exact(&mut reply) {
        Ok(()) => {
            let n = i32::from_ne_bytes([reply[0], reply[1], reply[2], reply[3]]);
            let flags = u32::from_ne_bytes([reply[4], reply[5], reply[6], reply[7]]);
            if n > 0 && flags & park::REUSED != 0 {
                // Ours again: its attempt reaps it if it ends.
                released().retain(|&pid| pid != n);
            }
            Some(if n > 0 { Ok((n, flags)) } else { Err(-n) })
        }
        Err(e) => {
            // Whether it forked is unknown: this attempt fails, the next ones fork directly.
            failed(&mut guard, "reading its answer", e);
            Some(Err(libc::EIO))
        }
    }
}

fn released() -> std::sync::MutexGuard<'static, Vec<pid_t>> {
    RELEASED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lets the init `pid` stay after its attempt (an answer with
/// [`park::MAY_STAY`]): its attempt ends without waiting for it, and it is
/// reaped here once it has ended. Call before closing its go socket.
pub(crate) fn release(pid: pid_t) {
    let _guard = spawner();
    released().push(pid);
    RELEASED_ADDED.notify_one();
}

/// Reaps the released inits that have ended (without waiting).
fn reap_released() {
    released().retain(|&pid| {
        // SAFETY: waitid(2) of our own child into a local.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        // Kept while it runs (no child reported); gone once reaped (or not ours).
        r == 0 && unsafe { info.si_pid() } == 0
    });
}

/// One request: the payload's length and the descriptors' count, with the
/// descriptors, then the payload.
fn send_plan(socket: &UnixStream, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors, more than {MAX_FDS}",
            fds.len()
        )));
    }
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&len.to_ne_bytes());
    header[4..].copy_from_slice(&(fds.len() as u32).to_ne_bytes());
    let rights = [ControlMessage::ScmRights(fds)];
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&header)],
        &rights,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    let mut socket = socket;
    socket.write_all(&header[sent..])?;
    socket.write_all(payload)
}

/// In the spawner, from `main` before anything else: serves the controller
/// and exits when it is gone. Elsewhere: returns at once.
pub fn serve_if_asked() {
    if std::env::args_os().nth(1).is_some_and(|a| a == SPAWNER_ARG) {
        std::process::exit(serve());
    }
}

fn serve() -> i32 {
    // SAFETY: naming this thread; the controller put its socket at this
    // number before executing us.
    let socket = unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"osmo-spawner".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        UnixStream::from_raw_fd(SOCKET_FD)
    };
    // This process sets no signal action from here on.
    child::remember_changed_signals();
    let mut mounts = own_mount_namespace();
    // Roots are kept only where the sandboxes would otherwise copy a
    // namespace of the spawner's own (kept roots are built from it).
    let mut kept = mounts.as_ref().and_then(|_| KeptRoots::new());
    let mut workers = Workers::new(socket.as_raw_fd());
    loop {
        if let Some(kept) = kept.as_mut() {
            // Kept roots go at their age, also while no attempt comes.
            while let Some(wait) = kept.next_expiry() {
                if readable(&socket, wait) {
                    break;
                }
                kept.sweep(std::time::Instant::now());
            }
        }
        let (len, mut fds) = match receive_header(&socket) {
            Ok(Some(h)) => h,
            // The controller is gone.
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("osmo-spawner: {e}");
                return 1;
            }
        };
        let mut payload = vec![0u8; len];
        if let Err(e) = (&socket).read_exact(&mut payload) {
            eprintln!("osmo-spawner: {e}");
            return 1;
        }
        let mut plan = match postcard::from_bytes::<ChildPlan>(&payload) {
            Ok(plan) => Box::new(plan),
            Err(_) => {
                drop(fds);
                if let Err(e) = (&socket).write_all(&answer(-libc::EINVAL, 0)) {
                    eprintln!("osmo-spawner: {e}");
                    return 1;
                }
                continue;
            }
        };
        let sent = plan.keep_fds.clone();
        plan.map_fds(|fd| {
            sent.iter()
                .position(|&s| s == fd)
                .and_then(|i| fds.get(i))
                .map_or(-1, |f| f.as_raw_fd())
        });
        plan.scrub = crate::plan::scrub_ranges();
        if let Some(table) = mounts.as_mut()
            && table.changed().unwrap_or(true)
        {
            prune_namespace_handles(table);
        }
        // The init's own descriptor of its template, closed here with the
        // plan's once it is forked.
        let mut warm = None;
        if let Some((template, id)) = kept.as_mut().and_then(|k| k.template_for(&plan)) {
            plan.template = template.as_raw_fd();
            fds.push(template);
            warm = WarmKey::of(&plan, id);
            plan.in_place = warm.is_some_and(|k| k.in_place);
        }
        // A worker answers (the pid, or the errno), and keeps the plan
        // until the init has ended or taken the next.
        if let Err(Job { mut plan, fds, .. }) = workers.run(Job { plan, fds, warm }) {
            let pid = match fork(&mut plan) {
                Ok(pid) => pid,
                Err(errno) => -errno,
            };
            drop(fds);
            if let Err(e) = (&socket).write_all(&answer(pid, 0)) {
                eprintln!("osmo-spawner: {e}");
                return 1;
            }
        }
    }
}

/// The answer to a request: the init's pid (or a negated errno) and flags.
fn answer(pid: pid_t, flags: u32) -> [u8; 8] {
    let mut a = [0u8; 8];
    a[..4].copy_from_slice(&pid.to_ne_bytes());
    a[4..].copy_from_slice(&flags.to_ne_bytes());
    a
}

/// Bytes of an init's stack: its frames are few and small (system calls
/// over a plan that lives elsewhere).
const INIT_STACK: usize = 256 * 1024;

/// A plan to fork an init for, with the descriptors it names.
struct Job {
    plan: Box<ChildPlan>,
    fds: Vec<OwnedFd>,
    /// Its init may stay after it, for the next of this key ([`crate::park`]).
    warm: Option<WarmKey>,
}

/// A worker's word to the dispatcher: it has done `done` jobs and is idle,
/// with an init parked for `warm` (or none).
struct Idle {
    worker: usize,
    done: u64,
    warm: Option<WarmKey>,
}

// SAFETY: the plan's raw pointers point into its own heap strings, which
// move with it; nothing else shares them.
unsafe impl Send for Job {}

/// The threads that fork inits in the spawner's memory, each of which
/// keeps its init's plan and stack until the init has ended (or, for an
/// init that stays, [`crate::park`], until it has taken the next plan).
///
/// Why: a fork copies the page tables of the spawner's private memory (the
/// binary's relocated data alone is about 900 kB: its vtables and the like,
/// written once at load), and each page the spawner writes afterwards is
/// copied again on the write; the init's exit tears its copy down. That was
/// a tenth of all the CPU time of a workflow of trivial tasks. An init
/// created with `CLONE_VM` shares the memory instead: nothing is copied.
/// What it shares must then outlive it, and nothing else may write what it
/// uses: its plan (kept by its worker until its pidfd says it has ended),
/// its stack (the worker's), and its thread-local storage, where glibc
/// keeps `errno` (the worker's: after the fork the worker only closes
/// descriptors, writes the answer and waits, none of which fails in a way
/// that writes `errno` while its agent lives).
struct Workers {
    socket: RawFd,
    jobs: Vec<std::sync::mpsc::Sender<Job>>,
    /// Jobs sent to each worker: an [`Idle`] that counts fewer is stale.
    sent: Vec<u64>,
    /// The idle workers, each with the key of the init it keeps parked.
    idle_now: Vec<(usize, Option<WarmKey>)>,
    /// Each busy worker's job's key: the init it started may stay.
    busy: Vec<Option<WarmKey>>,
    idle: std::sync::mpsc::Receiver<Idle>,
    idle_tx: std::sync::mpsc::Sender<Idle>,
}

/// The longest a job waits for the worker whose init of the same key is
/// ending its attempt (see [`Workers::run`]).
const ENDING_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

impl Workers {
    fn new(socket: RawFd) -> Workers {
        let (idle_tx, idle) = std::sync::mpsc::channel();
        Workers {
            socket,
            jobs: Vec::new(),
            sent: Vec::new(),
            idle_now: Vec::new(),
            busy: Vec::new(),
            idle,
            idle_tx,
        }
    }

    /// Hands `job` to an idle worker, or to a new one; the job back when
    /// no worker can take it (the caller forks the init itself). A worker
    /// whose parked init has the job's key comes first, then one with none,
    /// then one whose init is parked for another key (it ends that init).
    fn run(&mut self, job: Job) -> Result<(), Job> {
        while let Ok(idle) = self.idle.try_recv() {
            self.note(idle);
        }
        // A job of the key of an init whose worker is busy: that init's
        // attempt ran in the same kept root, so it has ended (the agent
        // runs one attempt at a time in a scratch directory), and its
        // worker says so at once. Waited for, briefly, rather than making
        // a new init while that one stays.
        let ready = |w: &Workers| w.idle_now.iter().any(|(_, k)| *k == job.warm);
        if job.warm.is_some() && !ready(self) && self.busy.contains(&job.warm) {
            let deadline = std::time::Instant::now() + ENDING_WAIT;
            while !ready(self) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match self.idle.recv_timeout(left) {
                    Ok(idle) => self.note(idle),
                    Err(_) => break,
                }
            }
        }
        let pick = self
            .idle_now
            .iter()
            .position(|(_, warm)| warm.is_some() && *warm == job.warm)
            .or_else(|| self.idle_now.iter().position(|(_, warm)| warm.is_none()))
            .or_else(|| (!self.idle_now.is_empty()).then_some(0));
        let job = match pick {
            Some(i) => {
                let (worker, _) = self.idle_now.swap_remove(i);
                self.sent[worker] += 1;
                self.busy[worker] = job.warm;
                match self.jobs[worker].send(job) {
                    Ok(()) => return Ok(()),
                    Err(std::sync::mpsc::SendError(job)) => job,
                }
            }
            None => job,
        };
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (socket, me, idle) = (self.socket, self.jobs.len(), self.idle_tx.clone());
        let started = std::thread::Builder::new()
            .name("osmo-spawner".into())
            .stack_size(256 * 1024)
            .spawn(move || work(socket, rx, idle, me));
        if let Err(e) = started {
            eprintln!("osmo-spawner: cannot start a worker thread ({e}); forking directly");
            return Err(job);
        }
        self.jobs.push(tx);
        self.sent.push(1);
        self.busy.push(job.warm);
        self.jobs[me].send(job).map_err(|e| e.0)
    }

    /// A worker's word that it is idle (stale when sent before its latest
    /// job reached it).
    fn note(&mut self, idle: Idle) {
        if self.sent.get(idle.worker) != Some(&idle.done) {
            return;
        }
        self.busy[idle.worker] = None;
        self.idle_now.retain(|(w, _)| *w != idle.worker);
        self.idle_now.push((idle.worker, idle.warm));
    }
}

/// A worker: forks each job's init into the shared memory (or hands the
/// job to its init that stayed after the last, [`crate::park`]), answers,
/// and waits for the init's end (or its parking) before it frees the last
/// plan and takes another. A parked init is ended after [`park::IDLE`]
/// without a job.
fn work(
    socket: RawFd,
    jobs: std::sync::mpsc::Receiver<Job>,
    idle: std::sync::mpsc::Sender<Idle>,
    me: usize,
) {
    // No handler may run on this thread (and write `errno`) while an init
    // shares its storage; the inits start with every signal blocked, as forks do.
    // SAFETY: sigfillset and pthread_sigmask over local sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, ptr::null_mut());
    }
    let stack = Stack::new(INIT_STACK);
    if let Err(e) = &stack {
        eprintln!("osmo-spawner: no stack for inits ({e}); forking them");
    }
    // The stack its inits' children run on, the same for each init in turn.
    let mut spawn_stack = Vec::new();
    let mut parked: Option<Parked> = None;
    let mut done = 0u64;
    loop {
        let next = if parked.is_some() {
            jobs.recv_timeout(park::IDLE)
                .map_err(|e| matches!(e, std::sync::mpsc::RecvTimeoutError::Disconnected))
        } else {
            jobs.recv().map_err(|_| true)
        };
        let Job {
            mut plan,
            fds,
            warm,
        } = match next {
            Ok(job) => job,
            // No job for the parked init for a while: it ends.
            Err(false) => {
                if let Some(p) = parked.take() {
                    spawn_stack = park::retire(p);
                }
                if idle
                    .send(Idle {
                        worker: me,
                        done,
                        warm: None,
                    })
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Err(true) => return,
        };
        done += 1;
        // The parked init takes the job when it has the job's key.
        let mut reused = None;
        if let Some(mut p) = parked.take() {
            if warm == Some(p.key) && park::hand_over(&mut p, &mut plan).is_ok() {
                reused = Some(p);
            } else {
                spawn_stack = park::retire(p);
            }
        }
        let (pid, flags, running) = match reused {
            Some(p) => {
                let Parked {
                    pid,
                    pidfd,
                    ctl,
                    key,
                    plan: last,
                } = p;
                // The last plan goes: a parked init reads none but the
                // one it is handed (its children's stack moved to that one).
                drop(last);
                let flags = park::MAY_STAY | park::REUSED;
                (pid, flags, Some((pidfd, Some((ctl, key)))))
            }
            None => {
                plan.spawn_stack = std::mem::take(&mut spawn_stack);
                plan.ensure_spawn_stack();
                fork_new_init(&mut plan, stack.as_ref().ok(), warm)
            }
        };
        // Our copies of the descriptors go; the init has its own.
        drop(fds);
        // SAFETY: an 8-byte write of a live array on the controller's socket
        // (one request is answered at a time: the controller waits for it).
        unsafe { libc::write(socket, answer(pid, flags).as_ptr().cast(), 8) };
        let mut warm_now = None;
        if let Some((pidfd, stays)) = running {
            let ctl = stays.as_ref().map(|(ctl, _)| ctl);
            let key = stays.as_ref().map(|(_, key)| *key);
            // Idle from the attempt's end: a job sent now waits here while
            // the init leaves the attempt's namespace, then goes to it.
            let ended = || {
                let _ = idle.send(Idle {
                    worker: me,
                    done,
                    warm: key,
                });
            };
            if park::parked_or_ended(&pidfd, ctl, ended) {
                let (ctl, key) = stays.expect("parked only with a control socket");
                warm_now = Some(key);
                parked = Some(Parked {
                    pid,
                    pidfd,
                    ctl,
                    key,
                    plan,
                });
            } else {
                // Its init has ended: the stack serves the next.
                spawn_stack = std::mem::take(&mut plan.spawn_stack);
                drop(plan);
            }
        } else {
            drop(plan);
        }
        if idle
            .send(Idle {
                worker: me,
                done,
                warm: warm_now,
            })
            .is_err()
        {
            return;
        }
    }
}

/// What a worker keeps of an init it started: its pidfd and, when it may
/// stay, the worker's end of its control socket and its key.
type Running = Option<(OwnedFd, Option<(OwnedFd, WarmKey)>)>;

/// Starts `plan`'s init: cloned into this process's memory on `stack` (with
/// a control socket when it may stay, `warm`), else forked. The answer's pid
/// (or negated errno) and flags, and what the worker keeps of it.
fn fork_new_init(
    plan: &mut ChildPlan,
    stack: Option<&Stack>,
    warm: Option<WarmKey>,
) -> (pid_t, u32, Running) {
    let ctl = warm.and_then(|key| {
        let (ours, theirs) = UnixStream::pair().ok()?;
        plan.park = theirs.as_raw_fd();
        Some((OwnedFd::from(ours), OwnedFd::from(theirs), key))
    });
    let cloned = stack.map(|stack| clone_init(plan, stack));
    // The init has its own end of the socket now.
    let stays = ctl.map(|(ours, _theirs, key)| (ours, key));
    match cloned {
        Some(Ok((pid, pidfd))) => {
            let flags = if stays.is_some() { park::MAY_STAY } else { 0 };
            (pid, flags, Some((pidfd, stays)))
        }
        // An older kernel (no CLONE_PIDFD, 5.2), or no stack: a fork, as before.
        _ => {
            plan.park = -1;
            (fork(plan).unwrap_or_else(|e| -e), 0, None)
        }
    }
}

/// Forks `plan`'s init sharing this process's memory, on `stack`: its pid
/// and a pidfd that becomes readable when it has ended.
fn clone_init(plan: &mut ChildPlan, stack: &Stack) -> Result<(pid_t, OwnedFd), c_int> {
    extern "C" fn init_entry(arg: *mut libc::c_void) -> c_int {
        // SAFETY: `arg` is the plan its worker keeps until this process has
        // ended or parked; sandbox_init is async-signal-safe and never returns.
        unsafe { child::sandbox_init(arg as *mut ChildPlan) }
    }
    // With a template the init makes its namespace itself, a copy of the
    // template's: a copy of the spawner's first would be made for nothing.
    let own_namespace = if plan.template >= 0 {
        0
    } else {
        libc::CLONE_NEWNS
    };
    let flags = libc::CLONE_VM
        | libc::CLONE_PIDFD
        | libc::CLONE_PARENT
        | libc::CLONE_NEWPID
        | own_namespace
        | libc::SIGCHLD;
    let mut pidfd: c_int = -1;
    // SAFETY: the stack is this worker's, unused by anything else until the
    // init has ended; the plan outlives the init (see `work`).
    let pid = unsafe {
        libc::clone(
            init_entry,
            stack.top(),
            flags,
            plan as *mut ChildPlan as *mut libc::c_void,
            &mut pidfd as *mut c_int,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: the kernel gave us this descriptor.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// Blocks until the process of `pidfd` has ended. Never earlier: its plan
/// and stack are freed after.
pub(crate) fn wait_for_end(pidfd: &OwnedFd) {
    loop {
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll over one live pollfd. With every signal blocked it
        // fails only for want of memory: then it waits and tries again.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n == 1 {
            return;
        }
        if n < 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// An init's stack: mapped memory with a guard page below it, so that an
/// overflow faults instead of writing the spawner's memory.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new(len: usize) -> io::Result<Stack> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = len + page;
        // SAFETY: a fresh anonymous mapping, and a protection change within it.
        unsafe {
            let base = libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            if libc::mprotect(base, page, libc::PROT_NONE) != 0 {
                let e = io::Error::last_os_error();
                libc::munmap(base, len);
                return Err(e);
            }
            Ok(Stack { base, len })
        }
    }

    /// Its 16-byte aligned top (stacks grow down).
    fn top(&self) -> *mut libc::c_void {
        ((self.base as usize + self.len) & !15) as *mut libc::c_void
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used (its worker is ending).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Moves the spawner into a mount namespace of its own (see the module's
/// comment) and returns its table, watched for the host's new mounts; `None`
/// where it cannot (not root): the sandboxes then copy the host's.
fn own_mount_namespace() -> Option<Watched> {
    // SAFETY: this process is single-threaded; mount(2) with static strings.
    let own = unsafe {
        libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                ptr::null(),
                c"/".as_ptr(),
                ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                ptr::null(),
            ) == 0
    };
    if !own {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            eprintln!("osmo-spawner: sandboxes copy the host's whole mount table: {e}");
        }
        return None;
    }
    let mut table = match Watched::open() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("osmo-spawner: cannot read its mount table: {e}");
            return None;
        }
    };
    prune_namespace_handles(&mut table);
    Some(table)
}

/// Detaches the namespace handles that have appeared in the spawner's
/// namespace (all of them at its start, then those the host mounted since
/// where they propagate). Our own unmounts mark the table changed once
/// more: the next check reads it again and finds nothing to do.
fn prune_namespace_handles(table: &mut Watched) {
    let entries = match table.read() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("osmo-spawner: cannot read its mount table: {e}");
            return;
        }
    };
    let mut handles: Vec<&Path> = entries
        .iter()
        .filter(|e| mountinfo::is_namespace_handle(e))
        .map(|e| e.mount_point.as_path())
        .collect();
    handles.sort();
    handles.dedup();
    let mut detached: Vec<&Path> = Vec::new();
    for path in handles {
        if detached.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // Mounts stacked on one point go one by one.
        // SAFETY: umount2 of a NUL-terminated path.
        while unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {}
        detached.push(path);
    }
}

/// Waits up to `wait` for the socket to be readable (or closed): false
/// when the time ran out.
fn readable(socket: &UnixStream, wait: std::time::Duration) -> bool {
    let mut p = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up, so that the roots past their age are past it when it returns.
    let ms = c_int::try_from(wait.as_millis().saturating_add(1)).unwrap_or(c_int::MAX);
    // SAFETY: poll over one live pollfd.
    unsafe { libc::poll(&mut p, 1, ms) != 0 }
}

/// The next request's payload length and descriptors; `None` at EOF.
fn receive_header(socket: &UnixStream) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut header = [0u8; 8];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut header)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: descriptors the kernel just gave us, owned by nobody else.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Ok(None);
    }
    (&*socket).read_exact(&mut header[got..])?;
    let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let count = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if count != fds.len() {
        return Err(io::Error::other(format!(
            "{count} descriptors announced, {} received",
            fds.len()
        )));
    }
    Ok(Some((len, fds)))
}

/// Forks the init as a sibling (`CLONE_PARENT`): the controller's child,
/// with a copy of the spawner's memory (where an init cannot share it: see
/// [`Workers`]).
fn fork(plan: &mut ChildPlan) -> Result<pid_t, c_int> {
    plan.ensure_spawn_stack();
    // SAFETY: as the controller's own fork (`controller::fork_init`): the
    // child runs the async-signal-safe sandbox_init over the decoded plan.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = child::raw_fork(
            (libc::CLONE_PARENT | libc::CLONE_NEWPID | libc::CLONE_NEWNS) as libc::c_ulong,
        );
        if pid == 0 {
            child::sandbox_init(plan as *mut ChildPlan);
        }
        let err = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 { Err(err) } else { Ok(pid) }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, CString};

    use crate::child::{EnvBlock, ExecPlan};

    fn strings(ptrs: &[*const libc::c_char]) -> Vec<String> {
        let (last, rest) = ptrs.split_last().unwrap();
        assert!(last.is_null(), "null-terminated");
        rest.iter()
            // SAFETY: pointers into the plan's own live strings.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_plan_crosses_with_its_pointer_arrays_rebuilt() {
        let c = |s: &str| CString::new(s).unwrap();
        let exec = ExecPlan::new(vec![c("/bin/sh")], vec![c("sh"), c("-c"), c("true")]);
        let env = EnvBlock::from(vec![c("A=1"), c("PATH=/bin")]);
        let bytes = postcard::to_allocvec(&(exec, env)).unwrap();
        let (exec, env): (ExecPlan, EnvBlock) = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(exec.candidates, [c("/bin/sh")]);
        assert_eq!(strings(&exec.argv), ["sh", "-c", "true"]);
        assert_eq!(strings(&env.envp), ["A=1", "PATH=/bin"]);
    }
}
