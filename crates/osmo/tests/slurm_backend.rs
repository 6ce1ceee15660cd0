//! The Slurm backend against a real cluster: run under `scripts/with-slurm.sh`
//! (it sets SLURM_CONF); without one every test here says it was skipped.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Server, task, wait_for};

fn slurm_pool() -> &'static str {
    "pools:\n  default:\n    backend: slurm\n    max_retry_per_task: 2\n"
}

/// False (after a loud note) when no Slurm cluster is configured.
fn have_slurm(test: &str) -> bool {
    if std::env::var_os("SLURM_CONF").is_none() {
        eprintln!("{test}: skipped: no Slurm cluster (run under scripts/with-slurm.sh)");
        return false;
    }
    true
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Slurm job ids (and states) of the workflow's jobs that Slurm still lists as live.
fn live_jobs(workflow: &str) -> Vec<(String, String)> {
    run("squeue", &["-h", "--me", "-o", "%i|%T|%j"])
        .lines()
        .filter_map(|l| {
            let mut parts = l.trim().splitn(3, '|');
            let (id, state, name) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = name.starts_with(&format!("osmo.{workflow}."))
                || name.starts_with(&format!("osmo-gang.{workflow}."));
            ours.then(|| (id.to_string(), state.to_string()))
        })
        .collect()
}

fn wait_running(server: &Server, id: &str, name: &str) {
    wait_for(Duration::from_secs(60), &format!("{name} to run"), || {
        let doc = server.workflow(id);
        let t = task(&doc, name, 0);
        (t["status"] == "RUNNING").then_some(())
    });
}

fn running_job(workflow: &str) -> String {
    wait_for(
        Duration::from_secs(10),
        "the Slurm job to show RUNNING",
        || {
            live_jobs(workflow)
                .into_iter()
                .find(|(_, state)| state == "RUNNING")
                .map(|(id, _)| id)
        },
    )
}

const SLEEPS_ON_FIRST_ATTEMPT: &str = r#"
    command: [sh, -c, 'if [ "$OSMO_RETRY_ID" = 0 ]; then sleep 120; fi; echo second attempt']"#;

#[test]
fn a_requeued_job_is_preempted_and_rescheduled_by_exit_actions() {
    if !have_slurm("a_requeued_job_is_preempted_and_rescheduled_by_exit_actions") {
        return;
    }
    let server = Server::start(slurm_pool());
    let spec = format!(
        "workflow:\n  name: slurm-requeue\n  tasks:\n  - name: t\n    image: ubuntu{SLEEPS_ON_FIRST_ATTEMPT}\n    exitActions: {{RESCHEDULE: \"3006\"}}\n"
    );
    let id = server.submit(&spec);
    wait_running(&server, &id, "t");
    let job = running_job(&id);
    run("scontrol", &["requeue", &job]);

    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    let first = task(&doc, "t", 0);
    assert_eq!(first["status"], "RESCHEDULED", "{doc:#}");
    assert_eq!(first["exit_code"], 3006, "{doc:#}");
    assert_eq!(task(&doc, "t", 1)["status"], "COMPLETED", "{doc:#}");
    // The requeued job was cancelled (the engine's new attempt is a new job), and nothing lingers.
    wait_for(
        Duration::from_secs(15),
        "no job of the workflow left in Slurm",
        || live_jobs(&id).is_empty().then_some(()),
    );
}

#[test]
fn a_requeued_job_without_exit_actions_fails_preempted() {
    if !have_slurm("a_requeued_job_without_exit_actions_fails_preempted") {
        return;
    }
    let server = Server::start(slurm_pool());
    let spec = format!(
        "workflow:\n  name: slurm-preempt\n  tasks:\n  - name: t\n    image: ubuntu{SLEEPS_ON_FIRST_ATTEMPT}\n"
    );
    let id = server.submit(&spec);
    wait_running(&server, &id, "t");
    let job = running_job(&id);
    run("scontrol", &["requeue", &job]);

    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "FAILED_PREEMPTED", "{doc:#}");
    let t = task(&doc, "t", 0);
    assert_eq!(t["status"], "FAILED_PREEMPTED", "{doc:#}");
    assert_eq!(t["exit_code"], 3006, "{doc:#}");
    wait_for(
        Duration::from_secs(15),
        "no job of the workflow left in Slurm",
        || live_jobs(&id).is_empty().then_some(()),
    );
}

