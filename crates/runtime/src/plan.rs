//! Turns an [`AttemptSpec`] into the [`ChildPlan`] the sandbox's init runs:
//! every path, string and file content is made ready here, before the fork.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use libc::c_int;
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};

use crate::AttemptSpec;
use crate::child::{
    ChildPlan, EnvBlock, ExecPlan, FilePlan, MAX_PRIVATE, PreflightPlan, RootPlan, Step, When,
};
use crate::error::PrepareError;
use crate::mountinfo;
use crate::realpath;

/// Environment variable of the controller that forces a kind of root:
/// `disk` (the writable layer on disk, also for a task that does not run as
/// root), `tmpfs` (overlay with its upper layer on a tmpfs) or `readonly`.
pub const ROOT_ENV: &str = "OSMO_SANDBOX_ROOT";

/// The per-attempt directories in the scratch directory. The scratch
/// directory itself is the mount point of the task's root (inside the mount
/// namespace only), so it needs just the overlay's upper and work
/// directories (few directories: removing them is the caller's cost, and on
/// a file system mounted with `discard` every `rmdir` is slow).
pub(crate) struct Layout {
    pub scratch: PathBuf,
    /// Where the task's root is mounted: the scratch directory.
    pub root: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// For a tmpfs holding upper and work when the disk cannot; made by the init.
    pub ovl: PathBuf,
    /// `upper/tmp` is an opaque directory (the task's `/tmp` starts empty and
    /// is private); false when the file system refused the xattr.
    pub opaque_tmp: bool,
}

/// Overlayfs's mark of a directory that hides the lower layers' one.
pub(crate) const OPAQUE_XATTR: &std::ffi::CStr = c"trusted.overlay.opaque";

/// What [`Layout::create`] found of a scratch directory in this process,
/// and whether [`recycle_scratch`] has readied it since: the next attempt
/// there takes it without looking again (between two attempts only this
/// process, as root, writes there).
struct Known {
    canonical: PathBuf,
    opaque_tmp: bool,
    readied: bool,
}

/// The scratch directories of this process's attempts (a few: the agent
/// keeps its readied ones in a small pool).
static KNOWN: std::sync::Mutex<BTreeMap<PathBuf, Known>> = std::sync::Mutex::new(BTreeMap::new());

/// More scratch directories than any pool keeps: past it the record of
/// those never given back again is dropped.
const KNOWN_MAX: usize = 1024;

fn known() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Known>> {
    KNOWN.lock().unwrap_or_else(|e| e.into_inner())
}

impl Layout {
    pub fn create(scratch: &Path) -> Result<Layout, PrepareError> {
        let readied = known()
            .remove(scratch)
            .filter(|k| k.readied && k.canonical.is_dir());
        let layout = match readied {
            Some(k) => Layout::at(k.canonical, k.opaque_tmp),
            None => Layout::make(scratch)?,
        };
        let mut known = known();
        if known.len() >= KNOWN_MAX {
            known.clear();
        }
        known.insert(
            scratch.to_path_buf(),
            Known {
                canonical: layout.scratch.clone(),
                opaque_tmp: layout.opaque_tmp,
                readied: false,
            },
        );
        Ok(layout)
    }

    fn at(scratch: PathBuf, opaque_tmp: bool) -> Layout {
        Layout {
            root: scratch.clone(),
            ovl: scratch.join("ovl"),
            upper: scratch.join("upper"),
            work: scratch.join("work"),
            scratch,
            opaque_tmp,
        }
    }

    /// Checks (and makes what is missing of) a scratch directory this
    /// process has not readied.
    fn make(scratch: &Path) -> Result<Layout, PrepareError> {
        let io = |what: String| move |source| PrepareError::Io { what, source };
        fs::create_dir_all(scratch).map_err(io(format!(
            "create scratch directory {}",
            scratch.display()
        )))?;
        let scratch = realpath::canonical(scratch).map_err(io(format!(
            "resolve scratch directory {}",
            scratch.display()
        )))?;
        let upper = scratch.join("upper");
        let tmp = upper.join("tmp");
        let work = scratch.join("work");
        // One readied before (by an earlier run of this process's code) is
        // taken as it is: creating inodes is most of an attempt's
        // file-system cost on a busy disk.
        let ready = untouched(&upper, &tmp) && is_empty(&tmp) && is_empty(&work);
        if !ready {
            for dir in [&upper, &work] {
                if dir.exists() {
                    // A leftover of an earlier run with this scratch directory.
                    fs::remove_dir_all(dir).map_err(io(format!("clear {}", dir.display())))?;
                }
            }
            for (dir, mode) in [(&upper, 0o755), (&tmp, 0o1777), (&work, 0o700)] {
                fs::create_dir(dir).map_err(io(format!("create {}", dir.display())))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                    .map_err(io(format!("set the mode of {}", dir.display())))?;
            }
        }
        let opaque_tmp = cpath(&tmp).is_ok_and(|c| {
            // SAFETY: setxattr with a NUL-terminated path and name and a 1-byte value.
            unsafe {
                libc::setxattr(
                    c.as_ptr(),
                    OPAQUE_XATTR.as_ptr(),
                    c"y".as_ptr() as *const libc::c_void,
                    1,
                    0,
                ) == 0
            }
        });
        Ok(Layout::at(scratch, opaque_tmp))
    }
}

