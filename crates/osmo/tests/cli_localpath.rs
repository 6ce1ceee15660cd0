//! `files: [{localpath}]`, as NVIDIA's cookbook workflows use: the CLI reads
//! the file next to the workflow and sends it inline.

use std::process::Command;

const OSMO: &str = env!("CARGO_BIN_EXE_osmo");

const SPEC: &str = "workflow:
  name: inline
  tasks:
  - name: t
    image: python
    command: [sh, /opt/run.sh]
    files:
    - path: /opt/run.sh
      localpath: scripts/run.sh
";

#[test]
fn a_localpath_file_is_inlined_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    std::fs::write(
        dir.path().join("scripts/run.sh"),
        "echo \"inlined: $OSMO_TASK_NAME\"\n",
    )
    .unwrap();
    let spec = dir.path().join("wf.yaml");
    std::fs::write(&spec, SPEC).unwrap();

    let out = Command::new(OSMO)
        .args(["workflow", "validate"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(OSMO)
        .args(["workflow", "run"])
        .arg(&spec)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("inlined: t"), "{text}");
}

#[test]
fn a_missing_localpath_file_is_an_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("wf.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let out = Command::new(OSMO)
        .args(["workflow", "validate"])
        .arg(&spec)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("wf.yaml:9:") && text.contains("scripts/run.sh"),
        "{text}"
    );
}
