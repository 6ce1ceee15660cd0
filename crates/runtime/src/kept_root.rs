//! Sandbox roots kept by the spawner for the next attempt in the same
//! scratch directory.
//!
//! Why: making a sandbox's root (a tmpfs for its writable layer, the overlay
//! of `/` on it, the host's other file systems bound in read-only) and
//! tearing it down at the attempt's end is most of what the kernel charges
//! for a sandbox: `bench/sandbox-floor.py` measured a root made once and
//! copied by each task at 0.80 of `xargs`'s rate, one made by each task at
//! 0.59–0.64. A workflow of many short tasks makes the same root again and
//! again in the same few scratch directories (the agent reuses them).
//!
//! How: the spawner builds the root once in a mount namespace of its own (a
//! template: [`child::build_kept_root`]), pivots into it there (the host's
//! mounts around it detached: a copy holds only the root's) and keeps the
//! namespace open. The init of each attempt in that scratch directory
//! clones the host paths it binds in (`open_tree`), joins a copy of the
//! template (`setns`, then `unshare`: it is in its root at once) and makes
//! only its own mounts (`/proc`, its private `/dev/shm`, the hidden
//! directory its output is below, its output and inputs): what it mounts
//! stays in its copy. The other hidden directories (`/root`, `/home`) are
//! the template's, read-only.
//! Nothing of the template is mounted in the spawner's namespace, which
//! every sandbox copies.
//!
//! A root is taken again only when it is as it was made:
//! - its writable layer is unchanged: the upper directory holds the same
//!   entries (name, inode, type, mode, owner) as after its set-up; a task
//!   that wrote anywhere in its root (a file, a directory, a removal) leaves
//!   a layer that is not reused, and the next attempt gets a new root;
//! - it was made for the same plan (the same paths, the same host mounts to
//!   bind in);
//! - the scratch directory it is mounted on and the `/tmp` directory it binds
//!   in are still there: removing a directory unmounts what is mounted on it
//!   in every namespace, and a scratch directory made again at the same path
//!   is another directory;
//! - it is younger than [`MAX_AGE`]. The overlay caches what it has looked
//!   up in the host's `/` (found or not); a root that lived for months would
//!   show a file the host has since replaced, added or removed as it was. A
//!   kept root shows the host's files as they were at most [`MAX_AGE`]
//!   before its attempt started.
//!
//! Only roots whose writable layer is in memory are kept (tasks that do not
//! run as root: [`RootPlan::memory_upper`](crate::child::RootPlan)). The init
//! of an attempt in a kept root may stay for the next attempt in the same
//! root ([`crate::park`]); each root's number tells whether it is the same.
//! `OSMO_SANDBOX_KEEP_ROOTS=0` in the agent's environment turns it off.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::child::{self, ChildPlan, When};

/// The longest a root is kept after it was made.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(2);

/// Roots kept at most (more scratch directories than this at once build
/// their own roots).
const MAX_KEPT: usize = 64;

/// Entries a writable layer may hold as made (mount points its set-up
/// made); a bigger one is not kept.
const MAX_LAYER: usize = 64;

/// Builds that may fail in a row before the spawner stops trying (a host
/// where the root cannot be made this way: each attempt would pay for a
/// failed build and then make its root itself).
const MAX_FAILURES: u32 = 3;

/// The environment variable that turns kept roots off (`0`).
pub const KEEP_ENV: &str = "OSMO_SANDBOX_KEEP_ROOTS";

/// Whether the controller lets its sandboxes' roots be kept (read once).
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(KEEP_ENV).map_or(true, |v| v != "0"))
}

/// One entry of a writable layer: its path below the upper directory, and
/// its inode, mode (type included) and owner.
type LayerEntry = (Vec<u8>, u64, u32, u32, u32);

struct Kept {
    /// The template: a mount namespace with the root in it.
    ns: OwnedFd,
    /// The upper directory of its writable layer.
    upper: OwnedFd,
    /// The plan's parts it was made from ([`key`]).
    key: Vec<u8>,
    made: Instant,
    /// The writable layer as made.
    layer: Vec<LayerEntry>,
    /// Its number, new for each root made ([`crate::park::WarmKey`]).
    id: u64,
    /// The scratch directory and the `/tmp` directory on disk, as the host
    /// has them ([`Kept::in_place`]).
    anchors: [OwnedFd; 2],
}

impl Kept {
    /// Neither the scratch directory nor the `/tmp` directory was removed
    /// (a removed directory has no links left).
    fn in_place(&self) -> bool {
        self.anchors.iter().all(|fd| {
            // SAFETY: fstat(2) of our descriptor into a local.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            unsafe { libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_nlink > 0 }
        })
    }
}

/// The spawner's kept roots, by the path of the root (the scratch directory).
pub(crate) struct KeptRoots {
    /// The spawner's own mount namespace, to come back to after a build.
    home: OwnedFd,
    roots: HashMap<CString, Kept>,
    /// Builds failed in a row ([`MAX_FAILURES`]).
    failures: u32,
    /// Roots made so far.
    made: u64,
}

impl KeptRoots {
    /// None where the spawner's namespace cannot be named (no `/proc`).
    pub fn new() -> Option<KeptRoots> {
        Some(KeptRoots {
            home: open_mount_namespace()?,
            roots: HashMap::new(),
            failures: 0,
            made: 0,
        })
    }

