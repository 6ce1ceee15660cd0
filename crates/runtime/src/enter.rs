//! Entering a running attempt from outside: `osmo workflow exec` runs a
//! command in its sandbox, `osmo workflow port-forward` connects to a port in
//! its network.
//!
//! The runtime publishes an [`Entry`] on the attempt's [`crate::StopHandle`]
//! once the sandbox is set up (never before: a command entering a half-built
//! sandbox could see the host's root), and withdraws it when the sandbox's
//! init goes.
//!
//! A command entering a host sandbox joins its init's mount, PID and network
//! namespaces (one `setns` on a pidfd, so a reused pid cannot mislead it), its
//! memory cgroup, its root, its user, and its environment. It is forked once
//! more after joining, so that it is itself inside the PID namespace: it sees
//! the task's processes in `ps`, and it dies with the sandbox. The process the
//! caller holds is the one in between, which waits for it and exits with its
//! code (128 + the signal when killed); killing it kills the command too.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How to reach into a running attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A host sandbox: its init and what its command was given.
    Sandbox(SandboxEntry),
    /// A container of the Docker runtime.
    Container(ContainerEntry),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEntry {
    /// The sandbox's init (PID 1 of its namespace), alive while published.
    pub init: libc::pid_t,
    /// The command's environment.
    pub env: Vec<(String, String)>,
    /// The user and group its command runs as (None: the runtime's own).
    pub run_as: Option<(u32, u32)>,
    /// The task's name and, in a workflow's network, its hosts file, where
    /// the task's own address is found.
    pub task: String,
    pub hosts: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEntry {
    /// The container; commands run in it get its environment.
    pub id: String,
    /// The workflow's network the container joined (None: the host's).
    pub network: Option<String>,
}

impl SandboxEntry {
    /// A command that runs `argv` inside the sandbox, as its task's user,
    /// with its environment, from `/`. The caller sets its stdio; with
    /// `tty`, its stdin must be a terminal, which becomes the command's
    /// controlling terminal.
    pub fn command(&self, argv: &[String], tty: bool) -> io::Result<Command> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command to run"))?;
        let pidfd = pidfd_open(self.init)?;
        // The sandbox's root as its init sees it (after its pivot).
        let root = open_path(&format!("/proc/{}/root", self.init), libc::O_DIRECTORY)?;
        let cgroup_procs = init_cgroup_procs(self.init);
        let run_as = self.run_as;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/");
        let hooks = Hooks {
            pidfd,
            root,
            cgroup_procs,
            run_as,
            tty,
        };
        // SAFETY: the hook only makes system calls on descriptors it owns and
        // data prepared here; see `Hooks::enter`.
        unsafe {
            cmd.pre_exec(move || hooks.enter());
        }
        Ok(cmd)
    }

    /// A TCP connection to `port` of the task, from inside its network: to
    /// the task's own address there, else to the loopback (where a task
    /// listening on `127.0.0.1` is found).
    pub fn connect(&self, port: u16, timeout: Duration) -> io::Result<TcpStream> {
        let own = self
            .hosts
            .as_ref()
            .and_then(|h| address_in_hosts(h, &self.task));
        let pidfd = pidfd_open(self.init)?;
        // A thread of its own joins the network namespace (a per-thread
        // property), connects, and ends: the socket stays in that namespace.
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on our pidfd, for this thread only.
                if unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut last = None;
                for ip in own.into_iter().chain([Ipv4Addr::LOCALHOST]) {
                    match TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("at least the loopback was tried"))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the connecting thread panicked")))
        })
    }
}

/// What the forked child does before its `exec`: only system calls.
struct Hooks {
    pidfd: OwnedFd,
    root: OwnedFd,
    cgroup_procs: Option<OwnedFd>,
    run_as: Option<(u32, u32)>,
    tty: bool,
}

impl Hooks {
    /// Runs in the child of `fork`, single-threaded: async-signal-safe calls only.
    fn enter(&self) -> io::Result<()> {
        // SAFETY: system calls on descriptors this struct owns; the child
        // forked here either returns to exec or ends with `_exit`.
        unsafe {
            if let Some(fd) = &self.cgroup_procs {
                // "0": the writer itself; best effort (the cgroup may be gone).
                libc::write(fd.as_raw_fd(), b"0".as_ptr() as *const libc::c_void, 1);
            }
            let namespaces = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET;
            if libc::setns(self.pidfd.as_raw_fd(), namespaces) != 0 {
                return Err(io::Error::last_os_error());
            }
            let child = crate::child::raw_fork(0);
            if child < 0 {
                return Err(io::Error::last_os_error());
            }
            if child > 0 {
                wait_and_exit(child);
            }
            // The command, in the PID namespace: it dies with the one between.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent is outside this PID namespace, so it shows as 0;
            // had it died already, the namespace's init (1) would adopt us.
            if libc::getppid() != 0 {
                libc::_exit(137);
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if self.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::fchdir(self.root.as_raw_fd()) != 0
                || libc::chroot(c".".as_ptr()) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid)) = self.run_as {
                // Bare system calls: glibc's wrappers would wait for threads
                // this child does not have.
                if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setgid, gid) != 0
                    || libc::syscall(libc::SYS_setuid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// The process in between: nothing of the caller's open (its `exec` error
/// pipe is the command's to close), wait for the command, exit with its code.
///
/// # Safety
/// Only in a forked child; never returns.
unsafe fn wait_and_exit(child: libc::pid_t) -> ! {
    unsafe {
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(255);
            }
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        libc::_exit(code)
    }
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2); the descriptor (close-on-exec) is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn open_path(path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(io::Error::other)?;
    // SAFETY: open(2) of a C string; the descriptor is ours.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `cgroup.procs` of the init's cgroup (v2), open for writing, when it has
/// one of its own.
fn init_cgroup_procs(init: libc::pid_t) -> Option<OwnedFd> {
    let ours = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let its = std::fs::read_to_string(format!("/proc/{init}/cgroup")).ok()?;
    if ours == its {
        return None;
    }
    let path = its.lines().find_map(|l| l.strip_prefix("0::"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/sys/fs/cgroup{path}/cgroup.procs"))
        .ok()
        .map(OwnedFd::from)
}

/// The address `name` has in a hosts file (`ADDRESS NAME...` lines).
fn address_in_hosts(hosts: &std::path::Path, name: &str) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string(hosts).ok()?;
    text.lines().rev().find_map(|line| {
        let mut words = line.split_whitespace();
        let ip = words.next()?;
        words
            .any(|w| w.eq_ignore_ascii_case(name))
            .then(|| ip.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_address_is_its_latest_line_in_the_hosts_file() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &hosts,
            "127.0.0.1 localhost\n127.1.0.2 server\n127.1.0.3 client\n127.1.0.9 server\n",
        )
        .unwrap();
        assert_eq!(
            address_in_hosts(&hosts, "server"),
            Some(Ipv4Addr::new(127, 1, 0, 9))
        );
        assert_eq!(
            address_in_hosts(&hosts, "client"),
            Some(Ipv4Addr::new(127, 1, 0, 3))
        );
        assert_eq!(address_in_hosts(&hosts, "serv"), None);
    }
}
