//! The server's life: a restart mid-workflow, the memory limit, nothing left behind.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_server_restart_mid_workflow_kills_no_task_and_the_workflow_completes() {
    let mut server = Server::start(local_pool());
    // The task waits for a file the test creates in its output directory after the restart.
    let id = server.submit(
        r#"
workflow:
  name: survivor
  tasks:
  - name: long
    image: ubuntu
    command: [sh, -c, 'while [ ! -e {{output}}/go ]; do sleep 0.02; done; echo finished']
  - name: after
    image: ubuntu
    command: [sh, -c, 'cat {{input:long}}/go']
    inputs: [{task: long}]
"#,
    );
    wait_for(Duration::from_secs(20), "the task to run", || {
        (task(&server.workflow(&id), "long", 0)["status"] == "RUNNING").then_some(())
    });
    let agent = server.agent_pid().expect("the agent wrote its pid");
    server.kill();
    assert!(alive(agent), "the agent outlives its server");
    server.spawn();
    assert_eq!(
        server.agent_pid(),
        Some(agent),
        "the restarted server reuses the running agent"
    );
    let output = server.output_dir(&id, "long", 0);
    std::fs::write(output.join("go"), "ok\n").unwrap();
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    let groups = doc["groups"].as_array().unwrap();
    let attempts: usize = groups
        .iter()
        .map(|g| g["tasks"].as_array().unwrap().len())
        .sum();
    assert_eq!(attempts, 2, "nothing was launched twice: {doc:#}");
}

#[test]
fn a_task_over_its_memory_is_evicted_with_3004() {
    let server = Server::start(local_pool());
    let id = server.submit(
        r#"
workflow:
  name: hungry
  resources:
    default: {memory: 64Mi}
  tasks:
  - name: eater
    image: ubuntu
    command: [python3, -c, 'b = bytearray(512 * 1024 * 1024); print(len(b))']
"#,
    );
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    let eater = task(&doc, "eater", 0);
    assert_eq!(eater["status"], "FAILED_EVICTED", "{doc:#}");
    assert_eq!(eater["exit_code"], 3004);
    assert_eq!(doc["status"], "FAILED_EVICTED");
}

#[test]
fn the_agent_is_gone_soon_after_the_server_stops() {
    let mut server = Server::start(local_pool());
    let id = server.submit(
        "workflow:\n  name: quick\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n",
    );
    server.wait_finished(&id, Duration::from_secs(30));
    let agent = server.agent_pid().expect("the agent wrote its pid");
    server.terminate();
    wait_for(Duration::from_secs(5), "the agent to exit", || {
        (!alive(agent)).then_some(())
    });
}

#[test]
fn cancel_stops_the_running_task() {
    let server = Server::start(local_pool());
    let id = server.submit(
        "workflow:\n  name: stopme\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'echo $$ > {{output}}/pid; sleep 600']}\n",
    );
    wait_for(Duration::from_secs(20), "the task to run", || {
        (task(&server.workflow(&id), "t", 0)["status"] == "RUNNING").then_some(())
    });
    let (status, body) = server.post(&format!("/api/workflow/{id}/cancel?message=enough"), "");
    assert_eq!(status, 200, "{body}");
    let doc = server.wait_finished(&id, Duration::from_secs(10));
    assert_eq!(doc["status"], "FAILED_CANCELED");
    assert_eq!(doc["cancel_message"], "enough");
    let (status, _) = server.post(&format!("/api/workflow/{id}/cancel"), "");
    assert_eq!(status, 409, "a finished workflow cannot be canceled again");
}