#[test]
fn cancel_scancels_the_running_jobs() {
    if !have_slurm("cancel_scancels_the_running_jobs") {
        return;
    }
    let server = Server::start(slurm_pool());
    let spec = "workflow:\n  name: slurm-cancel\n  groups:\n  - name: g\n    tasks:\n    - {name: a, image: ubuntu, lead: true, command: [sleep, '300']}\n    - {name: b, image: ubuntu, command: [sleep, '300']}\n";
    let id = server.submit(spec);
    wait_running(&server, &id, "a");
    wait_running(&server, &id, "b");
    assert_eq!(live_jobs(&id).len(), 1, "one Slurm job for the group");
    let (status, body) = server.post(&format!("/api/workflow/{id}/cancel"), "{}");
    assert_eq!(status, 200, "{body}");
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "FAILED_CANCELED", "{doc:#}");
    wait_for(
        Duration::from_secs(15),
        "scancel to clear the workflow's jobs",
        || live_jobs(&id).is_empty().then_some(()),
    );
}

#[test]
fn a_job_that_never_starts_fails_with_queue_timeout() {
    if !have_slurm("a_job_that_never_starts_fails_with_queue_timeout") {
        return;
    }
    // Held jobs stay PENDING: the engine's queue clock runs out and scancels it.
    let server = Server::start(
        "pools:\n  default:\n    backend: slurm\n    options: {sbatch_args: [--hold]}\n",
    );
    let spec = "workflow:\n  name: slurm-queue\n  timeout: {queue_timeout: 3s}\n  tasks:\n  - {name: t, image: ubuntu, command: ['true']}\n";
    let id = server.submit(spec);
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "FAILED_QUEUE_TIMEOUT", "{doc:#}");
    assert_eq!(
        task(&doc, "t", 0)["status"],
        "FAILED_QUEUE_TIMEOUT",
        "{doc:#}"
    );
    wait_for(
        Duration::from_secs(15),
        "the held job to be cancelled",
        || live_jobs(&id).is_empty().then_some(()),
    );
}

#[test]
fn a_task_over_its_memory_is_evicted() {
    if !have_slurm("a_task_over_its_memory_is_evicted") {
        return;
    }
    let server = Server::start(slurm_pool());
    let spec = "workflow:\n  name: slurm-oom\n  resources: {default: {cpu: 1, memory: 64Mi}}\n  tasks:\n  - {name: t, image: ubuntu, command: [python3, -c, 'b = bytearray(400 << 20); print(len(b))']}\n";
    let id = server.submit(spec);
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    let t = task(&doc, "t", 0);
    assert_eq!(t["exit_code"], 3004, "{doc:#}");
    assert_eq!(doc["status"], "FAILED_EVICTED", "{doc:#}");
}

#[test]
fn logs_come_back_from_the_job() {
    if !have_slurm("logs_come_back_from_the_job") {
        return;
    }
    let server = Server::start(slurm_pool());
    let spec = "workflow:\n  name: slurm-logs\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'echo hello from slurm; echo oops >&2']}\n";
    let id = server.submit(spec);
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let logs = wait_for(Duration::from_secs(10), "the logs", || {
        let (status, body) = server.get(&format!("/api/workflow/{id}/logs"));
        (status == 200 && body.contains("hello from slurm") && body.contains("oops"))
            .then_some(body)
    });
    assert!(logs.contains("oops"), "{logs}");
}

#[test]
fn a_server_restart_loses_no_running_slurm_job() {
    if !have_slurm("a_server_restart_loses_no_running_slurm_job") {
        return;
    }
    let mut server = Server::start(slurm_pool());
    let spec = "workflow:\n  name: slurm-restart-running\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'sleep 4; exit 16'], exitActions: {COMPLETE: '16'}}\n";
    let id = server.submit(spec);
    wait_running(&server, &id, "t");
    server.kill();
    server.spawn();
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    let t = task(&doc, "t", 0);
    assert_eq!(t["exit_code"], 16, "{doc:#}");
    assert_eq!(
        doc["groups"][0]["tasks"].as_array().unwrap().len(),
        1,
        "{doc:#}"
    );
}

