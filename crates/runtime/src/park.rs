//! A sandbox's init that stays after its attempt, for the next attempt of
//! the same shape in the same kept root.
//!
//! Why: with the root kept ([`crate::kept_root`]), a sandbox still costs a
//! new process for its init, a PID namespace and its `/proc`, all made for
//! each attempt and torn down after it. An init that stays saves those:
//! `bench/large-workflow.py` measured 4–6% less CPU per trivial task.
//!
//! How: the spawner gives the init of a plan that may stay a control socket
//! ([`ChildPlan::park`]). After the command's last run, when the controller
//! has closed the go socket, the init tells its worker, kills and reaps
//! whatever the attempt left, closes every descriptor of the attempt (the
//! controller sees its pipes end), and undoes the attempt's mounts
//! ([`park`]). The worker is idle for the next plan of the same shape
//! ([`WarmKey`]) before the attempt is seen to end, and a plan of that key
//! that comes while the worker is still busy waits for it, briefly
//! ([`crate::spawner`]). It hands the plan over with its descriptors and
//! the host paths it binds, cloned by the worker (the init's root no
//! longer shows the host's), once the init has parked; or it closes the
//! socket after [`IDLE`] and the init ends. Any other end of an attempt (a
//! failed set-up or test, a stop, a command that could not start) ends its
//! init as before.
//!
//! The mounts, two ways:
//! - **In place** ([`ChildPlan::in_place`]; Linux 6.8 or later, the task not
//!   root, the default): the init's first attempt makes every mount in the
//!   init's own namespace. The mounts every attempt of the key has (`/proc`,
//!   `/dev/shm`, the hidden directories, the network's files) stay; those
//!   of the attempt ([`child::Step::per_attempt`]: its output, inputs,
//!   volumes, hidden GPUs) are unmounted after it, last first, and the mount
//!   points made for them removed. Files left in `/dev/shm` are removed
//!   (anything else there ends the init), and the namespace must then list
//!   (`listmount`) exactly the mounts it had after the first attempt, or the
//!   init ends: a task that is not root cannot mount or change a mount but
//!   through a set-user-ID helper (`fusermount`), and such a mount is seen.
//!   An attempt costs its own mounts (one or two) and an unmount each.
//! - **In a copy** ([`attempt_namespace`]; older kernels, or
//!   `OSMO_SANDBOX_IN_PLACE=0`): each attempt makes its mounts in a copy of
//!   the init's namespace, which it leaves after the attempt, so all of them
//!   go at once. A copy of a few dozen mounts made and torn down per attempt
//!   cost about 0.15 ms of CPU more than in place (stop 27).
//!
//! (One unmount waits for an RCU grace period, expedited: an interrupt on
//! every CPU. In place, an attempt pays one per mount of its own.)
//!
//! What two attempts in one init share is what two attempts in copies of
//! one template share already (its root, whose layer the spawner checks
//! before each handover), plus the PID namespace and its `/proc`, and in
//! place the (emptied) `/dev/shm` and the hidden directories' tmpfs, which
//! the task cannot write in. Nothing of one task outlives it: its processes
//! are killed and reaped, its files in `/dev/shm` removed, its own mounts
//! (its output and inputs) and their mount points gone, and the init, which
//! stays root, changes to the task's user only in the command's own process.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use libc::{c_int, c_void};

use crate::child::{self, ChildPlan, HostTrees, MAX_KEPT_STEPS, When, step};

/// How long a parked init waits for its next attempt before it ends.
pub(crate) const IDLE: Duration = crate::kept_root::MAX_AGE;

/// Descriptors one handover carries at most (`SCM_RIGHTS` carries 253).
const MAX_HANDED: usize = 253;

/// The init's words to its worker on the control socket: its attempt has
/// ended and it is tearing it down; it is ready for the next.
const ENDED: u8 = b'e';
const PARKED: u8 = b'p';

/// Flags of the spawner's answer: the init may stay after the attempt...
pub(crate) const MAY_STAY: u32 = 1;
/// ...and it is one that stayed after an earlier attempt.
pub(crate) const REUSED: u32 = 2;

