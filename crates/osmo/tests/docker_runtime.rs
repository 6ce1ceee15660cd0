//! The Docker runtime (`runtime: docker`) against a real daemon: image pull
//! failure, the memory kill, the daemon stopped mid-run, and nothing left
//! behind after cancel and timeout; and a daemon that cannot be reached.
//!
//! They need a daemon: run them under `scripts/with-docker.sh`, which starts
//! one, builds the test images, and says how to restart the daemon. Without
//! `DOCKER_HOST` they pass with a loud "skipped" line (all but the unreachable
//! daemon, which needs none). They run one at a time
//! (one of them stops the daemon).

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::*;

const DOCKER_POOL: &str = "pools:\n  default:\n    backend: local\n    runtime: docker\n";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The lock for a test, or None (and a loud line) when there is no daemon.
fn docker_test(name: &str) -> Option<MutexGuard<'static, ()>> {
    if std::env::var_os("DOCKER_HOST").is_none() {
        // Straight to the descriptor: libtest does not capture it, so the skip is seen.
        let _ = writeln!(
            std::io::stderr(),
            "{name}: skipped: no Docker daemon (run under scripts/with-docker.sh)"
        );
        return None;
    }
    Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The containers osmo created that the daemon still has.
fn osmo_containers() -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=osmo.attempt"])
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn assert_no_container_left() {
    wait_for(
        Duration::from_secs(10),
        "osmo's containers to be removed",
        || osmo_containers().is_empty().then_some(()),
    );
}