#[test]
fn a_server_restart_adopts_a_queued_slurm_job() {
    if !have_slurm("a_server_restart_adopts_a_queued_slurm_job") {
        return;
    }
    let config = "pools:\n  default:\n    backend: slurm\n    options: {sbatch_args: [--hold]}\n";
    let mut server = Server::start(config);
    let spec = "workflow:\n  name: slurm-restart-queued\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'echo adopted']}\n";
    let id = server.submit(spec);
    let job = wait_for(Duration::from_secs(10), "the held job", || {
        live_jobs(&id).into_iter().next().map(|(id, _)| id)
    });
    server.kill();
    server.spawn();
    // The new server takes the job over while it is still held; then Slurm may start it.
    wait_for(
        Duration::from_secs(20),
        "the new server to find the job",
        || {
            server
                .log()
                .contains("found 1 Slurm job(s) of an earlier server")
                .then_some(())
        },
    );
    run("scontrol", &["release", &job]);
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    wait_for(Duration::from_secs(15), "the job to leave Slurm", || {
        live_jobs(&id).is_empty().then_some(())
    });
}

#[test]
fn gpu_tasks_get_gres_and_see_only_their_devices() {
    if !have_slurm("gpu_tasks_get_gres_and_see_only_their_devices") {
        return;
    }
    let gres = run("sinfo", &["-h", "-o", "%G"]);
    assert!(
        gres.contains("gpu:4"),
        "the test cluster must have 4 fake GPUs (scripts/with-slurm.sh): {gres}"
    );
    let server = Server::start("pools:\n  default:\n    backend: slurm\n    node: {gpu: 4}\n");
    let spec = "workflow:\n  name: slurm-gpu\n  resources: {default: {cpu: 1, gpu: 2}}\n  groups:\n  - name: pair\n    tasks:\n    - {name: a, image: ubuntu, lead: true, command: [sh, -c, 'echo $NVIDIA_VISIBLE_DEVICES > {{output}}/seen']}\n    - {name: b, image: ubuntu, command: [sh, -c, 'echo $NVIDIA_VISIBLE_DEVICES > {{output}}/seen']}\n";
    let id = server.submit(spec);
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let mut all = Vec::new();
    for name in ["a", "b"] {
        let gpus: Vec<u64> = task(&doc, name, 0)["gpus"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} recorded no GPUs: {doc:#}"))
            .iter()
            .map(|g| g.as_u64().unwrap())
            .collect();
        assert_eq!(gpus.len(), 2, "Slurm gave {name} two GPUs: {doc:#}");
        let seen = std::fs::read_to_string(server.output_dir(&id, name, 0).join("seen")).unwrap();
        let want: Vec<String> = gpus.iter().map(u64::to_string).collect();
        assert_eq!(seen.trim(), want.join(","), "{name} sees its own GPUs");
        all.extend(gpus);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all,
        [0, 1, 2, 3],
        "the group's tasks ran at once on distinct GPUs"
    );
}

/// Jobs of the workflow Slurm still lists, with their state and CPUs.
fn live_jobs_with_cpus(workflow: &str) -> Vec<(String, u32)> {
    run("squeue", &["-h", "--me", "-o", "%T|%C|%j"])
        .lines()
        .filter_map(|l| {
            let mut parts = l.trim().splitn(3, '|');
            let (state, cpus, name) = (parts.next()?, parts.next()?, parts.next()?);
            let cpus: u32 = cpus.parse().ok()?;
            name.contains(&format!(".{workflow}."))
                .then(|| (state.to_string(), cpus))
        })
        .collect()
}

#[test]
fn a_group_is_allocated_whole_or_not_at_all() {
    if !have_slurm("a_group_is_allocated_whole_or_not_at_all") {
        return;
    }
    // Partition gang3 gives 3 CPUs: a group of three one-CPU tasks fits once.
    let server = Server::start("pools:\n  default:\n    backend: slurm\n    partition: gang3\n");
    let group = |name: &str, command: &str| {
        format!(
            "workflow:\n  name: {name}\n  resources: {{default: {{cpu: 1}}}}\n  groups:\n  - name: trio\n    tasks:\n    - {{name: a, image: ubuntu, lead: true, command: [sh, -c, '{command}']}}\n    - {{name: b, image: ubuntu, command: [sh, -c, '{command}']}}\n    - {{name: c, image: ubuntu, command: [sh, -c, '{command}']}}\n"
        )
    };
    // The first group holds its CPUs until the test lets it go.
    let first = server.submit(&group(
        "gang-first",
        "until [ -e {{output}}/go ]; do sleep 0.02; done",
    ));
    for name in ["a", "b", "c"] {
        wait_running(&server, &first, name);
    }
    let second = server.submit(&group("gang-second", "true"));
    let pending = wait_for(Duration::from_secs(20), "the second group's job", || {
        let jobs = live_jobs_with_cpus(&second);
        (!jobs.is_empty()).then_some(jobs)
    });
    assert_eq!(
        live_jobs_with_cpus(&first),
        [("RUNNING".to_string(), 3)],
        "the first group is one job of 3 CPUs"
    );
    assert_eq!(
        pending,
        [("PENDING".to_string(), 3)],
        "the second group waits whole, as one job"
    );
    let doc = server.workflow(&second);
    for name in ["a", "b", "c"] {
        assert_eq!(task(&doc, name, 0)["status"], "SCHEDULING", "{doc:#}");
    }
    for name in ["a", "b", "c"] {
        let out = server.output_dir(&first, name, 0);
        std::fs::write(out.join("go"), "").unwrap();
    }
    for id in [&first, &second] {
        let doc = server.wait_finished(id, Duration::from_secs(60));
        assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    }

    // A group larger than the partition could never start: refused at submit.
    let body = serde_json::json!({"file": "workflow:\n  name: too-big\n  groups:\n  - name: four\n    tasks:\n    - {name: a, image: ubuntu, lead: true, command: ['true']}\n    - {name: b, image: ubuntu, command: ['true']}\n    - {name: c, image: ubuntu, command: ['true']}\n    - {name: d, image: ubuntu, command: ['true']}\n"});
    let (status, text) = server.post("/api/pool/default/workflow", body.to_string());
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("group `four` asks for 4 CPUs in all, but the pool's nodes have 3"),
        "{text}"
    );
}

