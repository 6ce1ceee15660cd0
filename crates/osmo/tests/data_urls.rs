//! URL inputs and outputs against a real S3-compatible server that checks
//! request signatures (s3s-fs, started by `scripts/with-s3.sh`), with
//! the keys in an `osmo credential`: a round trip of many files with regex
//! filters, secrets masked in every output, a missing bucket (2010,
//! rescheduled), a refused upload (2012), and one large file streamed both
//! ways without the agent holding it in memory.
//!
//! Without `OSMO_TEST_S3_URL` they pass with a loud "skipped" line.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

struct S3 {
    url: String,
    key_id: String,
    secret: String,
    bucket: String,
}

fn s3(test: &str) -> Option<S3> {
    let var = |k: &str| std::env::var(k).ok();
    let Some(url) = var("OSMO_TEST_S3_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "{test}: skipped: no S3 server (run under scripts/with-s3.sh)"
        );
        return None;
    };
    Some(S3 {
        url,
        key_id: var("OSMO_TEST_S3_KEY_ID").unwrap(),
        secret: var("OSMO_TEST_S3_SECRET").unwrap(),
        bucket: var("OSMO_TEST_S3_BUCKET").unwrap(),
    })
}

const POOL: &str = "pools:\n  default:\n    backend: local\n    max_retry_per_task: 1\n";