/// What makes two plans' sandboxes the same for an init that stays: the
/// same kept root (as made, its layer unchanged), the same user, the same
/// network namespace. Plans with preflight tests, a memory cgroup or an
/// address-space limit have none (their inits end with their attempts).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct WarmKey {
    pub kept: u64,
    pub run_as: Option<(libc::uid_t, libc::gid_t)>,
    pub netns: Option<(u64, u64)>,
    /// Its init stays in place ([`ChildPlan::in_place`]), and the mounts it
    /// keeps, as [`kept_mounts`] sums them up.
    pub in_place: bool,
    pub kept_mounts: u64,
}

impl WarmKey {
    /// The key of `plan` in the kept root numbered `kept`; None when its init may not stay.
    pub fn of(plan: &ChildPlan, kept: u64) -> Option<WarmKey> {
        if !plan.preflight.is_empty()
            || plan.cgroup_procs >= 0
            || plan.rlimit_as > 0
            || plan.steps.len() > MAX_KEPT_STEPS
            || plan.keep_fds.len() + MAX_KEPT_STEPS > MAX_HANDED
        {
            return None;
        }
        let netns = if plan.netns >= 0 {
            // SAFETY: fstat(2) of the plan's descriptor into a local.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstat(plan.netns, &mut st) } != 0 {
                return None;
            }
            Some((st.st_dev, st.st_ino))
        } else {
            None
        };
        // In place only where the task cannot mount or change a mount (it
        // is not root), the kernel lists mounts (for the check after each
        // attempt), and every private directory is one that stays.
        let in_place = plan.run_as.is_some_and(|(uid, _)| uid != 0)
            && plan
                .steps
                .iter()
                .all(|s| !(s.per_attempt && s.private.is_some()))
            && plan.root.in_place
            && mounts_listable();
        Some(WarmKey {
            kept,
            run_as: plan.run_as,
            netns,
            in_place,
            kept_mounts: if in_place { kept_mounts(plan) } else { 0 },
        })
    }
}

/// A digest of the mounts an init in place keeps from its first attempt
/// ([`child::Step::per_attempt`] false): their steps, and the file each bind shows
/// (device and inode: a file replaced since is bound anew, by another init).
fn kept_mounts(plan: &ChildPlan) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for s in plan
        .steps
        .iter()
        .filter(|s| s.when == When::Always && !s.per_attempt)
    {
        (&s.mkdirs, &s.source, &s.target, &s.fstype, &s.data).hash(&mut h);
        (s.flags, s.readonly, s.optional, s.private, s.dirs_first).hash(&mut h);
        if let Some(source) = s.source.as_deref()
            && s.flags & libc::MS_BIND != 0
        {
            // SAFETY: stat(2) of a NUL-terminated path into a local.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::stat(source.as_ptr(), &mut st) } == 0 {
                (st.st_dev, st.st_ino).hash(&mut h);
            } else {
                child::errno().hash(&mut h);
            }
        }
    }
    h.finish()
}

/// What an init that may stay keeps from one attempt to the next.
pub(crate) struct Stay {
    /// Its end of the control socket to its worker, or -1: it does not stay.
    pub ctl: c_int,
    /// Its own mount namespace (the template's copy, with the sandbox's
    /// `/proc`), which each attempt copies; -1 until its first attempt made
    /// it, and in place.
    pub base: c_int,
    /// In place ([`ChildPlan::in_place`]): the first attempt has made the
    /// mounts every attempt has, and they stay.
    pub placed: bool,
    /// In place: this attempt's own mounts and mount points, undone after it.
    pub undo: Undo,
    /// In place: the mounts of the namespace as the first attempt was set
    /// up (their count: its end must find as many, none added or removed
    /// by its task), and once it was undone (their unique IDs: every later
    /// attempt must leave exactly those; a recursive bind may have taken
    /// more than one with it).
    setup_count: usize,
    base_mounts: [u64; MAX_MOUNTS],
    base_len: usize,
}

