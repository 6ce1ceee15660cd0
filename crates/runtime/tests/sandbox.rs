//! Real attempts through `run_attempt`: real namespaces, mounts, processes.
//!
//! These need root (the runtime creates PID and mount namespaces); as a
//! non-root user every test fails loudly with the runtime's own 256 detail.
//! No test sleeps to synchronise: ordering comes from pipes, files, the
//! supervisor's callbacks and exit codes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use osmo_runtime::{AttemptSpec, Outcome, StopHandle, Stream, Supervisor, run_attempt};
use osmo_spec::codes::{CodeSource, ReportedCode};
use osmo_spec::config::PreflightTest;
use osmo_spec::model::File;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Log(Stream, String),
    SetupDone,
    Started,
    RunStopped(Vec<u32>),
}

type Gate = Box<dyn Fn() -> bool + Send + Sync>;
type OnLine = Box<dyn Fn(&str) + Send + Sync>;

/// Records every callback; `setup_done` runs `gate` (default: go).
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    gate: Option<Gate>,
    on_started: Option<Box<dyn Fn() + Send + Sync>>,
    on_line: Option<OnLine>,
}

impl Recorder {
    fn with_gate(gate: impl Fn() -> bool + Send + Sync + 'static) -> Recorder {
        Recorder {
            gate: Some(Box::new(gate)),
            ..Recorder::default()
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn lines(&self, stream: Stream) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Log(s, l) if s == stream => Some(l),
                _ => None,
            })
            .collect()
    }

    fn count(&self, event: &Event) -> usize {
        self.events().iter().filter(|e| *e == event).count()
    }
}

impl Supervisor for Recorder {
    fn log(&self, stream: Stream, line: &str) {
        self.events
            .lock()
            .unwrap()
            .push(Event::Log(stream, line.to_string()));
        if let Some(f) = &self.on_line {
            f(line);
        }
    }

    fn setup_done(&self) -> bool {
        self.events.lock().unwrap().push(Event::SetupDone);
        self.gate.as_ref().is_none_or(|g| g())
    }

    fn started(&self) {
        self.events.lock().unwrap().push(Event::Started);
        if let Some(f) = &self.on_started {
            f();
        }
    }

    fn run_stopped(&self, codes: &[ReportedCode]) {
        let codes = codes.iter().map(|c| c.code).collect();
        self.events.lock().unwrap().push(Event::RunStopped(codes));
    }
}

/// A spec with its own temporary scratch and output directories (under /tmp,
/// which the sandbox replaces: they must still appear at their paths).
struct Fixture {
    spec: AttemptSpec,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(task: &str, command: &[&str]) -> Fixture {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "osmo-runtime tests need root: the sandbox creates PID and mount namespaces"
        );
        let dir = tempfile::Builder::new()
            .prefix("osmo-runtime-test-")
            .tempdir()
            .unwrap();
        let output = dir.path().join("output");
        std::fs::create_dir(&output).unwrap();
        let spec = AttemptSpec {
            workflow_id: "wf-1".into(),
            group: "group-a".into(),
            task: task.into(),
            retry_id: 0,
            command: command.iter().map(|s| s.to_string()).collect(),
            args: vec![],
            environment: BTreeMap::new(),
            files: vec![],
            output_dir: output,
            input_dirs: vec![],
            volume_mounts: vec![],
            preflight: vec![],
            memory_limit_bytes: None,
            scratch_dir: dir.path().join("scratch"),
            ..AttemptSpec::default()
        };
        Fixture { spec, _dir: dir }
    }

    fn out(&self) -> &Path {
        &self.spec.output_dir
    }

    fn run(&self) -> (Outcome, Recorder) {
        let rec = Recorder::default();
        let outcome = run_attempt(&self.spec, &rec, &StopHandle::new());
        (outcome, rec)
    }
}

fn user(code: u32) -> Vec<(u32, CodeSource)> {
    vec![(code, CodeSource::User)]
}

fn codes(o: &Outcome) -> Vec<(u32, CodeSource)> {
    o.codes.iter().map(|c| (c.code, c.source)).collect()
}

