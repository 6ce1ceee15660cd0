//! The controller side of an attempt: prepare, fork the sandbox's init,
//! relay its output and messages to the [`Supervisor`], collect the codes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::c_int;
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};

use crate::cgroup::MemoryCgroup;
use crate::child::{self, go as go_byte, msg, step};
use crate::env::{expand_env_refs, task_environment};
use crate::error::{PrepareError, errno_text};
use crate::plan::{self, Layout, PlanFds, Prepared};
use crate::{AttemptSpec, Outcome, StopHandle, Stream, Supervisor};

/// Longest line handed to [`Supervisor::log`]; longer ones are split.
const MAX_LINE: usize = 64 * 1024;

/// Runs one attempt (blocking) and returns every code it saw.
pub fn run_attempt(spec: &AttemptSpec, sup: &dyn Supervisor, stop: &StopHandle) -> Outcome {
    if stop.is_stopped() {
        return Outcome::default();
    }
    let mut run = Run {
        sup,
        codes: Vec::new(),
        running: false,
        stopping: None,
        entry: None,
        stays: None,
        released: false,
    };
    let env = task_environment(spec);
    let argv: Vec<String> = spec
        .command
        .iter()
        .chain(&spec.args)
        .map(|a| expand_env_refs(a, &env))
        .collect();

    let tests = crate::policy::preflight_tests(spec, |m| run.osmo(m));
    let test_argv: Vec<Vec<String>> = tests
        .iter()
        .map(|t| t.command.iter().map(|a| expand_env_refs(a, &env)).collect())
        .collect();

    let layout = match Layout::create(&spec.scratch_dir) {
        Ok(l) => l,
        Err(e) => return run.fail(e.into_code()),
    };

    let mut cgroup = None;
    let mut rlimit_as = 0;
    if let Some(limit) = spec.memory_limit_bytes {
        match MemoryCgroup::create(limit, &spec.task) {
            Ok(cg) => cgroup = Some(cg),
            Err(why) => {
                run.osmo(&format!(
                    "memory limit: {why}; falling back to RLIMIT_AS of {limit} bytes per process \
                     (going over it fails allocations instead of reporting 3004)"
                ));
                rlimit_as = limit;
            }
        }
    }

    run.attempt(
        spec,
        &env,
        &argv,
        &tests,
        &test_argv,
        &layout,
        cgroup.as_ref(),
        rlimit_as,
        stop,
    );

    if let Some(cg) = cgroup {
        let killed_by_sigkill = run
            .codes
            .iter()
            .any(|c| c.source == CodeSource::User && c.code == 137);
        if !stop.is_stopped() && cg.oom_killed(killed_by_sigkill) {
            let code =
                crate::policy::evicted_for_memory(spec.memory_limit_bytes, "the command was");
            run.osmo(code.detail.as_deref().unwrap_or_default());
            run.codes.push(code);
        }
        if let Err(e) = cg.remove() {
            run.osmo(&e);
        }
    }
    Outcome { codes: run.codes }
}

struct Run<'a> {
    sup: &'a dyn Supervisor,
    codes: Vec<ReportedCode>,
    /// The command runs (STARTED seen, EXITED not yet).
    running: bool,
    /// The running command is being stopped for a restart in place, for this reason.
    stopping: Option<String>,
    /// How to enter the sandbox, published once its set-up is done.
    entry: Option<crate::enter::SandboxEntry>,
    /// The init, when it may stay after the attempt ([`crate::park`]).
    stays: Option<libc::pid_t>,
    /// It was let stay: the attempt ends without reaping it.
    released: bool,
}

/// Sends one byte to the init; false when it is gone.
fn send_go(go: &Option<OwnedFd>, byte: u8) -> bool {
    go.as_ref().is_some_and(|fd| {
        // SAFETY: send one byte on our socket; no SIGPIPE if the peer is gone.
        unsafe {
            libc::send(
                fd.as_raw_fd(),
                [byte].as_ptr() as *const libc::c_void,
                1,
                libc::MSG_NOSIGNAL,
            ) == 1
        }
    })
}

/// The eventfd a [`StopHandle::restart`] pokes, registered while it lives.
struct Wake<'a> {
    fd: OwnedFd,
    stop: &'a StopHandle,
}