#[test]
fn the_scheduler_never_runs_more_than_the_pool_cpus() {
    // One CPU: the two independent tasks (no cpu request, so one CPU each) must not overlap.
    let server = Server::start("pools:\n  default:\n    backend: local\n    cpu_capacity: 1\n");
    let id = server.submit(
        r#"
workflow:
  name: one-at-a-time
  tasks:
  - {name: a, image: ubuntu, command: [sh, -c, 'cut -d" " -f1 /proc/uptime > {{output}}/start; sleep 0.3; cut -d" " -f1 /proc/uptime > {{output}}/end']}
  - {name: b, image: ubuntu, command: [sh, -c, 'cut -d" " -f1 /proc/uptime > {{output}}/start; sleep 0.3; cut -d" " -f1 /proc/uptime > {{output}}/end']}
  - name: check
    image: ubuntu
    inputs: [{task: a}, {task: b}]
    command: [sh, -c, 'awk -v as="$(cat {{input:a}}/start)" -v ae="$(cat {{input:a}}/end)" -v bs="$(cat {{input:b}}/start)" -v be="$(cat {{input:b}}/end)" "BEGIN { exit !(ae <= bs || be <= as) }"']
"#,
    );
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(
        task(&doc, "check", 0)["status"],
        "COMPLETED",
        "a and b overlapped: {doc:#}"
    );
}

#[test]
fn a_task_can_run_the_osmo_cli_against_its_own_service() {
    let server = Server::start(local_pool());
    let id = server.submit(
        "workflow:\n  name: selfie\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'osmo workflow query $OSMO_WORKFLOW_ID --format-type json']}\n",
    );
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(task(&doc, "t", 0)["status"], "COMPLETED", "{doc:#}");
    let (_, logs) = server.get(&format!("/api/workflow/{id}/logs"));
    assert!(
        logs.contains(&format!("\"name\": \"{id}\""))
            || logs.contains(&format!("\"name\":\"{id}\"")),
        "{logs}"
    );
}

/// A task that waits forever in its first attempt and succeeds in the next.
const STUCK_FIRST_ATTEMPT: &str = r#"
workflow:
  name: lost
  tasks:
  - name: t
    image: ubuntu
    command: [sh, -c, 'echo "attempt $OSMO_RETRY_ID"; [ "$OSMO_RETRY_ID" != 0 ] || exec sleep 600']
    exitActions: {RESCHEDULE: "2002,3001"}
"#;

