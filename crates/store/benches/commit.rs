//! Commits per second on the embedded SQLite store (WAL, `synchronous=FULL`, a file in a temp
//! dir): one event, a small state document and one command per commit, the server's hot path.
//! Also a batch of log lines, for scale.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use osmo_store::{EventCommit, Initial, LogLine, NewWorkflow, Store};
use serde_json::json;

fn commit_event(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let store = rt.block_on(Store::open(&url)).unwrap();
    let id = rt
        .block_on(store.insert_workflow(
            NewWorkflow {
                name: "bench".into(),
                pool: "default".into(),
                priority: "NORMAL".into(),
                submitted_by: "bench".into(),
                spec_source: "workflow:\n  name: bench\n".into(),
                spec_rendered: "workflow:\n  name: bench\n".into(),
                submitted_at: 0,
            },
            |_| Initial {
                state: json!({}),
                state_version: 1,
                status: "PENDING".into(),
                commands: vec![],
            },
        ))
        .unwrap();

    let event = json!({ "kind": "attempt_exited", "task": "train", "retry_id": 0, "code": 0 });
    let state = json!({
        "status": "RUNNING",
        "groups": { "g": { "status": "RUNNING", "tasks": {
            "train": { "status": "COMPLETED", "retry_id": 0, "exit_code": 0 },
            "eval": { "status": "WAITING", "retry_id": 0 }
        } } }
    });
    let commands = [json!({ "launch": { "task": "eval", "retry_id": 0 } })];
    let mut at = 0;

    let mut group = c.benchmark_group("sqlite");
    group.throughput(Throughput::Elements(1));
    group.bench_function("commit_event", |b| {
        b.iter(|| {
            at += 1;
            let commit = EventCommit {
                event: &event,
                event_version: 1,
                at,
                state: &state,
                state_version: 1,
                status: "RUNNING",
                finished_at: None,
                commands: &commands,
            };
            rt.block_on(store.commit_event(&id, &commit)).unwrap()
        })
    });

    let lines: Vec<LogLine> = (0..1000)
        .map(|n| LogLine {
            workflow_id: id.clone(),
            task: "train".into(),
            retry_id: 0,
            at_ms: n,
            stream: "stdout".into(),
            line: format!("epoch {n}: loss 0.{n:04} accuracy 0.9{n:03} lr 3e-4 step time 112 ms"),
        })
        .collect();
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("append_logs_1000_lines", |b| {
        b.iter(|| rt.block_on(store.append_logs(&lines)).unwrap())
    });
    group.finish();
    rt.block_on(store.close());
}

criterion_group!(benches, commit_event);
criterion_main!(benches);