fn file(path: &str, contents: &str) -> File {
    File {
        path: path.into(),
        contents: contents.into(),
        base64: false,
    }
}

fn unique(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("osmo-rt-{}-{n}-{name}", std::process::id())
}

#[test]
fn exit_code_is_reported_with_its_source() {
    let f = Fixture::new("t", &["sh", "-c", "echo out; echo err >&2; exit 16"]);
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(16), "{o:?} {:?}", rec.events());
    assert_eq!(rec.lines(Stream::Stdout), ["out"]);
    assert_eq!(rec.lines(Stream::Stderr), ["err"]);
    assert_eq!(o.highest().map(|c| c.code), Some(16));
}

#[test]
fn success_is_a_single_zero() {
    let f = Fixture::new("t", &["true"]);
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
}

#[test]
fn kill_9_of_the_shell_itself_is_137() {
    let f = Fixture::new("victim", &["sh", "-c", "kill -9 $$"]);
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(137), "{:?}", rec.events());
    assert_eq!(o.codes[0].detail.as_deref(), Some("killed by signal 9"));
}

#[test]
fn the_command_is_not_pid_1_and_its_parent_is_the_reaper() {
    let f = Fixture::new(
        "t",
        &[
            "sh",
            "-c",
            "echo $$; grep '^PPid:' /proc/$$/status; cat /proc/1/comm",
        ],
    );
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    let lines = rec.lines(Stream::Stdout);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let pid: u32 = lines[0].parse().unwrap();
    assert!(pid > 1, "the command must not be PID 1, it is {pid}");
    assert_eq!(
        lines[1], "PPid:\t1",
        "the command's parent must be the reaper (PID 1)"
    );
    // /proc is the namespace's own: PID 1 is the reaper, not the host's init.
    assert_eq!(lines[2], "osmo-init");
}

#[test]
fn the_controllers_environment_is_not_visible() {
    let f = Fixture::new(
        "t",
        &[
            "sh",
            "-c",
            "tr -d '\\000' < /proc/1/environ | wc -c; tr '\\000' ' ' < /proc/1/cmdline",
        ],
    );
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    let lines = rec.lines(Stream::Stdout);
    assert_eq!(
        lines[0].trim(),
        "0",
        "/proc/1/environ shows the controller's environment"
    );
    assert!(lines[1].starts_with("osmo-init "), "{lines:?}");
}

#[test]
fn concurrent_attempts_have_private_files_and_tmp() {
    let name = format!("/tmp/{}", unique("run.sh"));
    assert!(!Path::new(&name).exists());
    let both_set_up = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [(11, "one"), (12, "two")]
        .into_iter()
        .map(|(code, task)| {
            let mut f = Fixture::new(task, &["sh", &name]);
            f.spec.files = vec![file(&name, &format!("cat {name}; ls /tmp; exit {code}\n"))];
            let barrier = both_set_up.clone();
            std::thread::spawn(move || {
                let f = f; // the whole fixture (its temporary directory too), not just f.spec
                // Both attempts have written their file before either command runs.
                let rec = Recorder::with_gate(move || {
                    barrier.wait();
                    true
                });
                let o = run_attempt(&f.spec, &rec, &StopHandle::new());
                (code, o, rec.lines(Stream::Stdout))
            })
        })
        .collect();
    for h in handles {
        let (code, o, lines) = h.join().unwrap();
        assert_eq!(codes(&o), user(code), "{o:?} {lines:?}");
        assert_eq!(lines[0], format!("cat {name}; ls /tmp; exit {code}"));
        // The private /tmp holds the task's file and the path to its output dir only.
        let tmp: Vec<&String> = lines[1..].iter().collect();
        assert_eq!(tmp.len(), 2, "private /tmp: {tmp:?}");
    }
    assert!(
        !Path::new(&name).exists(),
        "the host's {name} must not be created"
    );
}

