//! The CLI's client commands through the real binary, against a fake
//! service (canned answers, recorded requests) and an unreachable one.

mod cli_support;

use cli_support::*;
use serde_json::json;

const NOWHERE: &str = "http://127.0.0.1:1";

fn workflow_doc(status: &str) -> serde_json::Value {
    json!({
        "name": "exit-actions-example-1", "status": status, "pool": "default", "priority": "NORMAL",
        "submitted_by": "tester", "submit_time": "2026-03-01T09:59:59.000Z",
        "start_time": "2026-03-01T10:00:00.500Z", "end_time": "2026-03-01T10:01:11.000Z",
        "duration": 70.5, "exec_timeout": null, "queue_timeout": null,
        "canceled_by": null, "cancel_message": null,
        "groups": [{
            "name": "example-group", "status": status, "failure_message": null,
            "remaining_upstream_groups": [], "downstream_groups": [],
            "tasks": [
                {"name": "example", "retry_id": 0, "status": "RESCHEDULED", "exit_code": 16, "lead": true,
                 "failure_message": "exit code 16 matched RESCHEDULE 11-20 (task); attempt 2 of 4 scheduled",
                 "exit_codes": [{"code": 16, "source": "user"}], "exit_rule": null, "node_name": "local",
                 "scheduling_time": "2026-03-01T10:00:00.000Z", "start_time": "2026-03-01T10:00:00.500Z",
                 "end_time": "2026-03-01T10:00:01.000Z"},
                {"name": "example", "retry_id": 1, "status": status, "exit_code": 0, "lead": true,
                 "failure_message": null, "exit_codes": [], "exit_rule": null, "node_name": "local",
                 "scheduling_time": "2026-03-01T10:00:01.000Z", "start_time": "2026-03-01T10:00:02.000Z",
                 "end_time": "2026-03-01T10:01:11.000Z"}
            ]
        }]
    })
}

