//! The code that runs in the forked children: the sandbox's init (PID 1 of
//! the new PID namespace, "the reaper") and, below it, the preflight tests and
//! the user command up to their `exec`.
//!
//! The controller is multi-threaded, so after the fork only async-signal-safe
//! work is allowed: everything here is raw system calls over data the
//! controller prepared before forking ([`ChildPlan`]: C strings, argv and envp
//! arrays, file contents). No allocation, no locks, no logging, no panics
//! (nothing indexes or does arithmetic that could fail). Children are made
//! with the raw `clone` system call rather than glibc's `fork`, which would
//! run atfork handlers and take malloc locks that another thread of the
//! controller may have held at the moment of the first fork.
//!
//! The init tells the controller what happens through a pipe of fixed-size
//! messages (`[kind, index, value]`, 12 bytes, atomic pipe writes); see [`msg`].

use std::ffi::{CStr, CString};
use std::ptr;

use libc::{c_char, c_int, c_uint, c_ulong, c_void, pid_t};
use serde::{Deserialize, Serialize};

/// Message kinds, init → controller. `index` and `value` depend on the kind.
pub(crate) mod msg {
    /// A set-up step failed: index = step ([`super::step`] or a plan step), value = errno.
    pub const STEP_FAILED: u32 = 1;
    /// A fallback root: index = [`super::ROOT_OVERLAY_TMPFS`] or
    /// [`super::ROOT_READONLY_BIND`], value = errnos of the failed tries.
    pub const ROOT_MODE: u32 = 2;
    /// A file could not be written: index = file, value = errno.
    pub const FILE_FAILED: u32 = 3;
    /// Preflight test `index` starts.
    pub const PREFLIGHT_START: u32 = 4;
    /// Preflight test `index` ended with wait status `value`.
    pub const PREFLIGHT_EXIT: u32 = 5;
    /// Preflight test `index` could not be executed: value = errno.
    pub const PREFLIGHT_EXEC_FAILED: u32 = 6;
    /// Set-up finished; the init waits for the go byte.
    pub const READY: u32 = 7;
    /// The user command was executed.
    pub const STARTED: u32 = 8;
    /// The user command could not be executed: value = errno.
    pub const EXEC_FAILED: u32 = 9;
    /// The user command ended with wait status `value`.
    pub const EXITED: u32 = 10;
    /// An optional set-up step failed and was skipped: index = step, value = errno.
    pub const STEP_SKIPPED: u32 = 11;
}

/// Bytes on the go socket, controller → init. EOF means: end the sandbox.
pub(crate) mod go {
    /// Run the command (the barrier is passed).
    pub const RUN: u8 = 1;
    /// Stop the running command (SIGTERM to every process of the sandbox,
    /// SIGKILL after [`super::RESTART_GRACE_MS`]) and report its `EXITED`;
    /// the sandbox stays, waiting for the next [`RUN`] (a restart in place).
    pub const STOP_RUN: u8 = 2;
}

/// How long a command stopped for a restart has between SIGTERM and SIGKILL.
pub(crate) const RESTART_GRACE_MS: i64 = 5_000;

/// Built-in set-up steps (plan steps are numbered from 0).
pub(crate) mod step {
    pub const FDS: u32 = 0x1000_0000;
    pub const CGROUP: u32 = FDS + 1;
    pub const RLIMIT: u32 = FDS + 2;
    pub const PRIVATE: u32 = FDS + 3;
    pub const ROOT_BIND: u32 = FDS + 4;
    pub const ROOT_READONLY: u32 = FDS + 5;
    pub const PIVOT: u32 = FDS + 6;
    pub const CHDIR: u32 = FDS + 7;
    pub const PIPE: u32 = FDS + 8;
    pub const FORK: u32 = FDS + 9;
    pub const USER: u32 = FDS + 10;
    pub const NETNS: u32 = FDS + 11;
}

/// The fallback roots [`msg::ROOT_MODE`] reports (0 and 3, the overlay with
/// its writable layer on disk or in memory as planned, are not reported).
pub(crate) const ROOT_OVERLAY_TMPFS: u32 = 1;
pub(crate) const ROOT_READONLY_BIND: u32 = 2;

/// A program to execute: the paths to try in order (the `PATH` search is
/// done beforehand) and its argv. Sent to the spawner as its strings; the
/// pointer array is rebuilt where it is received.
#[derive(Deserialize)]
#[serde(from = "ExecStrings")]
pub(crate) struct ExecPlan {
    pub candidates: Vec<CString>,
    /// Owns the strings `argv` points to.
    pub _argv_store: Vec<CString>,
    /// Null-terminated.
    pub argv: Vec<*const c_char>,
}

#[derive(Deserialize)]
struct ExecStrings {
    candidates: Vec<CString>,
    argv: Vec<CString>,
}

/// Serialized as [`ExecStrings`], borrowed (no copy of the strings per attempt).
impl Serialize for ExecPlan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ExecStrings", 2)?;
        st.serialize_field("candidates", &self.candidates)?;
        st.serialize_field("argv", &self._argv_store)?;
        st.end()
    }
}

impl ExecPlan {
    pub fn new(candidates: Vec<CString>, argv: Vec<CString>) -> ExecPlan {
        ExecPlan {
            candidates,
            argv: null_terminated(&argv),
            _argv_store: argv,
        }
    }
}

impl From<ExecStrings> for ExecPlan {
    fn from(w: ExecStrings) -> ExecPlan {
        ExecPlan::new(w.candidates, w.argv)
    }
}

/// The pointers of `strings`, then a null (their heap buffers do not move
/// when the vector that owns them does).
fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    let mut ptrs: Vec<*const c_char> = strings.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(ptr::null());
    ptrs
}

/// A null-terminated `envp` with its strings (sent as the strings).
#[derive(Deserialize)]
#[serde(from = "Vec<CString>")]
pub(crate) struct EnvBlock {
    pub _store: Vec<CString>,
    pub envp: Vec<*const c_char>,
}

impl From<Vec<CString>> for EnvBlock {
    fn from(store: Vec<CString>) -> EnvBlock {
        EnvBlock {
            envp: null_terminated(&store),
            _store: store,
        }
    }
}

impl Serialize for EnvBlock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self._store.serialize(s)
    }
}

/// One mount of the set-up, in the host's view (targets are below the new root).
#[derive(Serialize, Deserialize)]
pub(crate) struct Step {
    /// Directories to create first (parents first); existing ones are fine.
    pub mkdirs: Vec<CString>,
    pub source: Option<CString>,
    pub target: CString,
    pub fstype: Option<CString>,
    pub flags: c_ulong,
    pub data: Option<CString>,
    /// Made read-only afterwards, with everything mounted below it.
    pub readonly: bool,
    /// A failure is ignored.
    pub optional: bool,
    pub when: When,
    /// An empty private directory (a tmpfs of its own, as the step says):
    /// with the writable layer in memory, a directory of that layer's tmpfs
    /// made with this mode and bound here instead, one superblock fewer to
    /// set up and tear down per step. See [`RootPlan::private_dirs`].
    pub private: Option<libc::mode_t>,
    /// The `mkdirs` are known to be missing (below a hidden directory's
    /// empty tmpfs): made before the mount rather than after it fails.
    pub dirs_first: bool,
    /// It differs from one attempt to the next of the same shape (the
    /// output, the inputs, volumes, hidden GPUs): an init that stays in
    /// place ([`crate::park`]) mounts it for each attempt and unmounts it
    /// after; it keeps the others (`/proc`, `/dev/shm`, the hidden
    /// directories, the network's files, the tool directories) for the next
    /// attempt.
    #[serde(default)]
    pub per_attempt: bool,
}

