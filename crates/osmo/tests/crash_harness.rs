//! Crash safety under a mixed load: workflows of several shapes (a DAG of
//! inputs, groups with a lead, tasks rescheduled by their exit code, a
//! workflow that fails) run while the server is SIGKILLed at random moments
//! and started again on the same data directory each time. Every workflow
//! ends as it would without crashes, no attempt runs twice, no log line is
//! lost, and no running task is killed (that would add attempts).
//!
//! The test command runs a small version. The full one, 20 workflows of 50
//! tasks and 20 kills:
//!
//! ```text
//! OSMO_CRASH_WORKFLOWS=20 OSMO_CRASH_WORKFLOW_TASKS=50 OSMO_CRASH_KILLS=20 \
//!     cargo test --release -p osmo --test crash_harness -- --nocapture
//! ```
//!
//! `OSMO_CRASH_SEED` replays a run (the seed is printed).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough to place the kills, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// What every task does: append to its attempt's output (two runs of one
/// attempt would leave two lines), log one line, take a little time.
const BODY: &str =
    r#"echo ran >> {{output}}/runs; echo "hello from $OSMO_TASK_NAME $OSMO_RETRY_ID"; sleep 0.1"#;

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Task i reads task (i-1)/2's output.
    Dag,
    /// Groups of four, each with a lead that outlasts its siblings.
    Groups,
    /// Every task exits 42 in its first attempt, rescheduled, then completes.
    Reschedule,
    /// Independent tasks and a last one that needs them all and fails.
    Fails,
}

impl Shape {
    fn spec(self, name: &str, n: u64) -> String {
        let mut s = format!("workflow:\n  name: {name}\n");
        match self {
            Shape::Dag => {
                s += "  tasks:\n";
                for i in 0..n {
                    s += &format!("  - name: t{i}\n    image: ubuntu\n");
                    if i == 0 {
                        s += &format!("    command: [sh, -c, '{BODY}']\n");
                    } else {
                        let up = (i - 1) / 2;
                        s += &format!(
                            "    command: [sh, -c, 'test -s {{{{input:t{up}}}}}/runs; {BODY}']\n    inputs: [{{task: t{up}}}]\n"
                        );
                    }
                }
            }
            Shape::Groups => {
                s += "  resources:\n    default: {cpu: 0.25}\n  groups:\n";
                for g in 0..n.div_ceil(4) {
                    s += &format!("  - name: g{g}\n    tasks:\n");
                    for k in 0..4.min(n - g * 4) {
                        let lead = if k == 0 { "\n      lead: true" } else { "" };
                        let wait = if k == 0 { "; sleep 0.3" } else { "" };
                        s += &format!(
                            "    - name: g{g}t{k}{lead}\n      image: ubuntu\n      command: [sh, -c, '{BODY}{wait}']\n"
                        );
                    }
                }
            }
            Shape::Reschedule => {
                s += "  tasks:\n";
                for i in 0..n {
                    s += &format!(
                        "  - name: t{i}\n    image: ubuntu\n    command: [sh, -c, '{BODY}; [ \"$OSMO_RETRY_ID\" != 0 ] || exit 42']\n    exitActions: {{RESCHEDULE: \"42\"}}\n"
                    );
                }
            }
            Shape::Fails => {
                s += "  tasks:\n";
                for i in 0..n - 1 {
                    s += &format!(
                        "  - name: t{i}\n    image: ubuntu\n    command: [sh, -c, '{BODY}']\n"
                    );
                }
                let inputs: Vec<String> = (0..n - 1).map(|i| format!("{{task: t{i}}}")).collect();
                s += &format!(
                    "  - name: last\n    image: ubuntu\n    command: [sh, -c, '{BODY}; exit 3']\n    inputs: [{}]\n",
                    inputs.join(", ")
                );
            }
        }
        s
    }

    /// Attempts a run without crashes makes.
    fn attempts(self, n: u64) -> u64 {
        match self {
            Shape::Reschedule => 2 * n,
            _ => n,
        }
    }

    fn final_status(self) -> &'static str {
        match self {
            Shape::Fails => "FAILED",
            _ => "COMPLETED",
        }
    }
}

const SHAPES: [Shape; 4] = [Shape::Dag, Shape::Groups, Shape::Reschedule, Shape::Fails];

/// Every attempt of a workflow: (task, retry_id) → its record.
fn attempts_of(server: &Server, id: &str) -> BTreeMap<(String, u64), Value> {
    let doc = server.get_json(&format!("/api/workflow/{id}?verbose=true"));
    let mut all = BTreeMap::new();
    for group in doc["groups"].as_array().into_iter().flatten() {
        for t in group["tasks"].as_array().into_iter().flatten() {
            let key = (
                t["name"].as_str().unwrap_or_default().to_string(),
                t["retry_id"].as_u64().unwrap_or(0),
            );
            all.insert(key, t.clone());
        }
    }
    all
}

