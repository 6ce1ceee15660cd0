//! GPUs on the local backend, on a pool that declares `node.gpu: 4` (this
//! machine has none): the scheduler counts them, each task gets devices of
//! its own and sees only those in its environment.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Server, task, wait_for};
use serde_json::Value;

const POOL: &str =
    "pools:\n  default:\n    backend: local\n    cpu_capacity: 16\n    node: {gpu: 4}\n";

fn attempts(doc: &Value) -> Vec<&Value> {
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["tasks"].as_array().unwrap())
        .collect()
}

fn gpus_of(attempt: &Value) -> Vec<u64> {
    attempt["gpus"]
        .as_array()
        .unwrap_or_else(|| panic!("no gpus in {attempt}"))
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect()
}

#[test]
fn four_one_gpu_tasks_run_on_four_devices_and_a_fifth_waits() {
    let server = Server::start(POOL);
    // Each task records what it sees, then waits for the test's `go` file in
    // its output directory, so the five are observed while the four hold
    // every GPU.
    let mut spec = String::from(
        "workflow:\n  name: gpus\n  resources:\n    default: {cpu: 1, gpu: 1}\n  tasks:\n",
    );
    for i in 0..5 {
        spec.push_str(&format!(
            "  - name: t{i}\n    image: ubuntu\n    command: [sh, -c, 'echo \"$NVIDIA_VISIBLE_DEVICES $CUDA_VISIBLE_DEVICES\" > {{{{output}}}}/seen; until [ -e {{{{output}}}}/go ]; do sleep 0.02; done']\n"
        ));
    }
    let id = server.submit(&spec);
    let running = |doc: &Value| -> Vec<String> {
        attempts(doc)
            .into_iter()
            .filter(|a| a["status"] == "RUNNING")
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    };
    let first = wait_for(Duration::from_secs(30), "four tasks running", || {
        let doc = server.workflow(&id);
        let r = running(&doc);
        (r.len() == 4).then_some(r)
    });
    let pools = server.get_json("/api/pool_quota");
    let usage = &pools["node_sets"][0]["pools"][0];
    assert_eq!(usage["resource_usage"]["quota_used"], 4, "{pools}");
    assert_eq!(usage["resource_usage"]["quota_free"], 0, "{pools}");
    assert_eq!(usage["cpu"]["waiting_groups"], 1, "{pools}");
    let resources = server.get_json("/api/resources?pools=default");
    let node = &resources["resources"][0];
    assert_eq!(node["allocatable_fields"]["gpu"], 4, "{resources}");
    assert_eq!(node["usage_fields"]["gpu"], 4, "{resources}");
    assert_eq!(node["usage_fields"]["cpu"], 4.0, "{resources}");
    assert_eq!(
        node["exposed_fields"]["pool/platform"][0],
        "default/default"
    );
    let (status, _) = server.get("/api/resources?pools=nope");
    assert_eq!(status, 404);
    let doc = server.workflow(&id);
    let fifth = attempts(&doc)
        .into_iter()
        .find(|a| !first.contains(&a["name"].as_str().unwrap().to_string()))
        .unwrap();
    assert_eq!(
        fifth["status"], "SCHEDULING",
        "the fifth holds no GPU: {doc:#}"
    );
    assert!(running(&doc).len() == 4, "still four at once: {doc:#}");

    let release = |name: &str| {
        let out = server.output_dir(&id, name, 0);
        std::fs::write(out.join("go"), "").unwrap();
    };
    for name in &first {
        release(name);
    }
    let fifth_name = fifth["name"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(30), "the fifth to run", || {
        let doc = server.workflow(&id);
        (task(&doc, &fifth_name, 0)["status"] == "RUNNING").then_some(())
    });
    release(&fifth_name);
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");

    let mut seen_devices = BTreeSet::new();
    for name in &first {
        let gpus = gpus_of(task(&doc, name, 0));
        assert_eq!(gpus.len(), 1, "{name}: {doc:#}");
        assert!(gpus[0] < 4, "{name}: {gpus:?}");
        seen_devices.insert(gpus[0]);
        // The task saw exactly its own device.
        let seen = std::fs::read_to_string(server.output_dir(&id, name, 0).join("seen")).unwrap();
        assert_eq!(seen.trim(), format!("{0} {0}", gpus[0]), "{name}");
    }
    assert_eq!(
        seen_devices.len(),
        4,
        "four distinct devices: {seen_devices:?}"
    );
    assert_eq!(gpus_of(task(&doc, &fifth_name, 0)).len(), 1);
}