impl Step {
    /// It mounts a `/proc` (for the sandbox's PID namespace).
    pub fn is_proc(&self) -> bool {
        self.fstype.as_deref() == Some(c"proc")
    }
}

/// Steps that take a private directory from the writable layer's tmpfs, at
/// most; the others mount a tmpfs each.
pub(crate) const MAX_PRIVATE: usize = 16;

/// Which roots a step is for.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum When {
    Always,
    /// The read-only bind of `/` has it already.
    Overlay,
    /// The overlay has it already.
    ReadOnlyRoot,
    /// Every root; a kept root's template has it already, read-only: a
    /// hidden directory nothing else is mounted below (a task in a kept root
    /// is not root, and could not write in it anyway).
    Shared,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RootPlan {
    pub newroot: CString,
    /// Mount data of the overlay with its upper and work directories on disk
    /// (in the scratch directory); `None` when the path cannot be written in
    /// mount options. With `volatile` (Linux 5.10+): the layer dies with the
    /// attempt, so overlayfs need not sync the disk when it is unmounted.
    pub overlay_disk: Option<CString>,
    /// The same without `volatile`, for kernels that refuse it.
    pub overlay_disk_plain: Option<CString>,
    /// Where a tmpfs for the upper and work directories goes when the disk fails.
    pub tmpfs_dir: CString,
    pub tmpfs_upper: CString,
    /// `upper/tmp` on that tmpfs, made opaque like the disk one.
    pub tmpfs_tmp: CString,
    pub tmpfs_work: CString,
    pub overlay_tmpfs: Option<CString>,
    /// The task runs as a user other than root, so all it can write in the
    /// root are the world-writable directories: its writable layer goes in
    /// memory (a tmpfs of its own, counted in its memory cgroup), with `/tmp`
    /// bound from `disk_tmp` on disk. On this layer overlayfs's set-up (a work
    /// directory and test files at each mount) makes no inodes on the disk.
    pub memory_upper: bool,
    /// `upper/tmp` of the scratch directory, on disk: the task's `/tmp`.
    pub disk_tmp: CString,
    /// `/tmp` below the new root.
    pub root_tmp: CString,
    /// In `tmpfs_dir`, the directories of the [`Step::private`] steps, in
    /// their order (one each, up to [`MAX_PRIVATE`]).
    pub private_dirs: Vec<CString>,
    /// The root may come from a kept template ([`crate::kept_root`]): a
    /// writable layer in memory, not turned off for this agent, and steps
    /// whose paths all lie below `newroot` (at most [`MAX_KEPT_STEPS`], and
    /// as many preflight tests at most).
    pub keep: bool,
    /// An init that stays after an attempt in a kept root may make the next
    /// attempt's mounts in its own namespace ([`ChildPlan::in_place`]); not
    /// when `OSMO_SANDBOX_IN_PLACE=0` ([`crate::park::IN_PLACE_ENV`]).
    pub in_place: bool,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct FilePlan {
    pub path: CString,
    pub parents: Vec<CString>,
    pub data: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PreflightPlan {
    pub exec: ExecPlan,
    /// Write end of this test's output pipe (stdout and stderr).
    pub out: c_int,
}

/// Everything the init needs, prepared before the fork.
#[derive(Serialize, Deserialize)]
pub(crate) struct ChildPlan {
    pub devnull: c_int,
    pub status: c_int,
    pub go: c_int,
    pub stdout: c_int,
    pub stderr: c_int,
    /// `cgroup.procs` of the attempt's memory cgroup, or -1.
    pub cgroup_procs: c_int,
    /// `RLIMIT_AS` when no cgroup is available; 0 = none.
    pub rlimit_as: u64,
    /// Every descriptor above that the init keeps, sorted; all others are closed.
    pub keep_fds: Vec<c_int>,
    pub root: RootPlan,
    pub steps: Vec<Step>,
    pub files: Vec<FilePlan>,
    pub env: EnvBlock,
    pub preflight: Vec<PreflightPlan>,
    pub command: ExecPlan,
    /// The controller's argument and environment areas ([start, end) from
    /// `/proc/self/stat`), wiped in the init's copy so the task cannot read
    /// the controller's environment in `/proc/1/environ`; empty if unknown.
    pub scrub: [(usize, usize); 2],
    /// Drop to this user and group once the root and files are in place.
    pub run_as: Option<(libc::uid_t, libc::gid_t)>,
    /// A network namespace to join first, or -1.
    pub netns: c_int,
    /// A kept root's mount namespace ([`crate::kept_root`]) to copy instead
    /// of making the root, or -1. Set by the spawner, where it is open.
    #[serde(skip, default = "no_fd")]
    pub template: c_int,
    /// The stack the init's children run on until they execute (see
    /// [`spawn`]): given by whoever forks the init ([`ChildPlan::ensure_spawn_stack`]),
    /// not made with the plan (the spawner's workers each keep one for
    /// their inits, so that no plan allocates and zeroes its own).
    #[serde(skip)]
    pub spawn_stack: Vec<u8>,
    /// The init's end of its spawner worker's control socket, or -1: the
    /// init of a kept root may then stay after its attempt for the next one
    /// of the same shape ([`crate::park`]). Set by the spawner.
    #[serde(skip, default = "no_fd")]
    pub park: c_int,
    /// For a plan handed to an init that stayed: the step of each host path
    /// its worker cloned, in the order their descriptors are sent, and the
    /// errno of each optional one it could not clone (by step; 0 when none).
    #[serde(skip)]
    pub handed_trees: Vec<u32>,
    #[serde(skip)]
    pub handed_errors: Vec<c_int>,
    /// An init that stays makes this attempt's mounts in its own namespace
    /// and unmounts them after it, rather than in a copy of the namespace
    /// made for the attempt ([`crate::park`]). Set by the spawner.
    #[serde(skip)]
    pub in_place: bool,
}

fn no_fd() -> c_int {
    -1
}

/// Bytes of [`ChildPlan::spawn_stack`]: the child runs a few system calls.
const SPAWN_STACK: usize = 64 * 1024;

impl ChildPlan {
    /// Gives the plan a [`ChildPlan::spawn_stack`] if it has none.
    pub(crate) fn ensure_spawn_stack(&mut self) {
        if self.spawn_stack.len() < SPAWN_STACK {
            self.spawn_stack = vec![0; SPAWN_STACK];
        }
    }

    /// Every descriptor of the plan through `map` (they are numbered anew
    /// where the plan is received with them).
    pub fn map_fds(&mut self, map: impl Fn(c_int) -> c_int) {
        let opt = |fd: c_int| if fd < 0 { fd } else { map(fd) };
        for fd in [
            &mut self.devnull,
            &mut self.status,
            &mut self.go,
            &mut self.stdout,
            &mut self.stderr,
        ] {
            *fd = map(*fd);
        }
        self.cgroup_procs = opt(self.cgroup_procs);
        self.netns = opt(self.netns);
        for t in &mut self.preflight {
            t.out = map(t.out);
        }
        for fd in &mut self.keep_fds {
            *fd = map(*fd);
        }
        self.keep_fds.sort_unstable();
    }
}

/// `fork` as the bare system call, with extra clone flags (namespaces).
///
/// # Safety
/// The child may only use async-signal-safe operations and must end in
/// `exec` or `_exit`.
pub(crate) unsafe fn raw_fork(flags: c_ulong) -> pid_t {
    // x86_64 and aarch64 both take (flags, stack, ...); a null stack means
    // "continue on a copy of the current one", as fork does.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        ) as pid_t
    }
}

pub(crate) fn errno() -> c_int {
    // SAFETY: reading the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

unsafe fn send(fd: c_int, kind: u32, index: u32, value: i32) {
    let m: [u32; 3] = [kind, index, value as u32];
    // SAFETY: 12 bytes from a live array; a pipe write of <= PIPE_BUF is atomic.
    unsafe {
        libc::write(fd, m.as_ptr() as *const c_void, std::mem::size_of_val(&m));
    }
}

pub(crate) unsafe fn fail(p: &ChildPlan, step: u32, err: c_int) -> ! {
    unsafe {
        send(p.status, msg::STEP_FAILED, step, err);
        libc::_exit(1)
    }
}

unsafe fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> Result<(), c_int> {
    let opt = |s: Option<&CStr>| s.map_or(ptr::null(), |s| s.as_ptr());
    // SAFETY: all pointers are null or point to NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            opt(source),
            target.as_ptr(),
            opt(fstype),
            flags,
            data.map_or(ptr::null(), |d| d.as_ptr() as *const c_void),
        )
    };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Makes the mount at `target` and every mount below it read-only. Kernels
/// before 5.12 lack `mount_setattr`: then only the top mount becomes read-only.
unsafe fn make_readonly(target: &CStr) -> Result<(), c_int> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid path and struct of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_RECURSIVE as c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    unsafe {
        mount(
            None,
            target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
    }
}

/// A step's mount points, as [`mkdirs`] with mode 0755, `below` as in
/// [`run_step`]. Sets bit `k` of `made` for each `dirs[k]` it made (the
/// first 64), which an init that stays in place removes after the attempt.
unsafe fn step_dirs(dirs: &[CString], below: usize, made: &mut u64) -> Result<(), c_int> {
    for (k, d) in dirs.iter().enumerate() {
        // SAFETY: NUL-terminated path.
        if unsafe { libc::mkdir(below_root(d, below).as_ptr(), 0o755) } == 0 {
            *made |= 1u64.checked_shl(k as u32).unwrap_or(0);
        } else {
            let e = errno();
            if e != libc::EEXIST {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// `path` without its first `below` bytes: the new root's path, which the
/// plan puts before each step's paths followed by `/` (see
/// [`RootPlan::keep`]), so the rest is the path in the root.
pub(crate) fn below_root(path: &CStr, below: usize) -> &CStr {
    let bytes = path.to_bytes_with_nul();
    match bytes.get(below..) {
        Some(rest) if below == 0 || rest.first() == Some(&b'/') => {
            CStr::from_bytes_with_nul(rest).unwrap_or(path)
        }
        _ => path,
    }
}

unsafe fn mkdirs(dirs: &[CString], mode: libc::mode_t) -> Result<(), c_int> {
    for d in dirs {
        // SAFETY: NUL-terminated path.
        if unsafe { libc::mkdir(d.as_ptr(), mode) } != 0 {
            let e = errno();
            if e != libc::EEXIST {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The signals whose action the forking process has changed from the
/// default, where it never changes them after it recorded them (the
/// spawner: what it inherited ignored, and Rust's runtime's SIGPIPE): an
/// init resets just those, rather than each of the 62 (a system call each,
/// per task).
static CHANGED_SIGNALS: std::sync::OnceLock<Vec<c_int>> = std::sync::OnceLock::new();

/// Every signal but those that cannot be caught.
fn all_signals() -> impl Iterator<Item = c_int> {
    (1..65).filter(|&sig| sig != libc::SIGKILL && sig != libc::SIGSTOP)
}

/// The kernel's `struct sigaction` (x86_64 and aarch64 alike).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: c_ulong,
    restorer: usize,
    mask: u64,
}

/// `rt_sigaction` as the bare system call: glibc's wrapper refuses the
/// signals it keeps for itself (32 and 33), which a process can inherit
/// ignored all the same.
unsafe fn raw_sigaction(
    sig: c_int,
    new: Option<&KernelSigaction>,
    old: Option<&mut KernelSigaction>,
) -> bool {
    let new = new.map_or(ptr::null(), |n| n as *const KernelSigaction);
    let old = old.map_or(ptr::null_mut(), |o| o as *mut KernelSigaction);
    // SAFETY: the kernel reads `new` and writes `old`, both valid or null.
    unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, new, old, 8usize) == 0 }
}

/// Records which signals this process does not leave at their default
/// action, for its inits to reset ([`CHANGED_SIGNALS`]). Only for a process
/// that changes no signal's action afterwards.
pub(crate) fn remember_changed_signals() {
    CHANGED_SIGNALS.get_or_init(|| {
        all_signals()
            .filter(|&sig| {
                let mut old = KernelSigaction {
                    handler: 0,
                    flags: 0,
                    restorer: 0,
                    mask: 0,
                };
                // SAFETY: reads the action into a local; changes nothing.
                unsafe { raw_sigaction(sig, None, Some(&mut old)) && old.handler != libc::SIG_DFL }
            })
            .collect()
    });
}

unsafe fn reset_signals() {
    unsafe {
        let default = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        let reset = |sig| {
            raw_sigaction(sig, Some(&default), None);
        };
        // An atomic load: safe after the fork.
        match CHANGED_SIGNALS.get() {
            Some(changed) => changed.iter().for_each(|&sig| reset(sig)),
            None => all_signals().for_each(reset),
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut());
    }
}

unsafe fn close_range(first: c_uint, last: c_uint) {
    // SAFETY: closing descriptors of this (single-threaded) child.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0 as c_uint) != 0 {
            // Before Linux 5.9: close them one by one, up to a sane bound.
            let mut fd = first;
            while fd <= last && fd < 65536 {
                libc::close(fd as c_int);
                fd += 1;
            }
        }
    }
}

/// Steps a sandbox in a kept root may have at most: the host's side of its
/// binds is held open in a fixed array (the init allocates nothing).
pub(crate) const MAX_KEPT_STEPS: usize = 64;

/// For each step of a sandbox in a kept root that binds a host path, that
/// path cloned (`open_tree`) while the init still saw the host's file
/// system, or why it could not be (an optional step is then skipped).
pub(crate) struct HostTrees {
    pub fds: [c_int; MAX_KEPT_STEPS],
    pub errors: [c_int; MAX_KEPT_STEPS],
}

impl HostTrees {
    pub fn none() -> HostTrees {
        HostTrees {
            fds: [-1; MAX_KEPT_STEPS],
            errors: [0; MAX_KEPT_STEPS],
        }
    }

    /// Step `i`'s clone (-1 when it binds nothing of the host's), or the
    /// errno of an optional one that could not be cloned.
    fn take(&mut self, i: usize) -> Result<c_int, c_int> {
        match (self.fds.get_mut(i), self.errors.get(i)) {
            (Some(fd), Some(&0)) => Ok(std::mem::replace(fd, -1)),
            (_, Some(&e)) => Err(e),
            _ => Ok(-1),
        }
    }

    pub unsafe fn close(&mut self) {
        for fd in self.fds.iter_mut().filter(|fd| **fd >= 0) {
            // SAFETY: a descriptor open_host_trees opened.
            unsafe { libc::close(*fd) };
            *fd = -1;
        }
    }
}

/// Clones the host paths the steps of a kept root bind (all but those the
/// template made). A required one that cannot be cloned: its step and the
/// errno, as the step itself would have failed.
///
/// `only_per_attempt`: for an init that stays in place and has the others
/// mounted already, only the [`Step::per_attempt`] ones.
pub(crate) unsafe fn open_host_trees(
    p: &ChildPlan,
    trees: &mut HostTrees,
    only_per_attempt: bool,
) -> Result<(), (u32, c_int)> {
    const OPEN_TREE_CLONE: c_uint = 1;
    for (i, s) in p.steps.iter().enumerate().take(MAX_KEPT_STEPS) {
        let Some(source) = s.source.as_deref() else {
            continue;
        };
        if s.when != When::Always
            || s.private.is_some()
            || s.flags & libc::MS_BIND == 0
            || (only_per_attempt && !s.per_attempt)
        {
            continue;
        }
        let recursive = if s.flags & libc::MS_REC != 0 {
            libc::AT_RECURSIVE as c_uint
        } else {
            0
        };
        // SAFETY: open_tree of a NUL-terminated path.
        let tree = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                source.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as c_uint | recursive,
            )
        };
        if tree >= 0 {
            trees.fds[i] = tree as c_int;
        } else if s.optional {
            trees.errors[i] = errno();
        } else {
            return Err((i as u32, errno()));
        }
    }
    Ok(())
}

/// [`close_other_fds`], keeping those in `also` (unsorted, -1 for none) too. A kept
/// root's plan keeps few descriptors (its preflight tests' and a handful,
/// see [`RootPlan::keep`]): room for them and `also` in a fixed array.
unsafe fn close_other_fds_but(keep: &[c_int], also: &[&[c_int]]) {
    let mut all = [-1; MAX_KEPT_STEPS * 3];
    let mut n = 0;
    let also = also.iter().flat_map(|fds| fds.iter());
    for &fd in keep.iter().chain(also).filter(|&&fd| fd >= 0) {
        if n < all.len() {
            all[n] = fd;
            n += 1;
        }
    }
    let all = &mut all[..n];
    all.sort_unstable();
    unsafe { close_other_fds(all) };
}

/// Closes every descriptor from 3 up except `keep` (sorted).
pub(crate) unsafe fn close_other_fds(keep: &[c_int]) {
    let mut next: c_uint = 3;
    for &fd in keep {
        if fd < 3 {
            continue;
        }
        let fd = fd as c_uint;
        if fd > next {
            unsafe { close_range(next, fd - 1) };
        }
        next = fd.saturating_add(1);
    }
    unsafe { close_range(next, c_uint::MAX) };
}

/// Tries the candidates in order, like `execvp`: on "not there" go on,
/// remember "not permitted", stop at anything else. Returns the errno.
unsafe fn exec(plan: &ExecPlan, envp: *const *const c_char) -> c_int {
    let mut result = libc::ENOENT;
    let mut denied = false;
    for path in &plan.candidates {
        // SAFETY: argv and envp are null-terminated arrays of C strings.
        unsafe { libc::execve(path.as_ptr(), plan.argv.as_ptr(), envp) };
        let e = errno();
        match e {
            libc::EACCES => denied = true,
            libc::ENOENT
            | libc::ENOTDIR
            | libc::ESTALE
            | libc::ENODEV
            | libc::ETIMEDOUT
            | libc::ELOOP
            | libc::ENAMETOOLONG => {}
            _ => return e,
        }
        result = e;
    }
    if denied { libc::EACCES } else { result }
}

/// What [`spawn`] hands its child, which shares the init's memory until it
/// executes: the child reads the plan and writes `exec_err` in place.
struct SpawnArgs<'a> {
    p: &'a ChildPlan,
    plan: &'a ExecPlan,
    out: c_int,
    err: c_int,
    new_session: bool,
    /// 0 once the child has executed; else the errno that stopped it.
    exec_err: c_int,
    /// The set-up step that stopped the child before it could try to
    /// execute ([`step::CGROUP`], [`step::USER`]), or 0.
    failed_step: u32,
}

/// The child of [`spawn`], on its own stack in the init's memory (the init
/// is suspended until this executes or exits, as with `vfork`).
extern "C" fn spawn_child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the SpawnArgs of the suspended caller; only system
    // calls follow, and every signal's disposition is the default (the init
    // reset them), so no handler can run on the shared memory.
    unsafe {
        let a = &mut *(arg as *mut SpawnArgs<'_>);
        // The task's memory cgroup takes the command (and the preflight
        // tests), not the init: an out-of-memory kill in the cgroup must
        // not choose the init, whose memory is the spawner's (a kill of
        // one process kills every process that shares its memory: every
        // sandbox's init). Before anything else runs.
        if a.p.cgroup_procs >= 0
            && libc::write(a.p.cgroup_procs, c"0".as_ptr() as *const c_void, 1) != 1
        {
            a.exec_err = errno();
            a.failed_step = step::CGROUP;
            libc::_exit(127)
        }
        // The task's user, here rather than in the init: the init stays
        // root, to tear down what it mounted and take the next attempt
        // ([`crate::park`]). No supplementary groups, then the group, then
        // the user (last: after it nothing could be changed back). Bare
        // system calls: glibc's wrappers would wait for the other threads
        // of the process they think this is to change theirs too.
        if let Some((uid, gid)) = a.p.run_as
            && (libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0)
        {
            a.exec_err = errno();
            a.failed_step = step::USER;
            libc::_exit(127)
        }
        // The init blocks SIGCHLD (it reads it from a signalfd); the task must not inherit that.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
        if a.new_session {
            libc::setsid();
        }
        a.exec_err = if libc::dup2(a.p.devnull, 0) < 0
            || libc::dup2(a.out, 1) < 0
            || libc::dup2(a.err, 2) < 0
        {
            errno()
        } else {
            exec(a.plan, a.p.env.envp.as_ptr())
        };
        libc::_exit(127)
    }
}

/// Starts a child that runs `plan` with stdin from /dev/null and the given
/// stdout and stderr. Returns its pid and 0, or the errno of a failed exec
/// (the child has then exited with 127 and must still be reaped).
///
/// The child shares the init's memory until it executes (`CLONE_VM |
/// CLONE_VFORK`, as `posix_spawn` does): nothing is copied, where a fork
/// would copy the page tables of the init (a copy of the controller's).
unsafe fn spawn(
    p: &ChildPlan,
    plan: &ExecPlan,
    out: c_int,
    err: c_int,
    new_session: bool,
) -> Result<(pid_t, c_int), (u32, c_int)> {
    let mut args = SpawnArgs {
        p,
        plan,
        out,
        err,
        new_session,
        exec_err: 0,
        failed_step: 0,
    };
    if p.spawn_stack.len() < SPAWN_STACK {
        // A plan forked without its stack: a bug, reported rather than run.
        return Err((step::FORK, libc::ENOMEM));
    }
    let stack = p.spawn_stack.as_ptr() as usize + p.spawn_stack.len();
    // The stack grows down from its 16-byte aligned top.
    let top = (stack & !15) as *mut c_void;
    // SAFETY: the stack is ours and unused while the child runs (the caller
    // is suspended until it executes or exits); `args` outlives it.
    let pid = unsafe {
        libc::clone(
            spawn_child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut args as *mut SpawnArgs<'_> as *mut c_void,
        )
    };
    if pid < 0 {
        return Err((step::FORK, errno()));
    }
    // The child wrote this before it exited, and is gone from our memory.
    let exec_err = unsafe { ptr::read_volatile(&args.exec_err) };
    let failed_step = unsafe { ptr::read_volatile(&args.failed_step) };
    if failed_step != 0 {
        // It could not join the memory cgroup or become the task's user, and has exited.
        unsafe { wait_for(pid) };
        return Err((failed_step, exec_err));
    }
    Ok((pid, exec_err))
}

/// Reaps children (as PID 1, orphans too) until `pid` ends; its wait status.
unsafe fn wait_for(pid: pid_t) -> c_int {
    loop {
        let mut status: c_int = 0;
        // SAFETY: plain waitpid.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            return status;
        }
        if r < 0 && errno() != libc::EINTR {
            return 255 << 8;
        }
    }
}