#[test]
fn the_host_file_system_is_not_modified() {
    let etc = format!("/etc/{}", unique("written"));
    let spec_file = format!("/etc/{}", unique("file"));
    let mut f = Fixture::new(
        "t",
        &[
            "sh",
            "-c",
            &format!("echo hi > {etc} && cat {etc} {spec_file}"),
        ],
    );
    f.spec.files = vec![file(&spec_file, "from spec\n")];
    let (o, rec) = f.run();
    // With the overlay root both writes succeed privately; a read-only root
    // would refuse them. Either way the host stays as it was.
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(rec.lines(Stream::Stdout), ["hi", "from spec"]);
    assert!(!Path::new(&etc).exists(), "{etc} leaked to the host");
    assert!(
        !Path::new(&spec_file).exists(),
        "{spec_file} leaked to the host"
    );
}

#[test]
fn a_task_that_is_not_root_writes_its_root_to_memory_and_its_tmp_to_disk() {
    let var_tmp = format!("/var/tmp/{}", unique("in-memory"));
    let mut f = Fixture::new(
        "layers",
        &[
            "sh",
            "-c",
            &format!(
                "id -u && echo d > /tmp/on-disk && echo m > {var_tmp} && cat /tmp/on-disk {var_tmp}"
            ),
        ],
    );
    f.spec.run_as = Some((65534, 65534));
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(rec.lines(Stream::Stdout), ["65534", "d", "m"]);
    // The scratch directory is left as the attempt left it (removing it is the caller's).
    let scratch = &f.spec.scratch_dir;
    assert_eq!(
        std::fs::read_to_string(scratch.join("upper/tmp/on-disk")).unwrap(),
        "d\n",
        "/tmp is the scratch directory's, on disk"
    );
    assert!(
        !scratch.join("upper/var").exists(),
        "the rest of the writable layer is not on disk"
    );
    assert!(
        !Path::new(&var_tmp).exists(),
        "{var_tmp} leaked to the host"
    );
}

#[test]
fn a_task_that_is_not_root_reaches_its_output_in_a_hidden_dir_below_a_closed_one() {
    // The server's data directory in a directory only root may search
    // (Python's and mktemp's temporary directories are 0700), hidden from
    // the task, with the task's output below it.
    let closed = tempfile::Builder::new()
        .prefix("osmo-closed-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(
        closed.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let data = closed.path().join("data");
    std::fs::create_dir_all(data.join("runs")).unwrap();
    std::fs::write(data.join("secret"), "s").unwrap();
    let mut f = Fixture::new(
        "closed",
        &[
            "sh",
            "-c",
            "echo ok > \"$OUT/part\" && ls \"$(dirname \"$OUT\")\"",
        ],
    );
    f.spec.output_dir = data.join("runs/output");
    f.spec.hidden_paths = vec![data.clone()];
    f.spec.run_as = Some((65534, 65534));
    f.spec
        .environment
        .insert("OUT".into(), f.spec.output_dir.display().to_string());
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(
        rec.lines(Stream::Stdout),
        ["output"],
        "only its output, nothing else of the data dir"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("runs/output/part")).unwrap(),
        "ok\n"
    );
}

