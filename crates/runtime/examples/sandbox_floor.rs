//! What the kernel alone charges for a sandbox shaped like the host sandbox's,
//! with no osmo around it: `bench/sandbox-floor.py` runs it against `xargs`.
//!
//! `sandbox_floor MODE N P SCRATCH [SUBMOUNT...]` runs N tasks, P at once (as
//! `xargs -P`), each `/usr/bin/true` in a child made with a new mount and PID
//! namespace. MODE says what the child does before it runs the command:
//!
//! - `namespace`: nothing (the namespaces only).
//! - `overlay`: the host sandbox's root: a tmpfs for the writable layer, an
//!   overlay of `/` on it, each SUBMOUNT bound in recursively and made
//!   read-only, a new `/proc`, a private `/dev/shm`, `pivot_root` and the old
//!   root detached.
//! - `template`: the `overlay` root made once for each of the P slots, each
//!   in a mount namespace of its own; a task joins a copy of its slot's
//!   (`setns`, `unshare`) and mounts only `/proc` and `/dev/shm` before the
//!   pivot (what osmo's kept roots do, `kept_root.rs`).
//! - `warm`: the `template` root, with one init per slot that stays: it
//!   joins a copy of the template once, mounts `/proc` once, and then runs
//!   task after task, each with a fresh private `/dev/shm` (the last one's
//!   unmounted), every process the task left killed and reaped before the
//!   next: what reusing a sandbox's namespaces for the next attempt would
//!   cost at least.
//! - `readonly`: the same with a read-only recursive bind of `/` for the root
//!   (the host sandbox's last fallback), so no overlay and no SUBMOUNT binds.
//! - `runtime`: osmo's own runtime, `run_attempt` on P threads through the
//!   spawner, as the node agent runs an attempt (its output directory, `/root`
//!   and `/home` hidden, as `nobody`), without the agent, the server or a
//!   network. SUBMOUNTs are not used: the runtime finds them itself.
//!
//! All but `runtime` have no logs, no IPC, no files, no network, no cgroup, no
//! user change: a floor, not a model of everything an attempt does. Needs
//! root. Exits non-zero if a task fails, naming the step.

use std::ffi::{CStr, CString};
use std::ptr;

use libc::{c_char, c_int, c_ulong, c_void};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Namespace,
    Overlay,
    ReadOnly,
    Runtime,
    Template,
    Warm,
}

/// Everything a child needs, made before any clone.
struct Plan {
    mode: Mode,
    /// The new root and the writable layer's tmpfs (its upper and work
    /// directories, the overlay's options). One of each serves every task at
    /// once: each child mounts on them in its own mount namespace.
    root: CString,
    layer: (CString, CString, CString, CString),
    /// (source, target below the root).
    binds: Vec<(CString, CString)>,
    proc: CString,
    shm: CString,
    program: CString,
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL in a path")
}