/// Makes `dir` the task's private `/tmp`: world-writable, sticky, and
/// opaque (the host's `/tmp` below it does not show through).
unsafe fn opaque_tmp(dir: &CStr) -> Result<(), c_int> {
    unsafe {
        if libc::chmod(dir.as_ptr(), 0o1777) != 0 {
            return Err(errno());
        }
        let name = crate::plan::OPAQUE_XATTR;
        if libc::setxattr(
            dir.as_ptr(),
            name.as_ptr(),
            c"y".as_ptr() as *const c_void,
            1,
            0,
        ) != 0
        {
            return Err(errno());
        }
    }
    Ok(())
}

/// Builds the root: an overlay over `/` (upper on disk, else on a tmpfs), or
/// a read-only recursive bind of `/`. Returns whether it is an overlay.
unsafe fn setup_root(p: &ChildPlan, private: &mut [c_int; MAX_PRIVATE]) -> bool {
    let r = &p.root;
    let overlay = Some(c"overlay");
    let unbindable = |target: &CStr| {
        // Keep the new root out of recursive binds of the host mounts above it.
        let _ = unsafe { mount(None, target, None, libc::MS_UNBINDABLE, None) };
    };
    // The root as planned (the writable layer in memory, or on disk) is not
    // reported: the controller has nothing to say of it, and a message is a
    // wake-up of its thread per task. Only a fallback is ([`msg::ROOT_MODE`]).
    // (The tmpfs of the writable layer needs no unbindable marking: the
    // overlay root covers it, and it goes with the old root at the pivot.)
    if r.memory_upper && unsafe { overlay_in_memory(p, private, None) }.is_ok() {
        unbindable(&r.newroot);
        return true;
    }
    // Else (or when that fails) the writable layer on disk, as for a task that runs as root.
    let on_disk = |data: &CStr| unsafe { mount(Some(c"osmo"), &r.newroot, overlay, 0, Some(data)) };
    let disk = match (&r.overlay_disk, &r.overlay_disk_plain) {
        (Some(volatile), Some(plain)) => match on_disk(volatile) {
            Err(libc::EINVAL) => on_disk(plain),
            other => other,
        },
        _ => Err(libc::EINVAL),
    };
    let disk_err = match disk {
        Ok(()) => {
            unbindable(&r.newroot);
            return true;
        }
        Err(e) => e,
    };
    let tmpfs_err = match unsafe { overlay_on_tmpfs(p, true, &mut [-1; MAX_PRIVATE], None) } {
        Ok(()) => {
            unbindable(&r.newroot);
            unsafe { send(p.status, msg::ROOT_MODE, ROOT_OVERLAY_TMPFS, disk_err) };
            return true;
        }
        Err(e) => e,
    };
    unsafe {
        if let Err(e) = mount(
            Some(c"/"),
            &r.newroot,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        ) {
            fail(p, step::ROOT_BIND, e);
        }
        if let Err(e) = make_readonly(&r.newroot) {
            fail(p, step::ROOT_READONLY, e);
        }
        send(
            p.status,
            msg::ROOT_MODE,
            ROOT_READONLY_BIND,
            disk_err | (tmpfs_err << 16),
        );
    }
    false
}