/// Readies the scratch directory of an attempt that has ended for another
/// attempt, when the task left nothing in it: its upper layer holds only
/// `/tmp`, and that only directories (mount points made for the attempt's
/// own directories). Those and overlayfs's work files are removed, and
/// [`Layout::create`] takes the rest as it is. False: something was
/// written; the caller removes the directory.
pub fn recycle_scratch(scratch: &Path) -> bool {
    let upper = scratch.join("upper");
    let tmp = upper.join("tmp");
    let work = scratch.join("work");
    let children = |dir: &Path| -> std::io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?.map(|e| Ok(e?.path())).collect()
    };
    let clear = |dir: &Path| -> std::io::Result<()> {
        children(dir)?.iter().try_for_each(fs::remove_dir_all)
    };
    // `/tmp` read once: most tasks leave it empty.
    let readied = untouched(&upper, &tmp)
        && fs::read_dir(&tmp)
            .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
            .is_ok_and(|left| {
                left.iter().all(|e| {
                    e.file_type().is_ok_and(|t| t.is_dir()) && only_directories(&e.path(), 15)
                }) && left
                    .iter()
                    .try_for_each(|e| fs::remove_dir_all(e.path()))
                    .is_ok()
            })
        && clear(&work).is_ok();
    let mut known = known();
    match known.get_mut(scratch) {
        Some(k) if readied => k.readied = true,
        _ => drop(known.remove(scratch)),
    }
    readied
}

/// The upper layer holds only `tmp`, both as [`Layout::create`] made them
/// (a task that changed `/tmp`'s mode or owner leaves a layer not to reuse).
fn untouched(upper: &Path, tmp: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let owner = owner();
    let as_made = |dir: &Path, mode: u32| {
        fs::symlink_metadata(dir)
            .is_ok_and(|m| m.is_dir() && m.mode() & 0o7777 == mode && (m.uid(), m.gid()) == owner)
    };
    only_entry(upper, "tmp") && as_made(upper, 0o755) && as_made(tmp, 0o1777)
}

/// Who owns what this process creates.
fn owner() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// `dir` exists and holds exactly `name`.
fn only_entry(dir: &Path, name: &str) -> bool {
    let Ok(mut entries) = fs::read_dir(dir) else {
        return false;
    };
    matches!(entries.next(), Some(Ok(e)) if e.file_name() == name) && entries.next().is_none()
}

fn is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut e| e.next().is_none())
}

/// Everything below `dir` is a directory (within `depth` levels).
fn only_directories(dir: &Path, depth: u32) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    depth > 0
        && entries.into_iter().all(|e| {
            e.is_ok_and(|e| {
                e.file_type().is_ok_and(|t| t.is_dir()) && only_directories(&e.path(), depth - 1)
            })
        })
}

/// Descriptors the plan refers to (owned by the controller).
pub(crate) struct PlanFds {
    pub devnull: c_int,
    pub status: c_int,
    pub go: c_int,
    pub stdout: c_int,
    pub stderr: c_int,
    pub cgroup_procs: c_int,
    pub preflight: Vec<c_int>,
}

/// A plan with the words to explain its failures.
pub(crate) struct Prepared {
    /// The network namespace the init joins, open until it has forked.
    pub _netns: Option<std::os::fd::OwnedFd>,
    pub plan: ChildPlan,
    /// What each plan step does, for messages (`bind output dir /x`).
    pub step_names: Vec<String>,
    pub file_paths: Vec<String>,
}

/// `what` names the string in the error, made only if there is one: an
/// attempt's plan converts dozens of paths and variables, and none fails.
fn cstring(what: impl FnOnce() -> String, s: impl Into<Vec<u8>>) -> Result<CString, PrepareError> {
    CString::new(s).map_err(|_| PrepareError::Nul(what()))
}

fn cpath(p: &Path) -> Result<CString, PrepareError> {
    cstring(|| format!("path {}", p.display()), p.as_os_str().as_bytes())
}

