//! Roots the spawner keeps for the next attempt in the same scratch
//! directory (`kept_root.rs`): taken again only while nothing was written to
//! them, the plan is the same and they are young, and never showing one
//! attempt's files to the next.
//!
//! Attempts go through the sandbox spawner, as the node agent runs them: this
//! test is its own binary (no test harness), which the spawner runs again.
//! Needs root. Each check prints its name; the first that fails panics.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use osmo_runtime::enter::Entry;
use osmo_runtime::{
    AttemptSpec, SANDBOX_IN_PLACE_ENV, StopHandle, Stream, Supervisor, run_attempt,
};

/// The stdout lines of one attempt, and its root, held open.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    root: Mutex<Option<std::fs::File>>,
    stop: StopHandle,
    /// The attempt's init.
    init: Mutex<Option<u32>>,
    /// Stop the attempt once its command has started.
    stop_when_started: bool,
}

impl Supervisor for Lines {
    fn log(&self, stream: Stream, line: &str) {
        if stream == Stream::Stdout {
            self.lines.lock().unwrap().push(line.to_string());
        }
    }
    /// The sandbox is set up and its init waits for this answer: its root
    /// is opened here, which keeps the root's file systems (and the device
    /// numbers they have) from being freed for as long as the check runs.
    fn setup_done(&self) -> bool {
        let Some(Entry::Sandbox(entry)) = self.stop.entry() else {
            panic!("a set-up sandbox has its entry published");
        };
        let init = entry.init;
        *self.init.lock().unwrap() = Some(init as u32);
        assert!(
            our_children_named_init().contains(&(init as u32)),
            "the init of the attempt is this process's child"
        );
        let root = std::fs::File::open(format!("/proc/{init}/root")).unwrap();
        *self.root.lock().unwrap() = Some(root);
        true
    }
    fn started(&self) {
        if self.stop_when_started {
            self.stop.stop();
        }
    }
}

/// The pids of this process's children named `osmo-init` (the spawner
/// forks them as our children; some stay after their attempts).
fn our_children_named_init() -> Vec<u32> {
    our_children_named("osmo-init")
}

/// The pids of this process's children named `name`.
fn our_children_named(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
        (comm.ends_with(&format!("({name}")) && ppid == me).then_some(pid)
    })
    .collect()
}

/// Attempts in one scratch directory, as the agent runs them: as `nobody`
/// (a writable layer in memory), the scratch directory readied after each
/// attempt or removed when it cannot be.
struct Slot {
    dir: tempfile::TempDir,
    scratch: PathBuf,
    n: usize,
    /// The roots of its attempts, open: while they are, no other file
    /// system gets their device numbers.
    roots: Vec<std::fs::File>,
    /// The init of its last attempt.
    last_init: Option<u32>,
    /// Its tasks' input directories.
    inputs: Vec<PathBuf>,
}