fn main() {
    // The sandbox spawner is this program run again (as the agent's is the agent's).
    osmo_runtime::spawner::serve_if_asked();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(n), Some(p), Some(scratch)) = (
        args.first().and_then(|m| match m.as_str() {
            "namespace" => Some(Mode::Namespace),
            "overlay" => Some(Mode::Overlay),
            "readonly" => Some(Mode::ReadOnly),
            "runtime" => Some(Mode::Runtime),
            "template" => Some(Mode::Template),
            "warm" => Some(Mode::Warm),
            _ => None,
        }),
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
        args.get(2)
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| *p > 0),
        args.get(3),
    ) else {
        eprintln!(
            "usage: sandbox_floor namespace|overlay|template|warm|readonly|runtime N P SCRATCH [SUBMOUNT...]"
        );
        std::process::exit(2);
    };
    if mode == Mode::Runtime {
        return through_the_runtime(n, p, std::path::Path::new(scratch));
    }
    let submounts = &args[4..];
    // One plan serves every task at once (each child mounts in its own
    // namespace), or, for `template`, one root per slot.
    let slots: Vec<(Plan, c_int)> = if mode == Mode::Template || mode == Mode::Warm {
        (0..p)
            .map(|i| {
                let plan = plan_in(mode, &format!("{scratch}/{i}"), submounts);
                // SAFETY: this program has one thread so far.
                let template = unsafe { make_template(&plan) };
                (plan, template)
            })
            .collect()
    } else {
        vec![(plan_in(mode, scratch, submounts), -1)]
    };
    if mode == Mode::Warm {
        // SAFETY: this program has one thread.
        return unsafe { warm(&slots, n) };
    }
    let mut free: Vec<usize> = (0..p).collect();
    let mut slot_of = std::collections::HashMap::new();
    let (mut running, mut started, mut done) = (0, 0, 0);
    while done < n {
        while running < p && started < n {
            let slot = free.pop().expect("a free slot while fewer than P run");
            let (plan, template) = &slots[slot.min(slots.len() - 1)];
            // With a template the child joins a copy of its namespace instead.
            let own_namespace = if *template >= 0 { 0 } else { libc::CLONE_NEWNS };
            // SAFETY: this program has one thread; the child runs `task`,
            // which ends in `_exit`.
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (own_namespace | libc::CLONE_NEWPID | libc::SIGCHLD) as c_ulong,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                )
            };
            if pid == 0 {
                // SAFETY: in the child, over the plan made before the clone.
                unsafe { task(plan, *template) };
            }
            assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
            slot_of.insert(pid as c_int, slot);
            running += 1;
            started += 1;
        }
        let mut status = 0;
        // SAFETY: waiting for any child of this process.
        let pid = unsafe { libc::wait(&mut status) };
        if pid > 0 {
            free.extend(slot_of.remove(&pid));
            running -= 1;
            done += 1;
            if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                eprintln!("a task failed (wait status {status:#x})");
                std::process::exit(1);
            }
        }
    }
}

/// The plan of a root at `dir`/root, its writable layer at `dir`/layer.
fn plan_in(mode: Mode, dir: &str, submounts: &[String]) -> Plan {
    let root = format!("{dir}/root");
    let layer = format!("{dir}/layer");
    for dir in [&root, &layer] {
        std::fs::create_dir_all(dir).expect("make the scratch directories");
    }
    Plan {
        mode,
        root: c(&root),
        layer: (
            c(&layer),
            c(&format!("{layer}/upper")),
            c(&format!("{layer}/work")),
            c(&format!(
                "lowerdir=/,upperdir={layer}/upper,workdir={layer}/work"
            )),
        ),
        binds: submounts
            .iter()
            .map(|m| (c(m), c(&format!("{root}{m}"))))
            .collect(),
        proc: c(&format!("{root}/proc")),
        shm: c(&format!("{root}/dev/shm")),
        program: c("/usr/bin/true"),
    }
}

/// Makes `plan`'s overlay root in a new mount namespace and comes back: the
/// namespace, open.
///
/// # Safety
/// Only while this process has one thread.
unsafe fn make_template(plan: &Plan) -> c_int {
    unsafe {
        let home = libc::open(
            c"/proc/self/ns/mnt".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if home < 0 || libc::unshare(libc::CLONE_NEWNS) != 0 {
            fail(c"a namespace for the template");
        }
        mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE, None);
        overlay_root(plan);
        let template = libc::open(
            c"/proc/self/ns/mnt".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if template < 0 || libc::setns(home, libc::CLONE_NEWNS) != 0 {
            fail(c"back from the template");
        }
        libc::close(home);
        template
    }
}

/// The host sandbox's root: the writable layer's tmpfs, the overlay of `/`
/// on it, each submount bound in read-only.
unsafe fn overlay_root(plan: &Plan) {
    let (layer, upper, work, data) = &plan.layer;
    unsafe {
        mount(
            c"layer",
            layer,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"mode=0700"),
        );
        if libc::mkdir(upper.as_ptr(), 0o755) != 0 || libc::mkdir(work.as_ptr(), 0o700) != 0 {
            fail(c"mkdir");
        }
        mount(c"floor", &plan.root, Some(c"overlay"), 0, Some(data));
        for (source, target) in &plan.binds {
            mount(source, target, None, libc::MS_BIND | libc::MS_REC, None);
            read_only(target);
        }
    }
}