/// Makes the [`Step::private`] directories in the writable layer's tmpfs
/// and a detached bind of each, for the steps to attach. One that fails
/// stays -1: its step mounts a tmpfs of its own instead.
unsafe fn private_dirs(p: &ChildPlan, fds: &mut [c_int]) {
    let modes = p.steps.iter().filter_map(|s| s.private);
    for ((dir, mode), fd) in p.root.private_dirs.iter().zip(modes).zip(fds.iter_mut()) {
        // SAFETY: system calls on NUL-terminated paths the plan owns.
        unsafe {
            // The mode as asked (the umask would clear the sticky and write bits).
            if libc::mkdir(dir.as_ptr(), 0o700) == 0
                && libc::chmod(dir.as_ptr(), mode) == 0
                && let Ok(tree) = detached_bind(dir)
            {
                *fd = tree;
            }
        }
    }
}

/// Makes the [`Step::private`] directories on one new tmpfs (`fsmount`),
/// and a detached bind of each, as [`private_dirs`] does on the writable
/// layer's tmpfs: one superblock for all of them rather than one per step.
/// Where it fails (a kernel before 6.15 cannot bind from a detached mount),
/// they stay -1 and their steps mount a tmpfs each.
///
/// The tmpfs's own root is then attached where the first of them goes,
/// under it (that step's bind covers it), rather than closed detached:
/// dissolving a detached mount waits for an RCU grace period (expedited,
/// an interrupt on every CPU), and the namespace's end waits for one
/// anyway, for all of its mounts at once. `below`: as [`run_step`]'s.
unsafe fn detached_private_dirs(p: &ChildPlan, fds: &mut [c_int], below: usize) {
    const FSOPEN_CLOEXEC: c_uint = 1;
    const FSCONFIG_CMD_CREATE: c_uint = 6;
    const FSMOUNT_CLOEXEC: c_uint = 1;
    const MOUNT_ATTR_NOSUID: c_uint = 0x2;
    const MOUNT_ATTR_NODEV: c_uint = 0x4;
    const OPEN_TREE_CLONE: c_uint = 1;
    // SAFETY: the new mount API's calls over NUL-terminated names and
    // descriptors this function opens and closes.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) as c_int;
        if fs < 0 {
            return;
        }
        let created = libc::syscall(
            libc::SYS_fsconfig,
            fs,
            FSCONFIG_CMD_CREATE,
            ptr::null::<c_char>(),
            ptr::null::<c_void>(),
            0,
        ) == 0;
        let tmpfs = if created {
            libc::syscall(
                libc::SYS_fsmount,
                fs,
                FSMOUNT_CLOEXEC,
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            ) as c_int
        } else {
            -1
        };
        libc::close(fs);
        if tmpfs < 0 {
            return;
        }
        // (In a kept root: the template has the `Shared` steps' already.)
        let own = || p.steps.iter().filter(|s| s.when != When::Shared);
        let modes = own().filter_map(|s| s.private);
        for (i, (mode, fd)) in modes.zip(fds.iter_mut()).enumerate() {
            // "p0".."p15" (MAX_PRIVATE), no allocation.
            let name = [b'p', b'0' + (i / 10 % 10) as u8, b'0' + (i % 10) as u8, 0];
            let name = name.as_ptr() as *const c_char;
            // The mode as asked (the umask would clear the sticky and write bits).
            if libc::mkdirat(tmpfs, name, 0o700) == 0 && libc::fchmodat(tmpfs, name, mode, 0) == 0 {
                let tree = libc::syscall(
                    libc::SYS_open_tree,
                    tmpfs,
                    name,
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as c_uint,
                );
                if tree >= 0 {
                    *fd = tree as c_int;
                }
            }
        }
        // Only under a step that runs in a kept root (one that runs always)
        // and has its bind; else, or where it cannot be attached, it is
        // dissolved as before.
        if let Some(first) = own().find(|s| s.private.is_some())
            && first.when == When::Always
            && fds.first().is_some_and(|fd| *fd >= 0)
        {
            let _ = attach(tmpfs, below_root(&first.target, below));
        }
        libc::close(tmpfs);
    }
}

