//! The weaker roots: an overlay with its upper layer on a tmpfs, and a
//! read-only bind of `/`. Forced with `OSMO_SANDBOX_ROOT`, which is read from
//! the process environment, so this binary holds a single test that sets it
//! before any attempt runs (no other thread reads the environment meanwhile).
//! Needs root, like tests/sandbox.rs.

use std::path::Path;

use osmo_runtime::{
    AttemptSpec, Outcome, SANDBOX_ROOT_ENV, StopHandle, Stream, Supervisor, run_attempt,
};
use osmo_spec::codes::CodeSource;
use osmo_spec::model::File;

#[derive(Default)]
struct Lines(std::sync::Mutex<Vec<(Stream, String)>>);

impl Supervisor for Lines {
    fn log(&self, stream: Stream, line: &str) {
        self.0.lock().unwrap().push((stream, line.to_string()));
    }
    fn setup_done(&self) -> bool {
        true
    }
    fn started(&self) {}
}

impl Lines {
    fn of(&self, stream: Stream) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

fn run(dir: &Path, script: &str, files: Vec<File>) -> (Outcome, Lines) {
    let spec = AttemptSpec {
        workflow_id: "wf-1".into(),
        group: "g".into(),
        task: "t".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        files,
        output_dir: dir.join("output"),
        input_dirs: vec![dir.join("input")],
        volume_mounts: vec![],
        scratch_dir: dir.join(format!("scratch-{}", script.len())),
        ..AttemptSpec::default()
    };
    let lines = Lines::default();
    let o = run_attempt(&spec, &lines, &StopHandle::new());
    (o, lines)
}

fn codes(o: &Outcome) -> Vec<(u32, CodeSource)> {
    o.codes.iter().map(|c| (c.code, c.source)).collect()
}

#[test]
fn tmpfs_overlay_and_read_only_roots() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests need root");
    let etc = format!("/etc/osmo-rt-fallback-{}", std::process::id());
    for mode in ["tmpfs", "readonly"] {
        // SAFETY: the only test of this binary; no other thread reads the environment now.
        unsafe { std::env::set_var(SANDBOX_ROOT_ENV, mode) };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("input")).unwrap();
        std::fs::write(dir.path().join("input/in.txt"), "in\n").unwrap();
        let out = dir.path().join("output");
        let inp = dir.path().join("input");

        // Files in /tmp (private: the host's does not show), output writable,
        // input read-only, the host untouched.
        let host_tmp = format!("/tmp/osmo-rt-host-only-{}", std::process::id());
        std::fs::write(&host_tmp, "host").unwrap();
        let script = format!(
            "test ! -e {host_tmp} && cat /tmp/run.txt {inp}/in.txt && ! touch {inp}/x 2>/dev/null && echo ok > {out}/o && exit 16",
            inp = inp.display(),
            out = out.display()
        );
        let (o, lines) = run(
            dir.path(),
            &script,
            vec![File {
                path: "/tmp/run.txt".into(),
                contents: "file\n".into(),
                base64: false,
            }],
        );
        assert_eq!(codes(&o), [(16, CodeSource::User)], "{mode}: {:?}", lines.0);
        assert_eq!(lines.of(Stream::Stdout), ["file", "in"], "{mode}");
        assert_eq!(std::fs::read_to_string(out.join("o")).unwrap(), "ok\n");
        assert!(!inp.join("x").exists());
        std::fs::remove_file(&host_tmp).unwrap();
        let osmo = lines.of(Stream::Osmo);
        assert!(
            osmo.iter().any(|l| l.starts_with("sandbox root:")),
            "{mode}: {osmo:?}"
        );

        // A file outside /tmp: private with the tmpfs overlay, refused (257) read-only.
        let (o, lines) = run(
            dir.path(),
            &format!("cat {etc}"),
            vec![File {
                path: etc.clone(),
                contents: "x\n".into(),
                base64: false,
            }],
        );
        match mode {
            "tmpfs" => assert_eq!(codes(&o), [(0, CodeSource::User)], "{:?}", lines.0),
            _ => assert_eq!(codes(&o), [(257, CodeSource::Init)], "{:?}", lines.0),
        }
        assert!(!Path::new(&etc).exists());
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var(SANDBOX_ROOT_ENV) };
}