unsafe fn fail(step: &CStr) -> ! {
    unsafe {
        libc::perror(step.as_ptr());
        libc::_exit(100)
    }
}

unsafe fn mount(
    source: &CStr,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) {
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.map_or(ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(ptr::null(), |d| d.as_ptr() as *const c_void),
        )
    };
    if r != 0 {
        unsafe { fail(target) }
    }
}

/// `mount_setattr(target, AT_RECURSIVE, MOUNT_ATTR_RDONLY)`.
unsafe fn read_only(target: &CStr) {
    #[repr(C)]
    struct MountAttr {
        set: u64,
        clr: u64,
        propagation: u64,
        userns: u64,
    }
    let attr = MountAttr {
        set: 1,
        clr: 0,
        propagation: 0,
        userns: 0,
    };
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        unsafe { fail(target) }
    }
}

/// The child: the root as the mode says (or a copy of `template`'s), then
/// the command, waited for.
unsafe fn task(plan: &Plan, template: c_int) -> ! {
    unsafe {
        if template >= 0
            && (libc::setns(template, libc::CLONE_NEWNS) != 0
                || libc::unshare(libc::CLONE_NEWNS) != 0)
        {
            fail(c"a copy of the template");
        }
        if plan.mode != Mode::Namespace {
            let root = &plan.root;
            mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE, None);
            if plan.mode == Mode::Overlay {
                overlay_root(plan);
            } else if plan.mode == Mode::Template {
                // Made already.
            } else {
                mount(c"/", root, None, libc::MS_BIND | libc::MS_REC, None);
                read_only(root);
            }
            mount_proc(plan);
            mount(
                c"shm",
                &plan.shm,
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(c"mode=1777"),
            );
            pivot_into(root);
        }
        let status = run_program(plan);
        libc::_exit(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            1
        })
    }
}

/// `warm`: one init per slot, made once, that runs the tasks it is handed
/// (one byte each on its pipe) and answers each one's status.
///
/// # Safety
/// Only while this process has one thread.
unsafe fn warm(slots: &[(Plan, c_int)], n: usize) {
    unsafe {
        // (to the init, from the init) per slot.
        let mut pipes = Vec::new();
        for (plan, template) in slots {
            let (mut go, mut back) = ([0; 2], [0; 2]);
            if libc::pipe(go.as_mut_ptr()) != 0 || libc::pipe(back.as_mut_ptr()) != 0 {
                fail(c"pipe");
            }
            let pid = libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWPID | libc::SIGCHLD) as c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            );
            if pid == 0 {
                libc::close(go[1]);
                libc::close(back[0]);
                warm_init(plan, *template, go[0], back[1]);
            }
            assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
            libc::close(go[0]);
            libc::close(back[1]);
            pipes.push((go[1], back[0]));
        }
        let (mut started, mut done) = (0, 0);
        for &(go, _) in &pipes {
            if started < n {
                libc::write(go, b"r".as_ptr() as *const c_void, 1);
                started += 1;
            }
        }
        while done < n {
            let mut fds: Vec<libc::pollfd> = pipes
                .iter()
                .map(|&(_, back)| libc::pollfd {
                    fd: back,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            if libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) < 0 {
                continue;
            }
            for (i, fd) in fds.iter().enumerate().filter(|(_, f)| f.revents != 0) {
                let mut status: c_int = 0;
                if libc::read(fd.fd, &mut status as *mut c_int as *mut c_void, 4) != 4 {
                    eprintln!("a warm init ended");
                    std::process::exit(1);
                }
                if status != 0 {
                    eprintln!("a task failed (wait status {status:#x})");
                    std::process::exit(1);
                }
                done += 1;
                if started < n {
                    libc::write(pipes[i].0, b"r".as_ptr() as *const c_void, 1);
                    started += 1;
                }
            }
        }
        // Closing the pipes ends the inits.
        for (go, back) in pipes {
            libc::close(go);
            libc::close(back);
        }
        while libc::wait(ptr::null_mut()) > 0 {}
    }
}