#[test]
fn an_unreachable_service_is_a_clear_error() {
    let commands: &[&[&str]] = &[
        &["workflow", "submit", "seed-complete.yaml"],
        &["workflow", "query", "wf-1"],
        &["workflow", "list"],
        &["workflow", "cancel", "wf-1"],
        &["workflow", "logs", "wf-1"],
        &["workflow", "spec", "wf-1"],
    ];
    for command in commands {
        let out = osmo(&[command, &["--url", NOWHERE][..]].concat());
        assert_eq!(out.code, 1, "{command:?}: {out:#?}");
        assert!(
            out.stderr
                .contains("cannot reach the osmo service at http://127.0.0.1:1")
                && out.stderr.contains("osmo server"),
            "{command:?}: {out:#?}"
        );
        assert!(out.took.as_secs() < 10, "{command:?} took {:?}", out.took);
    }
    // OSMO_URL is read too.
    let out = osmo_with(&["workflow", "list"], &[("OSMO_URL", NOWHERE)]);
    assert!(out.stderr.contains("at http://127.0.0.1:1"), "{out:#?}");
    let out = osmo(&["workflow", "list", "--url", "not a url"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("is not a URL"), "{out:#?}");
}

#[test]
fn submit_sends_the_file_and_values() {
    let reply = json!({"name": "exit-actions-example-1", "overview": "/api/workflow/exit-actions-example-1", "warnings": []});
    let service = FakeService::start(vec![json_reply(200, reply)]);
    let out = osmo(&[
        "workflow",
        "submit",
        "seed-complete.yaml",
        "--url",
        &service.url,
        "--set",
        "a=1",
        "--set-string",
        "b=007",
        "--priority",
        "high",
        "--pool",
        "gpu",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        out.stdout,
        format!(
            "Workflow submit successful.\nWorkflow ID - exit-actions-example-1\n\
             Workflow Overview - {}/api/workflow/exit-actions-example-1\n",
            service.url
        )
    );
    let requests = service.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/api/pool/gpu/workflow?priority=HIGH");
    assert_eq!(r.header("x-osmo-user"), Some("tester"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body["file"],
        std::fs::read_to_string(data().join("seed-complete.yaml")).unwrap()
    );
    assert_eq!(body["set_variables"], json!(["a=1"]));
    assert_eq!(body["set_string_variables"], json!(["b=007"]));
    assert_eq!(body["file_name"], "seed-complete.yaml");
}

#[test]
fn submit_json_prints_the_answer() {
    let reply = json!({"name": "wf-3", "overview": "/api/workflow/wf-3", "warnings": []});
    let service = FakeService::start(vec![json_reply(200, reply.clone())]);
    let out = osmo(&[
        "workflow",
        "submit",
        "seed-complete.yaml",
        "--pool",
        "default",
        "--format-type",
        "json",
        "--dry-run",
        "--url",
        &service.url,
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.json(), reply);
    assert_eq!(
        service.requests()[0].target,
        "/api/pool/default/workflow?dry_run=true"
    );
}

#[test]
fn a_refused_submit_shows_every_diagnostic() {
    let error = json!({
        "error": "the workflow spec is not valid:\nwf.yaml:7:5: unknown field `exitAction` at line 7, column 5\n1 error",
        "diagnostics": ["wf.yaml:7:5: unknown field `exitAction` at line 7, column 5", "wf.yaml:9:1: another"],
    });
    let service = FakeService::start(vec![json_reply(400, error)]);
    let out = osmo(&[
        "workflow",
        "submit",
        "seed-complete.yaml",
        "--pool",
        "default",
        "--url",
        &service.url,
        "-t",
        "json",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(
        out.stderr
            .starts_with("error: the workflow spec is not valid:\nwf.yaml:7:5:"),
        "{out:#?}"
    );
    assert_eq!(out.stderr.matches("unknown field").count(), 1, "{out:#?}");
    assert!(out.stderr.contains("wf.yaml:9:1: another"), "{out:#?}");
}

#[test]
fn server_errors_and_non_json_answers() {
    let service = FakeService::start(vec![
        json_reply(500, json!({"error": "server error: disk full"})),
        Reply {
            status: 502,
            content_type: "text/html",
            body: "<html>bad gateway</html>".into(),
        },
        text_reply("not json"),
    ]);
    let out = osmo(&["workflow", "query", "wf-1", "--url", &service.url]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("the service failed (HTTP 500): server error: disk full"),
        "{out:#?}"
    );
    let out = osmo(&["workflow", "query", "wf-1", "--url", &service.url]);
    assert!(
        out.stderr.contains("HTTP 502") && out.stderr.contains("bad gateway"),
        "{out:#?}"
    );
    let out = osmo(&["workflow", "query", "wf-1", "--url", &service.url]);
    assert!(out.stderr.contains("not JSON"), "{out:#?}");
}

#[test]
fn query_text_and_json() {
    let doc = workflow_doc("COMPLETED");
    let service = FakeService::start(vec![
        json_reply(200, doc.clone()),
        json_reply(200, doc.clone()),
    ]);
    let out = osmo(&[
        "workflow",
        "query",
        "exit-actions-example-1",
        "-v",
        "--url",
        &service.url,
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    insta::assert_snapshot!("query_verbose", out.stdout);
    let out = osmo(&[
        "workflow",
        "query",
        "exit-actions-example-1",
        "--url",
        &service.url,
        "--format-type",
        "json",
    ]);
    assert_eq!(out.json(), doc);
    let targets: Vec<String> = service.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/api/workflow/exit-actions-example-1?verbose=true",
            "/api/workflow/exit-actions-example-1?verbose=false"
        ]
    );
}

#[test]
fn list_filters() {
    let list = json!({"workflows": [
        {"name": "wf-2", "status": "RUNNING", "pool": "default", "priority": "NORMAL", "submitted_by": "a",
         "submit_time": "2026-03-01T10:00:00.000Z", "end_time": null},
        {"name": "wf-1", "status": "FAILED", "pool": "gpu", "priority": "LOW", "submitted_by": "b",
         "submit_time": "2026-03-01T09:00:00.000Z", "end_time": "2026-03-01T09:00:05.000Z"}
    ]});
    let service = FakeService::start(vec![
        json_reply(200, list),
        json_reply(200, json!({"workflows": []})),
    ]);
    let out = osmo(&[
        "workflow",
        "list",
        "-n",
        "wf",
        "-s",
        "running",
        "--status",
        "FAILED",
        "-p",
        "gpu",
        "-c",
        "5",
        "-f",
        "2",
        "--url",
        &service.url,
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    insta::assert_snapshot!("list", out.stdout);
    let out = osmo(&["workflow", "list", "--url", &service.url]);
    assert_eq!(out.stdout, "No workflows found.\n");
    let requests = service.requests();
    assert_eq!(
        requests[0].target,
        "/api/workflow?name=wf&statuses=RUNNING&statuses=FAILED&pools=gpu&limit=5&offset=2"
    );
    assert_eq!(requests[1].target, "/api/workflow?limit=20");
}

#[test]
fn cancel_tries_every_id() {
    let service = FakeService::start(vec![
        json_reply(200, json!({"name": "wf-1", "status": "FAILED_CANCELED"})),
        json_reply(
            404,
            json!({"error": "workflow wf-9 is not known; `osmo workflow list` shows the workflows"}),
        ),
    ]);
    let out = osmo(&[
        "workflow",
        "cancel",
        "wf-1",
        "wf-9",
        "-m",
        "wrong data",
        "--url",
        &service.url,
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(
        out.stdout,
        "Cancel requested for workflow wf-1 (status: FAILED_CANCELED).\n"
    );
    assert!(
        out.stderr
            .contains("error: cannot cancel wf-9: workflow wf-9 is not known"),
        "{out:#?}"
    );
    let targets: Vec<String> = service
        .requests()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(
        targets,
        [
            "POST /api/workflow/wf-1/cancel?message=wrong+data",
            "POST /api/workflow/wf-9/cancel?message=wrong+data"
        ]
    );
}

#[test]
fn logs_and_spec_are_printed_as_they_are() {
    let lines = "2026/03/01 10:00:00 [example retry-0][stdout] hello\n2026/03/01 10:00:01 [example retry-1][stdout] bye\n";
    let service = FakeService::start(vec![
        text_reply(lines),
        text_reply(lines),
        text_reply("workflow:\n  name: x\n"),
    ]);
    let out = osmo(&[
        "workflow",
        "logs",
        "wf-1",
        "-t",
        "example",
        "-r",
        "1",
        "-n",
        "5",
        "--url",
        &service.url,
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.stdout, lines);
    let out = osmo(&[
        "workflow",
        "logs",
        "wf-1",
        "--format-type",
        "json",
        "--url",
        &service.url,
    ]);
    assert_eq!(out.json()["lines"].as_array().unwrap().len(), 2);
    let out = osmo(&[
        "workflow",
        "spec",
        "wf-1",
        "--rendered",
        "--url",
        &service.url,
    ]);
    assert_eq!(out.stdout, "workflow:\n  name: x\n");
    let targets: Vec<String> = service.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/api/workflow/wf-1/logs?task_name=example&retry_id=1&last_n_lines=5",
            "/api/workflow/wf-1/logs",
            "/api/workflow/wf-1/spec?rendered=true"
        ]
    );
}