/// `root` + the absolute `path`, without `..` tricks.
fn under(root: &Path, path: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in path.components() {
        if let Component::Normal(part) = c {
            out.push(part);
        }
    }
    out
}

/// `root/a`, `root/a/b`, ... for `path` = `/a/b/...` (not `root` itself).
fn prefixes(root: &Path, path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = root.to_path_buf();
    for c in path.components() {
        if let Component::Normal(part) = c {
            cur.push(part);
            out.push(cur.clone());
        }
    }
    out
}

fn cpaths(paths: &[PathBuf]) -> Result<Vec<CString>, PrepareError> {
    paths.iter().map(|p| cpath(p)).collect()
}

/// `argv` and the paths to try for `argv[0]`, searched in `path_var` as
/// `execvp` would (but with the task's `PATH`, not the controller's).
pub(crate) fn exec_plan(argv: &[String], path_var: &str) -> Result<ExecPlan, PrepareError> {
    let store: Vec<CString> = argv
        .iter()
        .map(|a| cstring(|| format!("argument {a:?}"), a.as_str()))
        .collect::<Result<_, _>>()?;
    let candidates = match argv.first() {
        None => Vec::new(),
        Some(cmd) if cmd.is_empty() => Vec::new(),
        Some(cmd) if cmd.contains('/') => vec![cstring(|| "command".into(), cmd.as_str())?],
        Some(cmd) => path_var
            .split(':')
            .map(|dir| {
                let dir = if dir.is_empty() { "." } else { dir };
                cstring(
                    || "PATH entry".into(),
                    format!("{}/{cmd}", dir.trim_end_matches('/')),
                )
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(ExecPlan::new(candidates, store))
}

fn env_block(env: &BTreeMap<String, String>) -> Result<EnvBlock, PrepareError> {
    let mut store = Vec::with_capacity(env.len());
    for (k, v) in env {
        if k.is_empty() || k.contains('=') {
            return Err(PrepareError::BadEnvName(k.clone()));
        }
        store.push(cstring(
            || format!("environment variable {k}"),
            format!("{k}={v}"),
        )?);
    }
    Ok(EnvBlock::from(store))
}

pub fn decode_file(f: &osmo_spec::model::File) -> Result<Vec<u8>, ReportedCode> {
    if !f.base64 {
        return Ok(f.contents.clone().into_bytes());
    }
    let compact: String = f
        .contents
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(compact.as_bytes()).map_err(|e| ReportedCode {
        code: well_known::INIT_FILES,
        source: CodeSource::Init,
        detail: Some(format!(
            "file {}: contents are not valid base64 ({e}); fix the spec",
            f.path
        )),
    })
}

fn file_plan(f: &osmo_spec::model::File) -> Result<FilePlan, ReportedCode> {
    let data = decode_file(f)?;
    let path = Path::new("/").join(&f.path);
    let mut parents = prefixes(Path::new("/"), &path);
    parents.pop();
    let init = |e: PrepareError| e.into_code();
    Ok(FilePlan {
        path: cpath(&path).map_err(init)?,
        parents: cpaths(&parents).map_err(init)?,
        data,
    })
}

fn has_mount_option_chars(p: &Path) -> bool {
    p.as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b',' | b':' | b'\\' | b'='))
}

fn overlay_data(upper: &Path, work: &Path) -> Option<CString> {
    if has_mount_option_chars(upper) || has_mount_option_chars(work) {
        return None;
    }
    CString::new(format!(
        "lowerdir=/,upperdir={},workdir={}",
        upper.display(),
        work.display()
    ))
    .ok()
}

/// Makes each of the `hidden` steps that nothing else is mounted below
/// (`/root`, `/home` as a rule; not the data directory, which holds the
/// task's output) [`When::Shared`]: a kept root's template has it, and a
/// sandbox makes a directory and two mounts fewer for it.
fn share_lone_hidden(steps: &mut [Step], hidden: std::ops::Range<usize>) {
    for i in hidden {
        let dir = steps[i].target.as_bytes().to_vec();
        let lone = !steps.iter().any(|s| {
            below(s.target.as_bytes(), &dir) || s.mkdirs.iter().any(|m| below(m.as_bytes(), &dir))
        });
        if lone {
            steps[i].when = When::Shared;
        }
    }
}

/// The steps fit a kept root, where the new root is `/`: at most
/// [`MAX_KEPT_STEPS`](crate::child::MAX_KEPT_STEPS), each path below `root`.
fn rooted(root: &Path, steps: &[Step]) -> bool {
    let root = root.as_os_str().as_bytes();
    steps.len() <= crate::child::MAX_KEPT_STEPS
        && steps.iter().all(|s| {
            below(s.target.as_bytes(), root) && s.mkdirs.iter().all(|m| below(m.as_bytes(), root))
        })
}

/// `path` lies strictly below `dir`. On bytes, not path components: the
/// plan's paths are joined from normal components (`under`, `prefixes`),
/// and an attempt compares dozens of them.
fn below(path: &[u8], dir: &[u8]) -> bool {
    let dir = dir.strip_suffix(b"/").unwrap_or(dir);
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.len() > 1 && rest[0] == b'/')
}

