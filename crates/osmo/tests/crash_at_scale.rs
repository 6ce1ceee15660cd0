//! Crash safety at scale (issue: a large workflow survives its server being
//! SIGKILLed): one workflow of many tasks, the server killed three times
//! while it runs and started again on the same data directory. The workflow
//! completes, no task runs twice, and no attempt or log line is lost.
//! `OSMO_CRASH_TASKS` sets the size (300 here, as CI's machine allows; the
//! benchmark runs 10,000).

mod common;

use std::time::Duration;

use common::*;

fn finished_tasks(server: &Server, id: &str) -> usize {
    let doc = server.workflow(id);
    doc["groups"]
        .as_array()
        .map(|groups| groups.iter().filter(|g| g["status"] == "COMPLETED").count())
        .unwrap_or(0)
}

#[test]
fn three_server_kills_during_a_large_workflow_lose_nothing_and_run_nothing_twice() {
    let n: usize = std::env::var("OSMO_CRASH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut server = Server::start(local_pool());
    // Each task appends a line to its attempt's own output: two runs of one
    // attempt would leave two lines there. It also logs one line.
    let id = server.submit(&format!(
        r#"
workflow:
  name: crashy
  tasks:
  {{% for i in range({n}) %}}
  - name: t{{{{ i }}}}
    image: ubuntu
    command: [sh, -c, 'echo ran >> {{{{output}}}}/runs; echo "hello from $OSMO_TASK_NAME"']
  {{% endfor %}}
"#
    ));
    for kill in 1..=3 {
        let target = n * kill / 4;
        wait_for(Duration::from_secs(120), "tasks to complete", || {
            (finished_tasks(&server, &id) >= target).then_some(())
        });
        server.kill();
        server.spawn();
    }
    let doc = server.wait_finished(&id, Duration::from_secs(300));
    assert_eq!(doc["status"], "COMPLETED", "{}", server.log());

    let verbose = server.get_json(&format!("/api/workflow/{id}?verbose=true"));
    let mut attempts = 0;
    for group in verbose["groups"].as_array().unwrap() {
        for t in group["tasks"].as_array().unwrap() {
            attempts += 1;
            assert_eq!(t["status"], "COMPLETED", "{t}");
            assert_eq!(t["retry_id"], 0, "no attempt was lost and redone: {t}");
            assert_eq!(t["runs"].as_array().map(Vec::len), Some(1), "{t}");
        }
    }
    assert_eq!(attempts, n, "one attempt per task");

    for i in 0..n {
        let output = server.output_dir(&id, &format!("t{i}"), 0);
        let runs = std::fs::read_to_string(output.join("runs")).unwrap_or_default();
        assert_eq!(runs.lines().count(), 1, "task t{i} ran {runs:?}");
    }

    let (status, logs) = server.get(&format!("/api/workflow/{id}/logs"));
    assert_eq!(status, 200);
    for i in 0..n {
        let line = format!("hello from t{i}");
        let count = logs.lines().filter(|l| l.ends_with(&line)).count();
        assert_eq!(count, 1, "log line of t{i} seen {count} times");
    }
}
