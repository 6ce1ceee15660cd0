//! `volumeMounts` end to end: refused unless the pool allows the host path,
//! and mounted read-write at the task's path when it does.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn an_allowed_volume_mount_is_mounted_and_others_are_refused() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("in.txt"), "7\n").unwrap();
    // Tasks run as `nobody`: a shared directory they write to must let them.
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let config = format!(
        "pools:\n  default:\n    backend: local\n    allowed_mounts: [{}]\n",
        shared.path().display()
    );
    let server = Server::start(&config);
    let spec = format!(
        "workflow:\n  name: mounted\n  tasks:\n  - name: t\n    image: ubuntu\n    command: [sh, -c, 'test \"$(cat /data/in.txt)\" = 7 && echo ok > /data/out.txt']\n    volumeMounts: ['{}:/data']\n",
        shared.path().display()
    );
    let id = server.submit(&spec);
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    assert_eq!(
        std::fs::read_to_string(shared.path().join("out.txt")).unwrap(),
        "ok\n"
    );

    let denied = "workflow:\n  name: denied\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"], volumeMounts: ['/etc:/host-etc']}\n";
    let (status, body) = server.post(
        "/api/pool/default/workflow",
        serde_json::json!({"file": denied}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("volume mount `/etc:/host-etc` of task `t` is not allowed"),
        "{body}"
    );
}

/// Removes a file when dropped.
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_server_binary_in_tmp_leaves_the_tasks_tmp_theirs() {
    // Run from a copy directly in /tmp: tasks find `osmo`, and their /tmp
    // stays their own and writable (the binary's directory used to be bound
    // over it read-only).
    let exe = Removed(std::path::PathBuf::from(format!(
        "/tmp/osmo-test-bin-{}",
        std::process::id()
    )));
    std::fs::copy(OSMO, &exe.0).unwrap();
    let server = Server::start_from(local_pool(), &exe.0);
    let id = server.submit(
        "workflow:\n  name: intmp\n  tasks:\n  - name: t\n    image: ubuntu\n    command: [sh, /tmp/run.sh]\n    files:\n    - path: /tmp/run.sh\n      contents: |\n        echo hi > /tmp/out && cat /tmp/out && osmo --version\n",
    );
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
}