#[test]
fn a_two_gpu_and_a_three_gpu_group_never_run_together_on_four() {
    let server = Server::start(POOL);
    let group = |name: &str, tasks: usize| {
        let mut g = format!("  - name: {name}\n    tasks:\n");
        for i in 0..tasks {
            g.push_str(&format!(
                "    - name: {name}{i}\n      image: ubuntu\n      command: [sh, -c, 'echo $NVIDIA_VISIBLE_DEVICES > {{{{output}}}}/seen']\n{}",
                if i == 0 { "      lead: true\n" } else { "" }
            ));
        }
        g
    };
    let spec = format!(
        "workflow:\n  name: gangs\n  resources:\n    default: {{cpu: 1, gpu: 1}}\n  groups:\n{}{}",
        group("two", 2),
        group("three", 3)
    );
    let id = server.submit(&spec);
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let times = |prefix: &str| -> (String, String, BTreeSet<u64>) {
        let group: Vec<&Value> = attempts(&doc)
            .into_iter()
            .filter(|a| a["name"].as_str().unwrap().starts_with(prefix))
            .collect();
        // A sibling stopped by its lead's end before its run was reported has no start.
        let start = group
            .iter()
            .filter_map(|a| a["start_time"].as_str().map(str::to_string))
            .min()
            .unwrap();
        let end = group
            .iter()
            .map(|a| a["end_time"].as_str().unwrap().to_string())
            .max()
            .unwrap();
        let devices: BTreeSet<u64> = group.iter().flat_map(|a| gpus_of(a)).collect();
        assert_eq!(
            devices.len(),
            group.len(),
            "{prefix}: distinct devices: {doc:#}"
        );
        (start, end, devices)
    };
    let (two_start, two_end, _) = times("two");
    let (three_start, three_end, _) = times("three");
    // Same-format RFC 3339 times compare as text.
    assert!(
        two_end <= three_start || three_end <= two_start,
        "2 + 3 GPUs ran at once on 4: two {two_start}..{two_end}, three {three_start}..{three_end}"
    );
}

/// `examples/gpu-pool.yaml`: its preflight passes a task without GPUs and
/// checks a GPU task's devices. Where nvidia-smi cannot answer for them
/// (this machine's declared GPUs are not real) it fails with 1001, which the
/// pool reschedules until the retry limit.
#[test]
fn the_example_gpu_preflight_checks_each_given_device() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gpu-pool.yaml");
    let server = Server::start(&std::fs::read_to_string(example).unwrap());
    let id = server.submit(
        "workflow:\n  name: preflight\n  resources:\n    default: {gpu: 0}\n    one: {gpu: 1}\n  tasks:\n  - {name: cpu, image: ubuntu, command: ['true']}\n  - {name: gpu, image: ubuntu, resource: one, command: [nvidia-smi, -L]}\n",
    );
    let doc = server.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(task(&doc, "cpu", 0)["status"], "COMPLETED", "{doc:#}");
    let real_gpus = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success());
    if real_gpus {
        assert_eq!(task(&doc, "gpu", 0)["status"], "COMPLETED", "{doc:#}");
        return;
    }
    for retry in 0..3 {
        let attempt = task(&doc, "gpu", retry);
        assert_eq!(attempt["exit_code"], 1001, "{doc:#}");
    }
    assert_eq!(task(&doc, "gpu", 0)["status"], "RESCHEDULED", "{doc:#}");
    assert_eq!(task(&doc, "gpu", 2)["status"], "FAILED", "{doc:#}");
    let (_, logs) = server.get(&format!("/api/workflow/{id}/logs?task_name=gpu&retry_id=0"));
    assert!(logs.contains("gpu-check: nvidia-smi not found"), "{logs}");
}