#[test]
fn a_server_restart_adopts_a_running_group_job() {
    if !have_slurm("a_server_restart_adopts_a_running_group_job") {
        return;
    }
    let mut server = Server::start(slurm_pool());
    let wait_go = "until [ -e {{output}}/go ]; do sleep 0.02; done; exit 16";
    let spec = format!(
        "workflow:\n  name: slurm-restart-group\n  groups:\n  - name: pair\n    tasks:\n    - {{name: a, image: ubuntu, lead: true, command: [sh, -c, '{wait_go}'], exitActions: {{COMPLETE: '16'}}}}\n    - {{name: b, image: ubuntu, command: [sh, -c, '{wait_go}'], exitActions: {{COMPLETE: '16'}}}}\n"
    );
    let id = server.submit(&spec);
    wait_running(&server, &id, "a");
    wait_running(&server, &id, "b");
    assert_eq!(live_jobs(&id).len(), 1, "one job for the group");
    server.kill();
    server.spawn();
    // The new server finds both attempts in the group's job.
    for name in ["a", "b"] {
        let out = server.output_dir(&id, name, 0);
        std::fs::write(out.join("go"), "").unwrap();
    }
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    assert_eq!(task(&doc, "a", 0)["exit_code"], 16, "{doc:#}");
    // The lead's end ends its sibling (COMPLETED with it, as in OSMO).
    assert_eq!(task(&doc, "b", 0)["status"], "COMPLETED", "{doc:#}");
    let attempts: usize = doc["groups"][0]["tasks"].as_array().unwrap().len();
    assert_eq!(attempts, 2, "no task ran twice: {doc:#}");
}

#[test]
fn host_tokens_name_the_node_each_task_runs_on() {
    if !have_slurm("host_tokens_name_the_node_each_task_runs_on") {
        return;
    }
    let server = Server::start(slurm_pool());
    // A server and a client in one group (one job, a step each): the client
    // reaches the server by `{{host:server}}`, the node Slurm put it on.
    let spec = r#"
workflow:
  name: slurm-hosts
  groups:
  - name: g
    tasks:
    - name: server
      image: ubuntu
      command:
      - python3
      - -c
      - |
        import socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 18431)); s.listen()
        c, _ = s.accept(); c.sendall(b"pong\n"); c.close()
    - name: client
      image: ubuntu
      lead: true
      command:
      - python3
      - -c
      - |
        import socket, sys, time
        host = sys.argv[1]
        for _ in range(400):
            try:
                c = socket.create_connection((host, 18431), timeout=5)
                break
            except OSError:
                time.sleep(0.05)
        print("host", host, "reply", c.makefile().readline().strip())
      - "{{host:server}}"
"#;
    let id = server.submit(spec);
    let doc = server.wait_finished(&id, Duration::from_secs(120));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let node = task(&doc, "server", 0)["node_name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!node.is_empty(), "{doc:#}");
    let logs = wait_for(Duration::from_secs(10), "the client's line", || {
        let (status, body) = server.get(&format!("/api/workflow/{id}/logs"));
        (status == 200 && body.contains("reply pong")).then_some(body)
    });
    assert!(logs.contains(&format!("host {node} reply pong")), "{logs}");
}