#[test]
fn a_task_that_is_not_root_gets_its_shm_and_hidden_dirs_from_its_layers_tmpfs() {
    // One tmpfs for the writable layer, /dev/shm and every hidden path: a
    // superblock each would cost its set-up and teardown at every attempt.
    let hidden = tempfile::Builder::new()
        .prefix("osmo-hidden-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::write(hidden.path().join("secret"), "s").unwrap();
    let dir = hidden.path().display().to_string();
    let mut f = Fixture::new(
        "private",
        &[
            "sh",
            "-c",
            &format!(
                "stat -c '%a %u' /dev/shm {dir}; ls -A {dir} | wc -l; \
                 echo x > /dev/shm/f && cat /dev/shm/f; \
                 stat -c %d / /dev/shm {dir} | sort -u | wc -l"
            ),
        ],
    );
    f.spec.hidden_paths = vec![hidden.path().to_path_buf()];
    f.spec.run_as = Some((65534, 65534));
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(
        rec.lines(Stream::Stdout),
        ["1777 0", "755 0", "0", "x", "2"],
        "a world-writable /dev/shm, an empty hidden dir, and two file systems: \
         the overlay root and the one tmpfs below /dev/shm and the hidden dir"
    );
}

#[test]
fn a_task_that_runs_as_root_keeps_its_whole_writable_layer_on_disk() {
    let var_tmp = format!("/var/tmp/{}", unique("on-disk"));
    let f = Fixture::new("layers", &["sh", "-c", &format!("echo r > {var_tmp}")]);
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    let name = Path::new(&var_tmp).file_name().unwrap();
    let upper = f.spec.scratch_dir.join("upper/var/tmp").join(name);
    assert_eq!(std::fs::read_to_string(upper).unwrap(), "r\n");
    assert!(
        !Path::new(&var_tmp).exists(),
        "{var_tmp} leaked to the host"
    );
}

#[test]
fn output_is_writable_and_inputs_and_tools_are_read_only() {
    let mut f = Fixture::new("t", &["sh", "-c"]);
    let input = f._dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("answer.txt"), "42\n").unwrap();
    let tools = f._dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::fs::write(tools.join("tool"), "#!/bin/sh\necho tool ran\n").unwrap();
    std::fs::set_permissions(
        tools.join("tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let script = format!(
        "test \"$(cat {inp}/answer.txt)\" = 42 || exit 3; \
         touch {inp}/new 2>/dev/null && exit 4; \
         test \"$({tools}/tool)\" = 'tool ran' || exit 5; \
         touch {tools}/new 2>/dev/null && exit 6; \
         echo 42 > {out}/answer.txt",
        inp = input.display(),
        tools = tools.display(),
        out = f.out().display()
    );
    f.spec.args = vec![script];
    f.spec.input_dirs = vec![input.clone()];
    f.spec.tool_dirs = vec![tools.clone()];
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(
        std::fs::read_to_string(f.out().join("answer.txt")).unwrap(),
        "42\n"
    );
    assert!(!input.join("new").exists());
    assert!(!tools.join("new").exists());
}

#[test]
fn volume_mounts_put_host_directories_at_the_task_paths() {
    let mut f = Fixture::new("t", &["sh", "-c"]);
    let host = f._dir.path().join("datasets");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("train.csv"), "1,2\n").unwrap();
    // A path that does not exist on the host: the sandbox makes it in the task's view.
    let inside = format!("/osmo-test-mount-{}", std::process::id());
    f.spec.args = vec![format!(
        "test \"$(cat {inside}/train.csv)\" = 1,2 || exit 3; echo done > {inside}/result"
    )];
    f.spec.volume_mounts = vec![(host.clone(), inside.clone().into())];
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(
        std::fs::read_to_string(host.join("result")).unwrap(),
        "done\n",
        "read-write"
    );
    assert!(
        !std::path::Path::new(&inside).exists(),
        "the host's / is untouched"
    );
}

#[test]
fn environment_is_exact_and_refs_are_expanded() {
    let mut f = Fixture::new(
        "env-task",
        &[
            "sh",
            "-c",
            "echo \"$1|$2|$3|$$\" >&2; cat /proc/$$/environ",
            "sh",
        ],
    );
    f.spec.retry_id = 2;
    f.spec.environment = [("MY_VAR".to_string(), "value".to_string())].into();
    f.spec.args = vec!["$(MY_VAR)".into(), "$$(MY_VAR)".into(), "$(NOPE)".into()];
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    let err = rec.lines(Stream::Stderr);
    let parts: Vec<&str> = err[0].split('|').collect();
    assert_eq!(&parts[..3], ["value", "$(MY_VAR)", "$(NOPE)"]);
    assert_ne!(parts[3], "$$", "`$$` is not an escape outside `$$(`");
    let environ = rec.lines(Stream::Stdout).join("\n");
    let mut got: Vec<&str> = environ.split('\0').filter(|s| !s.is_empty()).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "HOME=/root",
            "MY_VAR=value",
            "OSMO_GROUP_NAME=group-a",
            "OSMO_RETRY_ID=2",
            "OSMO_TASK_NAME=env-task",
            "OSMO_WORKFLOW_ID=wf-1",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]
    );
}