impl Slot {
    fn new() -> Slot {
        let dir = tempfile::Builder::new()
            .prefix("osmo-kept-root-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let scratch = dir.path().join("scratch");
        Slot {
            dir,
            scratch,
            n: 0,
            roots: Vec::new(),
            last_init: None,
            inputs: Vec::new(),
        }
    }

    /// Runs `script` (sh) and returns its stdout lines; panics unless it exits 0.
    fn run(&mut self, script: &str) -> Vec<String> {
        self.n += 1;
        let output = self.dir.path().join(format!("output-{}", self.n));
        let spec = AttemptSpec {
            workflow_id: "kept-1".into(),
            group: "g".into(),
            task: format!("t{}", self.n),
            command: vec!["sh".into(), "-c".into(), script.into()],
            output_dir: output,
            scratch_dir: self.scratch.clone(),
            // As the server's data directory: the output is below it.
            hidden_paths: vec!["/root".into(), "/home".into(), self.dir.path().into()],
            // As the service's own `osmo`, in the data directory.
            tool_dirs: vec![self.tools()],
            input_dirs: self.inputs.clone(),
            run_as: Some((65534, 65534)),
            ..AttemptSpec::default()
        };
        let lines = Lines::default();
        let outcome = run_attempt(&spec, &lines, &lines.stop);
        let codes: Vec<u32> = outcome.codes.iter().map(|c| c.code).collect();
        assert_eq!(codes, [0], "{script}: {:?}", outcome.codes);
        if !osmo_runtime::recycle_scratch(&self.scratch) {
            std::fs::remove_dir_all(&self.scratch).unwrap();
        }
        self.roots.extend(lines.root.into_inner().unwrap());
        self.last_init = lines.init.into_inner().unwrap();
        lines.lines.into_inner().unwrap()
    }

    /// A directory of programs every attempt gets, with one (`tool`).
    fn tools(&self) -> PathBuf {
        let dir = self.dir.path().join("task-exe");
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("tool"), "#!/bin/sh\necho tool ran\n").unwrap();
            std::fs::set_permissions(
                dir.join("tool"),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        dir
    }

    /// The device of the attempt's root: each overlay has one of its own
    /// (freed with it, and the roots are held open), so two attempts that
    /// show the same device share a kept root.
    fn root_device(&mut self, then: &str) -> (String, Vec<String>) {
        let mut lines = self.run(&format!("stat -c %d /; {then}"));
        let device = lines.remove(0);
        (device, lines)
    }
}

fn main() {
    osmo_runtime::spawner::serve_if_asked();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kept roots need root: the sandbox creates mount namespaces"
    );
    osmo_runtime::spawner::start(Path::new("/proc/self/exe")).expect("a sandbox spawner");
    let checks: [(&str, fn()); 10] = [
        (
            "an_init_no_attempt_comes_for_ends_and_is_reaped",
            an_init_no_attempt_comes_for_ends_and_is_reaped,
        ),
        (
            "an_init_stays_for_the_next_attempt_and_keeps_nothing_of_the_last",
            an_init_stays_for_the_next_attempt_and_keeps_nothing_of_the_last,
        ),
        (
            "a_directory_left_in_dev_shm_is_gone_for_the_next_attempt",
            a_directory_left_in_dev_shm_is_gone_for_the_next_attempt,
        ),
        (
            "an_input_with_a_mount_below_it_goes_whole",
            an_input_with_a_mount_below_it_goes_whole,
        ),
        (
            "a_root_nothing_was_written_to_serves_the_next_attempt",
            a_root_nothing_was_written_to_serves_the_next_attempt,
        ),
        (
            "a_root_written_to_is_not_taken_again",
            a_root_written_to_is_not_taken_again,
        ),
        (
            "tmp_and_shm_are_each_attempts_own",
            tmp_and_shm_are_each_attempts_own,
        ),
        (
            "a_mount_the_host_adds_makes_a_new_root",
            a_mount_the_host_adds_makes_a_new_root,
        ),
        (
            "no_mount_of_a_kept_root_propagates_and_its_root_is_unbindable",
            no_mount_of_a_kept_root_propagates_and_its_root_is_unbindable,
        ),
        (
            "a_root_is_kept_for_two_seconds_at_most",
            a_root_is_kept_for_two_seconds_at_most,
        ),
    ];
    // Inits that stay make each attempt's mounts in place; where they
    // cannot (a kernel before 6.8) or must not, in a copy of their
    // namespace: this binary runs the checks of inits that stay again so,
    // in a process of its own (its spawner reads the setting at its start).
    let staying = [
        "an_init_no_attempt_comes_for_ends_and_is_reaped",
        "an_init_stays_for_the_next_attempt_and_keeps_nothing_of_the_last",
        "a_directory_left_in_dev_shm_is_gone_for_the_next_attempt",
        "an_input_with_a_mount_below_it_goes_whole",
    ];
    let in_place = in_place();
    for (name, check) in checks {
        if !in_place && !staying.contains(&name) {
            continue;
        }
        let mode = if in_place { "" } else { " (in a copy)" };
        println!("test {name}{mode} ...");
        check();
        println!("test {name}{mode} ... ok");
    }
    if in_place {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .env(SANDBOX_IN_PLACE_ENV, "0")
            .status()
            .unwrap();
        assert!(status.success(), "the checks in copies of the namespace");
    }
}

fn a_root_nothing_was_written_to_serves_the_next_attempt() {
    let mut slot = Slot::new();
    let (first, _) = slot.root_device("true");
    let (second, _) = slot.root_device("true");
    assert_eq!(first, second, "the second attempt took the kept root");
    // Another scratch directory has a root of its own.
    let mut other_slot = Slot::new();
    let (other, _) = other_slot.root_device("true");
    assert_ne!(other, first);
}