/// What an attempt in place mounted of its own: by step, and the mount
/// points it made for them (by step, bit `k` for its `mkdirs[k]`).
pub(crate) struct Undo {
    pub mounted: u64,
    pub made: [u64; MAX_KEPT_STEPS],
}

impl Undo {
    /// Nothing to undo.
    const NONE: Undo = Undo {
        mounted: 0,
        made: [0; MAX_KEPT_STEPS],
    };
}

/// Mounts an init in place checks at most (a sandbox has a few dozen).
const MAX_MOUNTS: usize = 256;

impl Stay {
    pub fn new(ctl: c_int) -> Stay {
        Stay {
            ctl,
            base: -1,
            placed: false,
            undo: Undo::NONE,
            setup_count: 0,
            base_mounts: [0; MAX_MOUNTS],
            base_len: 0,
        }
    }
}

/// In the init, in place, once its first attempt is set up: the mounts
/// every attempt has are made, and how many mounts there are is noted.
pub(crate) fn placed(stay: &mut Stay) {
    let mut ids = [0u64; MAX_MOUNTS];
    // (Unknown: usize::MAX, which no attempt's end matches: the init ends.)
    stay.setup_count = list_mounts(&mut ids).unwrap_or(usize::MAX);
    stay.placed = true;
}

/// In the init, in a kept root, before the attempt's own mounts: moves it
/// into a copy of its namespace, made for this attempt, which it leaves when
/// the attempt ends ([`park`]): the attempt's mounts all go at once then,
/// with one wait for an RCU grace period (an unmount waits for one each).
/// The first attempt makes the namespace the copies are made from first:
/// the template's copy with the sandbox's `/proc` (its PID namespace stays).
///
/// # Safety
/// In the init only, with `p` its attempt's plan and `below` as in [`child::run_step`].
pub(crate) unsafe fn attempt_namespace(p: &ChildPlan, stay: &mut Stay, below: usize) {
    unsafe {
        if stay.base < 0 {
            let Some(i) = p
                .steps
                .iter()
                .position(|s| s.is_proc() && s.when == When::Always)
            else {
                // (Every plan mounts one.) Without, the init does not stay.
                return;
            };
            if let Err(e) = child::run_step(&p.steps[i], -1, below) {
                child::fail(p, i as u32, e);
            }
            let fd = libc::open(
                c"/proc/thread-self/ns/mnt".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                // The attempt goes on in this namespace; the init ends with it.
                return;
            }
            stay.base = fd;
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            child::fail(p, step::PRIVATE, child::errno());
        }
    }
}

/// In the init, once its attempt is over (the command ran, the controller
/// closed the go socket): tears the attempt down and waits on its control
/// socket for the next plan, which it returns with its descriptors in place
/// (and its host paths in `trees`). None when the init is to end instead:
/// it does not stay, it cannot go back to its namespace, or its worker
/// closed the socket.
///
/// # Safety
/// In the init only (async-signal-safe system calls).
pub(crate) unsafe fn park(
    p: &ChildPlan,
    stay: &mut Stay,
    trees: &mut HostTrees,
) -> Option<*mut ChildPlan> {
    if stay.ctl < 0 || !(stay.base >= 0 || stay.placed) {
        return None;
    }
    unsafe {
        // The worker hears first that the init stays, before the controller
        // sees the attempt end (below): the next attempt, which the agent
        // may ask for as soon as this one ends, then finds the worker idle
        // for it (and waits there while this one is torn down, off the
        // attempt's time) rather than a new init made for it.
        if libc::write(stay.ctl, &ENDED as *const u8 as *const c_void, 1) != 1 {
            return None;
        }
        // Nothing of this task outlives it.
        child::kill_all_and_reap();
        // The attempt's pipes and sockets: the controller sees them end now.
        let mut keep = [stay.ctl, stay.base];
        keep.sort_unstable();
        child::close_other_fds(&keep);
        if stay.placed {
            if !undo_in_place(p, stay) {
                return None;
            }
        } else if libc::setns(stay.base, libc::CLONE_NEWNS) != 0 || libc::chdir(c"/".as_ptr()) != 0
        {
            // (Leaving the attempt's namespace tears it down, with its mounts.)
            return None;
        }
        if libc::write(stay.ctl, &PARKED as *const u8 as *const c_void, 1) != 1 {
            return None;
        }
        receive(stay.ctl, trees)
    }
}

