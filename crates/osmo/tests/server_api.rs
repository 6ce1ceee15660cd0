//! The server through its REST API: logs, list filters, bad input.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn logs_are_stored_per_task_and_retry() {
    let server = Server::start(local_pool());
    let id = server.submit(
        r#"
workflow:
  name: chatty
  tasks:
  - name: talker
    image: ubuntu
    command: [sh, -c, 'echo "out $OSMO_RETRY_ID"; echo "err $OSMO_RETRY_ID" >&2; if [ "$OSMO_RETRY_ID" = 0 ]; then exit 12; fi']
    exitActions: {RESCHEDULE: "12"}
  - name: quiet
    image: ubuntu
    command: ["true"]
"#,
    );
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");

    let (status, all) = server.get(&format!("/api/workflow/{id}/logs?task_name=talker"));
    assert_eq!(status, 200);
    assert!(all.contains("[talker retry-0][stdout] out 0"), "{all}");
    assert!(all.contains("[talker retry-0][stderr] err 0"), "{all}");
    assert!(all.contains("[talker retry-1][stdout] out 1"), "{all}");

    let (_, retry1) = server.get(&format!(
        "/api/workflow/{id}/logs?task_name=talker&retry_id=1"
    ));
    assert!(
        retry1.contains("out 1") && !retry1.contains("out 0"),
        "{retry1}"
    );

    let (_, last) = server.get(&format!(
        "/api/workflow/{id}/logs?task_name=talker&retry_id=1&last_n_lines=1"
    ));
    assert_eq!(last.lines().count(), 1, "{last}");

    let (status, body) = server.get(&format!("/api/workflow/{id}/logs?task_name=nope"));
    assert_eq!(status, 404, "{body}");

    // The CLI prints the same text.
    let out = std::process::Command::new(OSMO)
        .args(["workflow", "logs", &id, "-t", "talker", "-r", "0"])
        .env("OSMO_URL", &server.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("out 0") && !text.contains("out 1"),
        "{text}"
    );
}