impl<'a> Wake<'a> {
    fn new(stop: &'a StopHandle) -> Result<Wake<'a>, PrepareError> {
        // SAFETY: eventfd(2); the descriptor is ours.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(last_error("create an eventfd"));
        }
        let fd = high(fd)?;
        stop.set_wake(Some(fd.as_raw_fd()));
        Ok(Wake { fd, stop })
    }

    fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: read(2) of 8 bytes into a local from our non-blocking eventfd.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut value as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }
}

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        // Unregistered before the descriptor closes, so no poke hits a reused number.
        self.stop.set_wake(None);
    }
}

/// `/dev/null`, opened once for the process's attempts (their inits dup it).
fn devnull() -> Result<RawFd, PrepareError> {
    static DEVNULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = DEVNULL.get() {
        return Ok(fd.as_raw_fd());
    }
    // SAFETY: open(2) of a constant path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_error("open /dev/null"));
    }
    let fd = high(fd)?;
    // (Two threads that race here each open one; the loser's closes.)
    Ok(DEVNULL.get_or_init(|| fd).as_raw_fd())
}

/// The controller's ends and the child's ends of every channel.
struct Channels {
    status_r: OwnedFd,
    status_w: OwnedFd,
    go_parent: OwnedFd,
    go_child: OwnedFd,
    out_r: OwnedFd,
    out_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
    /// The process's, not closed with the channels.
    devnull: RawFd,
    preflight: Vec<(OwnedFd, OwnedFd)>,
}

fn last_error(what: &str) -> PrepareError {
    PrepareError::Io {
        what: what.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

/// Moves a descriptor above 2, so that dup2 onto 0..2 in the child can't clobber it.
fn high(fd: RawFd) -> Result<OwnedFd, PrepareError> {
    // SAFETY: fd was just returned to us by the kernel and is ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if fd > 2 {
        return Ok(owned);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(last_error("duplicate a descriptor"));
    }
    // SAFETY: new is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pipe(nonblocking_read: bool) -> Result<(OwnedFd, OwnedFd), PrepareError> {
    let mut fds: [c_int; 2] = [-1, -1];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_error("create a pipe"));
    }
    let (r, w) = (high(fds[0])?, high(fds[1])?);
    if nonblocking_read {
        // (A new pipe's read end has no other status flag to keep.)
        // SAFETY: fcntl on our descriptor.
        unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    }
    Ok((r, w))
}

impl Channels {
    fn new(preflight: usize) -> Result<Channels, PrepareError> {
        let (status_r, status_w) = pipe(true)?;
        let mut pair: [c_int; 2] = [-1, -1];
        // SAFETY: socketpair into a local array.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        } != 0
        {
            return Err(last_error("create a socket pair"));
        }
        let (go_parent, go_child) = (high(pair[0])?, high(pair[1])?);
        let (out_r, out_w) = pipe(true)?;
        let (err_r, err_w) = pipe(true)?;
        let devnull = devnull()?;
        let preflight = (0..preflight)
            .map(|_| pipe(true))
            .collect::<Result<_, _>>()?;
        Ok(Channels {
            status_r,
            status_w,
            go_parent,
            go_child,
            out_r,
            out_w,
            err_r,
            err_w,
            devnull,
            preflight,
        })
    }
}

/// Accumulates bytes of one stream and hands out whole lines.
struct LineReader {
    fd: OwnedFd,
    stream: Stream,
    prefix: String,
    buf: Vec<u8>,
    open: bool,
}

impl LineReader {
    fn new(fd: OwnedFd, stream: Stream, prefix: String) -> LineReader {
        LineReader {
            fd,
            stream,
            prefix,
            buf: Vec::new(),
            open: true,
        }
    }

    /// Reads what is there now (the descriptor is non-blocking).
    fn drain(&mut self, sup: &dyn Supervisor) {
        let mut chunk = [0u8; 16 * 1024];
        while self.open {
            // SAFETY: read into a local buffer.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    chunk.as_mut_ptr() as *mut libc::c_void,
                    chunk.len(),
                )
            };
            if n > 0 {
                self.buf.extend_from_slice(&chunk[..n as usize]);
                self.emit(sup, false);
            } else if n == 0 {
                self.open = false;
                self.emit(sup, true);
            } else {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => break,
                    _ => {
                        self.open = false;
                        self.emit(sup, true);
                    }
                }
            }
        }
    }

    fn emit(&mut self, sup: &dyn Supervisor, eof: bool) {
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            let cut = match rest.iter().position(|&b| b == b'\n') {
                Some(pos) if pos <= MAX_LINE => Some((pos, pos + 1)),
                _ if rest.len() > MAX_LINE => Some((MAX_LINE, MAX_LINE)),
                _ if eof && !rest.is_empty() => Some((rest.len(), rest.len())),
                _ => None,
            };
            let Some((len, skip)) = cut else { break };
            let line = String::from_utf8_lossy(&rest[..len]);
            sup.log(self.stream, &format!("{}{}", self.prefix, line));
            start += skip;
        }
        self.buf.drain(..start);
    }
}