/// In the init, in place, after its attempt: unmounts the attempt's own
/// mounts and removes the mount points it made for them, last first;
/// removes the files the task left in a directory it could write in that
/// stays (`/dev/shm`); then checks that the namespace has exactly the
/// mounts it had after the first attempt was undone (a task that mounted
/// something, with a set-user-ID `fusermount` say, leaves more). False when
/// anything of the attempt may be left: the init then ends.
///
/// # Safety
/// In the init only, with `p` its attempt's plan.
unsafe fn undo_in_place(p: &ChildPlan, stay: &mut Stay) -> bool {
    let below = p.root.newroot.count_bytes();
    let undo = std::mem::replace(&mut stay.undo, Undo::NONE);
    let mut ids = [0u64; MAX_MOUNTS];
    if stay.base_len == 0 && list_mounts(&mut ids) != Some(stay.setup_count) {
        // The first attempt's task added or removed a mount: what is left
        // after the undo would not be the mounts every attempt has.
        return false;
    }
    for (i, s) in p.steps.iter().enumerate().take(MAX_KEPT_STEPS).rev() {
        if !s.per_attempt {
            continue;
        }
        // SAFETY: umount2(2) and rmdir(2) of the plan's NUL-terminated paths.
        unsafe {
            if undo.mounted & (1 << i) != 0 {
                let target = child::below_root(&s.target, below);
                if libc::umount2(target.as_ptr(), libc::MNT_DETACH) != 0 {
                    return false;
                }
            }
            for (k, dir) in s.mkdirs.iter().enumerate().take(64).rev() {
                if undo.made[i] & (1 << k) != 0
                    && libc::rmdir(child::below_root(dir, below).as_ptr()) != 0
                {
                    return false;
                }
            }
        }
    }
    let kept_writable = p.steps.iter().filter(|s| {
        !s.per_attempt && s.when == When::Always && s.private.is_some_and(|m| m & 0o002 != 0)
    });
    for s in kept_writable {
        // SAFETY: as above.
        if !unsafe { remove_files(child::below_root(&s.target, below)) } {
            return false;
        }
    }
    let Some(n) = list_mounts(&mut ids) else {
        return false;
    };
    if stay.base_len == 0 {
        if n == 0 {
            return false;
        }
        stay.base_mounts[..n].copy_from_slice(&ids[..n]);
        stay.base_len = n;
        true
    } else {
        ids[..n] == stay.base_mounts[..stay.base_len]
    }
}

/// Removes the files in `dir` (not below it: a directory there, and the
/// answer is false). The task's processes are gone: nothing adds more.
///
/// # Safety
/// Async-signal-safe system calls on a NUL-terminated path.
unsafe fn remove_files(dir: &std::ffi::CStr) -> bool {
    unsafe {
        let fd = libc::open(
            dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let mut buf = [0u64; 512];
        let clean = 'read: loop {
            let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), 4096);
            if n < 0 {
                break false;
            }
            if n == 0 {
                break true;
            }
            let bytes = buf.as_ptr() as *const u8;
            let mut at = 0usize;
            while at < n as usize {
                // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
                let reclen = std::ptr::read_unaligned(bytes.add(at + 16) as *const u16) as usize;
                let kind = *bytes.add(at + 18);
                let name = std::ffi::CStr::from_ptr(bytes.add(at + 19) as *const libc::c_char);
                at += reclen.max(1);
                if name == c"." || name == c".." {
                    continue;
                }
                if kind == libc::DT_DIR || libc::unlinkat(fd, name.as_ptr(), 0) != 0 {
                    break 'read false;
                }
            }
        };
        libc::close(fd);
        clean
    }
}