#[test]
fn working_directory_is_root() {
    let f = Fixture::new("t", &["pwd"]);
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0));
    assert_eq!(rec.lines(Stream::Stdout), ["/"]);
}

#[test]
fn failed_preflight_is_1001_and_the_command_never_runs() {
    let mut f = Fixture::new("t", &["sh", "-c"]);
    f.spec.args = vec![format!("touch {}/ran", f.out().display())];
    f.spec.files = vec![file("/tmp/pre.txt", "x")];
    f.spec.preflight = vec![
        PreflightTest {
            name: "sees-files".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "test -f /tmp/pre.txt && echo task $(OSMO_TASK_NAME)".into(),
            ],
            first_attempt_only: false,
        },
        PreflightTest {
            name: "nccl-bandwidth".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo bandwidth too low >&2; exit 1".into(),
            ],
            first_attempt_only: true,
        },
    ];
    let (o, rec) = f.run();
    assert_eq!(
        codes(&o),
        vec![(1001, CodeSource::Preflight)],
        "{:?}",
        rec.events()
    );
    assert_eq!(
        o.codes[0].detail.as_deref(),
        Some("preflight nccl-bandwidth failed: exit 1")
    );
    assert!(
        !f.out().join("ran").exists(),
        "the command ran after a failed preflight"
    );
    assert_eq!(rec.count(&Event::SetupDone), 0);
    assert_eq!(rec.count(&Event::Started), 0);
    let osmo = rec.lines(Stream::Osmo);
    assert!(
        osmo.contains(&"[preflight sees-files] task t".to_string()),
        "{osmo:?}"
    );
    assert!(
        osmo.contains(&"preflight sees-files passed".to_string()),
        "{osmo:?}"
    );
    assert!(
        osmo.contains(&"[preflight nccl-bandwidth] bandwidth too low".to_string()),
        "{osmo:?}"
    );
}

#[test]
fn first_attempt_only_preflight_is_skipped_on_retry() {
    let mut f = Fixture::new("t", &["true"]);
    f.spec.retry_id = 1;
    f.spec.preflight = vec![PreflightTest {
        name: "nccl-bandwidth".into(),
        command: vec!["false".into()],
        first_attempt_only: true,
    }];
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert!(
        rec.lines(Stream::Osmo)
            .iter()
            .any(|l| l.contains("nccl-bandwidth skipped"))
    );
}

