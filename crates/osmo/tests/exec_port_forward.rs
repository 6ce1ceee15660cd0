//! `osmo workflow exec` and `osmo workflow port-forward` against a real
//! server and its node agent, on the host sandbox: the command runs inside
//! the task's own sandbox (its files, `/tmp`, user, processes), stdin and
//! the exit code pass through, a terminal is given when there is one, and a
//! forwarded port reaches the task's own network, whichever of two workflows
//! listening on the same port it belongs to.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{OSMO, Server, free_port, local_pool, task, wait_for};

/// A task that waits until an exec'd command leaves a file in its `/tmp`,
/// then copies it to its output and ends.
const WAITS_FOR_EXEC: &str = r#"
workflow:
  name: enter
  tasks:
  - name: worker
    image: ubuntu
    command: [bash, -c]
    args: ["until [ -f /tmp/from-exec ]; do sleep 0.05; done; cp /tmp/from-exec {{output}}/seen"]
    files:
    - path: /opt/note
      contents: secret of the task
"#;

fn osmo(server: &Server, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(OSMO)
        .args(args)
        .env("OSMO_URL", &server.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_running(server: &Server, id: &str, name: &str) {
    wait_for(Duration::from_secs(30), "the task to run", || {
        (task(&server.workflow(id), name, 0)["status"] == "RUNNING").then_some(())
    });
}

#[test]
fn exec_runs_in_the_tasks_sandbox_with_its_stdin_and_exit_code() {
    let server = Server::start(local_pool());
    let id = server.submit(WAITS_FOR_EXEC);
    wait_running(&server, &id, "worker");

    // Its files, its name, its user (the pool runs tasks as nobody), its PID
    // namespace (PID 1 is the sandbox's init), not the host's /root.
    let (code, out, err) = osmo(
        &server,
        &[
            "workflow",
            "exec",
            &id,
            "worker",
            "--entry",
            "cat /opt/note; echo name=$OSMO_TASK_NAME; echo uid=$(id -u); echo init=$(cat /proc/1/comm); echo root=$(ls -A /root | wc -l); exit 7",
        ],
        b"",
    );
    assert_eq!(code, 7, "the command's exit code: {out}{err}");
    assert!(out.contains("secret of the task"), "{out}{err}");
    assert!(out.contains("name=worker"), "{out}");
    assert!(out.contains("uid=65534"), "{out}");
    assert!(out.contains("init=osmo-init"), "{out}");
    assert!(out.contains("root=0"), "the host's /root is hidden: {out}");

    // Stdin reaches the command, whose file lands in the task's own /tmp:
    // the task sees it, copies it to its output and completes.
    let (code, out, err) = osmo(
        &server,
        &[
            "workflow",
            "exec",
            &id,
            "worker",
            "--entry",
            "cat > /tmp/partial && mv /tmp/partial /tmp/from-exec && echo stored",
        ],
        b"hello from the client\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("stored"), "{out}");
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let seen = walk_find(&server.data_dir().join("runs"), "seen").expect("the task's output");
    assert_eq!(
        std::fs::read_to_string(seen).unwrap(),
        "hello from the client\n"
    );

    // A finished workflow has nothing to enter: a clear error, exit 1.
    let (code, _, err) = osmo(&server, &["workflow", "exec", &id, "worker"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("is COMPLETED"), "{err}");
}

#[test]
fn a_clients_keep_alive_ping_does_not_end_an_exec_session() {
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(local_pool());
    let id = server.submit(WAITS_FOR_EXEC);
    wait_running(&server, &id, "worker");
    let command: String = "sleep 0.3; echo after; exit 3"
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = server.post(
        &format!("/api/workflow/{id}/exec/task/worker?entry_command={command}&tty=false"),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let key = serde_json::from_str::<serde_json::Value>(&body).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!(
        "ws://127.0.0.1:{}/api/router/exec/{id}/client/{key}",
        server.port
    );
    let (mut ws, _) = tokio_tungstenite::tungstenite::connect(url).unwrap();
    ws.send(Message::Binary(
        br#"{"Rows": 0, "Cols": 0}"#.to_vec().into(),
    ))
    .unwrap();
    // As clients do to keep a quiet session open (Python's `websockets` every 20 s).
    ws.send(Message::Ping(b"alive?".to_vec().into())).unwrap();
    let mut output = Vec::new();
    let close = loop {
        match ws.read() {
            Ok(Message::Binary(b)) => output.extend_from_slice(&b),
            Ok(Message::Text(t)) => output.extend_from_slice(t.as_bytes()),
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(e) => panic!(
                "the session broke off after {:?}: {e}",
                String::from_utf8_lossy(&output)
            ),
        }
    };
    let output = String::from_utf8_lossy(&output);
    assert!(output.contains("after"), "{output}");
    assert_eq!(
        close.map(|f| f.reason.to_string()).as_deref(),
        Some("exit 3")
    );
    server.post(&format!("/api/workflow/{id}/cancel"), "");
}

#[test]
fn exec_refuses_what_is_not_a_running_task() {
    let server = Server::start(local_pool());
    let id = server.submit(WAITS_FOR_EXEC);
    wait_running(&server, &id, "worker");
    let (code, _, err) = osmo(&server, &["workflow", "exec", &id, "nosuch"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("has no task `nosuch`"), "{err}");
    let (code, _, err) = osmo(&server, &["workflow", "exec", "nosuch-1", "worker"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("nosuch-1 is not known"), "{err}");
    // A key is used once, and only for its own workflow; a plain request
    // where a WebSocket belongs is a JSON 400 that leaves the key alone.
    let ticket = |server: &Server| {
        let (status, body) = server.post(
            &format!("/api/workflow/{id}/exec/task/worker?entry_command=true&tty=false"),
            "",
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let t = ticket(&server);
    let key = t["key"].as_str().unwrap();
    assert_eq!(
        t["router_address"],
        format!("ws://127.0.0.1:{}", server.port)
    );
    let (status, body) = server.get(&format!("/api/router/exec/{id}/client/{key}"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("a WebSocket is expected"), "{body}");
    let socket = |wf: &str, key: &str| {
        let url = format!(
            "ws://127.0.0.1:{}/api/router/exec/{wf}/client/{key}",
            server.port
        );
        match tokio_tungstenite::tungstenite::connect(url) {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(socket("other-1", key), 404, "a key of another workflow");
    assert_eq!(socket(&id, key), 404, "spent by the other workflow's try");
    let t = ticket(&server);
    assert_eq!(socket(&id, t["key"].as_str().unwrap()), 101);
    assert_eq!(socket(&id, t["key"].as_str().unwrap()), 404, "used once");
    // UDP is refused, as are ports that are not ports.
    let (status, body) = server.post(
        &format!("/api/workflow/{id}/portforward/worker?task_ports=80&use_udp=true"),
        "",
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.post(
        &format!("/api/workflow/{id}/portforward/worker?task_ports=70000"),
        "",
    );
    assert_eq!(status, 400, "{body}");
    server.post(&format!("/api/workflow/{id}/cancel"), "");
}

#[test]
fn exec_gives_a_terminal_when_the_client_has_one() {
    if Command::new("script").arg("--version").output().is_err() {
        panic!("`script` (util-linux) is needed to give the client a terminal");
    }
    let server = Server::start(local_pool());
    let id = server.submit(WAITS_FOR_EXEC);
    wait_running(&server, &id, "worker");
    // `script` runs the client on a terminal of 33 rows and 99 columns.
    let line = format!(
        "stty rows 33 cols 99; OSMO_URL={} {OSMO} workflow exec {id} worker --entry 'tty; stty size; echo term=$TERM; exit 3'",
        server.url
    );
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stdin stays open (a closed one would be the terminal's end of input).
    let stdin = child.stdin.take().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(out.contains("/dev/pts/"), "a terminal: {out:?}");
    assert!(out.contains("33 99"), "the client's size: {out:?}");
    assert!(out.contains("term=xterm-256color"), "{out:?}");
    server.post(&format!("/api/workflow/{id}/cancel"), "");
}

/// A server on port 18090 of its workflow's network that answers each
/// connection with its workflow's ID and the line it was sent.
const LISTENS: &str = r#"
workflow:
  name: web
  tasks:
  - name: web
    image: ubuntu
    command: [python3, /opt/serve.py]
    files:
    - path: /opt/serve.py
      contents: |
        import os, socket
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 18090))
        s.listen()
        while True:
            c, _ = s.accept()
            line = c.makefile().readline().strip()
            c.sendall(("%s got %s\n" % (os.environ["OSMO_WORKFLOW_ID"], line)).encode())
            c.close()
"#;

/// Sends a line to the forwarded port and reads the answer (None: no answer yet).
fn ask(port: u16, line: &str) -> Option<String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    conn.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    (!answer.is_empty()).then_some(answer)
}

#[test]
fn port_forward_reaches_each_workflows_own_port() {
    let server = Server::start(local_pool());
    let ids = [server.submit(LISTENS), server.submit(LISTENS)];
    let mut forwards = Vec::new();
    for id in &ids {
        wait_running(&server, id, "web");
        let local = free_port();
        let mut child = Command::new(OSMO)
            .args(["workflow", "port-forward", id, "web", "--port"])
            .arg(format!("{local}:18090"))
            .env("OSMO_URL", &server.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Listening once it says so.
        let mut said = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut said)
            .unwrap();
        assert!(
            said.contains(&format!("Forwarding localhost:{local}")),
            "{said}"
        );
        forwards.push((id.clone(), local, child));
    }
    for (id, local, _) in &forwards {
        // The task may still be binding its port: asked again until it answers.
        let first = wait_for(Duration::from_secs(20), "the task to answer", || {
            ask(*local, "one")
        });
        assert_eq!(first, format!("{id} got one\n"));
        // Every connection is a new one to the task.
        assert_eq!(ask(*local, "two").unwrap(), format!("{id} got two\n"));
    }
    for (id, _, mut child) in forwards {
        child.kill().unwrap();
        child.wait().unwrap();
        server.post(&format!("/api/workflow/{id}/cancel"), "");
    }
}

/// OSMO's own scenario tests (`exec_workflow.yaml`, `portforward_workflow.yaml`)
/// run the CLI inside the task against itself; the same, without apt.
#[test]
fn a_task_can_exec_into_and_forward_to_itself() {
    let server = Server::start(local_pool());
    let id = server.submit(
        r#"
workflow:
  name: self
  tasks:
  - name: task1
    image: ubuntu
    command: [bash, -c]
    args:
    - |
      set -ex
      python3 /opt/listen.py &
      while ! osmo workflow query {{workflow_id}} | grep -q RUNNING; do sleep 0.1; done
      echo 'echo via-exec > /tmp/file.txt' | osmo workflow exec {{workflow_id}} task1 --entry sh
      grep -q via-exec /tmp/file.txt
      osmo workflow port-forward {{workflow_id}} task1 --port 8080:12345 > /tmp/pf.log &
      until grep -q Forwarding /tmp/pf.log; do sleep 0.1; done
      python3 -c "import socket; c = socket.create_connection(('localhost', 8080)); c.sendall(b'via-port-forward'); c.close()"
      wait %1
      grep -q via-port-forward /tmp/pf.txt
    files:
    - path: /opt/listen.py
      contents: |
        import socket
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 12345))
        s.listen()
        c, _ = s.accept()
        open("/tmp/pf.txt", "wb").write(c.makefile("rb").read())
"#,
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
}

fn walk_find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir()
            && let Some(found) = walk_find(&path, name)
        {
            return Some(found);
        }
    }
    None
}
