//! Commits per second on the embedded SQLite store (WAL, `synchronous=FULL`, a file in a temp
//! dir): the server's hot path, one event per commit, and a group commit of 50 events (an agent
//! reporting 50 exits at once). Also a batch of log lines, for scale, and the commit a wide
//! workflow of short tasks makes most: a few exits, each with its agent's batch of log lines.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use osmo_store::{Commit, Initial, LogBatch, LogLine, NewEvent, NewWorkflow, Store};
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
                labels: Default::default(),
            },
            |_| Initial {
                state: "{}".into(),
                state_version: 1,
                status: "PENDING".into(),
            },
        ))
        .unwrap();

    let event = json!({ "type": "exited", "attempt": { "task": { "group": 0, "task": 1 },
        "retry_id": 0 }, "codes": [{ "code": 0, "source": "user" }] })
    .to_string();
    let mut seq = 0u64;
    let mut batch = |n: usize, at: i64| {
        let first_seq = seq + 1;
        seq += n as u64;
        Commit {
            workflow_id: id.clone(),
            first_seq,
            events: (0..n)
                .map(|_| NewEvent {
                    at,
                    schema_version: 1,
                    body: event.clone(),
                })
                .collect(),
            status: "RUNNING".into(),
            updated_at: at,
            finished_at: None,
            snapshot: None,
        }
    };
    let mut at = 0;

    let mut group = c.benchmark_group("sqlite");
    group.throughput(Throughput::Elements(1));
    group.bench_function("commit_1_event", |b| {
        b.iter(|| {
            at += 1;
            let commit = batch(1, at);
            rt.block_on(store.commit(&[commit])).unwrap()
        })
    });
    group.throughput(Throughput::Elements(50));
    group.bench_function("commit_50_events_at_once", |b| {
        b.iter(|| {
            at += 1;
            let commit = batch(50, at);
            rt.block_on(store.commit(&[commit])).unwrap()
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

    // Four exits and each one's batch of one line (its "command exited" line), numbered by the
    // agent: what the server commits about four trivial tasks that ended together.
    let mut log_seq = 0u64;
    group.throughput(Throughput::Elements(4));
    group.bench_function("commit_4_exits_with_4_log_batches", |b| {
        b.iter(|| {
            at += 1;
            let commit = batch(4, at);
            let logs: Vec<LogBatch> = lines[..4]
                .iter()
                .map(|line| {
                    log_seq += 1;
                    LogBatch {
                        source: Some(("agent-1".into(), log_seq)),
                        lines: vec![line.clone()],
                    }
                })
                .collect();
            rt.block_on(store.commit_with_logs(&[commit], &logs))
                .unwrap()
        })
    });
    group.finish();
    rt.block_on(store.close());
}

criterion_group!(benches, commit_event);
criterion_main!(benches);