fn a_root_written_to_is_not_taken_again() {
    let mut slot = Slot::new();
    let name = format!("/var/tmp/osmo-kept-{}", std::process::id());
    let (writer, _) = slot.root_device(&format!("echo left > {name}"));
    let (next, seen) = slot.root_device(&format!("cat {name} 2>/dev/null || echo absent"));
    assert_ne!(next, writer, "a root written to is not reused");
    assert_eq!(seen, ["absent"], "the next attempt sees nothing of it");
    assert!(!Path::new(&name).exists(), "nothing reached the host");
    // A directory made counts as a write too.
    let (maker, _) = slot.root_device(&format!("mkdir {name}.d"));
    let (after, seen) = slot.root_device(&format!("ls -d {name}.d 2>/dev/null || echo absent"));
    assert_ne!(after, maker);
    assert_eq!(seen, ["absent"]);
}

/// The next attempt in a kept root runs in the init the last one ran in
/// (`park.rs`): the same PID namespace. Nothing of the last attempt is
/// left: its processes, its `/dev/shm`, its output directory; the mount
/// table is the one the first attempt had. The init stays root; the task
/// runs as its user.
fn an_init_stays_for_the_next_attempt_and_keeps_nothing_of_the_last() {
    let mut slot = Slot::new();
    let table = "echo end; cut -d' ' -f5 /proc/self/mountinfo";
    let first_output = slot.dir.path().join("output-1");
    let first = slot.run(&format!(
        "readlink /proc/self/ns/pid; id -u; stat -c %u /proc/1; \
         setsid sleep 1000 > /dev/null 2>&1 & echo s > /dev/shm/left; echo o > {}/left; \
         {tool}; {table}",
        first_output.display(),
        tool = slot.tools().join("tool").display(),
    ));
    assert!(
        first_output.join("left").is_file(),
        "the first wrote its output"
    );
    let second = slot.run(&format!(
        "readlink /proc/self/ns/pid; id -u; stat -c %u /proc/1; \
         for p in /proc/[0-9]*; do cat $p/comm; done | grep -c sleep; \
         ls -A /dev/shm | wc -l; ls -A {} 2>/dev/null | wc -l; {tool}; {table}",
        first_output.display(),
        tool = slot.tools().join("tool").display(),
    ));
    assert_eq!(
        first[..3],
        second[..3],
        "the same PID namespace, the task's user, a root init"
    );
    assert_eq!(first[1..3], ["65534", "0"], "{first:?}");
    assert_eq!(
        second[3..6],
        ["0", "0", "0"],
        "no process, /dev/shm file or output of the last: {second:?}"
    );
    assert_eq!(first[3], "tool ran", "{first:?}");
    assert_eq!(second[6], "tool ran", "the tools stay: {second:?}");
    // The mount points, each attempt's output named alike (the table's
    // order follows the mounts' IDs, which the kernel may reuse).
    let mounts = |lines: &[String]| -> Vec<String> {
        let end = lines.iter().position(|l| l == "end").unwrap();
        let mut points: Vec<String> = lines[end + 1..]
            .iter()
            .map(|p| {
                p.replace("output-1", "output")
                    .replace("output-2", "output")
            })
            .collect();
        points.sort();
        points
    };
    assert_eq!(mounts(&first), mounts(&second), "the same mounts");
}

/// What a task leaves in `/dev/shm` is gone for the next attempt. An init
/// that stays in place (`park.rs`) removes the files a task left there (the
/// check above); a directory, which it does not remove, ends it, and the
/// next attempt gets another init. An init that makes each attempt's mounts
/// in a copy of its namespace (`OSMO_SANDBOX_IN_PLACE=0`) stays: the
/// attempt's `/dev/shm` went with its copy.
fn a_directory_left_in_dev_shm_is_gone_for_the_next_attempt() {
    let mut slot = Slot::new();
    slot.run("mkdir /dev/shm/d; echo f > /dev/shm/d/f");
    let first = slot.last_init;
    let seen = slot.run("ls -A /dev/shm | wc -l");
    assert_eq!(seen, ["0"], "an empty /dev/shm");
    if in_place() {
        assert_ne!(slot.last_init, first, "another init");
    } else {
        assert_eq!(slot.last_init, first, "the same init");
    }
    // The init of that attempt stays for the next.
    let second = slot.last_init;
    let seen = slot.run("ls -A /dev/shm | wc -l");
    assert_eq!(slot.last_init, second, "the same init");
    assert_eq!(seen, ["0"]);
}

