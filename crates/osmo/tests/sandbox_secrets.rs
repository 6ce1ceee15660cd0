//! What a task on the host sandbox may not see: the server's data directory
//! (its database, other attempts' outputs), `/root`, `/home`, a pool's
//! `hidden_paths`; and volume mounts that would lead elsewhere.
//!
//! Everything here lives outside `/tmp` (under Cargo's target tmp dir),
//! since the sandbox gives every task a `/tmp` of its own anyway.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Server, task};

fn outside_tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn a_task_sees_neither_the_data_dir_nor_root_home_nor_hidden_paths() {
    let secret = outside_tmp();
    std::fs::write(secret.path().join("secret"), "s3cr3t").unwrap();
    // A file in root's home, when this test may write there (it runs as root in CI).
    let root_file = Path::new("/root").join(format!(".osmo-secret-{}", std::process::id()));
    let wrote_root = std::fs::write(&root_file, "s3cr3t").is_ok();
    let config = format!(
        "pools:\n  default:\n    backend: local\n    hidden_paths: [{}]\n",
        secret.path().display()
    );
    let server = Server::start_in(&config, outside_tmp());
    let data = server.data_dir();
    assert!(data.join("osmo.db").exists());
    let checks = format!(
        "for p in {secret}/secret {data}/osmo.db {root}; do if [ -e $p ]; then echo visible: $p >&2; exit 1; fi; done; test \"$(cat {{{{input:0}}}}/x)\" = first && echo ok > {{{{output}}}}/ok",
        secret = secret.path().display(),
        data = data.display(),
        root = root_file.display(),
    );
    let spec = format!(
        "workflow:\n  name: secrets\n  tasks:\n  - {{name: first, image: ubuntu, command: [sh, -c, 'echo first > {{{{output}}}}/x']}}\n  - name: second\n    image: ubuntu\n    inputs: [{{task: first}}]\n    command: [sh, -c, '{checks}']\n  - {{name: peer, image: ubuntu, inputs: [{{task: second}}], command: [sh, -c, 'test ! -e {first_output}/x && ls /root | wc -l > {{{{output}}}}/root-entries']}}\n",
        // Where this workflow's `first` writes (the task's shell knows the id).
        first_output = data.join("runs/$OSMO_WORKFLOW_ID/first.0").display(),
    );
    let id = server.submit(&spec);
    assert_eq!(
        server.output_dir(&id, "first", 0),
        data.join(format!("runs/{id}/first.0")),
        "the peer looks where the first task's output is"
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    if wrote_root {
        let _ = std::fs::remove_file(&root_file);
    }
    let (_, logs) = server.get(&format!("/api/workflow/{id}/logs"));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{logs}");
    // The checks ran: the task wrote its own output under the hidden data dir.
    assert!(server.output_dir(&id, "second", 0).join("ok").exists());
    let entries =
        std::fs::read_to_string(server.output_dir(&id, "peer", 0).join("root-entries")).unwrap();
    assert_eq!(entries.trim(), "0", "/root is empty inside the task");
}

#[test]
fn a_volume_mount_cannot_lead_out_of_the_allowed_paths() {
    let allowed = outside_tmp();
    std::os::unix::fs::symlink("/etc", allowed.path().join("link")).unwrap();
    let config = format!(
        "pools:\n  default:\n    backend: local\n    allowed_mounts: [{}]\n",
        allowed.path().display()
    );
    let server = Server::start_in(&config, outside_tmp());
    // Through a symbolic link: resolved when the attempt starts, and refused.
    let spec = format!(
        "workflow:\n  name: escape\n  tasks:\n  - {{name: t, image: ubuntu, command: [cat, /x/hostname], volumeMounts: ['{}/link:/x']}}\n",
        allowed.path().display()
    );
    let id = server.submit(&spec);
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    let t = task(&doc, "t", 0);
    assert_ne!(doc["status"], "COMPLETED", "{doc:#}");
    let codes = t["exit_codes"].to_string();
    assert!(codes.contains("resolves to /etc"), "{doc:#}");
    // With `..`: refused at submit.
    let spec = format!(
        "workflow:\n  name: dots\n  tasks:\n  - {{name: t, image: ubuntu, command: ['true'], volumeMounts: ['{}/../..:/x']}}\n",
        allowed.path().display()
    );
    let (status, body) = server.post(
        "/api/pool/default/workflow",
        serde_json::json!({ "file": spec }).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("with absolute paths"), "{body}");
}

#[test]
fn tasks_run_as_nobody_unless_the_pool_allows_root() {
    let spec = "workflow:\n  name: who\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'echo $(id -u):$(id -g):$HOME > {{output}}/id; echo x > /tmp/mine']}\n";
    for (config, want) in [
        (
            "pools:\n  default:\n    backend: local\n",
            "65534:65534:/tmp",
        ),
        (
            "pools:\n  default:\n    backend: local\n    run_as_root: true\n",
            "0:0:/root",
        ),
    ] {
        let server = Server::start(config);
        let id = server.submit(spec);
        let doc = server.wait_finished(&id, Duration::from_secs(60));
        assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
        let seen = std::fs::read_to_string(server.output_dir(&id, "t", 0).join("id")).unwrap();
        assert_eq!(seen.trim(), want, "{config}");
    }
}