/// A detached bind of `path` (`open_tree` with `OPEN_TREE_CLONE`), for
/// [`attach`] to put in place later.
unsafe fn detached_bind(path: &CStr) -> Result<c_int, c_int> {
    const OPEN_TREE_CLONE: c_uint = 1;
    // SAFETY: open_tree of a NUL-terminated path.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as c_uint,
        )
    };
    if tree < 0 {
        Err(errno())
    } else {
        Ok(tree as c_int)
    }
}

/// Closes the private directories' binds of a root that was not made:
/// their steps mount a tmpfs each.
unsafe fn forget_private_dirs(fds: &mut [c_int]) {
    for fd in fds.iter_mut().filter(|fd| **fd >= 0) {
        // SAFETY: a descriptor private_dirs opened.
        unsafe { libc::close(*fd) };
        *fd = -1;
    }
}

/// Attaches the detached mount `tree` at `target`.
unsafe fn attach(tree: c_int, target: &CStr) -> Result<(), c_int> {
    const MOVE_MOUNT_F_EMPTY_PATH: c_uint = 4;
    // SAFETY: move_mount of a descriptor we own onto a NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// The overlay root in memory with `/tmp` from the disk ([`RootPlan::memory_upper`]).
/// On an error nothing stays mounted.
unsafe fn overlay_in_memory(
    p: &ChildPlan,
    private: &mut [c_int],
    upper: Option<&mut c_int>,
) -> Result<(), c_int> {
    let r = &p.root;
    unsafe {
        // A bind of the disk's `/tmp`, made before the overlay covers the
        // scratch directory it is in, and attached below the new root after.
        let tree = detached_bind(&r.disk_tmp)?;
        let made = overlay_on_tmpfs(p, false, private, upper).and_then(|()| {
            attach(tree, &r.root_tmp).inspect_err(|_| {
                libc::umount2(r.newroot.as_ptr(), libc::MNT_DETACH);
                libc::umount2(r.tmpfs_dir.as_ptr(), libc::MNT_DETACH);
                forget_private_dirs(private);
            })
        });
        libc::close(tree);
        made
    }
}

/// Mounts the overlay root with its upper and work directories on a tmpfs
/// of its own, with an opaque (private) `/tmp` in the upper layer when
/// `private_tmp`. On an error nothing stays mounted.
/// With `upper`, the upper directory is opened there, before the overlay covers it.
unsafe fn overlay_on_tmpfs(
    p: &ChildPlan,
    private_tmp: bool,
    private: &mut [c_int],
    upper: Option<&mut c_int>,
) -> Result<(), c_int> {
    let r = &p.root;
    unsafe {
        mkdirs(std::slice::from_ref(&r.tmpfs_dir), 0o700)?;
        mount(
            Some(c"osmo-upper"),
            &r.tmpfs_dir,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"mode=0700"),
        )?;
        // (Not unbindable yet: overlayfs clones the upper layer's mount.)
        let made = mkdirs(std::slice::from_ref(&r.tmpfs_upper), 0o755)
            .and_then(|()| {
                if private_tmp {
                    mkdirs(std::slice::from_ref(&r.tmpfs_tmp), 0o755)
                        .and_then(|()| opaque_tmp(&r.tmpfs_tmp))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| mkdirs(std::slice::from_ref(&r.tmpfs_work), 0o700))
            .and_then(|()| {
                // Before the overlay covers the scratch directory they are in.
                private_dirs(p, private);
                if let Some(upper) = upper {
                    *upper = libc::open(
                        r.tmpfs_upper.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    );
                    if *upper < 0 {
                        return Err(errno());
                    }
                }
                match &r.overlay_tmpfs {
                    Some(data) => mount(Some(c"osmo"), &r.newroot, Some(c"overlay"), 0, Some(data)),
                    None => Err(libc::EINVAL),
                }
            });
        if made.is_err() {
            libc::umount2(r.tmpfs_dir.as_ptr(), libc::MNT_DETACH);
            forget_private_dirs(private);
        }
        made
    }
}

unsafe fn write_files(p: &ChildPlan) {
    for (i, f) in p.files.iter().enumerate() {
        let result = unsafe { mkdirs(&f.parents, 0o755) }.and_then(|()| unsafe {
            let fd = libc::open(
                f.path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOCTTY,
                0o755 as c_uint,
            );
            if fd < 0 {
                return Err(errno());
            }
            // The task's own files are its user's to change.
            if let Some((uid, gid)) = p.run_as
                && libc::fchown(fd, uid, gid) != 0
            {
                let e = errno();
                libc::close(fd);
                return Err(e);
            }
            let mut rest: &[u8] = &f.data;
            while !rest.is_empty() {
                let n = libc::write(fd, rest.as_ptr() as *const c_void, rest.len());
                if n < 0 {
                    if errno() == libc::EINTR {
                        continue;
                    }
                    let e = errno();
                    libc::close(fd);
                    return Err(e);
                }
                rest = rest.get(n as usize..).unwrap_or(&[]);
            }
            if libc::close(fd) != 0 && errno() != libc::EINTR {
                return Err(errno());
            }
            Ok(())
        });
        if let Err(e) = result {
            unsafe {
                send(p.status, msg::FILE_FAILED, i as u32, e);
                libc::_exit(1);
            }
        }
    }
}

/// The init of the sandbox: PID 1 of a new PID namespace, in a new mount
/// namespace. Builds the task's view of the file system, writes the files,
/// runs the preflight tests, waits for the go byte, runs the command, reaps
/// everything and reports the command's wait status. Then it ends, or, in a
/// kept root with a control socket ([`ChildPlan::park`]), tears down what
/// the attempt mounted and waits there for the next attempt's plan
/// ([`crate::park`]). Never returns.
///
/// # Safety
/// Only to be called in the child of [`raw_fork`] with `CLONE_NEWPID |
/// CLONE_NEWNS`, with a plan whose descriptors are open (and which its
/// spawner keeps, with every plan it hands over later, until this ends).
pub(crate) unsafe fn sandbox_init(first: *mut ChildPlan) -> ! {
    unsafe {
        let p = &*first;
        reset_signals();
        libc::prctl(libc::PR_SET_NAME, c"osmo-init".as_ptr() as c_ulong, 0, 0, 0);
        for &(start, end) in &p.scrub {
            if start != 0 && end > start {
                // SAFETY: the kernel's own bounds of this process's argument and
                // environment strings, mapped and writable (our copy of them).
                ptr::write_bytes(start as *mut u8, 0, end - start);
            }
        }
        let [(arg_start, arg_end), _] = p.scrub;
        let name = b"osmo-init";
        if arg_start != 0 && arg_end > arg_start && arg_end - arg_start > name.len() {
            // What `ps` shows as the init's command line.
            ptr::copy_nonoverlapping(name.as_ptr(), arg_start as *mut u8, name.len());
        }
        // If the controller's thread dies, so do we (and with us the namespace).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0);
        // A kept root is the root of its namespace: the host's paths the
        // binds come from are not there, so they are cloned here first.
        // (The descriptors are closed with the others below, or after use.)
        let mut trees = HostTrees::none();
        let kept = p.template >= 0
            && match open_host_trees(p, &mut trees, false) {
                Ok(()) => enter_template(p),
                // No `open_tree` (before Linux 5.2): the init makes the root.
                Err((_, libc::ENOSYS)) => {
                    own_namespace(p);
                    false
                }
                Err((i, e)) => fail(p, i, e),
            };
        if !kept {
            trees.close();
        }
        // Only an init in a kept root stays: it can undo its attempt's
        // mounts, and the next attempt's host paths come cloned.
        let mut stay = crate::park::Stay::new(if kept { p.park } else { -1 });
        let mut plan = first;
        loop {
            attempt(&*plan, kept, &mut stay, &mut trees);
            // The command ran and the controller is done with the attempt.
            match crate::park::park(&*plan, &mut stay, &mut trees) {
                Some(next) => plan = next,
                None => libc::_exit(0),
            }
        }
    }
}

/// One attempt in the init, from its descriptors to its command's end.
/// Returns only when its init may stay for another ([`crate::park::Stay`]:
/// the command ran and the controller closed the go socket); ends the init
/// otherwise. In an init that stayed, `trees` are the host paths its worker
/// cloned for this attempt.
unsafe fn attempt(p: &ChildPlan, kept: bool, stay: &mut crate::park::Stay, trees: &mut HostTrees) {
    unsafe {
        for fd in 0..3 {
            if libc::dup2(p.devnull, fd) < 0 {
                fail(p, step::FDS, errno());
            }
        }
        if kept {
            close_other_fds_but(&p.keep_fds, &[&trees.fds, &[stay.ctl, stay.base]]);
        } else {
            close_other_fds(&p.keep_fds);
        }
        if p.netns >= 0 {
            // Before /proc is mounted, so that it shows this network.
            if libc::syscall(libc::SYS_setns, p.netns, libc::CLONE_NEWNET) != 0 {
                fail(p, step::NETNS, errno());
            }
            libc::close(p.netns);
        }
        if p.rlimit_as > 0 {
            let lim = libc::rlimit {
                rlim_cur: p.rlimit_as,
                rlim_max: p.rlimit_as,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                fail(p, step::RLIMIT, errno());
            }
        }
        libc::umask(0o022);

        // A copy of a kept root's namespace is private already: the
        // template was made so (`build_kept_root`), and a copy keeps it.
        // (Made so again, the change would walk every mount.)
        if !kept && let Err(e) = mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None) {
            fail(p, step::PRIVATE, e);
        }
        let mut private = [-1; MAX_PRIVATE];
        // In a kept root the steps' paths are the sandbox's: the part of
        // each below the new root.
        let below = if kept {
            p.root.newroot.count_bytes()
        } else {
            0
        };
        let overlay = if kept {
            // The template's root (its namespace's root), with the host's
            // mounts bound in: only this attempt's own steps are left, their
            // private directories on a tmpfs of the attempt's own (the
            // template's layer outlives the attempt). Its root is made
            // unbindable, as `setup_root` leaves a root: a copy of a
            // namespace does not keep that.
            // An init that may stay makes each attempt's mounts in a copy of
            // its namespace, left (and so torn down) when the attempt ends;
            // in place, in its own namespace, where the first attempt's
            // mounts that every attempt has stay (`stay.placed`).
            if stay.ctl >= 0 && !p.in_place {
                crate::park::attempt_namespace(p, stay, below);
            }
            if !stay.placed {
                let _ = mount(None, c"/", None, libc::MS_UNBINDABLE, None);
                detached_private_dirs(p, &mut private, below);
            }
            true
        } else {
            setup_root(p, &mut private)
        };
        let in_place = kept && stay.ctl >= 0 && p.in_place;
        let mut privates = private.iter();
        for (i, s) in p.steps.iter().enumerate() {
            if stay.placed && !s.per_attempt && s.when == When::Always {
                // Mounted by the init's first attempt, and kept.
                continue;
            }
            // This step's private directory, made ready by setup_root (or
            // -1), or in a kept root its source cloned from the host's.
            let tree = match s.private {
                // The template's (and no private directory was made for it).
                Some(_) if kept && s.when == When::Shared => -1,
                Some(_) => privates.next().copied().unwrap_or(-1),
                None if kept => match trees.take(i) {
                    Ok(tree) => tree,
                    Err(e) => {
                        send(p.status, msg::STEP_SKIPPED, i as u32, e);
                        continue;
                    }
                },
                None => -1,
            };
            let wanted = match s.when {
                // (In its namespace, an init that stays has mounted it.)
                When::Always => !(stay.base >= 0 && s.is_proc()),
                When::Overlay => overlay && !kept,
                When::ReadOnlyRoot => !overlay,
                When::Shared => !kept,
            };
            if !wanted {
                if tree >= 0 {
                    libc::close(tree);
                }
                continue;
            }
            let done = if in_place && s.per_attempt && i < MAX_KEPT_STEPS {
                // Undone after the attempt (`park::undo_in_place`).
                let done = run_step_made(s, tree, below, &mut stay.undo.made[i]);
                if done.is_ok() {
                    stay.undo.mounted |= 1 << i;
                }
                done
            } else {
                run_step(s, tree, below)
            };
            if tree >= 0 {
                libc::close(tree);
            }
            if let Err(e) = done {
                if s.optional {
                    send(p.status, msg::STEP_SKIPPED, i as u32, e);
                } else {
                    fail(p, i as u32, e);
                }
            }
        }
        if kept {
            // The root already.
        } else if libc::chdir(p.root.newroot.as_ptr()) != 0 {
            fail(p, step::PIVOT, errno());
        } else if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0 {
            if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
                fail(p, step::PIVOT, errno());
            }
        } else {
            // The host root cannot be pivoted (an initramfs): move and chroot.
            if let Err(e) = mount(Some(c"."), c"/", None, libc::MS_MOVE, None) {
                fail(p, step::PIVOT, e);
            }
            if libc::chroot(c".".as_ptr()) != 0 {
                fail(p, step::PIVOT, errno());
            }
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            fail(p, step::CHDIR, errno());
        }

        write_files(p);

        for (i, test) in p.preflight.iter().enumerate() {
            send(p.status, msg::PREFLIGHT_START, i as u32, 0);
            let (pid, exec_err) = match spawn(p, &test.exec, test.out, test.out, false) {
                Ok(r) => r,
                Err((s, e)) => fail(p, s, e),
            };
            let status = wait_for(pid);
            libc::close(test.out);
            if exec_err != 0 {
                send(p.status, msg::PREFLIGHT_EXEC_FAILED, i as u32, exec_err);
                libc::_exit(1);
            }
            send(p.status, msg::PREFLIGHT_EXIT, i as u32, status);
            if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                libc::_exit(1);
            }
        }

        if in_place && !stay.placed {
            crate::park::placed(stay);
        }
        send(p.status, msg::READY, 0, 0);
        run_command(p, stay.base >= 0 || stay.placed)
    }
}