/// A wait status as (exit code 0–255 or 128+signal, words).
fn decode_status(status: c_int) -> (u32, String) {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig as u32, format!("killed by signal {sig}"))
    } else {
        let code = libc::WEXITSTATUS(status) as u32;
        (code, format!("exit {code}"))
    }
}

impl Run<'_> {
    fn osmo(&self, line: &str) {
        self.sup.log(Stream::Osmo, line);
    }

    fn push(&mut self, code: u32, source: CodeSource, detail: String) {
        self.osmo(&detail);
        self.codes.push(ReportedCode {
            code,
            source,
            detail: Some(detail),
        });
    }

    fn fail(mut self, code: ReportedCode) -> Outcome {
        if let Some(d) = &code.detail {
            self.osmo(d);
        }
        self.codes.push(code);
        Outcome { codes: self.codes }
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &mut self,
        spec: &AttemptSpec,
        env: &std::collections::BTreeMap<String, String>,
        argv: &[String],
        tests: &[&osmo_spec::config::PreflightTest],
        test_argv: &[Vec<String>],
        layout: &Layout,
        cgroup: Option<&MemoryCgroup>,
        rlimit_as: u64,
        stop: &StopHandle,
    ) {
        let ch = match Channels::new(tests.len()) {
            Ok(c) => c,
            Err(e) => return self.codes.push(e.into_code_logged(self)),
        };
        let wake = match Wake::new(stop) {
            Ok(w) => w,
            Err(e) => return self.codes.push(e.into_code_logged(self)),
        };
        let fds = PlanFds {
            devnull: ch.devnull,
            status: ch.status_w.as_raw_fd(),
            go: ch.go_child.as_raw_fd(),
            stdout: ch.out_w.as_raw_fd(),
            stderr: ch.err_w.as_raw_fd(),
            cgroup_procs: cgroup.map_or(-1, MemoryCgroup::procs_fd),
            preflight: ch.preflight.iter().map(|(_, w)| w.as_raw_fd()).collect(),
        };
        let mut prepared = match plan::build(spec, env, argv, test_argv, layout, &fds, rlimit_as) {
            Ok(p) => p,
            Err(code) => {
                if let Some(d) = &code.detail {
                    self.osmo(d);
                }
                return self.codes.push(code);
            }
        };

        let pid = match fork_init(&mut prepared) {
            Ok((pid, flags)) => {
                if flags & crate::park::MAY_STAY != 0 {
                    self.stays = Some(pid);
                }
                pid
            }
            Err(errno) => {
                let hint = if errno == libc::EPERM {
                    "; the runtime needs root (CAP_SYS_ADMIN) to create namespaces"
                } else {
                    ""
                };
                return self.push(
                    well_known::INIT_FAILURE,
                    CodeSource::Init,
                    format!(
                        "sandbox set-up failed: cannot create the PID and mount namespaces: {}{hint}",
                        errno_text(errno)
                    ),
                );
            }
        };
        stop.attach(pid);
        self.entry = Some(crate::enter::SandboxEntry {
            init: pid,
            env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            // As the plan has it: only a root runtime changes users.
            // SAFETY: geteuid has no preconditions.
            run_as: spec.run_as.filter(|_| unsafe { libc::geteuid() } == 0),
            task: spec.task.clone(),
            hosts: spec.network.as_ref().map(|n| n.hosts.clone()),
        });

        // Our copies of the child's ends must go, or we never see EOF.
        let Channels {
            status_r,
            go_parent,
            out_r,
            err_r,
            preflight,
            status_w,
            go_child,
            out_w,
            err_w,
            devnull: _,
        } = ch;
        drop((status_w, go_child, out_w, err_w));
        let mut go = Some(go_parent);
        let mut readers = vec![
            LineReader::new(out_r, Stream::Stdout, String::new()),
            LineReader::new(err_r, Stream::Stderr, String::new()),
        ];
        for ((r, w), t) in preflight.into_iter().zip(tests) {
            drop(w);
            readers.push(LineReader::new(
                r,
                Stream::Osmo,
                format!("[preflight {}] ", t.name),
            ));
        }
        let mut status = StatusReader {
            fd: status_r,
            buf: Vec::new(),
            open: true,
        };
        let mut finished = false;

        while status.open || readers.iter().any(|r| r.open) {
            let mut pfds: Vec<libc::pollfd> = vec![libc::pollfd {
                fd: wake.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if status.open {
                pfds.push(libc::pollfd {
                    fd: status.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            for r in readers.iter().filter(|r| r.open) {
                pfds.push(libc::pollfd {
                    fd: r.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: poll over a live array.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                self.osmo(&format!("poll failed: {}", std::io::Error::last_os_error()));
                stop.stop();
                break;
            }
            let ready = |fd: RawFd| pfds.iter().any(|p| p.fd == fd && p.revents != 0);
            if ready(wake.fd.as_raw_fd()) {
                wake.drain();
                self.stop_for_restart(&go, stop);
            }
            // Output first, so lines written before a message are logged before it.
            for r in readers.iter_mut().filter(|r| r.open) {
                if ready(r.fd.as_raw_fd()) {
                    r.drain(self.sup);
                }
            }
            if status.open && ready(status.fd.as_raw_fd()) {
                for m in status.read() {
                    if self.handle(m, &prepared, tests, &mut readers, &mut go, stop) {
                        finished = true;
                    }
                }
            }
        }

        if self.released {
            // It stays for the next attempt (or is reaped by the spawner's
            // client once it ends): the attempt's pipes ended once it had
            // killed and reaped everything the attempt left.
            stop.detach();
            return;
        }
        // Reap without a window for pid reuse: wait without reaping, forget
        // the pid under the stop lock, then reap.
        // SAFETY: waitid/waitpid on our own child.
        let init_status = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            while libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            ) != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            stop.detach();
            let mut st: c_int = 0;
            while libc::waitpid(pid, &mut st, 0) < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            st
        };
        if !finished && !stop.is_stopped() && go.is_some() {
            let (_, how) = decode_status(init_status);
            let oom = cgroup.is_some_and(|cg| cg.oom_killed(false));
            if !oom {
                self.push(
                    well_known::RUNTIME_UNKNOWN,
                    CodeSource::Runtime,
                    format!("the sandbox's init ended unexpectedly ({how})"),
                );
            }
        }
    }

    /// Handles one message of the init. Returns true when the attempt has
    /// reached an end (a code was recorded, or it was aborted).
    fn handle(
        &mut self,
        m: [u32; 3],
        prepared: &Prepared,
        tests: &[&osmo_spec::config::PreflightTest],
        readers: &mut [LineReader],
        go: &mut Option<OwnedFd>,
        stop: &StopHandle,
    ) -> bool {
        let [kind, index, value] = m;
        let value = value as i32;
        let step_name = |index: u32| match index {
            step::FDS => "set up standard descriptors".to_string(),
            step::CGROUP => "join the memory cgroup".to_string(),
            step::RLIMIT => "set RLIMIT_AS".to_string(),
            step::PRIVATE => "make the mount namespace private".to_string(),
            step::ROOT_BIND => "bind / as the root".to_string(),
            step::ROOT_READONLY => "make the root read-only".to_string(),
            step::PIVOT => "pivot into the new root".to_string(),
            step::CHDIR => "change to /".to_string(),
            step::PIPE => "create a pipe".to_string(),
            step::FORK => "fork".to_string(),
            step::USER => "run as the pool's unprivileged user".to_string(),
            step::NETNS => "join the workflow's network".to_string(),
            i => prepared
                .step_names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| format!("step {i}")),
        };
        let test_name = |i: u32| {
            tests
                .get(i as usize)
                .map_or("?", |t| t.name.as_str())
                .to_string()
        };
        match kind {
            msg::STEP_FAILED => {
                self.push(
                    well_known::INIT_FAILURE,
                    CodeSource::Init,
                    format!(
                        "sandbox set-up failed: {}: {}",
                        step_name(index),
                        errno_text(value)
                    ),
                );
                true
            }
            msg::STEP_SKIPPED => {
                self.osmo(&format!(
                    "warning: could not {}: {}",
                    step_name(index),
                    errno_text(value)
                ));
                false
            }
            msg::ROOT_MODE => {
                let disk = if prepared.plan.root.overlay_disk.is_none() {
                    "not tried".to_string()
                } else {
                    errno_text(value & 0xffff)
                };
                match index {
                    child::ROOT_OVERLAY_TMPFS => self.osmo(&format!(
                        "sandbox root: overlay with its writable layer in memory (on disk: {disk})"
                    )),
                    _ => self.osmo(&format!(
                        "sandbox root: read-only bind of / (overlay on disk: {disk}; on tmpfs: {}); \
                         files can only be written under /tmp and the output directory",
                        if prepared.plan.root.overlay_tmpfs.is_none() {
                            "not tried".to_string()
                        } else {
                            errno_text(value >> 16)
                        }
                    )),
                }
                false
            }
            msg::FILE_FAILED => {
                let path = prepared
                    .file_paths
                    .get(index as usize)
                    .map_or("?", String::as_str);
                self.push(
                    well_known::INIT_FILES,
                    CodeSource::Init,
                    format!("cannot write file {path}: {}", errno_text(value)),
                );
                true
            }
            msg::PREFLIGHT_START => {
                self.osmo(&format!("preflight {}: running", test_name(index)));
                false
            }
            msg::PREFLIGHT_EXIT | msg::PREFLIGHT_EXEC_FAILED => {
                // The test has ended: what it wrote is in its pipe now.
                if let Some(r) = readers.get_mut(2 + index as usize) {
                    r.drain(self.sup);
                    r.emit(self.sup, true);
                }
                let name = test_name(index);
                let how = if kind == msg::PREFLIGHT_EXEC_FAILED {
                    let cmd = tests.get(index as usize).and_then(|t| t.command.first());
                    format!(
                        "cannot execute {:?}: {}",
                        cmd.map_or("", String::as_str),
                        errno_text(value)
                    )
                } else {
                    let (code, how) = decode_status(value);
                    if code == 0 {
                        self.osmo(&format!("preflight {name} passed"));
                        return false;
                    }
                    how
                };
                let code = crate::policy::preflight_failed(&name, &how);
                self.osmo(code.detail.as_deref().unwrap_or_default());
                self.codes.push(code);
                true
            }
            msg::READY => {
                // Set up: from now on a command may enter it (never before,
                // while its root is still the host's).
                if let Some(entry) = self.entry.take() {
                    stop.set_entry(Some(crate::enter::Entry::Sandbox(entry)));
                }
                self.pass_barrier(go, stop)
            }
            msg::STARTED => {
                self.running = true;
                self.sup.started();
                // A restart asked for while the command was starting.
                self.stop_for_restart(go, stop);
                false
            }
            msg::EXEC_FAILED => {
                let cmd = prepared_command(prepared);
                let (code, why) = if value == libc::ENOENT || value == libc::ENOTDIR {
                    (127, format!("command not found: {cmd:?}"))
                } else {
                    (
                        126,
                        format!("cannot execute {cmd:?}: {}", errno_text(value)),
                    )
                };
                self.push(code, CodeSource::User, why);
                true
            }
            msg::EXITED => {
                let (code, how) = decode_status(value);
                self.running = false;
                let restart = self.stopping.take().or_else(|| stop.take_restart());
                if let Some(reason) = restart
                    && !stop.is_stopped()
                {
                    self.osmo(&format!(
                        "command stopped for a restart in place ({reason}): {how}; \
                         it runs again in this sandbox after the barrier"
                    ));
                    self.sup.run_stopped(&[ReportedCode {
                        code,
                        source: CodeSource::User,
                        detail: Some(how),
                    }]);
                    return self.pass_barrier(go, stop);
                }
                // The sandbox stands until the go socket closes: the last checkpoint now.
                self.sup.run_ended();
                if let Some(pid) = self.stays.take() {
                    // Before the socket closes: from then on it may be handed out again.
                    crate::spawner::release(pid);
                    self.released = true;
                }
                // The init waits for a next run: closing the socket ends it
                // (or, one that may stay, tears the attempt down and parks).
                *go = None;
                let detail = if libc::WIFSIGNALED(value) {
                    format!("command {how} (exit code {code})")
                } else {
                    format!("command exited with code {code}")
                };
                self.osmo(&detail);
                self.codes.push(ReportedCode {
                    code,
                    source: CodeSource::User,
                    detail: libc::WIFSIGNALED(value).then(|| how.clone()),
                });
                true
            }
            other => {
                self.osmo(&format!("unknown message {other} from the sandbox's init"));
                false
            }
        }
    }
}

fn prepared_command(p: &Prepared) -> String {
    p.plan
        .command
        ._argv_store
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Run<'_> {
    /// Waits at the barrier ([`Supervisor::setup_done`]), again while a
    /// restart in place comes in meanwhile, then lets the init run the
    /// command. Returns true when the attempt ends here (aborted).
    fn pass_barrier(&mut self, go: &mut Option<OwnedFd>, stop: &StopHandle) -> bool {
        loop {
            let go_on = !stop.is_stopped() && self.sup.setup_done() && !stop.is_stopped();
            if !go_on {
                // The init reads EOF and ends without running the command.
                *go = None;
                return true;
            }
            match stop.take_restart() {
                Some(reason) => self.osmo(&format!(
                    "restart in place ({reason}) before the command started: \
                     waiting at the barrier again"
                )),
                None => break,
            }
        }
        if !send_go(go, go_byte::RUN) {
            *go = None;
            if !stop.is_stopped() {
                self.osmo("could not release the sandbox's init");
            }
            return true;
        }
        false
    }

    /// Asks the init to stop the running command when a restart in place is pending.
    fn stop_for_restart(&mut self, go: &Option<OwnedFd>, stop: &StopHandle) {
        if !self.running || self.stopping.is_some() {
            return;
        }
        if let Some(reason) = stop.take_restart() {
            self.osmo(&format!(
                "restarting in place ({reason}): stopping the command (SIGTERM, SIGKILL after {} s)",
                child::RESTART_GRACE_MS / 1000
            ));
            if send_go(go, go_byte::STOP_RUN) {
                self.stopping = Some(reason);
            }
        }
    }
}

impl PrepareError {
    fn into_code_logged(self, run: &Run<'_>) -> ReportedCode {
        let code = self.into_code();
        if let Some(d) = &code.detail {
            run.osmo(d);
        }
        code
    }
}

/// The init's message pipe.
struct StatusReader {
    fd: OwnedFd,
    buf: Vec<u8>,
    open: bool,
}

impl StatusReader {
    fn read(&mut self) -> Vec<[u32; 3]> {
        let mut chunk = [0u8; 1024];
        loop {
            // SAFETY: read into a local buffer.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    chunk.as_mut_ptr() as *mut libc::c_void,
                    chunk.len(),
                )
            };
            if n > 0 {
                self.buf.extend_from_slice(&chunk[..n as usize]);
            } else if n == 0 {
                self.open = false;
                break;
            } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                if std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                    self.open = false;
                }
                break;
            }
        }
        let whole = self.buf.len() / 12 * 12;
        let out = self.buf[..whole]
            .chunks_exact(12)
            .map(|c| {
                let word = |i: usize| u32::from_ne_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                [word(0), word(4), word(8)]
            })
            .collect();
        self.buf.drain(..whole);
        out
    }
}

/// Forks the sandbox's init into new PID and mount namespaces: through the
/// spawner when there is one (see `spawner.rs`), else here. Signals are
/// blocked around the fork so that no handler of this process runs in the
/// child before it resets them.
fn fork_init(prepared: &mut Prepared) -> Result<(libc::pid_t, u32), c_int> {
    if let Some(forked) = crate::spawner::fork_init(&prepared.plan) {
        return forked;
    }
    prepared.plan.ensure_spawn_stack();
    // SAFETY: sigset manipulation on locals; the child branch only runs the
    // async-signal-safe sandbox_init over data prepared before the fork.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = child::raw_fork((libc::CLONE_NEWPID | libc::CLONE_NEWNS) as libc::c_ulong);
        if pid == 0 {
            child::sandbox_init(&mut prepared.plan as *mut child::ChildPlan);
        }
        let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 { Err(err) } else { Ok((pid, 0)) }
    }
}