fn osmo(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(OSMO)
        .args(args)
        .env("OSMO_URL", &server.url)
        // The user the tests' submits are made as (no x-osmo-user).
        .env("OSMO_USER", "anonymous")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `osmo credential set NAME --type s3 ...` for the bucket, with a key pair.
fn set_data_credential(server: &Server, s3: &S3, name: &str, key_id: &str, secret: &str) {
    let endpoint = format!("s3://{}", s3.bucket);
    let (code, out, err) = osmo(
        server,
        &[
            "credential",
            "set",
            name,
            "--type",
            "s3",
            "--access-key",
            key_id,
            "--secret-key",
            secret,
            "--endpoint",
            &endpoint,
            "--override-url",
            &s3.url,
            "--region",
            "us-east-1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
}

fn output_file(server: &Server, id: &str, task: &str, retry: u32, file: &str) -> String {
    std::fs::read_to_string(server.output_dir(id, task, retry).join(file)).unwrap_or_default()
}

fn logs(server: &Server, id: &str) -> String {
    let (_, out, _) = osmo(server, &["workflow", "logs", id]);
    out
}

#[test]
fn files_go_up_and_come_back_filtered_with_secrets_masked() {
    let Some(s3) = s3("files_go_up_and_come_back_filtered_with_secrets_masked") else {
        return;
    };
    let server = Server::start(POOL);
    set_data_credential(&server, &s3, "store", &s3.key_id, &s3.secret);
    let (code, out, err) = osmo(
        &server,
        &[
            "credential",
            "set",
            "api",
            "--payload",
            "token=tok-9f8e7d6c5b",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (_, listed, _) = osmo(&server, &["credential", "list"]);
    assert!(
        listed.contains("store") && listed.contains("DATA"),
        "{listed}"
    );
    assert!(listed.contains(&format!("s3://{}", s3.bucket)), "{listed}");
    assert!(!listed.contains(&s3.secret), "a secret listed: {listed}");

    let prefix = format!("s3://{}/round-trip", s3.bucket);
    let up = format!(
        r#"
workflow:
  name: up
  tasks:
  - name: make
    image: ubuntu
    command: [bash, -c]
    args:
    - |
      for i in $(seq 100); do echo "file $i" > {{{{output}}}}/part-$i.txt; done
      mkdir {{{{output}}}}/sub && echo deep > {{{{output}}}}/sub/deep.txt
      echo not kept > {{{{output}}}}/skip.log
      echo "secret: $STORE_SECRET"
      sha256sum /opt/api/token | cut -c1-64
    credentials:
      store:
        STORE_SECRET: access_key
      api: /opt/api
    outputs:
    - url: {prefix}/
      regex: '\.txt$'
"#
    );
    let id = server.submit(&up);
    let doc = server.wait_finished(&id, Duration::from_secs(120));
    assert_eq!(
        doc["status"],
        "COMPLETED",
        "{doc:#}\n{}",
        logs(&server, &id)
    );
    let log = logs(&server, &id);
    assert!(log.contains("secret: ****"), "{log}");
    assert!(log.contains("uploaded to"), "progress in the log: {log}");
    assert!(log.contains("101 files"), "{log}");
    // The generic credential is a file per key where the task asked.
    let digest = "tok-9f8e7d6c5b";
    let expected = sha256_hex(digest.as_bytes());
    assert!(log.contains(&expected), "the token file's digest: {log}");
    // No secret anywhere the service shows.
    let (_, verbose, _) = osmo(
        &server,
        &[
            "workflow",
            "query",
            &id,
            "--verbose",
            "--format-type",
            "json",
        ],
    );
    let (_, spec, _) = osmo(&server, &["workflow", "spec", &id]);
    let (_, events, _) = osmo(&server, &["workflow", "events", &id]);
    for (what, text) in [
        ("logs", &log),
        ("query", &verbose),
        ("spec", &spec),
        ("events", &events),
    ] {
        assert!(!text.contains(&s3.secret), "the data secret in {what}");
        assert!(!text.contains(digest), "the token in {what}");
    }

    let down = format!(
        r#"
workflow:
  name: down
  tasks:
  - name: use
    image: ubuntu
    command: [bash, -c]
    args:
    - |
      find {{{{input:0}}}} -type f | wc -l > {{{{output}}}}/parts
      find {{{{input:1}}}} -type f | wc -l > {{{{output}}}}/all
      cat {{{{input:0}}}}/part-7.txt > {{{{output}}}}/seven
    inputs:
    - url: {prefix}/
      regex: '^part-'
    - url: {prefix}
"#
    );
    let id = server.submit(&down);
    let doc = server.wait_finished(&id, Duration::from_secs(120));
    assert_eq!(
        doc["status"],
        "COMPLETED",
        "{doc:#}\n{}",
        logs(&server, &id)
    );
    assert_eq!(output_file(&server, &id, "use", 0, "parts").trim(), "100");
    assert_eq!(
        output_file(&server, &id, "use", 0, "all").trim(),
        "101",
        "the .log was never uploaded; sub/deep.txt was"
    );
    assert_eq!(output_file(&server, &id, "use", 0, "seven"), "file 7\n");

    let (code, _, err) = osmo(&server, &["credential", "delete", "api"]);
    assert_eq!(code, 0, "{err}");
    let (_, listed, _) = osmo(&server, &["credential", "list"]);
    assert!(!listed.contains("api"), "{listed}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn a_missing_bucket_is_2010_and_rescheduled_and_a_refused_upload_is_2012() {
    let Some(s3) = s3("a_missing_bucket_is_2010_and_rescheduled_and_a_refused_upload_is_2012")
    else {
        return;
    };
    let server = Server::start(POOL);
    set_data_credential(&server, &s3, "store", &s3.key_id, &s3.secret);
    let id = server.submit(
        r#"
workflow:
  name: nobucket
  tasks:
  - name: t
    image: ubuntu
    command: [sh, -c, "echo never ran > {{output}}/ran"]
    inputs:
    - url: s3://no-such-bucket-here/data
    exitActions: {RESCHEDULE: "2010"}
"#,
    );
    let doc = server.wait_finished(&id, Duration::from_secs(120));
    let first = task(&doc, "t", 0);
    assert_eq!(first["exit_code"], 2010, "{doc:#}");
    assert_eq!(first["status"], "RESCHEDULED", "{doc:#}");
    let detail = first["exit_codes"][0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains("no-such-bucket-here"),
        "the store's words: {detail}"
    );
    assert_eq!(
        task(&doc, "t", 1)["exit_code"],
        2010,
        "retried once: {doc:#}"
    );
    assert!(
        output_file(&server, &id, "t", 0, "ran").is_empty(),
        "the command never ran"
    );

    // A wrong secret: the store refuses the upload, after a command that succeeded.
    let wrong = "not-the-secret-0123456789";
    set_data_credential(&server, &s3, "store", &s3.key_id, wrong);
    let id = server.submit(&format!(
        r#"
workflow:
  name: refused
  tasks:
  - name: t
    image: ubuntu
    command: [sh, -c, "echo result > {{{{output}}}}/r.txt"]
    outputs:
    - url: s3://{}/refused/
"#,
        s3.bucket
    ));
    let doc = server.wait_finished(&id, Duration::from_secs(120));
    let t = task(&doc, "t", 0);
    assert_eq!(t["exit_code"], 2012, "{doc:#}");
    assert_eq!(doc["status"], "FAILED", "{doc:#}");
    let codes: Vec<u64> = t["exit_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_u64().unwrap())
        .collect();
    assert!(codes.contains(&0), "the command's own 0 is kept: {codes:?}");
    let detail = t["exit_codes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"] == 2012)
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("SignatureDoesNotMatch"),
        "the store's words: {detail}"
    );
    assert!(!detail.contains(wrong));
}

/// Peak resident memory of a process, in bytes (VmHWM).
fn peak_rss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn a_large_file_streams_both_ways() {
    let Some(s3) = s3("a_large_file_streams_both_ways") else {
        return;
    };
    let bytes: u64 = std::env::var("OSMO_TEST_S3_LARGE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let server = Server::start(POOL);
    set_data_credential(&server, &s3, "store", &s3.key_id, &s3.secret);
    let url = format!("s3://{}/large/", s3.bucket);
    let id = server.submit(&format!(
        r#"
workflow:
  name: large-up
  tasks:
  - name: t
    image: ubuntu
    command: [sh, -c, "head -c {bytes} /dev/urandom > {{{{output}}}}/big.bin && sha256sum {{{{output}}}}/big.bin | cut -c1-64 > {{{{output}}}}/sum"]
    outputs:
    - url: {url}
"#
    ));
    let doc = server.wait_finished(&id, Duration::from_secs(600));
    assert_eq!(
        doc["status"],
        "COMPLETED",
        "{doc:#}\n{}",
        logs(&server, &id)
    );
    let sum = output_file(&server, &id, "t", 0, "sum");
    // The store has the bytes now: the copy in the run's output goes, so the test needs disk
    // for one copy at a time (a CI machine's disk can be nearly full after the build).
    let uploaded = server.output_dir(&id, "t", 0).join("big.bin");
    std::fs::remove_file(&uploaded).unwrap_or_else(|e| panic!("{}: {e}", uploaded.display()));
    let id = server.submit(&format!(
        r#"
workflow:
  name: large-down
  tasks:
  - name: t
    image: ubuntu
    command: [sh, -c, "sha256sum {{{{input:0}}}}/big.bin | cut -c1-64 > {{{{output}}}}/sum"]
    inputs:
    - url: {url}
      regex: 'big\.bin$'
"#
    ));
    let doc = server.wait_finished(&id, Duration::from_secs(600));
    assert_eq!(
        doc["status"],
        "COMPLETED",
        "{doc:#}\n{}",
        logs(&server, &id)
    );
    assert_eq!(
        output_file(&server, &id, "t", 0, "sum"),
        sum,
        "the same bytes came back"
    );
    // The agent moved it all: it never held the file.
    let agent = server.agent_pid().expect("the agent runs");
    let peak = peak_rss(agent);
    assert!(
        peak < 300 << 20,
        "the agent peaked at {} MiB moving {} MiB",
        peak >> 20,
        bytes >> 20
    );
    let log = logs(&server, &id);
    assert!(log.contains("downloaded s3://"), "{log}");
    let _: Value = doc;
}

#[test]
fn the_data_example_runs_against_the_store() {
    let Some(s3) = s3("the_data_example_runs_against_the_store") else {
        return;
    };
    let server = Server::start(POOL);
    set_data_credential(&server, &s3, "store", &s3.key_id, &s3.secret);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/data-pipeline.yaml"
    );
    let (code, out, err) = osmo(
        &server,
        &[
            "workflow",
            "submit",
            example,
            "--pool",
            "default",
            "--set",
            &format!("storage_url=s3://{}/example", s3.bucket),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let id = "data-pipeline-1";
    let doc = server.wait_finished(id, Duration::from_secs(120));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", logs(&server, id));
    let log = logs(&server, id);
    for line in [
        "uploaded to s3://osmo-test/example/dataset/data-pipeline-1: 1 file",
        "downloaded s3://osmo-test/example/dataset/data-pipeline-1: 1 file",
        "checkpoint: uploaded to s3://osmo-test/example/checkpoints/data-pipeline-1: 1 file",
        "uploaded to s3://osmo-test/example/model/data-pipeline-1: 1 file",
    ] {
        assert!(log.contains(line), "`{line}` in {log}");
    }
}

/// `inputs: [{task: WF:TASK}]`: another workflow's completed task's output,
/// copied in (no object store needed).
#[test]
fn an_input_can_be_another_workflows_task() {
    let server = Server::start(POOL);
    let first = server.submit(
        "workflow:\n  name: first\n  tasks:\n  - {name: train, image: ubuntu, command: [sh, -c, 'echo weights > {{output}}/model']}\n",
    );
    let doc = server.wait_finished(&first, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let spec = |input: &str| {
        format!(
            "workflow:\n  name: second\n  tasks:\n  - name: eval\n    image: ubuntu\n    command: [sh, -c, 'cat {{{{input:0}}}}/model > {{{{output}}}}/seen']\n    inputs: [{{task: '{input}'}}]\n"
        )
    };
    let id = server.submit(&spec(&format!("{first}:train")));
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(
        doc["status"],
        "COMPLETED",
        "{doc:#}\n{}",
        logs(&server, &id)
    );
    assert_eq!(output_file(&server, &id, "eval", 0, "seen"), "weights\n");

    let refused = |input: &str, words: &str| {
        let body = serde_json::json!({"file": spec(input)}).to_string();
        let (status, text) = server.post("/api/pool/default/workflow", body);
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(words), "{text}");
    };
    refused("nosuch-9:train", "workflow nosuch-9 is not known");
    refused(&format!("{first}:other"), "has no task `other`");
    let failed = server.submit(
        "workflow:\n  name: broken\n  tasks:\n  - {name: train, image: ubuntu, command: [sh, -c, 'exit 3']}\n",
    );
    server.wait_finished(&failed, Duration::from_secs(60));
    refused(
        &format!("{failed}:train"),
        "only a COMPLETED task's output can be read",
    );
}

/// A task the workflow's query shows COMPLETED is so everywhere at once,
/// before its end is committed to the store (the service commits lazily):
/// another workflow can take its output as an input, and the workflow's
/// events show its end.
#[test]
fn a_task_shown_completed_is_so_before_its_end_is_stored() {
    let server = Server::start(POOL);
    let first = server.submit(
        "workflow:\n  name: first\n  tasks:\n  - {name: train, image: ubuntu, command: [sh, -c, 'sleep 1; echo weights > {{output}}/model']}\n",
    );
    let (lock, _) = server.finished_but_not_stored(&first);

    let spec = format!(
        "workflow:\n  name: second\n  tasks:\n  - name: eval\n    image: ubuntu\n    command: [sh, -c, 'cat {{{{input:0}}}}/model > {{{{output}}}}/seen']\n    inputs: [{{task: '{first}:train'}}]\n"
    );
    let client = reqwest::blocking::Client::new();
    let submitted = in_background(
        client
            .post(format!("{}/api/pool/default/workflow", server.url))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "file": spec }).to_string()),
    );
    let events = in_background(client.get(format!("{}/api/workflow/{first}/events", server.url)));
    // Neither may answer from the store as it is while the lock is held (a
    // bounded wait for what must not come).
    let early = submitted.recv_timeout(Duration::from_millis(500));
    lock.release();
    let answer = |rx: std::sync::mpsc::Receiver<(u16, String)>| {
        rx.recv_timeout(Duration::from_secs(30)).unwrap()
    };
    let (status, text) = early.unwrap_or_else(|_| answer(submitted));
    assert_eq!(status, 200, "{text}");
    let (status, events) = answer(events);
    assert_eq!(status, 200, "{events}");
    assert!(
        events.contains("[train retry-0] exited with 0 (user) → COMPLETED"),
        "{events}"
    );

    let id = serde_json::from_str::<Value>(&text).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    assert_eq!(output_file(&server, &id, "eval", 0, "seen"), "weights\n");
}

#[test]
fn checkpoints_are_uploaded_while_the_command_runs_and_as_it_ends() {
    let server = Server::start(POOL);
    let store = server.dir.path().join("store");
    let id = server.submit(&format!(
        r#"
workflow:
  name: ckpt
  tasks:
  - name: t
    image: ubuntu
    command: [sh, -c]
    args: ["mkdir -p /tmp/ck; for i in 1 2 3 4 5 6 7 8; do echo $i > /tmp/ck/step; sleep 0.25; done"]
    checkpoint:
    - path: /tmp/ck
      url: file://{}/ck
      frequency: 300ms
"#,
        store.display()
    ));
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let log = logs(&server, &id);
    let ended = log
        .find("command exited")
        .expect("the command's end is logged");
    let while_running = log[..ended].matches("checkpoint: uploaded").count();
    assert!(
        while_running >= 2,
        "periodic checkpoints while it ran: {log}"
    );
    // The last one, taken as the command ended, has its last write.
    assert_eq!(
        std::fs::read_to_string(store.join("ck/step")).unwrap(),
        "8\n"
    );
}