/// Mounts one step: at `tree` (a detached private directory) when there is
/// one, else as it says; then read-only if it says so.
/// `below`: the bytes of the new root's path to take off its paths (0 in
/// the host's view; in a kept root, where the new root is `/`, its length).
pub(crate) unsafe fn run_step(s: &Step, tree: c_int, below: usize) -> Result<(), c_int> {
    unsafe { run_step_made(s, tree, below, &mut 0) }
}

/// [`run_step`], recording in `made` the mount points it made (see [`step_dirs`]).
pub(crate) unsafe fn run_step_made(
    s: &Step,
    tree: c_int,
    below: usize,
    made: &mut u64,
) -> Result<(), c_int> {
    let target = below_root(&s.target, below);
    let mount_step = || unsafe {
        if tree >= 0 {
            return attach(tree, target);
        }
        mount(
            s.source.as_deref(),
            target,
            s.fstype.as_deref(),
            s.flags,
            s.data.as_deref(),
        )
    };
    // The mount point is made only where it is missing: most are host paths
    // the root shows already, and each `mkdir` that finds one there costs a
    // lookup through the overlay per level.
    unsafe {
        if s.dirs_first {
            step_dirs(&s.mkdirs, below, made).and_then(|()| mount_step())
        } else {
            match mount_step() {
                Err(libc::ENOENT) if !s.mkdirs.is_empty() => {
                    step_dirs(&s.mkdirs, below, made).and_then(|()| mount_step())
                }
                other => other,
            }
        }
        .and_then(|()| {
            if s.readonly {
                make_readonly(target)
            } else {
                Ok(())
            }
        })
    }
}