#[test]
fn preflight_that_cannot_run_is_1001() {
    let mut f = Fixture::new("t", &["true"]);
    f.spec.preflight = vec![PreflightTest {
        name: "missing".into(),
        command: vec!["osmo-no-such-program".into()],
        first_attempt_only: false,
    }];
    let (o, _) = f.run();
    assert_eq!(codes(&o), vec![(1001, CodeSource::Preflight)]);
    assert!(
        o.codes[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("osmo-no-such-program")
    );
}

#[test]
fn command_not_found_is_127_and_not_executable_is_126() {
    let f = Fixture::new("t", &["osmo-no-such-program", "x"]);
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(127), "{:?}", rec.events());
    assert!(
        o.codes[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("command not found")
    );
    assert_eq!(rec.count(&Event::Started), 0);

    let f = Fixture::new("t", &["/no/such/dir/prog"]);
    assert_eq!(codes(&f.run().0), user(127));

    let mut f = Fixture::new("t", &["/tmp/plain.txt"]);
    f.spec.files = vec![file("/tmp/plain.txt", "just text\n")];
    let (o, _) = f.run();
    assert_eq!(codes(&o), user(126), "{o:?}");
}

#[test]
fn base64_files_are_decoded() {
    let mut f = Fixture::new("t", &["cat", "/opt/osmo-test/hello.bin"]);
    f.spec.files = vec![File {
        path: "/opt/osmo-test/hello.bin".into(),
        contents: "aGVsbG8K".into(),
        base64: true,
    }];
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(rec.lines(Stream::Stdout), ["hello"]);
}

#[test]
fn a_file_that_cannot_be_written_is_257() {
    let mut f = Fixture::new("t", &["sh", "-c"]);
    f.spec.args = vec![format!("touch {}/ran", f.out().display())];
    f.spec.files = vec![file("/proc/osmo-cannot-exist", "x")];
    let (o, rec) = f.run();
    assert_eq!(
        codes(&o),
        vec![(257, CodeSource::Init)],
        "{:?}",
        rec.events()
    );
    assert!(
        o.codes[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("/proc/osmo-cannot-exist")
    );
    assert!(!f.out().join("ran").exists());

    let mut f = Fixture::new("t", &["true"]);
    f.spec.files = vec![File {
        path: "/tmp/x".into(),
        contents: "@@@".into(),
        base64: true,
    }];
    assert_eq!(codes(&f.run().0), vec![(257, CodeSource::Init)]);
}

#[test]
fn a_sandbox_that_cannot_be_built_is_256() {
    let mut f = Fixture::new("t", &["true"]);
    f.spec.input_dirs = vec![PathBuf::from("/osmo/no/such/input")];
    let (o, _) = f.run();
    assert_eq!(codes(&o), vec![(256, CodeSource::Init)]);
    assert!(
        o.codes[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("/osmo/no/such/input"),
        "{o:?}"
    );
}

#[test]
fn memory_limit_overrun_is_3004() {
    let mut f = Fixture::new("hog", &["sh", "-c", "head -c 300M /dev/zero | tail"]);
    f.spec.memory_limit_bytes = Some(64 << 20);
    let (o, rec) = f.run();
    let osmo = rec.lines(Stream::Osmo);
    assert!(
        o.codes
            .iter()
            .any(|c| c.code == 3004 && c.source == CodeSource::Service),
        "{o:?} {osmo:?}"
    );
    assert_eq!(o.highest().map(|c| c.code), Some(3004));

    // Under the limit nothing is reported but the command's code.
    let mut f = Fixture::new(
        "small",
        &["sh", "-c", "head -c 10M /dev/zero | tail -c 1 >/dev/null"],
    );
    f.spec.memory_limit_bytes = Some(64 << 20);
    assert_eq!(codes(&f.run().0), user(0));
}

fn marked_processes(marker: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && cmdline.starts_with(marker.as_bytes())
        {
            n += 1;
        }
    }
    n
}

#[test]
fn stop_kills_the_whole_sandbox_promptly() {
    let marker = unique("stop-marker");
    let f = Fixture::new(
        "t",
        &[
            "bash",
            "-c",
            &format!("(exec -a {marker} sleep 1000) & exec -a {marker} sleep 1001"),
        ],
    );
    let stop = StopHandle::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let rec = Recorder {
        on_started: Some(Box::new(move || tx.send(()).unwrap())),
        ..Recorder::default()
    };
    let spec = f.spec.clone();
    let stopper = stop.clone();
    let runner = std::thread::spawn(move || {
        let o = run_attempt(&spec, &rec, &stopper);
        (o, rec.events())
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the command did not start");
    // Wait (bounded) until both sleeps exist, so the stop has two to kill.
    let deadline = Instant::now() + Duration::from_secs(30);
    while marked_processes(&marker) < 2 {
        assert!(Instant::now() < deadline, "the sleeps never appeared");
        std::thread::yield_now();
    }
    let t0 = Instant::now();
    stop.stop();
    let (o, events) = runner.join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    assert!(events.contains(&Event::Started));
    assert!(!o.codes.iter().any(|c| c.code == 0), "{o:?}");
    assert_eq!(
        marked_processes(&marker),
        0,
        "processes of the sandbox outlived it"
    );
}

#[test]
fn stop_before_the_attempt_runs_nothing() {
    let f = Fixture::new("t", &["sh", "-c"]);
    let stop = StopHandle::new();
    stop.stop();
    let rec = Recorder::default();
    let o = run_attempt(&f.spec, &rec, &stop);
    assert!(o.codes.is_empty());
    assert!(rec.events().is_empty());
}

#[test]
fn stop_during_the_barrier_never_starts_the_command() {
    let mut f = Fixture::new("t", &["sh", "-c"]);
    f.spec.args = vec![format!("touch {}/ran", f.out().display())];
    let stop = StopHandle::new();
    let inner = stop.clone();
    let rec = Recorder::with_gate(move || {
        inner.stop();
        true
    });
    run_attempt(&f.spec, &rec, &stop);
    assert!(!f.out().join("ran").exists());
    assert_eq!(rec.count(&Event::Started), 0);
}

#[test]
fn setup_done_false_aborts_before_the_command() {
    let mut f = Fixture::new("t", &["sh", "-c"]);
    f.spec.args = vec![format!("touch {}/ran", f.out().display())];
    let rec = Recorder::with_gate(|| false);
    let o = run_attempt(&f.spec, &rec, &StopHandle::new());
    assert!(
        !f.out().join("ran").exists(),
        "the command ran although setup_done said no"
    );
    assert_eq!(rec.count(&Event::SetupDone), 1);
    assert_eq!(rec.count(&Event::Started), 0);
    assert!(
        !o.codes.iter().any(|c| c.source == CodeSource::User),
        "{o:?}"
    );
}

#[test]
fn the_command_waits_for_the_barrier() {
    let mut f = Fixture::new("t", &["sh", "-c"]);
    let gate_file = f.out().join("gate");
    // The command fails unless setup_done had finished (and written the gate) first.
    f.spec.args = vec![format!("test -f {} || exit 5", gate_file.display())];
    f.spec.files = vec![file("/tmp/f", "x")];
    let rec = Recorder::with_gate(move || {
        std::fs::write(&gate_file, "open").unwrap();
        true
    });
    let o = run_attempt(&f.spec, &rec, &StopHandle::new());
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    let order: Vec<Event> = rec
        .events()
        .into_iter()
        .filter(|e| !matches!(e, Event::Log(..)))
        .collect();
    assert_eq!(order, [Event::SetupDone, Event::Started]);
}

#[test]
fn output_lines_keep_their_order_and_a_last_partial_line() {
    let f = Fixture::new(
        "t",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo line$i; done; printf tail",
        ],
    );
    let (o, rec) = f.run();
    assert_eq!(codes(&o), user(0));
    assert_eq!(
        rec.lines(Stream::Stdout),
        ["line1", "line2", "line3", "line4", "line5", "tail"]
    );
}

#[test]
fn background_processes_do_not_outlive_the_command() {
    let marker = unique("bg-marker");
    let f = Fixture::new(
        "t",
        &[
            "bash",
            "-c",
            &format!("(exec -a {marker} sleep 1000) & exit 3"),
        ],
    );
    let t0 = Instant::now();
    let (o, _) = f.run();
    assert_eq!(codes(&o), user(3));
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(marked_processes(&marker), 0);
}

#[test]
fn many_attempts_at_once() {
    let handles: Vec<_> = (0..8u32)
        .map(|i| {
            std::thread::spawn(move || {
                let f = Fixture::new("t", &["sh", "-c", &format!("echo {i}; exit {i}")]);
                let (o, rec) = f.run();
                (i, o, rec.lines(Stream::Stdout))
            })
        })
        .collect();
    for h in handles {
        let (i, o, lines) = h.join().unwrap();
        assert_eq!(codes(&o), user(i));
        assert_eq!(lines, [i.to_string()]);
    }
}

#[test]
fn detail_of_codes_is_kept() {
    let f = Fixture::new("t", &["sh", "-c", "exit 2"]);
    let (o, _) = f.run();
    assert_eq!(
        o.codes,
        vec![ReportedCode {
            code: 2,
            source: CodeSource::User,
            detail: None
        }]
    );
}

#[test]
fn restart_in_place_keeps_the_sandbox_and_runs_the_command_again() {
    // The first run leaves a mark in /tmp and in the output, then blocks; a
    // restart stops it (SIGTERM: 143), and the second run finds both marks.
    let mut f = Fixture::new(
        "restarted",
        &[
            "sh",
            "-c",
            "echo x >> /tmp/runs; echo x >> \"$OUT/runs\"; n=$(grep -c x /tmp/runs); \
             echo \"run $n\"; if [ \"$n\" -ge 2 ]; then exit 0; fi; exec sleep 5",
        ],
    );
    f.spec
        .environment
        .insert("OUT".into(), f.out().display().to_string());
    let stop = StopHandle::new();
    let rec = Recorder {
        on_line: Some(Box::new({
            let stop = stop.clone();
            move |line| {
                if line == "run 1" {
                    stop.restart("restarted: lead leader rescheduled");
                }
            }
        })),
        ..Recorder::default()
    };
    let o = run_attempt(&f.spec, &rec, &stop);
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(
        rec.lines(Stream::Stdout),
        ["run 1", "run 2"],
        "{:?}",
        rec.events()
    );
    assert_eq!(rec.count(&Event::Started), 2);
    assert_eq!(
        rec.count(&Event::SetupDone),
        2,
        "the barrier again before the second run"
    );
    assert_eq!(
        rec.count(&Event::RunStopped(vec![143])),
        1,
        "{:?}",
        rec.events()
    );
    let output_runs = std::fs::read_to_string(f.out().join("runs")).unwrap();
    assert_eq!(output_runs.lines().count(), 2);
    assert!(
        rec.lines(Stream::Osmo)
            .iter()
            .any(|l| l.contains("restarted: lead leader rescheduled")),
        "{:?}",
        rec.lines(Stream::Osmo)
    );
}

#[test]
fn a_restart_before_the_command_started_waits_at_the_barrier_again() {
    let f = Fixture::new("waiting", &["sh", "-c", "echo once"]);
    let stop = StopHandle::new();
    let passes = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let rec = Recorder::with_gate({
        let (stop, passes) = (stop.clone(), passes.clone());
        move || {
            // Released, then restarted before the go reached the sandbox.
            if passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                stop.restart("restarted: lead leader rescheduled");
            }
            true
        }
    });
    let o = run_attempt(&f.spec, &rec, &stop);
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(rec.count(&Event::SetupDone), 2);
    assert_eq!(rec.count(&Event::Started), 1);
    assert_eq!(rec.lines(Stream::Stdout), ["once"]);
}

#[test]
fn a_recycled_scratch_directory_gives_the_next_attempt_a_fresh_root() {
    let etc = format!("/etc/{}", unique("left"));
    // An attempt that only read: its scratch directory is readied for reuse.
    let reader = Fixture::new("reader", &["sh", "-c", "ls /tmp > /dev/null"]);
    let (o, _) = reader.run();
    assert_eq!(codes(&o), user(0));
    assert!(osmo_runtime::recycle_scratch(&reader.spec.scratch_dir));

    // The next attempt in it writes /tmp and /etc and changes /tmp's mode:
    // it finds /tmp empty, and leaves a directory that is not reused.
    let mut writer = Fixture::new(
        "writer",
        &[
            "sh",
            "-c",
            &format!(
                "stat -c %a /tmp; ls -A /tmp | grep -v '^osmo-runtime-test-' | wc -l; \
                 echo x > /tmp/x; echo y > {etc}; chmod 700 /tmp"
            ),
        ],
    );
    writer.spec.scratch_dir = reader.spec.scratch_dir.clone();
    let (o, rec) = writer.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(rec.lines(Stream::Stdout), ["1777", "0"]);
    assert!(
        !osmo_runtime::recycle_scratch(&writer.spec.scratch_dir),
        "a scratch directory the task wrote to must not be reused"
    );

    // Made again from scratch, the next attempt sees none of it.
    let mut next = Fixture::new(
        "next",
        &[
            "sh",
            "-c",
            &format!("stat -c %a /tmp; test ! -e /tmp/x && test ! -e {etc}"),
        ],
    );
    next.spec.scratch_dir = reader.spec.scratch_dir.clone();
    let (o, rec) = next.run();
    assert_eq!(codes(&o), user(0), "{:?}", rec.events());
    assert_eq!(rec.lines(Stream::Stdout), ["1777"]);
}