/// A warm init: the template's root once, then a task per byte on `go`.
unsafe fn warm_init(plan: &Plan, template: c_int, go: c_int, back: c_int) -> ! {
    unsafe {
        if libc::setns(template, libc::CLONE_NEWNS) != 0 || libc::unshare(libc::CLONE_NEWNS) != 0 {
            fail(c"a copy of the template");
        }
        mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE, None);
        mount_proc(plan);
        pivot_into(&plan.root);
        let mut shm = false;
        let mut byte = 0u8;
        while libc::read(go, &mut byte as *mut u8 as *mut c_void, 1) == 1 {
            if shm && libc::umount2(c"/dev/shm".as_ptr(), libc::MNT_DETACH) != 0 {
                fail(c"unmount the last /dev/shm");
            }
            mount(
                c"shm",
                c"/dev/shm",
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(c"mode=1777"),
            );
            shm = true;
            let status = run_program(plan);
            // Nothing of this task may outlive it.
            libc::kill(-1, libc::SIGKILL);
            while libc::waitpid(-1, ptr::null_mut(), 0) > 0 {}
            libc::write(back, &status as *const c_int as *const c_void, 4);
        }
        libc::_exit(0)
    }
}

/// A new `/proc` in the root.
unsafe fn mount_proc(plan: &Plan) {
    unsafe {
        mount(
            c"proc",
            &plan.proc,
            Some(c"proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )
    }
}

/// Makes `root` this process's root, the old one detached.
unsafe fn pivot_into(root: &CStr) {
    unsafe {
        if libc::chdir(root.as_ptr()) != 0 {
            fail(c"chdir");
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            fail(c"pivot_root");
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
            fail(c"detach the old root");
        }
    }
}

/// Runs the plan's program in a child and waits for it: its wait status.
unsafe fn run_program(plan: &Plan) -> c_int {
    unsafe {
        let child = libc::fork();
        if child == 0 {
            let argv: [*const c_char; 2] = [plan.program.as_ptr(), ptr::null()];
            libc::execv(plan.program.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
        let mut status: c_int = 0;
        libc::waitpid(child, &mut status, 0);
        status
    }
}

struct Quiet;

impl osmo_runtime::Supervisor for Quiet {
    fn log(&self, _: osmo_runtime::Stream, _: &str) {}
    fn setup_done(&self) -> bool {
        true
    }
    fn started(&self) {}
}

/// N attempts of `true` through `run_attempt`, P threads taking the next one
/// in turn, each thread keeping one scratch directory (recycled as the agent's
/// pool does).
fn through_the_runtime(n: usize, p: usize, scratch: &std::path::Path) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if let Err(e) = osmo_runtime::spawner::start(std::path::Path::new("/proc/self/exe")) {
        eprintln!("no sandbox spawner ({e}): inits are forked by each thread");
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|threads| {
        for worker in 0..p {
            let next = &next;
            threads.spawn(move || {
                let own = scratch.join(format!("scratch-{worker}"));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let spec = osmo_runtime::AttemptSpec {
                        workflow_id: "floor-1".into(),
                        group: format!("t{i}"),
                        task: format!("t{i}"),
                        command: vec!["true".into()],
                        output_dir: scratch.join(format!("runs/t{i}/0/output")),
                        scratch_dir: own.clone(),
                        hidden_paths: vec![scratch.join("runs"), "/root".into(), "/home".into()],
                        run_as: Some((65534, 65534)),
                        ..osmo_runtime::AttemptSpec::default()
                    };
                    let outcome =
                        osmo_runtime::run_attempt(&spec, &Quiet, &osmo_runtime::StopHandle::new());
                    if outcome.codes.iter().any(|c| c.code != 0) {
                        eprintln!("attempt {i} failed: {:?}", outcome.codes);
                        std::process::exit(1);
                    }
                    if !osmo_runtime::recycle_scratch(&own) {
                        let _ = std::fs::remove_dir_all(&own);
                    }
                }
            });
        }
    });
}
