//! The node agent's side of its wire protocol, against the real `osmo agent`
//! process: this test plays the server on the agent's Unix socket, writing
//! and reading the JSON lines themselves.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use serde_json::{Value, json};

/// The server's end of one agent connection.
struct Link {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Link {
    fn send(&mut self, msg: Value) {
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).unwrap();
    }

    /// The agent's next message whose `type` is `kind` (others are skipped).
    fn next(&mut self, kind: &str) -> Value {
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("waiting for {kind}: {e}"));
            assert!(n > 0, "the agent closed the connection before {kind}");
            let msg: Value = serde_json::from_str(&line).unwrap();
            if msg["type"] == kind {
                return msg;
            }
        }
    }
}

/// The agent process, killed if the test ends early (it would otherwise
/// dial the gone socket for a while).
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn key(retry_id: u32) -> Value {
    json!({"workflow_id": "proto-1", "attempt": {"task": {"group": 0, "task": 0}, "retry_id": retry_id}})
}

fn launch(dir: &std::path::Path, retry_id: u32) -> Value {
    let output = dir.join(format!("runs/proto-1/t.{retry_id}"));
    json!({
        "key": key(retry_id),
        "group": "g",
        "task": "t",
        "command": ["true"],
        "args": [],
        "environment": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        "files": [],
        "output_dir": output,
        "input_dirs": [],
        "preflight": [],
        "memory_limit_bytes": null,
        "barrier": false,
        "hidden_paths": [dir],
    })
}

#[test]
fn a_start_runs_what_was_set_up_ahead_and_is_answered_not_prepared_when_nothing_was() {
    let dir = tempfile::Builder::new()
        .prefix("osmo-agent-proto-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let mut agent = Agent(
        std::process::Command::new(common::OSMO)
            .arg("agent")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("agent"))
            .spawn()
            .unwrap(),
    );
    let (stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut link = Link {
        reader: BufReader::new(stream.try_clone().unwrap()),
        writer: stream,
    };
    let hello = link.next("hello");
    assert_eq!(hello["starts_prepared"], true, "{hello}");

    // Nothing set up for this key: the agent asks for the launch in full.
    link.send(json!({"type": "start", "key": key(0)}));
    let asked = link.next("not_prepared");
    assert_eq!(asked["key"], key(0), "{asked}");
    // ...which runs it as any launch.
    let mut full = launch(dir.path(), 0);
    full["type"] = json!("launch");
    link.send(full);
    let exited = link.next("exited");
    assert_eq!(exited["key"], key(0), "{exited}");
    assert_eq!(exited["codes"][0]["code"], 0, "{exited}");
    link.send(json!({"type": "ack", "key": key(0)}));

    // Set up ahead, then started by its key alone: nothing is told of it
    // before the start, and it runs what its prepare asked.
    let mut prepare = launch(dir.path(), 1);
    prepare["type"] = json!("prepare");
    link.send(prepare);
    link.send(json!({"type": "start", "key": key(1)}));
    let running = link.next("phase");
    assert_eq!(running["key"], key(1), "{running}");
    let exited = link.next("exited");
    assert_eq!(exited["key"], key(1), "{exited}");
    assert_eq!(exited["codes"][0]["code"], 0, "{exited}");
    assert!(
        dir.path().join("runs/proto-1/t.1").is_dir(),
        "its output directory was made"
    );
    link.send(json!({"type": "ack", "key": key(1)}));

    // Idle, told the server stops: the agent exits.
    link.send(json!({"type": "shutdown"}));
    drop(link);
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "{status}");
}