    /// A template for `plan`'s root (a descriptor of its own, for the init
    /// to join) and the root's number, kept or made now; None when the
    /// plan's root is not to be kept or cannot be. Drops the roots past
    /// their age first.
    pub fn template_for(&mut self, plan: &ChildPlan) -> Option<(OwnedFd, u64)> {
        self.sweep(Instant::now());
        if !plan.root.keep || !plan.root.memory_upper || self.failures >= MAX_FAILURES {
            return None;
        }
        let key = key(plan)?;
        let newroot = &plan.root.newroot;
        if let Some(kept) = self.roots.get(newroot) {
            if kept.key == key
                && kept.in_place()
                && layer(&kept.upper).as_ref() == Some(&kept.layer)
            {
                return Some((dup(&kept.ns)?, kept.id));
            }
            // Changed: the next attempt gets a root of its own, and this one goes.
            self.roots.remove(newroot);
        }
        if self.roots.len() >= MAX_KEPT {
            return None;
        }
        let Some(kept) = self.make(plan, key) else {
            self.failures += 1;
            if self.failures == MAX_FAILURES {
                eprintln!(
                    "osmo-spawner: {MAX_FAILURES} kept roots in a row could not be made; \
                     each sandbox makes its own root from now on"
                );
            }
            return None;
        };
        self.failures = 0;
        let template = dup(&kept.ns).map(|fd| (fd, kept.id));
        self.roots.insert(newroot.clone(), kept);
        template
    }

    /// Drops the roots made more than [`MAX_AGE`] before `now`.
    pub fn sweep(&mut self, now: Instant) {
        self.roots
            .retain(|_, kept| now.saturating_duration_since(kept.made) < MAX_AGE);
    }

    /// How long until the oldest root is past its age; None when none is kept.
    pub fn next_expiry(&self) -> Option<Duration> {
        let now = Instant::now();
        self.roots
            .values()
            .map(|kept| (kept.made + MAX_AGE).saturating_duration_since(now))
            .min()
    }

    /// Builds `plan`'s root in a new mount namespace and comes back.
    fn make(&mut self, plan: &ChildPlan, key: Vec<u8>) -> Option<Kept> {
        let anchors = [
            open_path(&plan.root.newroot)?,
            open_path(&plan.root.disk_tmp)?,
        ];
        // SAFETY: unshare(2) moves this thread alone into a copy of its namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return None;
        }
        // Opened before the build: the root it ends in has no `/proc`.
        let ns = open_mount_namespace();
        // SAFETY: in the namespace just made for it.
        let built = unsafe { child::build_kept_root(plan) }
            // SAFETY: a descriptor build_kept_root opened for us.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: setns(2) of this thread into the namespace it came from.
        if unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            // The spawner cannot go on here: every later sandbox would copy
            // this namespace. Its controller forks the inits itself from now on.
            eprintln!(
                "osmo-spawner: cannot return to its mount namespace: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        let upper = built.ok()?;
        self.made += 1;
        Some(Kept {
            id: self.made,
            layer: layer(&upper)?,
            ns: ns?,
            upper,
            key,
            made: Instant::now(),
            anchors,
        })
    }
}

/// This thread's mount namespace, opened.
fn open_mount_namespace() -> Option<OwnedFd> {
    std::fs::File::open("/proc/thread-self/ns/mnt")
        .ok()
        .map(OwnedFd::from)
}

/// A directory, opened only to be named (`O_PATH`).
fn open_path(path: &std::ffi::CStr) -> Option<OwnedFd> {
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is ours.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a descriptor just opened, owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dup(fd: &OwnedFd) -> Option<OwnedFd> {
    fd.try_clone().ok()
}

/// What makes a root the same for two plans: its own part of the plan, the
/// host mounts bound into it and the hidden directories it has.
fn key(plan: &ChildPlan) -> Option<Vec<u8>> {
    let binds: Vec<&child::Step> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.when, When::Overlay | When::Shared))
        .collect();
    postcard::to_allocvec(&(&plan.root, binds)).ok()
}

/// The entries below a writable layer's upper directory, sorted; None past
/// [`MAX_LAYER`] or when it cannot be read. Walked from the descriptors
/// (`openat`, `fstatat`): the spawner checks the layer before each attempt,
/// and a path through `/proc/self/fd` is a costly lookup each time.
fn layer(upper: &OwnedFd) -> Option<Vec<LayerEntry>> {
    use nix::dir::Dir;
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::{Mode, SFlag, fstatat};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let top = Dir::openat(Some(upper.as_raw_fd()), ".", flags, Mode::empty()).ok()?;
    let mut entries = Vec::new();
    let mut dirs: Vec<(Vec<u8>, Dir)> = vec![(Vec::new(), top)];
    while let Some((prefix, mut dir)) = dirs.pop() {
        let fd = dir.as_raw_fd();
        for entry in dir.iter() {
            let entry = entry.ok()?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let meta = fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
            let mut below = prefix.clone();
            if !below.is_empty() {
                below.push(b'/');
            }
            below.extend_from_slice(name.to_bytes());
            if meta.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
                let sub = Dir::openat(Some(fd), name, flags, Mode::empty()).ok()?;
                dirs.push((below.clone(), sub));
            }
            entries.push((below, meta.st_ino, meta.st_mode, meta.st_uid, meta.st_gid));
            if entries.len() > MAX_LAYER {
                return None;
            }
        }
    }
    entries.sort_unstable();
    Some(entries)
}