/// An input with a host mount below it is bound with that mount (one
/// step, two mounts): after the attempt both go, and the init stays for the
/// next, which sees the input whole and nothing of the last.
fn an_input_with_a_mount_below_it_goes_whole() {
    let mut slot = Slot::new();
    let input = slot.dir.path().join("input");
    let below = input.join("below");
    std::fs::create_dir_all(&below).unwrap();
    // Mounted where the spawner clones the host's paths: its own mount
    // namespace (a host mount reaches it only where `/` propagates).
    let spawner = our_children_named("osmo-spawner");
    let mount = |args: &[&str]| {
        let status = std::process::Command::new("nsenter")
            .arg("-t")
            .arg(spawner[0].to_string())
            .arg("-m")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "nsenter {args:?}");
    };
    let below_text = below.display().to_string();
    mount(&["mount", "-t", "tmpfs", "below", &below_text]);
    mount(&["sh", "-c", &format!("echo f > {below_text}/f")]);
    slot.inputs = vec![input.clone()];
    let look = format!(
        "cat {}/f; grep -c ' {} ' /proc/self/mountinfo",
        below.display(),
        below.display()
    );
    let first = slot.run(&look);
    let init = slot.last_init;
    let second = slot.run(&look);
    mount(&["umount", &below_text]);
    assert_eq!(first[0], "f", "{first:?}");
    assert_eq!(second, first, "the input whole, nothing of the last");
    assert_eq!(slot.last_init, init, "the same init");
}

/// Whether this run's inits stay in place (see `main`).
fn in_place() -> bool {
    std::env::var(SANDBOX_IN_PLACE_ENV).as_deref() != Ok("0")
}

/// An init that stayed after its attempt ends when no attempt comes for it
/// (after `park::IDLE`, 2 s), and nothing is left of it: it is reaped, no
/// zombie stays. An attempt stopped in an init that stayed ends that init.
fn an_init_no_attempt_comes_for_ends_and_is_reaped() {
    let mut slot = Slot::new();
    slot.run("true");
    let init = slot.last_init.expect("the attempt's init");
    let state = |pid: u32| -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        comm.ends_with("(osmo-init")
            .then(|| rest.split(' ').next().unwrap_or("").to_string())
    };
    let parked = state(init).expect("the init stays after its attempt");
    assert_ne!(parked, "Z", "it waits for the next attempt");
    // Polled, with a deadline: its end is what is tested, not an ordering.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while state(init).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle init {init} was not ended and reaped: {:?}",
            state(init)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // An attempt stopped while its command runs: its init is killed with
    // it, and reaped; the next attempt gets another.
    let mut slot = Slot::new();
    slot.run("true");
    let parked = slot.last_init.unwrap();
    let lines = Lines {
        stop_when_started: true,
        ..Lines::default()
    };
    let spec = AttemptSpec {
        workflow_id: "kept-1".into(),
        group: "g".into(),
        task: "stopped".into(),
        command: vec!["sleep".into(), "100".into()],
        output_dir: slot.dir.path().join("output-stopped"),
        scratch_dir: slot.scratch.clone(),
        hidden_paths: vec!["/root".into(), "/home".into(), slot.dir.path().into()],
        tool_dirs: vec![slot.tools()],
        run_as: Some((65534, 65534)),
        ..AttemptSpec::default()
    };
    run_attempt(&spec, &lines, &lines.stop);
    let stopped = lines.init.into_inner().unwrap().expect("it was set up");
    assert_eq!(
        stopped, parked,
        "the stopped attempt ran in the init that stayed"
    );
    assert_eq!(
        state(stopped),
        None,
        "a stopped attempt's init is gone, reaped"
    );
    slot.run("true");
    assert_ne!(
        slot.last_init,
        Some(stopped),
        "the next attempt has an init of its own"
    );
}