fn ended_attempts(server: &Server, ids: &[String]) -> u64 {
    let ended = |t: &Value| {
        t["end_time"].is_string()
            || !matches!(
                t["status"].as_str(),
                Some("WAITING" | "SCHEDULING" | "INITIALIZING" | "RUNNING")
            )
    };
    ids.iter()
        .map(|id| {
            attempts_of(server, id)
                .values()
                .filter(|t| ended(t))
                .count() as u64
        })
        .sum()
}

/// The unfinished attempts of unfinished workflows, and both logs.
fn dump(server: &Server, ids: &[String]) -> String {
    let mut out = String::new();
    for id in ids {
        let doc = server.workflow(id);
        if !matches!(doc["status"].as_str(), Some("PENDING" | "RUNNING")) {
            continue;
        }
        out += &format!("{id} {}\n", doc["status"]);
        for ((task, retry), t) in attempts_of(server, id) {
            if !t["end_time"].is_string() {
                out += &format!("  {task}/{retry} {} {}\n", t["status"], t["runs"]);
            }
        }
    }
    let agent =
        std::fs::read_to_string(server.data_dir().join("agent/agent.log")).unwrap_or_default();
    let pools = server.get("/api/pool").1;
    format!(
        "{out}\npools: {pools}\nserver log:\n{}\nagent log:\n{agent}",
        server.log()
    )
}

#[test]
fn random_server_kills_during_mixed_workflows_change_no_outcome() {
    let workflows = env_or("OSMO_CRASH_WORKFLOWS", 4);
    let per_workflow = env_or("OSMO_CRASH_WORKFLOW_TASKS", 10).max(2);
    let kills = env_or("OSMO_CRASH_KILLS", 5);
    let seed = env_or(
        "OSMO_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    ) | 1;
    println!(
        "crash harness: {workflows} workflows of {per_workflow} tasks, {kills} kills, OSMO_CRASH_SEED={seed}"
    );
    let mut rng = Rng(seed);

    let mut server = Server::start(local_pool());
    let mut submitted = Vec::new();
    for w in 0..workflows {
        let shape = SHAPES[(w % 4) as usize];
        let id = server.submit(&shape.spec(&format!("crash{w}"), per_workflow));
        submitted.push((id, shape));
    }
    let ids: Vec<String> = submitted.iter().map(|(id, _)| id.clone()).collect();
    let expected: u64 = submitted
        .iter()
        .map(|(_, shape)| shape.attempts(per_workflow))
        .sum();

    // Kill when this many attempts have ended: random moments of the run.
    let mut moments: Vec<u64> = (0..kills).map(|_| rng.below(expected)).collect();
    moments.sort_unstable();
    for (k, moment) in moments.iter().enumerate() {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while ended_attempts(&server, &ids) < *moment {
            assert!(
                std::time::Instant::now() < deadline,
                "stuck before kill {}: {}",
                k + 1,
                dump(&server, &ids)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        server.kill();
        server.spawn();
        println!("kill {} of {kills} after {moment} ended attempts", k + 1);
    }

    let mut checked = 0;
    for (id, shape) in &submitted {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let doc = loop {
            let doc = server.workflow(id);
            if !matches!(doc["status"].as_str(), Some("PENDING" | "RUNNING")) {
                break doc;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{shape:?} {id} did not finish: {}",
                dump(&server, &ids)
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            doc["status"],
            shape.final_status(),
            "{shape:?} {id}: {doc:#}\n{}",
            server.log()
        );
        let attempts = attempts_of(&server, id);
        assert_eq!(
            attempts.len() as u64,
            shape.attempts(per_workflow),
            "{shape:?} {id}: no attempt lost or added: {attempts:#?}"
        );
        let (status, logs) = server.get(&format!("/api/workflow/{id}/logs"));
        assert_eq!(status, 200);
        for ((task, retry), t) in &attempts {
            let expected_status = match (shape, *retry, task.as_str()) {
                (Shape::Reschedule, 0, _) => "RESCHEDULED",
                (Shape::Fails, _, "last") => "FAILED",
                _ => "COMPLETED",
            };
            assert_eq!(t["status"], expected_status, "{shape:?} {id} {task}: {t:#}");
            let runs = std::fs::read_to_string(
                server
                    .output_dir(id, task, u32::try_from(*retry).unwrap())
                    .join("runs"),
            )
            .unwrap_or_default()
            .lines()
            .count();
            let line = format!("hello from {task} {retry}");
            let logged = logs.lines().filter(|l| l.ends_with(&line)).count();
            // A group's sibling may be stopped by its lead before it ran.
            let sibling = matches!(shape, Shape::Groups) && !task.ends_with("t0");
            if sibling {
                assert!(runs <= 1, "{id} {task} ran {runs} times");
                assert!(logged <= 1, "{id} {task}: {logged} lines");
            } else {
                assert_eq!(runs, 1, "{shape:?} {id} {task}/{retry} ran {runs} times");
                assert_eq!(
                    logged, 1,
                    "{shape:?} {id} {task}/{retry}: log line seen {logged} times"
                );
            }
            checked += 1;
        }
    }
    println!("checked {checked} attempts of {workflows} workflows across {kills} kills");
    assert_eq!(checked, expected);
}