/// The unique IDs of the mounts of this process's mount namespace
/// (`listmount`, Linux 6.8), in order, into `ids`; their count. None when
/// the kernel cannot list them or they do not fit.
pub(crate) fn list_mounts(ids: &mut [u64; MAX_MOUNTS]) -> Option<usize> {
    /// `listmount`'s number on x86_64 and aarch64 alike (since 6.8).
    const SYS_LISTMOUNT: libc::c_long = 458;
    /// All mounts of the namespace ("LSMT_ROOT").
    const LSMT_ROOT: u64 = u64::MAX;
    #[repr(C)]
    struct MntIdReq {
        size: u32,
        spare: u32,
        mnt_id: u64,
        param: u64,
    }
    let req = MntIdReq {
        size: std::mem::size_of::<MntIdReq>() as u32,
        spare: 0,
        mnt_id: LSMT_ROOT,
        param: 0,
    };
    // SAFETY: listmount(2) of a request on the stack into `ids`, bounded by its length.
    let n = unsafe { libc::syscall(SYS_LISTMOUNT, &req, ids.as_mut_ptr(), ids.len(), 0) };
    (n >= 0 && (n as usize) < ids.len()).then_some(n as usize)
}

/// `OSMO_SANDBOX_IN_PLACE=0` in the agent's environment: inits that stay
/// make each attempt's mounts in a copy of their namespace, as on a kernel
/// that cannot list mounts.
pub const IN_PLACE_ENV: &str = "OSMO_SANDBOX_IN_PLACE";

/// Whether the controller lets inits stay in place (read once; the plan
/// carries it, [`crate::child::RootPlan::in_place`]).
pub(crate) fn in_place_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(IN_PLACE_ENV).map_or(true, |v| v != "0"))
}

/// Whether this kernel lists a namespace's mounts (an init in place checks
/// its namespace with it after each attempt), asked once.
fn mounts_listable() -> bool {
    static LISTABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LISTABLE.get_or_init(|| list_mounts(&mut [0; MAX_MOUNTS]).is_some_and(|n| n > 0))
}