/// `path` and its parents, as `create_dir_all`, trying the `new` last
/// levels from the top first: an attempt's output directory is usually one
/// new level (`TASK.RETRY`) in a workflow's directory that has thousands of
/// tasks, where each `mkdir` that fails first is another lookup among them.
fn create_new_dirs(path: &Path, new: usize) -> std::io::Result<()> {
    let mut levels: Vec<&Path> = path.ancestors().take(new).collect();
    levels.reverse();
    for dir in levels {
        match fs::create_dir(dir) {
            Ok(()) => {}
            // (A file there fails the next level, or the caller's use.)
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return fs::create_dir_all(path);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn bind_step(
    layout: &Layout,
    source: &Path,
    readonly: bool,
    optional: bool,
    when: When,
) -> Result<Step, PrepareError> {
    Ok(Step {
        mkdirs: cpaths(&prefixes(&layout.root, source))?,
        source: Some(cpath(source)?),
        target: cpath(&under(&layout.root, source))?,
        fstype: None,
        flags: libc::MS_BIND | libc::MS_REC,
        data: None,
        readonly,
        optional,
        when,
        private: None,
        dirs_first: false,
        per_attempt: false,
    })
}

/// The directories of the steps that may take a private directory from
/// the writable layer's tmpfs (`tmpfs_dir/private-N`); past
/// [`MAX_PRIVATE`] the steps mount a tmpfs each.
fn private_dirs(steps: &mut [Step], tmpfs_dir: &Path) -> Result<Vec<CString>, PrepareError> {
    let mut dirs = Vec::new();
    for step in steps.iter_mut().filter(|s| s.private.is_some()) {
        if dirs.len() == MAX_PRIVATE {
            step.private = None;
            continue;
        }
        dirs.push(cpath(&tmpfs_dir.join(format!("private-{}", dirs.len())))?);
    }
    Ok(dirs)
}

/// The argument and environment areas of this process (fields 48–51 of
/// `/proc/self/stat`), read once; zeros when unknown or implausible.
pub(crate) fn scrub_ranges() -> [(usize, usize); 2] {
    static RANGES: std::sync::OnceLock<[(usize, usize); 2]> = std::sync::OnceLock::new();
    *RANGES.get_or_init(|| {
        let parse = || -> Option<[(usize, usize); 2]> {
            let stat = fs::read_to_string("/proc/self/stat").ok()?;
            // Fields after the command name, which may hold spaces: field 3 is index 0.
            let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
            let field = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
            let (a0, a1, e0, e1) = (field(48)?, field(49)?, field(50)?, field(51)?);
            let sane = |s: usize, e: usize| s > 0 && e > s && e - s < (64 << 20);
            (sane(a0, a1) && sane(e0, e1)).then_some([(a0, a1), (e0, e1)])
        };
        parse().unwrap_or([(0, 0); 2])
    })
}

/// Everything but the descriptors comes from `spec`; `tests` are the
/// preflight tests that run (already filtered), with their argv expanded.
pub(crate) fn build(
    spec: &AttemptSpec,
    env: &BTreeMap<String, String>,
    argv: &[String],
    tests: &[Vec<String>],
    layout: &Layout,
    fds: &PlanFds,
    rlimit_as: u64,
) -> Result<Prepared, ReportedCode> {
    let init = |e: PrepareError| e.into_code();
    let path_var = env
        .get("PATH")
        .map(String::as_str)
        .unwrap_or(crate::env::DEFAULT_PATH);

    // Files first: a bad file is 257, whatever else is wrong.
    let files: Vec<FilePlan> = spec.files.iter().map(file_plan).collect::<Result<_, _>>()?;
    let file_paths = spec.files.iter().map(|f| f.path.clone()).collect();

    let canonical = |what: &str, p: &Path| {
        realpath::canonical(p)
            .map_err(|source| PrepareError::Io {
                what: format!("{what} {}", p.display()),
                source,
            })
            .map_err(init)
    };
    create_new_dirs(&spec.output_dir, 2)
        .map_err(|source| PrepareError::Io {
            what: format!("create output dir {}", spec.output_dir.display()),
            source,
        })
        .map_err(init)?;
    let output = canonical("output dir", &spec.output_dir)?;
    // Only root can change users; a runtime that is not runs tasks as itself.
    // SAFETY: geteuid has no preconditions.
    let run_as = spec.run_as.filter(|_| unsafe { libc::geteuid() } == 0);
    if let Some((uid, gid)) = run_as {
        // The task writes its output as its own user.
        std::os::unix::fs::chown(&output, Some(uid), Some(gid))
            .map_err(|source| PrepareError::Io {
                what: format!("give the output dir {} to uid {uid}", output.display()),
                source,
            })
            .map_err(init)?;
    }
    let inputs: Vec<PathBuf> = spec
        .input_dirs
        .iter()
        .map(|p| canonical("input dir", p))
        .collect::<Result<_, _>>()?;
    let tools: Vec<PathBuf> = spec
        .tool_dirs
        .iter()
        .map(|p| canonical("tool dir", p))
        .collect::<Result<_, _>>()?;

    let mut steps = Vec::new();
    let mut step_names = Vec::new();

    // The host mounts an overlay of `/` does not show, read-only.
    let skip = [
        Path::new("/proc"),
        Path::new("/tmp"),
        layout.scratch.as_path(),
    ];
    let submounts = mountinfo::host_submounts(&skip)
        .map_err(|source| PrepareError::Io {
            what: "read /proc/self/mountinfo".into(),
            source,
        })
        .map_err(init)?;
    for m in submounts.iter() {
        steps.push(bind_step(layout, m, true, true, When::Overlay).map_err(init)?);
        step_names.push(format!("bind host mount {} read-only", m.display()));
    }

    let proc_target = layout.root.join("proc");
    steps.push(Step {
        mkdirs: vec![],
        source: Some(c"proc".into()),
        target: cpath(&proc_target).map_err(init)?,
        fstype: Some(c"proc".into()),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
        readonly: false,
        optional: false,
        when: When::Always,
        private: None,
        dirs_first: false,
        per_attempt: false,
    });
    step_names.push("mount /proc for the PID namespace".into());

    // The node's other GPUs, masked: the task sees only its own.
    let (node_gpus, driver) = crate::gpu::node();
    let hidden = crate::gpu::hidden(&spec.gpus, node_gpus, Path::new(crate::gpu::DEV), driver);
    for node in &hidden.nodes {
        steps.push(Step {
            mkdirs: vec![],
            source: Some(c"/dev/null".into()),
            target: cpath(&under(&layout.root, node)).map_err(init)?,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
            readonly: true,
            optional: false,
            when: When::Always,
            private: None,
            dirs_first: false,
            per_attempt: true,
        });
        step_names.push(format!(
            "hide GPU {} (not given to this task)",
            node.display()
        ));
    }
    for dir in &hidden.driver_dirs {
        steps.push(Step {
            mkdirs: vec![],
            source: Some(c"gpu".into()),
            target: cpath(&under(&layout.root, dir)).map_err(init)?,
            fstype: Some(c"tmpfs".into()),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
            data: None,
            readonly: false,
            optional: false,
            when: When::Always,
            private: None,
            dirs_first: false,
            per_attempt: true,
        });
        step_names.push(format!("hide the driver's entry {}", dir.display()));
    }

    steps.push(Step {
        mkdirs: vec![],
        source: Some(c"shm".into()),
        target: cpath(&layout.root.join("dev/shm")).map_err(init)?,
        fstype: Some(c"tmpfs".into()),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(c"mode=1777".into()),
        readonly: false,
        optional: true,
        when: When::Always,
        private: Some(0o1777),
        dirs_first: false,
        per_attempt: false,
    });
    step_names.push("mount a private /dev/shm".into());

    // With an overlay root, /tmp is the opaque `upper/tmp`: private and empty.
    steps.push(Step {
        mkdirs: vec![],
        source: Some(c"tmp".into()),
        target: cpath(&layout.root.join("tmp")).map_err(init)?,
        fstype: Some(c"tmpfs".into()),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(c"mode=1777".into()),
        readonly: false,
        optional: false,
        when: When::ReadOnlyRoot,
        private: None,
        dirs_first: false,
        per_attempt: false,
    });
    step_names.push("mount a private /tmp".into());

    // The workflow's network: its names and resolver.
    if let Some(net) = &spec.network {
        for (file, at) in [
            (&net.hosts, "/etc/hosts"),
            (&net.resolv, "/etc/resolv.conf"),
        ] {
            steps.push(Step {
                mkdirs: vec![],
                source: Some(cpath(file).map_err(init)?),
                target: cpath(&under(&layout.root, Path::new(at))).map_err(init)?,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                readonly: true,
                optional: false,
                when: When::Always,
                private: None,
                dirs_first: false,
                per_attempt: false,
            });
            step_names.push(format!("bind the workflow's {at}"));
        }
    }

    // The host's secrets, masked before the task's own directories are bound
    // (which may lie below them, as its output lies in the data directory).
    let outermost = crate::hidden::outermost(&spec.hidden_paths, run_as);
    let hidden_steps = steps.len()..steps.len() + outermost.len();
    for dir in &outermost {
        steps.push(Step {
            mkdirs: vec![],
            source: Some(c"hidden".into()),
            target: cpath(&under(&layout.root, dir)).map_err(init)?,
            fstype: Some(c"tmpfs".into()),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(c"mode=755".into()),
            readonly: false,
            optional: false,
            when: When::Always,
            private: Some(0o755),
            dirs_first: false,
            per_attempt: false,
        });
        step_names.push(format!("hide {} from the task", dir.display()));
    }

    // Output, inputs and tools at their host paths, parents before children.
    #[derive(Clone, Copy, PartialEq)]
    enum Dir {
        Output,
        Input,
        Tool,
    }
    let mut dirs: Vec<(PathBuf, Dir)> = vec![(output, Dir::Output)];
    dirs.extend(inputs.into_iter().map(|p| (p, Dir::Input)));
    dirs.extend(tools.into_iter().map(|p| (p, Dir::Tool)));
    dirs.sort_by_key(|(p, _)| p.components().count());
    for (dir, kind) in dirs {
        let readonly = kind != Dir::Output;
        let mut step = bind_step(layout, &dir, readonly, false, When::Always).map_err(init)?;
        step.per_attempt = kind != Dir::Tool;
        if let Some(hidden) = outermost.iter().find(|h| dir.starts_with(h) && dir != **h) {
            // In a hidden directory, an empty tmpfs: its mount point and
            // the directories above it there are all missing, and those
            // above the hidden directory are there. Made at once (not
            // after a failed mount), and only those (each `mkdir` walks the
            // whole path through the overlay).
            let hidden = under(&layout.root, hidden);
            let below: Vec<PathBuf> = prefixes(&layout.root, &dir)
                .into_iter()
                .filter(|p| p.starts_with(&hidden) && *p != hidden)
                .collect();
            step.mkdirs = cpaths(&below).map_err(init)?;
            step.dirs_first = true;
        }
        steps.push(step);
        step_names.push(match kind {
            Dir::Output => format!("bind output dir {}", dir.display()),
            Dir::Input => format!("bind input dir {} read-only", dir.display()),
            Dir::Tool => format!("bind tool dir {} read-only", dir.display()),
        });
    }

    // `volumeMounts`: host directories at the task's chosen paths, read-write,
    // after the data dirs and parents before children.
    let mut mounts: Vec<(PathBuf, PathBuf)> = spec
        .volume_mounts
        .iter()
        .map(|(src, dst)| Ok((canonical("volume mount", src)?, dst.clone())))
        .collect::<Result<_, _>>()?;
    mounts.sort_by_key(|(_, dst)| dst.components().count());
    for (src, dst) in mounts {
        steps.push(Step {
            mkdirs: cpaths(&prefixes(&layout.root, &dst)).map_err(init)?,
            source: Some(cpath(&src).map_err(init)?),
            target: cpath(&under(&layout.root, &dst)).map_err(init)?,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
            readonly: false,
            optional: false,
            when: When::Always,
            private: None,
            dirs_first: false,
            per_attempt: true,
        });
        step_names.push(format!(
            "bind volume mount {} at {}",
            src.display(),
            dst.display()
        ));
    }

    share_lone_hidden(&mut steps, hidden_steps);

    // `OSMO_SANDBOX_ROOT=tmpfs|readonly` skips the better kinds of root (to
    // work around a misbehaving overlayfs, and to test the fallbacks).
    let forced = std::env::var(ROOT_ENV).unwrap_or_default();
    let tmpfs_upper = layout.ovl.join("upper");
    // `OSMO_SANDBOX_ROOT=disk` keeps every writable layer on disk.
    let memory_upper = run_as.is_some_and(|(uid, _)| uid != 0) && forced.is_empty();
    let root = RootPlan {
        newroot: cpath(&layout.root).map_err(init)?,
        overlay_disk: overlay_data(&layout.upper, &layout.work)
            .and_then(|d| CString::new(format!("{},volatile", d.to_str().ok()?)).ok())
            .filter(|_| layout.opaque_tmp && forced != "tmpfs" && forced != "readonly"),
        overlay_disk_plain: overlay_data(&layout.upper, &layout.work)
            .filter(|_| layout.opaque_tmp && forced != "tmpfs" && forced != "readonly"),
        tmpfs_dir: cpath(&layout.ovl).map_err(init)?,
        tmpfs_upper: cpath(&tmpfs_upper).map_err(init)?,
        tmpfs_tmp: cpath(&tmpfs_upper.join("tmp")).map_err(init)?,
        tmpfs_work: cpath(&layout.ovl.join("work")).map_err(init)?,
        overlay_tmpfs: overlay_data(&tmpfs_upper, &layout.ovl.join("work"))
            .filter(|_| forced != "readonly"),
        memory_upper,
        disk_tmp: cpath(&layout.upper.join("tmp")).map_err(init)?,
        root_tmp: cpath(&layout.root.join("tmp")).map_err(init)?,
        private_dirs: private_dirs(&mut steps, &layout.ovl).map_err(init)?,
        keep: memory_upper
            && crate::kept_root::enabled()
            && rooted(&layout.root, &steps)
            && fds.preflight.len() <= crate::child::MAX_KEPT_STEPS,
        in_place: crate::park::in_place_enabled(),
    };

    let preflight = tests
        .iter()
        .zip(&fds.preflight)
        .map(|(argv, &out)| {
            Ok(PreflightPlan {
                exec: exec_plan(argv, path_var)?,
                out,
            })
        })
        .collect::<Result<Vec<_>, PrepareError>>()
        .map_err(init)?;

    let netns = match &spec.network {
        Some(net) => Some(
            fs::File::open(&net.netns)
                .map(std::os::fd::OwnedFd::from)
                .map_err(|source| PrepareError::Io {
                    what: format!("open the workflow's network {}", net.netns.display()),
                    source,
                })
                .map_err(init)?,
        ),
        None => None,
    };
    let netns_fd = netns.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd);
    let mut keep_fds = vec![fds.devnull, fds.status, fds.go, fds.stdout, fds.stderr];
    if netns_fd >= 0 {
        keep_fds.push(netns_fd);
    }
    keep_fds.extend(fds.preflight.iter().copied());
    if fds.cgroup_procs >= 0 {
        keep_fds.push(fds.cgroup_procs);
    }
    keep_fds.sort_unstable();

    let plan = ChildPlan {
        devnull: fds.devnull,
        status: fds.status,
        go: fds.go,
        stdout: fds.stdout,
        stderr: fds.stderr,
        cgroup_procs: fds.cgroup_procs,
        rlimit_as,
        keep_fds,
        root,
        steps,
        files,
        env: env_block(env).map_err(init)?,
        preflight,
        command: exec_plan(argv, path_var).map_err(init)?,
        scrub: scrub_ranges(),
        run_as,
        netns: netns_fd,
        template: -1,
        spawn_stack: Vec::new(),
        park: -1,
        handed_trees: Vec::new(),
        handed_errors: Vec::new(),
        in_place: false,
    };
    Ok(Prepared {
        _netns: netns,
        plan,
        step_names,
        file_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_dirs_are_made_from_the_top_and_missing_parents_too() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("wf/t/0/output");
        // Four levels missing, three tried from the top: all made.
        create_new_dirs(&out, 3).unwrap();
        assert!(out.is_dir());
        // Some there already (a retry): the rest made.
        let retry = dir.path().join("wf/t/1/output");
        create_new_dirs(&retry, 3).unwrap();
        assert!(retry.is_dir());
        // All there: nothing to do.
        create_new_dirs(&retry, 3).unwrap();
        // A file in the way is an error.
        std::fs::write(dir.path().join("wf/f"), "").unwrap();
        assert!(create_new_dirs(&dir.path().join("wf/f/0/output"), 3).is_err());
    }

    fn step(target: &str, mkdirs: &[&str]) -> Step {
        Step {
            mkdirs: mkdirs.iter().map(|d| CString::new(*d).unwrap()).collect(),
            source: None,
            target: CString::new(target).unwrap(),
            fstype: None,
            flags: 0,
            data: None,
            readonly: false,
            optional: false,
            when: When::Always,
            private: None,
            dirs_first: false,
            per_attempt: false,
        }
    }

    #[test]
    fn a_hidden_directory_nothing_is_mounted_below_is_shared() {
        let mut steps = vec![
            step("/r/proc", &[]),
            step("/r/root", &[]),
            step("/r/data", &[]),
            step("/r/home", &[]),
            step("/r/data/runs/wf/t.0", &["/r/data/runs", "/r/data/runs/wf"]),
            step("/r/homes", &[]),
            step("/r/opt/x", &["/r/opt"]),
        ];
        share_lone_hidden(&mut steps, 1..4);
        let shared: Vec<&str> = steps
            .iter()
            .filter(|s| s.when == When::Shared)
            .map(|s| s.target.to_str().unwrap())
            .collect();
        assert_eq!(shared, ["/r/root", "/r/home"]);
        // A mount point made below it is enough to keep it the sandbox's.
        let mut steps = vec![step("/r/root", &[]), step("/r/x", &["/r/root/a"])];
        share_lone_hidden(&mut steps, 0..1);
        assert!(steps[0].when == When::Always);
    }

    #[test]
    fn a_plan_is_rooted_when_every_path_is_below_the_root() {
        for root in ["/s/root", "/s/root/"] {
            let root = Path::new(root);
            assert!(rooted(
                root,
                &[step("/s/root/proc", &["/s/root/a", "/s/root/a/b"])]
            ));
            assert!(!rooted(root, &[step("/s/root", &[])]), "the root itself");
            assert!(!rooted(root, &[step("/s/root/", &[])]), "the root itself");
            assert!(!rooted(root, &[step("/s/rootx/a", &[])]), "a sibling");
            assert!(
                !rooted(root, &[step("/s/root/a", &["/s/a"])]),
                "a mount point outside"
            );
        }
        let many: Vec<Step> = (0..=crate::child::MAX_KEPT_STEPS)
            .map(|i| step(&format!("/s/root/{i}"), &[]))
            .collect();
        assert!(!rooted(Path::new("/s/root"), &many), "too many steps");
        assert!(rooted(Path::new("/s/root"), &many[1..]));
    }

    #[test]
    fn searches_the_task_path() {
        let plan = exec_plan(&["sh".into(), "-c".into(), "true".into()], "/a:/b/:").unwrap();
        let got: Vec<&str> = plan
            .candidates
            .iter()
            .map(|c| c.to_str().unwrap())
            .collect();
        assert_eq!(got, ["/a/sh", "/b/sh", "./sh"]);
        assert_eq!(plan.argv.len(), 4);
        assert!(plan.argv[3].is_null());
        let plan = exec_plan(&["./x".into()], "/a").unwrap();
        assert_eq!(plan.candidates, vec![CString::new("./x").unwrap()]);
        assert!(
            exec_plan(&[String::new()], "/a")
                .unwrap()
                .candidates
                .is_empty()
        );
    }

    #[test]
    fn a_nul_byte_is_refused_naming_the_string_that_holds_it() {
        let message = |e: PrepareError| e.to_string();
        let Err(err) = exec_plan(&["echo".into(), "a\0b".into()], "/bin") else {
            panic!("an argument with a NUL byte was taken");
        };
        assert_eq!(
            message(err),
            "argument \"a\\0b\" contains a NUL byte; remove it from the spec"
        );
        let env = BTreeMap::from([
            ("GOOD".to_string(), "x".to_string()),
            ("BAD".to_string(), "y\0".to_string()),
        ]);
        let Err(err) = env_block(&env) else {
            panic!("a variable with a NUL byte was taken");
        };
        assert_eq!(
            message(err),
            "environment variable BAD contains a NUL byte; remove it from the spec"
        );
        let err = cpath(Path::new("/a\0b")).unwrap_err();
        assert_eq!(
            message(err),
            "path /a\0b contains a NUL byte; remove it from the spec"
        );
    }

    #[test]
    fn paths_below_the_new_root() {
        let root = Path::new("/s/root");
        assert_eq!(
            under(root, Path::new("/tmp/../x/y")),
            PathBuf::from("/s/root/tmp/x/y")
        );
        assert_eq!(
            prefixes(root, Path::new("/a/b")),
            vec![PathBuf::from("/s/root/a"), PathBuf::from("/s/root/a/b")]
        );
    }

    #[test]
    fn decodes_base64_files_leniently_and_refuses_garbage() {
        let file = |contents: &str| osmo_spec::model::File {
            path: "/x".into(),
            contents: contents.into(),
            base64: true,
        };
        assert_eq!(decode_file(&file("aGVs\nbG8=")).unwrap(), b"hello");
        assert_eq!(decode_file(&file("aGVsbG8")).unwrap(), b"hello");
        let err = decode_file(&file("not base64!")).unwrap_err();
        assert_eq!(err.code, well_known::INIT_FILES);
        assert!(err.detail.unwrap().contains("/x"));
    }

    #[test]
    fn overlay_options_refuse_separator_characters() {
        assert!(overlay_data(Path::new("/a,b/u"), Path::new("/w")).is_none());
        assert_eq!(
            overlay_data(Path::new("/s/u"), Path::new("/s/w"))
                .unwrap()
                .to_str()
                .unwrap(),
            "lowerdir=/,upperdir=/s/u,workdir=/s/w"
        );
    }
}