/// The sandbox's init does not make its copy of the template private again:
/// the copy must be so already. Its root is unbindable, as a root the init
/// makes itself.
fn no_mount_of_a_kept_root_propagates_and_its_root_is_unbindable() {
    let mut slot = Slot::new();
    let (first, _) = slot.root_device("true");
    let (second, table) = slot.root_device("cat /proc/self/mountinfo");
    assert_eq!(second, first, "the root was kept");
    // Each line: ID PARENT DEV ROOT MOUNT_POINT OPTIONS [TAG...] - TYPE ...
    let tagged: Vec<(&str, Vec<&str>)> = table
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let end = fields.iter().position(|f| *f == "-").unwrap();
            (fields[4], fields[6..end].to_vec())
        })
        .collect();
    for (at, tags) in &tagged {
        assert!(
            tags.iter()
                .all(|t| !t.starts_with("shared:") && !t.starts_with("master:")),
            "{at} propagates: {tags:?}\n{table:#?}"
        );
    }
    let root = tagged.iter().find(|(at, _)| *at == "/").unwrap();
    assert!(root.1.contains(&"unbindable"), "{table:#?}");
}

fn tmp_and_shm_are_each_attempts_own() {
    let mut slot = Slot::new();
    let (first, _) = slot.root_device("echo s > /dev/shm/left");
    let hidden = slot.dir.path().display().to_string();
    let look = format!(
        "ls -A /dev/shm; echo end; stat -f -c %T /dev/shm /root; \
         stat -c '%a %d' /dev/shm {hidden} /root /home; \
         grep -E ' /(root|home) ' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1"
    );
    let (second, seen) = slot.root_device(&look);
    assert_eq!(second, first, "/dev/shm is not the kept root's layer");
    assert_eq!(
        seen[..3],
        ["end", "tmpfs", "tmpfs"],
        "an empty /dev/shm: {seen:?}"
    );
    let modes: Vec<&str> = seen[3..7]
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(modes, ["1777", "755", "755", "755"], "{seen:?}");
    let devices = |seen: &[String]| -> Vec<String> {
        seen[3..7]
            .iter()
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect()
    };
    let [shm, data, root, home] = <[String; 4]>::try_from(devices(&seen)).unwrap();
    assert!(![&shm, &data, &root, &home].contains(&&second), "{seen:?}");
    // /root and /home are the template's, read-only (nothing is mounted
    // below them); /dev/shm and the directory the output is below are the
    // attempt's own, on a tmpfs of its own.
    assert_eq!(seen[7..], ["ro", "ro"], "{seen:?}");
    assert!(
        root != shm && home != shm,
        "not the attempt's tmpfs: {seen:?}"
    );
    if kernel_at_least(6, 15) {
        // Binds from a mount made nowhere (`fsmount`): one tmpfs for all.
        assert_eq!(shm, data, "one tmpfs: {seen:?}");
    }
    // A file in /tmp keeps the scratch directory from being readied: the
    // agent removes it, and the next attempt's /tmp is a new directory.
    let (writer, _) = slot.root_device("echo t > /tmp/left");
    assert!(!slot.scratch.exists(), "the scratch directory was removed");
    let (next, seen) = slot.root_device("ls -A /tmp; echo t >> /tmp/new; cat /tmp/new");
    assert_ne!(next, writer, "a new /tmp directory: a new root");
    assert_eq!(seen, ["t"], "an empty, writable /tmp");
}

/// Whether the running kernel is `major.minor` or later.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

fn a_mount_the_host_adds_makes_a_new_root() {
    let mut slot = Slot::new();
    let (before, _) = slot.root_device("true");
    let point = PathBuf::from(format!("/osmo-kept-{}", std::process::id()));
    std::fs::create_dir(&point).unwrap();
    let c = std::ffi::CString::new(point.to_str().unwrap()).unwrap();
    // SAFETY: mount(2) of a tmpfs on our own new directory.
    let mounted = unsafe {
        libc::mount(
            c"kept-test".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(mounted, 0, "{}", std::io::Error::last_os_error());
    let seen = std::panic::catch_unwind(move || {
        slot.root_device(&format!("test -d {} && echo there", point.display()))
    });
    // SAFETY: unmounting what this check mounted.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(Path::new(c.to_str().unwrap()));
    let (after, seen) = seen.expect("the attempt ran");
    // (What the new mount shows in it depends on the host's propagation:
    // on a host whose `/` is private, the spawner's namespace does not
    // receive it, kept root or not.)
    assert_ne!(
        after, before,
        "a new root, with the new host mount bound in"
    );
    assert_eq!(seen, ["there"]);
}

fn a_root_is_kept_for_two_seconds_at_most() {
    let mut slot = Slot::new();
    let (first, _) = slot.root_device("true");
    // Time passing is what is tested here, not an ordering.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (later, _) = slot.root_device("true");
    assert_ne!(later, first, "a root past its age is made anew");
}