/// Receives the next plan's address and its descriptors: first those of
/// its `keep_fds` in that order, then the host trees of `handed_trees`.
unsafe fn receive(ctl: c_int, trees: &mut HostTrees) -> Option<*mut ChildPlan> {
    // SAFETY: recvmsg(2) into local buffers, and reads and writes of the
    // plan its worker handed over (kept by it until this init parks again
    // or ends, and not touched by it meanwhile).
    unsafe {
        let mut addr: usize = 0;
        let mut iov = libc::iovec {
            iov_base: &mut addr as *mut usize as *mut c_void,
            iov_len: std::mem::size_of::<usize>(),
        };
        // Room for MAX_HANDED descriptors, aligned for a cmsghdr.
        let mut space = [0u64; (MAX_HANDED * 4 + 64) / 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr() as *mut c_void;
        msg.msg_controllen = std::mem::size_of_val(&space) as _;
        let n = loop {
            let n = libc::recvmsg(ctl, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && child::errno() == libc::EINTR {
                continue;
            }
            break n;
        };
        let mut got = [-1 as c_int; MAX_HANDED];
        let mut count = 0;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const c_int;
                let len = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for k in 0..len / std::mem::size_of::<c_int>() {
                    if let Some(slot) = got.get_mut(count) {
                        // (A control message's data need not be aligned for an int.)
                        *slot = std::ptr::read_unaligned(data.add(k));
                        count += 1;
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let whole = n == std::mem::size_of::<usize>() as isize
            && msg.msg_flags & libc::MSG_CTRUNC == 0
            && addr != 0;
        if !whole {
            // The worker closed the socket (or sent what cannot be used): end.
            return None;
        }
        let plan = addr as *mut ChildPlan;
        let p = &mut *plan;
        let sent = p.keep_fds.len();
        if count != sent + p.handed_trees.len() || sent > MAX_HANDED {
            return None;
        }
        // The plan names the spawner's descriptors; ours are in the same order.
        let mut theirs = [-1 as c_int; MAX_HANDED];
        theirs[..sent].copy_from_slice(&p.keep_fds);
        p.map_fds(|fd| {
            theirs[..sent]
                .iter()
                .position(|&t| t == fd)
                .map_or(-1, |i| got[i])
        });
        *trees = HostTrees::none();
        for (k, &step) in p.handed_trees.iter().enumerate() {
            if let Some(slot) = trees.fds.get_mut(step as usize) {
                *slot = got[sent + k];
            }
        }
        for (slot, &e) in trees.errors.iter_mut().zip(&p.handed_errors) {
            *slot = e;
        }
        Some(plan)
    }
}

/// In the spawner: an init that parked, with what its worker keeps for it.
pub(crate) struct Parked {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub ctl: OwnedFd,
    pub key: WarmKey,
    /// The plan of its last attempt (it holds the stack its children run on).
    pub plan: Box<ChildPlan>,
}

/// Hands `plan` to the parked init: clones the host paths its steps bind
/// (the init's root no longer shows them), and sends the plan's address
/// with its descriptors (those of its `keep_fds`, in that order) and those
/// trees. Err when it cannot (the caller ends the init and forks another).
pub(crate) fn hand_over(parked: &mut Parked, plan: &mut ChildPlan) -> Result<(), ()> {
    let mut trees = HostTrees::none();
    // SAFETY: open_tree(2) of the plan's paths, in the spawner's namespace.
    if unsafe { child::open_host_trees(plan, &mut trees, plan.in_place) }.is_err() {
        // SAFETY: the descriptors it opened.
        unsafe { trees.close() };
        return Err(());
    }
    plan.spawn_stack = std::mem::take(&mut parked.plan.spawn_stack);
    plan.handed_trees = (0..MAX_KEPT_STEPS as u32)
        .filter(|&i| trees.fds[i as usize] >= 0)
        .collect();
    plan.handed_errors = trees.errors[..plan.steps.len().min(MAX_KEPT_STEPS)].to_vec();
    let mut all: Vec<RawFd> = plan.keep_fds.clone();
    all.extend(plan.handed_trees.iter().map(|&i| trees.fds[i as usize]));
    let addr = (plan as *mut ChildPlan as usize).to_ne_bytes();
    let sent = nix::sys::socket::sendmsg::<()>(
        parked.ctl.as_raw_fd(),
        &[std::io::IoSlice::new(&addr)],
        &[nix::sys::socket::ControlMessage::ScmRights(&all)],
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    );
    // The init has its own copies now (or none: it is gone).
    // SAFETY: the trees this function opened.
    unsafe { trees.close() };
    match sent {
        Ok(n) if n == addr.len() => Ok(()),
        _ => {
            // Its stack goes back with the plan it came from.
            parked.plan.spawn_stack = std::mem::take(&mut plan.spawn_stack);
            Err(())
        }
    }
}

/// After an attempt started: waits until its init has parked (true) or
/// ended (false). `ended` is called when its attempt has ended and it
/// parks (the next job may be sent to this worker then).
pub(crate) fn parked_or_ended(
    pidfd: &OwnedFd,
    ctl: Option<&OwnedFd>,
    mut ended: impl FnMut(),
) -> bool {
    let Some(ctl) = ctl else {
        crate::spawner::wait_for_end(pidfd);
        return false;
    };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ctl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) over a live array (every signal is blocked in a worker).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if fds[1].revents != 0 {
            let mut byte = 0u8;
            // SAFETY: a 1-byte read into a local.
            let r = unsafe { libc::read(ctl.as_raw_fd(), &mut byte as *mut u8 as *mut c_void, 1) };
            match (r, byte) {
                (1, ENDED) => {
                    ended();
                    continue;
                }
                (1, PARKED) => return true,
                _ => {}
            }
        }
        if fds[0].revents != 0 || fds[1].revents != 0 {
            crate::spawner::wait_for_end(pidfd);
            return false;
        }
    }
}

/// Ends a parked init (its socket closes: it exits) and waits until it has
/// ended; the stack its children ran on, for the next init.
pub(crate) fn retire(parked: Parked) -> Vec<u8> {
    let Parked {
        pidfd,
        ctl,
        mut plan,
        ..
    } = parked;
    drop(ctl);
    crate::spawner::wait_for_end(&pidfd);
    std::mem::take(&mut plan.spawn_stack)
}