/// Moves this process into a copy of the kept root's namespace `template`:
/// true when it did. False when it could not join it: then in a copy of its
/// own namespace, to build the root itself. Ends the init when it can have
/// no namespace of its own.
unsafe fn enter_template(p: &ChildPlan) -> bool {
    unsafe {
        let joined = libc::setns(p.template, libc::CLONE_NEWNS) == 0;
        // A copy, so that nothing this sandbox mounts reaches the template.
        own_namespace(p);
        joined
    }
}

/// Moves this process into a copy of its mount namespace (an init cloned
/// to join a template has none of its own yet); ends the init when it cannot.
unsafe fn own_namespace(p: &ChildPlan) {
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            fail(p, step::PRIVATE, errno());
        }
    }
}

/// Builds a kept root in this thread's mount namespace (a fresh one, see
/// [`crate::kept_root`]): the root as [`setup_root`] makes it with its
/// writable layer in memory, and the host's mounts bound in (the
/// [`When::Overlay`] steps). The upper directory of its writable layer,
/// opened; an errno when any of it fails (the attempt's init then builds
/// its own root, and says what failed).
///
/// # Safety
/// Only in a mount namespace made for it: what it mounts stays there.
pub(crate) unsafe fn build_kept_root(p: &ChildPlan) -> Result<c_int, c_int> {
    let r = &p.root;
    let mut upper = -1;
    unsafe {
        mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
        let made = overlay_in_memory(p, &mut [], Some(&mut upper))
            .and_then(|()| mount(None, &r.newroot, None, libc::MS_UNBINDABLE, None))
            .and_then(|()| {
                p.steps
                    .iter()
                    .filter(|s| s.when == When::Overlay)
                    .try_for_each(|s| run_step(s, -1, 0))
            })
            .and_then(|()| {
                // Its own empty tmpfs each, read-only: every copy shows it.
                p.steps
                    .iter()
                    .filter(|s| s.when == When::Shared)
                    .try_for_each(|s| run_step(s, -1, 0).and_then(|()| make_readonly(&s.target)))
            })
            .and_then(|()| {
                // The root becomes the namespace's own, the host's mounts
                // around it gone: each copy of the namespace copies (and
                // frees when its sandbox ends) only the root's mounts, and
                // no sandbox pivots into it again.
                if libc::chdir(r.newroot.as_ptr()) != 0 {
                    return Err(errno());
                }
                if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
                    return Err(errno());
                }
                if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
                    return Err(errno());
                }
                Ok(())
            });
        match made {
            Ok(()) => Ok(upper),
            Err(e) => {
                if upper >= 0 {
                    libc::close(upper);
                }
                Err(e)
            }
        }
    }
}