#[test]
fn an_image_that_cannot_be_pulled_fails_with_image_pull() {
    let Some(_lock) = docker_test("an_image_that_cannot_be_pulled_fails_with_image_pull") else {
        return;
    };
    let server = Server::start(DOCKER_POOL);
    // A registry on a closed local port: the pull fails at once, without DNS or network.
    let id = server.submit(
        "workflow:\n  name: nopull\n  tasks:\n  - {name: t, image: '127.0.0.1:9/osmo/missing:1', command: [sh, -c, 'exit 0']}\n",
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    let t = task(&doc, "t", 0);
    assert_eq!(t["status"], "FAILED_IMAGE_PULL", "{doc:#}");
    let code = t["exit_code"].as_u64().unwrap();
    assert!(code == 301 || code == 302, "{doc:#}");
    let detail = t["exit_codes"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("127.0.0.1:9/osmo/missing:1"), "{doc:#}");
    assert_no_container_left();
}

#[test]
fn a_container_over_its_memory_is_evicted_with_3004() {
    let Some(_lock) = docker_test("a_container_over_its_memory_is_evicted_with_3004") else {
        return;
    };
    let server = Server::start(DOCKER_POOL);
    let id = server.submit(
        r#"
workflow:
  name: hungry
  resources:
    default: {cpu: 1, memory: 32Mi}
  tasks:
  - name: eater
    image: ubuntu
    command: [bash, -c, 'x=$(head -c 300000000 /dev/zero | tr "\0" a); echo "$x" | wc -c']
"#,
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    let eater = task(&doc, "eater", 0);
    assert_eq!(eater["status"], "FAILED_EVICTED", "{doc:#}");
    assert_eq!(eater["exit_code"], 3004, "{doc:#}");
    assert_eq!(doc["status"], "FAILED_EVICTED");
    assert_no_container_left();
}

#[test]
fn the_command_is_not_pid_1_and_sees_its_environment_and_files() {
    let Some(_lock) = docker_test("the_command_is_not_pid_1_and_sees_its_environment_and_files")
    else {
        return;
    };
    let server = Server::start(DOCKER_POOL);
    let id = server.submit(
        r#"
workflow:
  name: inside
  tasks:
  - name: t
    image: busybox
    environment: {GREETING: hello}
    command: [sh, /opt/check.sh, '$(GREETING)', '$$(GREETING)']
    files:
    - path: /opt/check.sh
      contents: |
        set -e
        test "$1" = hello
        test "$2" = '$(GREETING)'
        test "$OSMO_TASK_NAME" = t
        test "$OSMO_RETRY_ID" = 0
        test "$$" != 1
        test "$(pwd)" = /
        echo ok > {{output}}/ok
        echo to-stderr >&2
        printf no-newline
        kill -9 $$
"#,
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    let t = task(&doc, "t", 0);
    assert_eq!(
        t["exit_code"], 137,
        "kill -9 $$ ends the command with 137: {doc:#}"
    );
    let ok = server.output_dir(&id, "t", 0).join("ok");
    assert!(ok.exists(), "the checks passed: {doc:#}");
    let (status, logs) = server.get(&format!("/api/workflow/{id}/logs?task_name=t"));
    assert_eq!(status, 200, "{logs}");
    assert!(logs.contains("to-stderr"), "stderr is relayed: {logs}");
    assert!(
        logs.contains("no-newline"),
        "the last partial line is relayed: {logs}"
    );
    assert_no_container_left();
}

#[test]
fn a_gpu_task_is_told_its_devices_in_the_container() {
    let Some(_lock) = docker_test("a_gpu_task_is_told_its_devices_in_the_container") else {
        return;
    };
    // Declared GPUs (none on this machine): no device request, the
    // environment names the devices the scheduler gave.
    let server = Server::start(
        "pools:\n  default:\n    backend: local\n    runtime: docker\n    node: {gpu: 4}\n",
    );
    let id = server.submit(
        "workflow:\n  name: gpu\n  resources:\n    default: {gpu: 2}\n  tasks:\n  - name: t\n    image: busybox\n    command: [sh, -c, 'echo \"$NVIDIA_VISIBLE_DEVICES $CUDA_VISIBLE_DEVICES\" > {{output}}/seen']\n",
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    assert_eq!(
        task(&doc, "t", 0)["gpus"],
        serde_json::json!([0, 1]),
        "{doc:#}"
    );
    let seen = std::fs::read_to_string(server.output_dir(&id, "t", 0).join("seen")).unwrap();
    assert_eq!(seen.trim(), "0,1 0,1");
    assert_no_container_left();
}

#[test]
fn osmo_in_an_image_without_glibc_says_so() {
    let Some(_lock) = docker_test("osmo_in_an_image_without_glibc_says_so") else {
        return;
    };
    let server = Server::start(DOCKER_POOL);
    // The test image is busybox (static, no glibc): `osmo` is found, and
    // explains why it cannot run there.
    let id = server.submit(
        "workflow:\n  name: cli\n  tasks:\n  - {name: t, image: busybox, command: [sh, -c, 'osmo workflow query $OSMO_WORKFLOW_ID'], exitActions: {COMPLETE: '127'}}\n",
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(task(&doc, "t", 0)["exit_code"], 127, "{doc:#}");
    let (_, logs) = server.get(&format!("/api/workflow/{id}/logs?task_name=t"));
    assert!(
        logs.contains("this image has no glibc") && logs.contains("OSMO_URL"),
        "{logs}"
    );
    assert_no_container_left();
}

/// An image with glibc: the test image plus the host's C library, as
/// `ldd` names it for the osmo binary (built offline from local files).
fn glibc_image() -> String {
    let tag = "osmo-test-glibc:latest".to_string();
    let ctx = tempfile::tempdir().unwrap();
    let ldd = Command::new("ldd").arg(OSMO).output().unwrap();
    let mut dockerfile = String::from("FROM busybox:latest\n");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let Some(path) = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(std::path::PathBuf::from)
        else {
            continue;
        };
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&path, ctx.path().join(&name)).unwrap();
        dockerfile.push_str(&format!("COPY {name} {}\n", path.display()));
    }
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    let built = Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    tag
}

#[test]
fn osmo_runs_inside_a_container_with_glibc() {
    let Some(_lock) = docker_test("osmo_runs_inside_a_container_with_glibc") else {
        return;
    };
    let image = glibc_image();
    let server = Server::start(DOCKER_POOL);
    let id = server.submit(&format!(
        "workflow:\n  name: cli\n  tasks:\n  - {{name: t, image: '{image}', command: [sh, -c, 'osmo workflow query $OSMO_WORKFLOW_ID > {{{{output}}}}/q']}}\n",
    ));
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let q = std::fs::read_to_string(server.output_dir(&id, "t", 0).join("q")).unwrap();
    assert!(q.contains(&id), "{q}");
    assert_no_container_left();
}

#[test]
fn cancel_and_timeout_leave_no_container() {
    let Some(_lock) = docker_test("cancel_and_timeout_leave_no_container") else {
        return;
    };
    let server = Server::start(DOCKER_POOL);
    let id = server.submit(
        "workflow:\n  name: stopme\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'sleep 600']}\n",
    );
    let slow = server.submit(
        "workflow:\n  name: slow\n  timeout: {exec_timeout: 2s}\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'sleep 600']}\n",
    );
    wait_for(Duration::from_secs(30), "the task to run", || {
        (task(&server.workflow(&id), "t", 0)["status"] == "RUNNING").then_some(())
    });
    assert!(
        !osmo_containers().is_empty(),
        "the task runs in a container"
    );
    let (status, body) = server.post(&format!("/api/workflow/{id}/cancel"), "");
    assert_eq!(status, 200, "{body}");
    let doc = server.wait_finished(&id, Duration::from_secs(20));
    assert_eq!(doc["status"], "FAILED_CANCELED");
    let doc = server.wait_finished(&slow, Duration::from_secs(30));
    assert_eq!(doc["status"], "FAILED_EXEC_TIMEOUT", "{doc:#}");
    assert_no_container_left();
}

/// Kills the daemon (as a crash would) and returns the command that starts it again.
fn kill_daemon() -> String {
    let pidfile = std::env::var("OSMO_TEST_DOCKERD_PIDFILE")
        .expect("OSMO_TEST_DOCKERD_PIDFILE is set by scripts/with-docker.sh");
    let start = std::env::var("OSMO_TEST_DOCKERD_START")
        .expect("OSMO_TEST_DOCKERD_START is set by scripts/with-docker.sh");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("dockerd's pid file")
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "dockerd to die", || {
        (!alive(pid)).then_some(())
    });
    start
}

fn start_daemon(start: &str) {
    let status = Command::new("bash").args(["-c", start]).status().unwrap();
    assert!(status.success(), "dockerd restarts");
}

#[test]
fn a_daemon_lost_mid_run_is_a_backend_error_and_reschedule_recovers() {
    let Some(_lock) =
        docker_test("a_daemon_lost_mid_run_is_a_backend_error_and_reschedule_recovers")
    else {
        return;
    };
    let server = Server::start(DOCKER_POOL);
    let plain = server.submit(
        "workflow:\n  name: lost\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'sleep 600']}\n",
    );
    let retried = server.submit(
        r#"
workflow:
  name: recovers
  tasks:
  - name: t
    image: ubuntu
    command: [sh, -c, 'if [ "$OSMO_RETRY_ID" = 0 ]; then sleep 600; fi; echo done']
    exitActions: {RESCHEDULE: "3001"}
"#,
    );
    for id in [&plain, &retried] {
        wait_for(Duration::from_secs(30), "the tasks to run", || {
            (task(&server.workflow(id), "t", 0)["status"] == "RUNNING").then_some(())
        });
    }
    let start = kill_daemon();
    let doc = server.wait_finished(&plain, Duration::from_secs(30));
    let t = task(&doc, "t", 0);
    assert_eq!(t["status"], "FAILED_BACKEND_ERROR", "{doc:#}");
    assert_eq!(t["exit_code"], 3001, "{doc:#}");
    wait_for(Duration::from_secs(30), "retry 0 to be rescheduled", || {
        (task(&server.workflow(&retried), "t", 0)["status"] == "RESCHEDULED").then_some(())
    });
    // Retry 1 waits for the daemon (up to 10 s) rather than failing at once.
    std::thread::sleep(Duration::from_millis(500));
    start_daemon(&start);
    let doc = server.wait_finished(&retried, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    assert_eq!(task(&doc, "t", 0)["exit_code"], 3001, "{doc:#}");
    assert_eq!(task(&doc, "t", 1)["status"], "COMPLETED", "{doc:#}");
    // The containers the lost daemon kept are removed once it is back.
    assert_no_container_left();
}

#[test]
fn an_unreachable_daemon_is_a_backend_error() {
    // Needs no daemon: DOCKER_HOST points at a socket nobody serves.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pools.yaml");
    std::fs::write(&config, DOCKER_POOL).unwrap();
    let spec = dir.path().join("wf.yaml");
    std::fs::write(
        &spec,
        "workflow:\n  name: nodaemon\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'exit 0']}\n",
    )
    .unwrap();
    let out = Command::new(OSMO)
        .args(["workflow", "run", "--config"])
        .arg(&config)
        .arg(&spec)
        .env(
            "DOCKER_HOST",
            format!("unix://{}/nobody.sock", dir.path().display()),
        )
        .env("OSMO_DOCKER_CONNECT_GRACE", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAILED_BACKEND_ERROR") && text.contains("3001"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("waited 1s"),
        "the agent waited for the daemon: {text}"
    );
}

/// The networks osmo made that the daemon still has.
fn osmo_networks() -> Vec<String> {
    let out = Command::new("docker")
        .args(["network", "ls", "-q", "--filter", "label=osmo.workflow"])
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn each_workflow_has_its_network_where_task_names_resolve() {
    let Some(_lock) = docker_test("each_workflow_has_its_network_where_task_names_resolve") else {
        return;
    };
    let server = Server::start(DOCKER_POOL);
    // A server and a client, twice at once: both servers listen on one port,
    // each client finds its own by `{{host:server}}` (DNS, as nslookup asks)
    // and reaches the service through OSMO_URL.
    let spec = r#"
workflow:
  name: pair
  groups:
  - name: g
    tasks:
    - name: server
      image: busybox
      command: [sh, -c, 'echo "pong from $OSMO_WORKFLOW_ID" | nc -l -p 18080']
    - name: client
      image: busybox
      lead: true
      command:
      - sh
      - -c
      - |
        nslookup {{host:server}} > {{output}}/dns || exit 3
        for i in $(seq 200); do
          echo ping | nc {{host:server}} 18080 > {{output}}/reply && [ -s {{output}}/reply ] && break
          sleep 0.05
        done
        wget -q -O {{output}}/health "$OSMO_URL/api/health" || exit 4
"#;
    let ids = [server.submit(spec), server.submit(spec)];
    for id in &ids {
        let doc = server.wait_finished(id, Duration::from_secs(120));
        assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
        let out = server.output_dir(id, "client", 0);
        let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
        assert_eq!(read("reply").trim(), format!("pong from {id}"));
        assert!(read("dns").contains("Address"), "{}", read("dns"));
        assert!(!read("health").is_empty(), "the service was not reached");
    }
    assert_no_container_left();
    wait_for(
        Duration::from_secs(10),
        "the workflows' networks to be removed",
        || osmo_networks().is_empty().then_some(()),
    );
}

#[test]
fn exec_and_port_forward_reach_into_the_container() {
    let Some(_lock) = docker_test("exec_and_port_forward_reach_into_the_container") else {
        return;
    };
    let server = Server::start(DOCKER_POOL);
    let id = server.submit(
        r#"
workflow:
  name: enter
  tasks:
  - name: web
    image: busybox
    command: [sh, -c, 'while true; do echo "pong from $OSMO_WORKFLOW_ID" | nc -l -p 18090; done']
    files:
    - path: /opt/note
      contents: secret of the container
"#,
    );
    wait_for(Duration::from_secs(60), "the task to run", || {
        (task(&server.workflow(&id), "web", 0)["status"] == "RUNNING").then_some(())
    });
    let out = Command::new(OSMO)
        .args(["workflow", "exec", &id, "web", "--entry"])
        .arg("cat /opt/note; echo id=$OSMO_WORKFLOW_ID; exit 5")
        .env("OSMO_URL", &server.url)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("secret of the container"), "{text}");
    assert!(
        text.contains(&format!("id={id}")),
        "the container's environment: {text}"
    );

    // A port of the container, in its workflow's network, from a local port.
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut forward = Command::new(OSMO)
        .args(["workflow", "port-forward", &id, "web", "--port"])
        .arg(format!("{local}:18090"))
        .env("OSMO_URL", &server.url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(forward.stdout.take().unwrap()),
        &mut said,
    )
    .unwrap();
    assert!(said.contains("Forwarding"), "{said}");
    let reply = wait_for(Duration::from_secs(30), "the container to answer", || {
        let conn = std::net::TcpStream::connect(("127.0.0.1", local)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(conn), &mut line).ok()?;
        (!line.is_empty()).then_some(line)
    });
    assert_eq!(reply.trim(), format!("pong from {id}"));
    forward.kill().unwrap();
    forward.wait().unwrap();
    server.post(&format!("/api/workflow/{id}/cancel"), "");
    server.wait_finished(&id, Duration::from_secs(60));
    assert_no_container_left();
}