#[test]
fn list_filters_by_name_status_pool_limit_and_offset() {
    let server = Server::start(local_pool());
    let ok =
        "workflow:\n  name: good\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n";
    let bad =
        "workflow:\n  name: bad\n  tasks:\n  - {name: t, image: ubuntu, command: [\"false\"]}\n";
    let ids = [server.submit(ok), server.submit(ok), server.submit(bad)];
    assert_eq!(ids, ["good-1", "good-2", "bad-1"].map(String::from));
    for id in &ids {
        server.wait_finished(id, Duration::from_secs(30));
    }
    let names = |path: &str| -> Vec<String> {
        server.get_json(path)["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("/api/workflow"),
        ["bad-1", "good-2", "good-1"],
        "newest first"
    );
    assert_eq!(names("/api/workflow?name=good"), ["good-2", "good-1"]);
    assert_eq!(names("/api/workflow?statuses=FAILED"), ["bad-1"]);
    assert_eq!(
        names("/api/workflow?statuses=FAILED&statuses=COMPLETED").len(),
        3
    );
    assert_eq!(names("/api/workflow?pools=default").len(), 3);
    assert!(names("/api/workflow?pools=other").is_empty());
    assert_eq!(names("/api/workflow?limit=1&offset=1"), ["good-2"]);
    let (status, body) = server.get("/api/workflow?limit=abc");
    assert_eq!(status, 400, "{body}");
}

/// Sends `request` as is and returns what the server answers before it closes.
fn raw_request(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // The status line and headers arrive in the first reads; stop at the blank line.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn bad_requests_get_a_clear_4xx_and_store_nothing() {
    let server = Server::start(local_pool());
    let (status, body) = server.post("/api/pool/default/workflow", "{not json");
    assert_eq!(status, 400);
    assert!(body.contains("not a submit request"), "{body}");

    let (status, body) = server.post(
        "/api/pool/default/workflow",
        r#"{"file": "x", "surprise": 1}"#,
    );
    assert_eq!(status, 400, "{body}");

    // The server refuses an oversized body from its Content-Length alone, so
    // send only the headers (a client still writing the body would race the reply).
    let answer = raw_request(
        server.port,
        "POST /api/pool/default/workflow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9437184\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let spec =
        "workflow:\n  name: x\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n";
    let (status, body) = server.post(
        "/api/pool/nope/workflow",
        serde_json::json!({"file": spec}).to_string(),
    );
    assert_eq!(status, 404);
    assert!(body.contains("pool `nope` is not known"), "{body}");

    let bad_spec = "workflow:\n  name: x\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"], exitActions: {FAIL: 9-3}}\n";
    let (status, body) = server.post(
        "/api/pool/default/workflow",
        serde_json::json!({"file": bad_spec}).to_string(),
    );
    assert_eq!(status, 400);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["diagnostics"][0].as_str().unwrap().contains("9-3"),
        "{body}"
    );

    let (status, body) = server.post(
        "/api/pool/default/workflow?priority=URGENT",
        serde_json::json!({"file": spec}).to_string(),
    );
    assert_eq!(status, 400, "{body}");

    // A template that asks for gigabytes in one step is stopped by the renderer's memory limit.
    let bomb = "{% set a = 'x' * 100000000 %}{% set b = a ~ a ~ a ~ a %}{% set c = b ~ b ~ b ~ b %}\nworkflow:\n  name: bomb\n  tasks:\n  - {name: t, image: ubuntu, command: [\"{{ c|length }}\"]}\n";
    let (status, body) = server.post(
        "/api/pool/default/workflow",
        serde_json::json!({"file": bomb}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("needed more than 1024 MiB of memory"),
        "{body}"
    );

    assert_eq!(server.get("/api/workflow/ghost-1").0, 404);
    assert_eq!(server.post("/api/workflow/ghost-1/cancel", "").0, 404);
    assert_eq!(server.get("/api/workflow/ghost-1/logs").0, 404);
    assert_eq!(server.get("/api/nothing/here").0, 404);

    assert_eq!(
        server.workflow_count(),
        0,
        "rejected submissions must store nothing"
    );
    assert_eq!(server.get("/api/health").0, 200, "the server keeps serving");

    // dry_run and validation_only check without storing.
    let (status, body) = server.post(
        "/api/pool/default/workflow?dry_run=true",
        serde_json::json!({"file": spec}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.workflow_count(), 0);
}

#[test]
fn openapi_document_lists_the_paths() {
    let server = Server::start(local_pool());
    let doc = server.get_json("/api/openapi.json");
    for path in [
        "/api/pool/{pool}/workflow",
        "/api/workflow",
        "/api/workflow/{id}",
        "/api/workflow/{id}/cancel",
    ] {
        assert!(doc["paths"].get(path).is_some(), "missing {path}");
    }
}

#[test]
fn spec_is_served_as_submitted() {
    let server = Server::start(local_pool());
    let spec = "default-values: {n: 2}\nworkflow:\n  name: shown\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, \"exit {{ n }}\"], exitActions: {COMPLETE: \"2\"}}\n";
    let id = server.submit(spec);
    assert_eq!(server.get(&format!("/api/workflow/{id}/spec")).1, spec);
    assert!(
        server
            .get(&format!("/api/workflow/{id}/spec?rendered=true"))
            .1
            .contains("exit 2")
    );
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(task(&doc, "t", 0)["exit_code"], 2);
}

#[test]
fn a_local_pool_refuses_what_this_machine_does_not_have() {
    let server = Server::start(local_pool());
    let spec = "workflow:\n  name: greedy\n  resources:\n    default: {gpu: 1, cpu: 100000}\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n";
    let (status, body) = server.post(
        "/api/pool/default/workflow",
        serde_json::json!({"file": spec}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    // No GPU device exists on the test machines; the CPU count is always below 100000.
    assert!(body.contains("100000 CPUs"), "{body}");
    assert_eq!(server.workflow_count(), 0);
}

#[test]
fn a_dry_run_renders_a_file_whose_localpath_files_the_client_inlines_later() {
    let server = Server::start(local_pool());
    let spec = "default-values: {n: 2}\nworkflow:\n  name: later\n  tasks:\n  - name: t\n    image: ubuntu\n    command: [sh, /tmp/run.sh, '{{ n }}']\n    files:\n    - {localpath: run.sh, path: /tmp/run.sh}\n";
    let body = serde_json::json!({"file": spec}).to_string();
    let (status, text) = server.post("/api/pool/default/workflow?dry_run=true", body.clone());
    assert_eq!(status, 200, "{text}");
    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        reply["spec"]
            .as_str()
            .unwrap()
            .contains("[sh, /tmp/run.sh, '2']"),
        "{reply}"
    );
    assert!(
        reply["warnings"][0].as_str().unwrap().contains("localpath"),
        "{reply}"
    );
    // A real submit still refuses it: the client must inline the file first.
    let (status, text) = server.post("/api/pool/default/workflow", body);
    assert_eq!(status, 400, "{text}");
    assert_eq!(server.workflow_count(), 0);
}

#[test]
fn osmos_cli_gets_its_profile_version_and_submits_with_its_templated_spec() {
    let server = Server::start(local_pool());
    let profile = server.get_json("/api/profile/settings");
    assert_eq!(profile["profile"]["pool"], "default", "{profile}");
    let version = server.get_json("/api/version");
    assert!(
        version["major"].is_string() && version["revision"].is_string(),
        "{version}"
    );
    let (status, text) = server.post(
        "/api/profile/settings",
        serde_json::json!({"pool": "nope"}).to_string(),
    );
    assert_eq!(status, 400, "{text}");
    let (status, text) = server.post(
        "/api/profile/settings",
        serde_json::json!({"pool": "default"}).to_string(),
    );
    assert_eq!(status, 200, "{text}");

    let template = "default-values: {n: 1}\nworkflow:\n  name: templ\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'exit {{ n }}']}\n";
    let rendered = "workflow:\n  name: templ\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'exit 0']}\n";
    let body = serde_json::json!({
        "file": rendered,
        "set_variables": [],
        "set_string_variables": [],
        "uploaded_templated_spec": template,
    });
    let (status, text) = server.post("/api/pool/default/workflow", body.to_string());
    assert_eq!(status, 200, "{text}");
    let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = server.wait_finished(&id, std::time::Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "the rendered file ran: {doc}");
    let (_, source) = server.get(&format!("/api/workflow/{id}/spec"));
    assert_eq!(source, template, "the template is kept as the source");
}

#[test]
fn errors_and_times_are_in_osmos_shapes() {
    let server = Server::start(local_pool());
    let (status, text) = server.get("/api/workflow/nope-1");
    assert_eq!(status, 404);
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error_code"], "NOTFOUND", "{body}");
    assert_eq!(body["message"], body["error"], "{body}");
    let (status, text) = server.post(
        "/api/pool/default/workflow",
        serde_json::json!({"file": "workflow: {name: x}\n"}).to_string(),
    );
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error_code"], "SUBMISSION", "{body}");

    let id = server.submit(
        "workflow:\n  name: t\n  tasks:\n  - {name: a, image: ubuntu, command: [\"true\"]}\n",
    );
    let doc = server.wait_finished(&id, std::time::Duration::from_secs(30));
    let submit = doc["submit_time"].as_str().unwrap();
    assert!(!submit.ends_with('Z') && submit.contains('T'), "{submit}");
    assert_eq!(doc["overview"], format!("/api/workflow/{id}"));
    let list = server.get_json("/api/workflow");
    assert_eq!(
        list["workflows"][0]["user"],
        list["workflows"][0]["submitted_by"]
    );
}

#[test]
fn osmos_list_priority_spec_template_and_validation_answers() {
    let server = Server::start(local_pool());
    let spec = "default-values: {code: 0}\nworkflow:\n  name: pri\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'exit {{ code }}']}\n";
    let body = serde_json::json!({"file": spec}).to_string();
    let (status, text) = server.post("/api/pool/default/workflow?priority=HIGH", body.clone());
    assert_eq!(status, 200, "{text}");
    let (status, text) = server.post("/api/pool/default/workflow?priority=LOW", body.clone());
    assert_eq!(status, 200, "{text}");
    let high = server.get_json("/api/workflow?priority=HIGH")["workflows"].clone();
    assert_eq!(high.as_array().unwrap().len(), 1, "{high}");
    assert_eq!(high[0]["priority"], "HIGH");

    let (_, template) = server.get("/api/workflow/pri-1/spec?use_template=true");
    assert_eq!(template, spec);
    let (_, rendered) = server.get("/api/workflow/pri-1/spec?use_template=false");
    assert!(rendered.contains("exit 0"), "{rendered}");

    let (status, text) = server.post("/api/pool/default/workflow?validation_only=true", body);
    assert_eq!(status, 200, "{text}");
    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["logs"], "Workflow validation succeeded.");
}

#[test]
fn pool_list_shows_each_pool_with_its_cpus_in_use() {
    let server = Server::start(
        "pools:\n  default:\n    backend: local\n    cpu_capacity: 1\n    node: {gpu: 2}\n",
    );
    let id = server.submit(
        "workflow:\n  name: busy\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'sleep 30']}\n  - {name: u, image: ubuntu, command: [\"true\"]}\n",
    );
    common::wait_for(std::time::Duration::from_secs(20), "a task to run", || {
        let doc = server.workflow(&id);
        doc["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["tasks"][0]["status"] == "RUNNING")
            .then_some(())
    });
    let pools = server.get_json("/api/pool_quota");
    let pool = &pools["node_sets"][0]["pools"][0];
    assert_eq!(pool["name"], "default", "{pools}");
    assert_eq!(pool["resource_usage"]["quota_limit"], 2, "{pools}");
    assert_eq!(pool["cpu"]["capacity"], 1.0, "{pools}");
    assert_eq!(pool["cpu"]["used"], 1.0, "{pools}");
    assert_eq!(pool["cpu"]["waiting_groups"], 1, "{pools}");
    let (status, _) = server.post(&format!("/api/workflow/{id}/cancel"), "");
    assert_eq!(status, 200);
}

/// The value of one series (its name and labels, as written) in a scrape.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse::<f64>()
        .unwrap()
}

#[test]
fn metrics_count_exits_and_show_what_runs() {
    let server = Server::start(local_pool());
    let id = server.submit(
        "workflow:\n  name: measured\n  tasks:\n  - {name: ok, image: ubuntu, command: ['true']}\n  - {name: retried, image: ubuntu, command: [sh, -c, 'exit 16'], exitActions: {RESCHEDULE: '16'}}\n",
    );
    let doc = server.wait_finished(&id, std::time::Duration::from_secs(60));
    assert_eq!(doc["status"], "FAILED", "{doc:#}");
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    let line = |series: &str| metric(&text, series);
    assert_eq!(
        line("osmo_attempt_exits_total{pool=\"default\",exit_code=\"0\",action=\"COMPLETE\"}"),
        1.0
    );
    // Three reschedules (the pool's retry budget), then the last exit fails the task.
    assert_eq!(
        line("osmo_attempt_exits_total{pool=\"default\",exit_code=\"16\",action=\"RESCHEDULE\"}"),
        3.0
    );
    assert_eq!(
        line("osmo_attempt_exits_total{pool=\"default\",exit_code=\"16\",action=\"FAIL\"}"),
        1.0
    );
    assert_eq!(
        line("osmo_workflows_finished_total{status=\"FAILED\"}"),
        1.0
    );
    assert!(line("osmo_scheduling_latency_seconds_count{pool=\"default\"}") >= 5.0);
    assert!(line("osmo_store_commit_seconds_count") >= 1.0);
    assert_eq!(line("osmo_queued_groups{pool=\"default\"}"), 0.0);
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn a_task_without_a_barrier_is_reported_in_two_phase_messages_and_keeps_every_phase() {
    let server = Server::start(local_pool());
    let id = server.submit(
        "workflow:\n  name: brief\n  tasks:\n  - {name: t, image: ubuntu, command: ['true']}\n",
    );
    let doc = server.wait_finished(&id, std::time::Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    // Set-up done is not sent on its own where the command starts at once:
    // the agent says INITIALIZING when it takes the launch, then RUNNING.
    let (_, text) = server.get("/metrics");
    let count = |kind: &str| {
        metric(
            &text,
            &format!("osmo_agent_messages_total{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(count("phase"), 2.0, "{text}");
    assert_eq!(count("exited"), 1.0, "{text}");
    // The server still records every phase, in order.
    let (status, events) = server.get(&format!("/api/workflow/{id}/events"));
    assert_eq!(status, 200);
    let at = |what: &str| {
        events
            .find(what)
            .unwrap_or_else(|| panic!("no \"{what}\" in\n{events}"))
    };
    assert!(at("set-up begins") < at("set up;"), "{events}");
    assert!(at("set up;") < at("command started"), "{events}");
    assert!(at("command started") < at("exited with 0"), "{events}");
}

#[test]
fn an_attempt_set_up_ahead_is_started_by_its_key_not_sent_again_in_full() {
    // One task at a time: each next one is set up while the one before runs.
    let server = Server::start("pools:\n  default:\n    backend: local\n    cpu_capacity: 1\n");
    let id = server.submit(
        "workflow:\n  name: ahead\n  resources: {default: {cpu: 1}}\n  tasks:\n  - {name: a, image: ubuntu, command: ['true']}\n  - {name: b, image: ubuntu, command: ['true']}\n  - {name: c, image: ubuntu, command: ['true']}\n  - {name: d, image: ubuntu, command: ['true']}\n",
    );
    let doc = server.wait_finished(&id, std::time::Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let (_, text) = server.get("/metrics");
    // A kind never sent has no series.
    let counted = |series: String| {
        if text.contains(&format!("{series} ")) {
            metric(&text, &series)
        } else {
            0.0
        }
    };
    let sent = |kind: &str| counted(format!("osmo_messages_to_agent_total{{kind=\"{kind}\"}}"));
    let not_prepared = counted("osmo_agent_messages_total{kind=\"not_prepared\"}".to_string());
    assert!(sent("prepare") >= 1.0, "{text}");
    assert!(sent("start") >= 1.0, "{text}");
    // Each task went once, as a launch or a start; a start the agent could
    // not serve (its set-up's wait ran out) was followed by the launch.
    assert_eq!(sent("launch") + sent("start") - not_prepared, 4.0, "{text}");
}

#[test]
fn the_task_list_shows_running_tasks_and_a_finished_workflow_on_request() {
    let server = Server::start(local_pool());
    let id = server.submit(
        "workflow:\n  name: listed\n  resources: {default: {cpu: 1, memory: 2Gi}}\n  tasks:\n  - {name: slow, image: ubuntu, command: [sh, -c, 'until [ -e {{output}}/go ]; do sleep 0.02; done']}\n  - {name: quick, image: ubuntu, command: ['true']}\n",
    );
    // `quick` may be seen running too, for a moment: wait for `slow` alone.
    let running = common::wait_for(std::time::Duration::from_secs(30), "slow to run", || {
        let list = server.get_json("/api/task?statuses=RUNNING");
        let tasks = list["tasks"].as_array().unwrap().clone();
        (tasks.len() == 1 && tasks[0]["task_name"] == "slow").then_some(tasks)
    });
    assert_eq!(running[0]["task_name"], "slow");
    assert_eq!(running[0]["workflow_id"], id.as_str());
    assert_eq!(running[0]["memory"], 2.0);
    let summary = server.get_json("/api/task?statuses=RUNNING&summary=true");
    assert_eq!(summary["summaries"][0]["cpu"], 1.0, "{summary}");
    std::fs::write(server.output_dir(&id, "slow", 0).join("go"), "").unwrap();
    server.wait_finished(&id, std::time::Duration::from_secs(30));
    assert!(
        server.get_json("/api/task").as_object().unwrap()["tasks"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let done = server.get_json(&format!("/api/task?workflow_id={id}&statuses=COMPLETED"));
    assert_eq!(done["tasks"].as_array().unwrap().len(), 2, "{done}");
}

#[test]
fn logs_follow_a_running_workflow_until_it_ends() {
    use std::io::BufRead;
    let server = Server::start(local_pool());
    let id = server.submit(
        "workflow:\n  name: followed\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'echo first; until [ -e {{output}}/go ]; do sleep 0.02; done; echo second']}\n",
    );
    let mut child = std::process::Command::new(common::OSMO)
        .args(["workflow", "logs", &id, "--follow", "--url", &server.url])
        .env_remove("OSMO_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The first line arrives while the task still runs.
    let first = lines.next().unwrap().unwrap();
    assert!(first.ends_with("[t retry-0][stdout] first"), "{first}");
    let doc = server.workflow(&id);
    assert_eq!(doc["status"], "RUNNING", "{doc:#}");
    std::fs::write(server.output_dir(&id, "t", 0).join("go"), "").unwrap();
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(
        rest.iter().any(|l| l.ends_with("[stdout] second")),
        "{rest:?}"
    );
    // It ended by itself, with the workflow.
    assert!(child.wait().unwrap().success());
    assert_eq!(server.workflow(&id)["status"], "COMPLETED");
}

/// A workflow the query shows finished is finished for `cancel`, `restart`
/// and the lists too, before its end is committed to the store (the service
/// commits lazily): cancel says it already finished, restart runs it again,
/// the workflow list shows it with its final status, the running tasks'
/// list no longer.
#[test]
fn a_workflow_shown_finished_is_so_for_cancel_restart_and_list_before_it_is_stored() {
    let server =
        Server::start("pools:\n  default:\n    backend: local\n    max_retry_per_task: 0\n");
    let id = server.submit(
        "workflow:\n  name: broken\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'sleep 1; exit 3']}\n",
    );
    let (lock, doc) = server.finished_but_not_stored(&id);
    assert_eq!(doc["status"], "FAILED", "{doc:#}");

    // The running tasks' list no longer shows it (it is answered at once).
    let tasks = server.get_json("/api/task");
    assert!(tasks["tasks"].as_array().unwrap().is_empty(), "{tasks:#}");
    // Its own tasks are shown as they ended, not as last stored.
    let own = server.get_json(&format!("/api/task?workflow_id={id}"));
    assert_eq!(own["tasks"][0]["status"], "FAILED", "{own:#}");
    assert_eq!(own["tasks"][0]["exit_code"], 3, "{own:#}");

    let client = reqwest::blocking::Client::new();
    let (cancel_status, cancel_text) =
        in_background(client.post(format!("{}/api/workflow/{id}/cancel", server.url)))
            .recv_timeout(Duration::from_secs(30))
            .unwrap();
    let listed = in_background(client.get(format!("{}/api/workflow?statuses=FAILED", server.url)));
    let restarted = in_background(client.post(format!("{}/api/workflow/{id}/restart", server.url)));
    // The restart waits for the end to be stored (a bounded wait for an
    // early answer, which must not be a refusal).
    let early = restarted.recv_timeout(Duration::from_millis(500));
    lock.release();
    let (status, text) = early
        .or_else(|_| restarted.recv_timeout(Duration::from_secs(30)))
        .unwrap();

    assert_eq!(cancel_status, 409, "{cancel_text}");
    assert!(
        cancel_text.contains("already finished with status FAILED"),
        "{cancel_text}"
    );
    let (list_status, list) = listed.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(list_status, 200, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&id.as_str()), "{list:#}");
    assert_eq!(status, 200, "{text}");
    let again: serde_json::Value = serde_json::from_str(&text).unwrap();
    let again = again["name"].as_str().unwrap();
    assert_ne!(again, id);
    let doc = server.wait_finished(again, Duration::from_secs(60));
    assert_eq!(doc["status"], "FAILED", "{doc:#}");
}