/// Reads one byte of the go socket; None at EOF or on an error.
unsafe fn read_go(fd: c_int) -> Option<u8> {
    let mut byte = 0u8;
    loop {
        // SAFETY: read one byte into a local.
        let n = unsafe { libc::read(fd, &mut byte as *mut u8 as *mut c_void, 1) };
        if n == 1 {
            return Some(byte);
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        return None;
    }
}

fn monotonic_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local (async-signal-safe).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// Kills every process of the namespace but the init, and reaps them all.
pub(crate) unsafe fn kill_all_and_reap() {
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        loop {
            let mut status: c_int = 0;
            let r = libc::waitpid(-1, &mut status, 0);
            if r < 0 && errno() != libc::EINTR {
                break;
            }
        }
    }
}

/// The init after set-up: waits for [`go::RUN`], runs the command, reaps
/// every process and reports the command's wait status; a [`go::STOP_RUN`]
/// stops it early. After each `EXITED` it waits for the next byte: another
/// run in the same sandbox (a restart in place), or EOF to end. With
/// `may_stay`, an EOF after a run returns (the caller tears the attempt
/// down and waits for the next); any other end ends the init.
unsafe fn run_command(p: &ChildPlan, may_stay: bool) {
    unsafe {
        // SIGCHLD through a descriptor, so one poll waits for the command and the controller.
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &chld, ptr::null_mut());
        let sfd = libc::signalfd(-1, &chld, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if sfd < 0 {
            fail(p, step::PIPE, errno());
        }
        let mut runs = 0u32;
        loop {
            match read_go(p.go) {
                Some(go::RUN) => {}
                // A stop with nothing running: nothing to do.
                Some(_) => continue,
                // The attempt is over: its init stays for the next.
                None if may_stay && runs > 0 => {
                    libc::close(sfd);
                    return;
                }
                // The controller said no (or is gone): leaving kills whatever is left.
                None => libc::_exit(0),
            }
            if runs > 0 {
                // What the last run left behind goes before the next starts.
                kill_all_and_reap();
            }
            runs += 1;
            let (pid, exec_err) = match spawn(p, &p.command, p.stdout, p.stderr, true) {
                Ok(r) => r,
                Err((s, e)) => fail(p, s, e),
            };
            if exec_err != 0 {
                wait_for(pid);
                send(p.status, msg::EXEC_FAILED, 0, exec_err);
                libc::_exit(0);
            }
            send(p.status, msg::STARTED, 0, 0);
            let status = wait_or_stop(p, sfd, pid);
            send(p.status, msg::EXITED, 0, status);
        }
    }
}

/// Waits for `pid` (reaping every other process that ends meanwhile) while
/// watching the go socket: a [`go::STOP_RUN`] sends SIGTERM to every process
/// of the namespace and SIGKILL after the grace; EOF ends the sandbox.
/// Returns the command's wait status.
unsafe fn wait_or_stop(p: &ChildPlan, sfd: c_int, pid: pid_t) -> c_int {
    unsafe {
        let mut kill_at: Option<i64> = None;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: sfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: p.go,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout = match kill_at {
                Some(at) => (at - monotonic_ms()).clamp(0, i64::from(c_int::MAX)) as c_int,
                None => -1,
            };
            let n = libc::poll(fds.as_mut_ptr(), 2, timeout);
            if n < 0 && errno() != libc::EINTR {
                // Cannot wait for both: wait for the command alone.
                return wait_for(pid);
            }
            if fds[0].revents != 0 {
                let mut info: libc::signalfd_siginfo = std::mem::zeroed();
                while libc::read(
                    sfd,
                    &mut info as *mut libc::signalfd_siginfo as *mut c_void,
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                ) > 0
                {}
                loop {
                    let mut status: c_int = 0;
                    let r = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if r == pid {
                        if kill_at.is_some() {
                            // Stopped for a restart: nothing of this run may linger.
                            kill_all_and_reap();
                        }
                        return status;
                    }
                    if r <= 0 {
                        break;
                    }
                }
            }
            if fds[1].revents != 0 {
                match read_go(p.go) {
                    Some(go::STOP_RUN) if kill_at.is_none() => {
                        libc::kill(-1, libc::SIGTERM);
                        kill_at = Some(monotonic_ms() + RESTART_GRACE_MS);
                    }
                    Some(_) => {}
                    // EOF: the controller ends the attempt. Leaving kills everything.
                    None => libc::_exit(0),
                }
            }
            if let Some(at) = kill_at
                && monotonic_ms() >= at
            {
                libc::kill(-1, libc::SIGKILL);
                kill_at = Some(i64::MAX / 2);
            }
        }
    }
}