#[test]
fn a_killed_sandbox_init_ends_the_attempt_2002_and_its_exit_action_applies() {
    let server = Server::start(local_pool());
    let id = server.submit(STUCK_FIRST_ATTEMPT);
    let agent = wait_for(Duration::from_secs(20), "the agent", || server.agent_pid());
    wait_for(Duration::from_secs(20), "the task to run", || {
        (task(&server.workflow(&id), "t", 0)["status"] == "RUNNING").then_some(())
    });
    let init = wait_for(Duration::from_secs(10), "the sandbox's init", || {
        children_named(agent, "osmo-init").first().copied()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let first = task(&doc, "t", 0);
    assert_eq!(first["status"], "RESCHEDULED", "{doc:#}");
    assert_eq!(first["exit_code"], 2002, "{doc:#}");
    assert_eq!(task(&doc, "t", 1)["status"], "COMPLETED", "{doc:#}");
}

#[test]
fn a_killed_node_agent_is_replaced_and_its_attempts_end_3001() {
    let server = Server::start(local_pool());
    let id = server.submit(STUCK_FIRST_ATTEMPT);
    wait_for(Duration::from_secs(20), "the task to run", || {
        (task(&server.workflow(&id), "t", 0)["status"] == "RUNNING").then_some(())
    });
    let agent = server.agent_pid().expect("the agent wrote its pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    let first = task(&doc, "t", 0);
    assert_eq!(first["status"], "RESCHEDULED", "{doc:#}");
    assert_eq!(first["exit_code"], 3001, "{doc:#}");
    assert_eq!(task(&doc, "t", 1)["status"], "COMPLETED", "{doc:#}");
    let successor = server.agent_pid().expect("the new agent wrote its pid");
    assert_ne!(successor, agent, "a new agent took over");
    assert!(alive(successor));
    assert!(
        children_named(agent, "osmo-init").is_empty(),
        "the lost attempt's sandbox is gone with its agent"
    );
}

/// With one CPU, the next queued task's sandbox is set up while the first
/// runs. One whose set-up fails there (its preflight) is not reported: the
/// failure is the launch's, once, with its log lines once.
#[test]
fn a_task_set_up_ahead_that_fails_its_preflight_is_reported_once_at_its_launch() {
    let server = Server::start(
        "pools:\n  default:\n    backend: local\n    cpu_capacity: 1\n    max_retry_per_task: 1\n    default_exit_actions: {RESCHEDULE: '1001'}\n    preflight:\n    - {name: check, command: [sh, -c, 'echo checked; exit 1']}\n",
    );
    let id = server.submit(
        "workflow:\n  name: ahead\n  tasks:\n  - {name: a, image: ubuntu, command: ['true']}\n  - {name: b, image: ubuntu, command: ['true']}\n  - {name: c, image: ubuntu, command: ['true']}\n",
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    for name in ["a", "b", "c"] {
        assert_eq!(task(&doc, name, 0)["exit_code"], 1001, "{doc:#}");
        assert_eq!(task(&doc, name, 0)["status"], "RESCHEDULED", "{doc:#}");
        assert_eq!(task(&doc, name, 1)["status"], "FAILED", "{doc:#}");
        for retry in 0..2 {
            let (_, logs) = server.get(&format!(
                "/api/workflow/{id}/logs?task_name={name}&retry_id={retry}"
            ));
            assert_eq!(
                logs.matches("checked").count(),
                1,
                "{name} retry {retry}: {logs}"
            );
        }
    }
    let attempts: usize = doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["tasks"].as_array().unwrap().len())
        .sum();
    assert_eq!(attempts, 6, "two attempts of each, no more: {doc:#}");
}

/// What a task set up ahead logged before its launch (its preflight's
/// output) is kept and told at the launch, once.
#[test]
fn a_task_set_up_ahead_keeps_its_preflight_log_for_its_launch() {
    let server = Server::start(
        "pools:\n  default:\n    backend: local\n    cpu_capacity: 1\n    preflight:\n    - {name: check, command: [sh, -c, 'echo checked']}\n",
    );
    let id = server.submit(
        "workflow:\n  name: ahead\n  tasks:\n  - {name: a, image: ubuntu, command: [sleep, '0.2']}\n  - {name: b, image: ubuntu, command: ['true']}\n",
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    for name in ["a", "b"] {
        let (_, logs) = server.get(&format!("/api/workflow/{id}/logs?task_name={name}"));
        assert_eq!(logs.matches("checked").count(), 1, "{name}: {logs}");
    }
}

/// A sandbox set up ahead does not sit idle behind a long task: it goes
/// after a while, and its launch sets it up anew (its preflight runs again;
/// only that run's output is the task's log).
#[test]
fn a_sandbox_set_up_ahead_goes_when_its_launch_is_long_in_coming() {
    let server = Server::start(
        "pools:\n  default:\n    backend: local\n    cpu_capacity: 1\n    preflight:\n    - {name: check, command: [sh, -c, 'echo checked']}\n",
    );
    let id = server.submit(
        "workflow:\n  name: ahead\n  tasks:\n  - {name: a, image: ubuntu, command: [sleep, '8']}\n  - {name: b, image: ubuntu, command: ['true']}\n",
    );
    let agent = wait_for(Duration::from_secs(10), "the agent", || server.agent_pid());
    let inits = || children_named(agent, "osmo-init").len();
    wait_for(Duration::from_secs(10), "a's and b's sandboxes", || {
        (inits() == 2).then_some(())
    });
    wait_for(Duration::from_secs(6), "b's sandbox to go", || {
        (inits() == 1).then_some(())
    });
    assert_eq!(
        server.workflow(&id)["status"],
        "RUNNING",
        "a still runs: b's sandbox went by itself"
    );
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let (_, logs) = server.get(&format!("/api/workflow/{id}/logs?task_name=b"));
    assert_eq!(logs.matches("checked").count(), 1, "{logs}");
}
