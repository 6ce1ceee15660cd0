//! Every store API against real databases: each test function is written once, over a URL, and
//! runs twice, as `sqlite::NAME` (a fresh file in a temp dir) and `postgres::NAME` (a fresh
//! database on the server named by `OSMO_TEST_DATABASE_URL`; without it the postgres variants
//! print a `skipped:` line straight to the terminal). `scripts/with-postgres.sh cargo test -p
//! osmo-store` runs them with a throwaway server.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

use osmo_store::{
    Backend, Commit, DEFAULT_LIST_LIMIT, Error, Initial, LabelSelector, ListFilter, LogBatch,
    LogLine, NewEvent, NewWorkflow, Snapshot, Store,
};
use serde_json::{Value, json};
use sqlx::Connection;

const PG_ENV: &str = "OSMO_TEST_DATABASE_URL";
/// Set (to the database URL) only in the child process of `crash_after_commit_keeps_it`.
const CRASH_ENV: &str = "OSMO_STORE_TEST_CRASH_URL";

#[derive(Clone, Copy, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

/// Runs `test` with the URL of a fresh, empty database of kind `db`, then removes the database.
async fn run<F, Fut>(db: Db, name: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("osmo.db").display());
            test(url).await;
        }
        Db::Postgres => {
            let Ok(admin) = std::env::var(PG_ENV) else {
                // Straight to the terminal: libtest captures only print!/eprint!.
                let _ = writeln!(
                    std::io::stderr(),
                    "postgres::{name}: skipped: {PG_ENV} not set \
                     (run `scripts/with-postgres.sh cargo test -p osmo-store`)"
                );
                return;
            };
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let db_name = format!(
                "osmo_test_{}_{}_{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("{PG_ENV}={admin} unusable: {e}"));
            sqlx::raw_sql(&format!("CREATE DATABASE {db_name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let mut url = url::Url::parse(&admin).expect("OSMO_TEST_DATABASE_URL is a url");
            url.set_path(&format!("/{db_name}"));
            // A failing test panics here and leaves its database behind for a look; the
            // throwaway server of scripts/with-postgres.sh goes away with it anyway.
            test(url.to_string()).await;
            sqlx::raw_sql(&format!("DROP DATABASE {db_name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .expect("drop test database");
        }
    }
}

/// Generates `sqlite::NAME` and `postgres::NAME` for each `async fn NAME(url: String)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::run(crate::Db::Sqlite, stringify!($name), super::$name).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::run(crate::Db::Postgres, stringify!($name), super::$name).await
                }
            )*
        }
    };
}

on_both!(
    ids_count_up_per_name,
    a_batch_of_inserts_is_one_transaction_with_ids_in_order,
    labels_and_tags_filter_lists,
    concurrent_tag_changes_and_inserts_all_succeed,
    concurrent_inserts_get_distinct_ids,
    commit_appends_events_and_snapshots_now_and_then,
    one_commit_serves_many_workflows_and_a_retry_writes_nothing_twice,
    log_batches_commit_with_events_and_are_stored_once_per_source,
    failed_commit_changes_nothing,
    commit_to_unknown_workflow_fails,
    finished_at_is_kept_and_load_unfinished_skips_finished,
    list_filters_and_pages_newest_first,
    list_default_limit_and_cap,
    logs_filters_and_last_n,
    logs_for_unknown_workflow_fail_whole_batch,
    reopen_keeps_data_and_migrations_run_once,
    corrupt_state_is_reported,
    crash_after_commit_keeps_it,
);

// ---------------------------------------------------------------------------------------------
// Helpers

async fn open(url: &str) -> Store {
    Store::open(url).await.expect("open store")
}

fn new_wf(name: &str, at: i64) -> NewWorkflow {
    NewWorkflow {
        name: name.into(),
        pool: "default".into(),
        priority: "NORMAL".into(),
        submitted_by: "alice".into(),
        spec_source: format!("workflow:\n  name: {name}\n"),
        spec_rendered: format!("workflow:\n  name: {name}\n  # rendered\n"),
        submitted_at: at,
        labels: Default::default(),
    }
}

fn initial(id: &str) -> Initial {
    Initial {
        state: json!({ "id": id, "tasks": {} }).to_string(),
        state_version: 1,
        status: "PENDING".into(),
    }
}

async fn insert(store: &Store, name: &str, at: i64) -> String {
    store
        .insert_workflow(new_wf(name, at), initial)
        .await
        .expect("insert")
}

/// A commit of `events` (numbered from `first_seq`) with a snapshot `state` if given.
fn commit(
    id: &str,
    first_seq: u64,
    events: &[Value],
    state: Option<&Value>,
    status: &str,
    at: i64,
) -> Commit {
    Commit {
        workflow_id: id.to_string(),
        first_seq,
        events: events
            .iter()
            .map(|e| NewEvent {
                at,
                schema_version: 3,
                body: e.to_string(),
            })
            .collect(),
        status: status.to_string(),
        updated_at: at,
        finished_at: None,
        snapshot: state.map(|s| Snapshot {
            state: s.to_string(),
            state_version: 2,
        }),
    }
}

/// Runs raw SQL against the database behind `url`, outside the store.
async fn raw(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .expect("raw connect");
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .expect("raw sql");
    conn.close().await.expect("raw close");
}

async fn scalar(url: &str, sql: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .expect("raw connect");
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut conn).await.expect(sql);
    conn.close().await.expect("raw close");
    n
}

fn log(wf: &str, task: &str, retry_id: u32, n: i64, stream: &str) -> LogLine {
    LogLine {
        workflow_id: wf.into(),
        task: task.into(),
        retry_id,
        at_ms: 1_000 + n,
        stream: stream.into(),
        line: format!("{task}/{retry_id} line {n}"),
    }
}

fn texts(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.line.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests, each run against both databases

async fn a_batch_of_inserts_is_one_transaction_with_ids_in_order(url: String) {
    let store = open(&url).await;
    insert(&store, "wf", 1).await;
    let news = ["wf", "x", "wf"].map(|n| new_wf(n, 100)).to_vec();
    let mut asked = Vec::new();
    let ids = store
        .insert_workflows(news, |i, id| {
            asked.push((i, id.to_owned()));
            initial(id)
        })
        .await
        .unwrap();
    assert_eq!(ids, ["wf-2", "x-1", "wf-3"]);
    assert_eq!(
        asked,
        [(0, "wf-2".into()), (1, "x-1".into()), (2, "wf-3".into())]
    );
    for id in &ids {
        assert!(
            store.get_workflow(id).await.unwrap().is_some(),
            "{id} stored"
        );
    }
}

async fn concurrent_tag_changes_and_inserts_all_succeed(url: String) {
    let store = open(&url).await;
    let id = insert(&store, "tagged", 1).await;
    let mut jobs = Vec::new();
    for j in 0..8 {
        let (store, id) = (store.clone(), id.clone());
        jobs.push(tokio::spawn(async move {
            for i in 0..20 {
                if j % 2 == 0 {
                    store
                        .change_tags(
                            &id,
                            &[format!("t{j}-{i}")],
                            &[format!("t{j}-{}", i.max(1) - 1)],
                        )
                        .await
                        .map(|_| ())
                } else {
                    store
                        .insert_workflow(new_wf("other", i), initial)
                        .await
                        .map(|_| ())
                }
                .unwrap_or_else(|e| panic!("job {j}, step {i}: {e}"));
            }
        }));
    }
    for job in jobs {
        job.await.unwrap();
    }
    assert_eq!(
        store
            .labels_and_tags(std::slice::from_ref(&id))
            .await
            .unwrap()[&id]
            .tags
            .len(),
        4
    );
}

async fn labels_and_tags_filter_lists(url: String) {
    let store = open(&url).await;
    let labeled = |name: &str, labels: &[(&str, &str)]| NewWorkflow {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..new_wf(name, 100)
    };
    let ids = store
        .insert_workflows(
            vec![
                labeled("a", &[("project", "sim_x"), ("team", "Robotics_a")]),
                labeled("b", &[("project", "hil_y")]),
                labeled("c", &[]),
            ],
            |_, id| initial(id),
        )
        .await
        .unwrap();
    let list = |labels: Vec<(&str, Vec<&str>)>, no_labels: Vec<&str>, tags: Vec<&str>| {
        let filter = ListFilter {
            labels: labels
                .into_iter()
                .map(|(key, values)| LabelSelector {
                    key: key.into(),
                    values: values.into_iter().map(String::from).collect(),
                })
                .collect(),
            no_labels: no_labels.into_iter().map(String::from).collect(),
            tags: tags.into_iter().map(String::from).collect(),
            ..ListFilter::default()
        };
        let store = &store;
        async move {
            let mut names: Vec<String> = store
                .list_workflows(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|w| w.name)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(
        list(vec![("project", vec!["sim_x"])], vec![], vec![]).await,
        ["a"]
    );
    assert_eq!(
        list(vec![("project", vec!["sim_*", "hil_*"])], vec![], vec![]).await,
        ["a", "b"]
    );
    // `_` is a character, not a wildcard; case matters.
    assert!(
        list(vec![("project", vec!["sim__"])], vec![], vec![])
            .await
            .is_empty()
    );
    assert!(
        list(vec![("team", vec!["robotics_a"])], vec![], vec![])
            .await
            .is_empty()
    );
    assert_eq!(
        list(vec![("team", vec!["Robotics_*"])], vec![], vec![]).await,
        ["a"]
    );
    assert_eq!(list(vec![], vec!["project"], vec![]).await, ["c"]);
    assert_eq!(
        list(
            vec![("project", vec!["*"]), ("team", vec!["*"])],
            vec![],
            vec![]
        )
        .await,
        ["a"],
        "every selector must match"
    );

    let tags = store
        .change_tags(&ids[1], &["gold".into(), "v2".into()], &[])
        .await
        .unwrap();
    assert_eq!(tags, ["gold", "v2"]);
    let tags = store
        .change_tags(&ids[1], &["v3".into()], &["v2".into(), "absent".into()])
        .await
        .unwrap();
    assert_eq!(tags, ["gold", "v3"]);
    store
        .change_tags(&ids[2], &["gold".into()], &[])
        .await
        .unwrap();
    assert_eq!(list(vec![], vec![], vec!["gold"]).await, ["b", "c"]);
    assert_eq!(list(vec![], vec![], vec!["gold", "v3"]).await, ["b"]);
    assert_eq!(store.tags_in_use().await.unwrap(), ["gold", "v3"]);
    assert!(matches!(
        store.change_tags("ghost-1", &["x".into()], &[]).await,
        Err(osmo_store::Error::UnknownWorkflow(_))
    ));
    let found = store.labels_and_tags(&ids).await.unwrap();
    assert_eq!(found[&ids[0]].labels["team"], "Robotics_a");
    assert_eq!(found[&ids[1]].tags, ["gold", "v3"]);
    assert!(found[&ids[2]].labels.is_empty());
}

async fn ids_count_up_per_name(url: String) {
    let store = open(&url).await;
    assert_eq!(
        store.backend(),
        if url.starts_with("sqlite") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    );
    let mut seen_by_make_state = Vec::new();
    for (name, expected) in [("wf", "wf-1"), ("wf", "wf-2"), ("x", "x-1"), ("wf", "wf-3")] {
        let id = store
            .insert_workflow(new_wf(name, 100), |id| {
                seen_by_make_state.push(id.to_owned());
                initial(id)
            })
            .await
            .unwrap();
        assert_eq!(id, expected);
    }
    assert_eq!(seen_by_make_state, ["wf-1", "wf-2", "x-1", "wf-3"]);
    // A name ending in a number doesn't clash with another name's ids.
    assert_eq!(insert(&store, "wf-1", 100).await, "wf-1-1");

    let row = store
        .get_workflow("wf-2")
        .await
        .unwrap()
        .expect("wf-2 stored");
    assert_eq!(row.id, "wf-2");
    assert_eq!(row.name, "wf");
    assert_eq!(row.seq, 2);
    assert_eq!(row.pool, "default");
    assert_eq!(row.priority, "NORMAL");
    assert_eq!(row.status, "PENDING");
    assert_eq!(row.submitted_by, "alice");
    assert_eq!(row.submitted_at, 100);
    assert_eq!(row.updated_at, 100);
    assert_eq!(row.finished_at, None);
    assert_eq!(row.spec_source, "workflow:\n  name: wf\n");
    assert_eq!(row.spec_rendered, "workflow:\n  name: wf\n  # rendered\n");
    assert_eq!(row.state, json!({ "id": "wf-2", "tasks": {} }));
    assert_eq!(row.state_version, 1);
    assert_eq!(row.snapshot_seq, 0);
    assert_eq!(row.last_event_seq, 0);
    assert!(store.events("wf-2").await.unwrap().is_empty());
    assert_eq!(store.get_workflow("wf-9").await.unwrap(), None);
    store.close().await;
}

async fn concurrent_inserts_get_distinct_ids(url: String) {
    let store = open(&url).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = store.clone();
        let name = if i % 3 == 0 { "other" } else { "same" };
        tasks.push(tokio::spawn(async move {
            store
                .insert_workflow(new_wf(name, i), initial)
                .await
                .expect("concurrent insert")
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()), "an id was handed out twice");
    }
    let expected: BTreeSet<String> = (1..=16)
        .map(|n| format!("same-{n}"))
        .chain((1..=8).map(|n| format!("other-{n}")))
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(store.load_unfinished().await.unwrap().len(), 24);
    store.close().await;
}

async fn commit_appends_events_and_snapshots_now_and_then(url: String) {
    let store = open(&url).await;
    let id = insert(&store, "wf", 100).await;

    let e1 = json!({ "kind": "started", "task": "a" });
    let e2 = json!({ "kind": "setup", "task": "a" });
    store
        .commit(&[commit(
            &id,
            1,
            &[e1.clone(), e2.clone()],
            None,
            "RUNNING",
            200,
        )])
        .await
        .unwrap();
    let row = store.get_workflow(&id).await.unwrap().unwrap();
    assert_eq!(row.status, "RUNNING");
    assert_eq!(row.updated_at, 200);
    assert_eq!((row.snapshot_seq, row.last_event_seq), (0, 2));
    assert_eq!(
        row.state,
        json!({ "id": id, "tasks": {} }),
        "no snapshot yet"
    );
    let tail: Vec<_> = store
        .events_after(&id, row.snapshot_seq)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.at, e.schema_version, e.body))
        .collect();
    assert_eq!(tail, [(1, 200, 3, e1.clone()), (2, 200, 3, e2.clone())]);

    let e3 = json!({ "kind": "exited", "task": "a", "code": 0 });
    let s3 = json!({ "tasks": { "a": "COMPLETED" } });
    store
        .commit(&[commit(
            &id,
            3,
            std::slice::from_ref(&e3),
            Some(&s3),
            "RUNNING",
            300,
        )])
        .await
        .unwrap();
    let row = store.get_workflow(&id).await.unwrap().unwrap();
    assert_eq!(row.state, s3);
    assert_eq!(row.state_version, 2);
    assert_eq!((row.snapshot_seq, row.last_event_seq), (3, 3));
    assert_eq!(row.submitted_at, 100);
    assert!(store.events_after(&id, 3).await.unwrap().is_empty());
    assert_eq!(
        store.events(&id).await.unwrap().len(),
        3,
        "the log keeps every event"
    );
    store.close().await;
}

async fn one_commit_serves_many_workflows_and_a_retry_writes_nothing_twice(url: String) {
    let store = open(&url).await;
    let a = insert(&store, "a", 1).await;
    let b = insert(&store, "b", 1).await;
    let batch = [
        commit(&a, 1, &[json!(1), json!(2)], None, "RUNNING", 10),
        commit(
            &b,
            1,
            &[json!(3)],
            Some(&json!({ "b": 1 })),
            "COMPLETED",
            11,
        ),
    ];
    store.commit(&batch).await.unwrap();
    // The same batch again, as after an answer lost on its way back.
    store.commit(&batch).await.unwrap();
    assert_eq!(store.events(&a).await.unwrap().len(), 2);
    assert_eq!(store.events(&b).await.unwrap().len(), 1);
    let row = store.get_workflow(&b).await.unwrap().unwrap();
    assert_eq!((row.snapshot_seq, row.last_event_seq), (1, 1));
    assert_eq!(row.state, json!({ "b": 1 }));
    // An older snapshot never replaces a newer one.
    store
        .commit(&[commit(
            &b,
            1,
            &[json!(3)],
            Some(&json!({ "old": 0 })),
            "COMPLETED",
            11,
        )])
        .await
        .unwrap();
    store
        .commit(&[commit(
            &b,
            2,
            &[json!(4)],
            Some(&json!({ "b": 2 })),
            "COMPLETED",
            12,
        )])
        .await
        .unwrap();
    let row = store.get_workflow(&b).await.unwrap().unwrap();
    assert_eq!(row.state, json!({ "b": 2 }));
    store.commit(&[]).await.unwrap();
    store.close().await;
}

async fn failed_commit_changes_nothing(url: String) {
    let store = open(&url).await;
    let a = insert(&store, "a", 100).await;
    let b = insert(&store, "b", 100).await;
    store
        .commit(&[commit(
            &a,
            1,
            &[json!({ "n": 1 })],
            Some(&json!({ "after": 1 })),
            "RUNNING",
            200,
        )])
        .await
        .unwrap();
    // The second workflow of the batch is unknown: the whole batch must roll back, the first
    // workflow's share included.
    let err = store
        .commit(&[
            commit(
                &a,
                2,
                &[json!({ "n": 2 })],
                Some(&json!({ "after": 2 })),
                "FAILED",
                300,
            ),
            commit(&b, 1, &[json!({ "n": 1 })], None, "RUNNING", 300),
            commit("nope-1", 1, &[json!({})], None, "RUNNING", 300),
        ])
        .await
        .expect_err("an unknown workflow fails the batch");
    assert!(matches!(err, Error::UnknownWorkflow(_)), "{err}");

    let row = store.get_workflow(&a).await.unwrap().unwrap();
    assert_eq!(row.state, json!({ "after": 1 }), "snapshot rolled back");
    assert_eq!(row.status, "RUNNING", "status rolled back");
    assert_eq!(row.updated_at, 200);
    assert_eq!(row.last_event_seq, 1);
    assert_eq!(store.events(&a).await.unwrap().len(), 1);
    assert!(store.events(&b).await.unwrap().is_empty());
    store.close().await;
}

async fn commit_to_unknown_workflow_fails(url: String) {
    let store = open(&url).await;
    let err = store
        .commit(&[commit("nope-1", 1, &[json!(1)], None, "RUNNING", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownWorkflow(id) if id == "nope-1"),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("no workflow `nope-1` in the store")
    );
    assert!(store.events("nope-1").await.unwrap().is_empty());
    store.close().await;
}

async fn finished_at_is_kept_and_load_unfinished_skips_finished(url: String) {
    let store = open(&url).await;
    let a = insert(&store, "a", 100).await;
    let b = insert(&store, "b", 50).await;
    let c = insert(&store, "c", 75).await;
    let e = json!({ "done": true });
    let s = json!({ "final": true });
    let mut fin = commit(&b, 1, std::slice::from_ref(&e), Some(&s), "COMPLETED", 400);
    fin.finished_at = Some(400);
    store.commit(&[fin]).await.unwrap();

    // A later commit neither clears nor moves finished_at.
    let mut late = commit(&b, 2, std::slice::from_ref(&e), None, "COMPLETED", 500);
    late.finished_at = None;
    store.commit(&[late.clone()]).await.unwrap();
    late.first_seq = 3;
    late.finished_at = Some(600);
    store.commit(&[late]).await.unwrap();
    let row = store.get_workflow(&b).await.unwrap().unwrap();
    assert_eq!(row.finished_at, Some(400));
    assert_eq!(row.updated_at, 500);
    assert_eq!(row.last_event_seq, 3);

    let unfinished: Vec<_> = store
        .load_unfinished()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        unfinished,
        [c, a],
        "oldest submission first, finished left out"
    );
    store.close().await;
}

async fn list_filters_and_pages_newest_first(url: String) {
    let store = open(&url).await;
    // (name, pool, user, status, submitted_at)
    let rows = [
        ("train", "gpu", "alice", "RUNNING", 10),
        ("train", "gpu", "bob", "COMPLETED", 20),
        ("eval", "cpu", "alice", "FAILED", 30),
        ("pretrain", "gpu", "carol", "RUNNING", 40),
        ("Train", "cpu", "bob", "PENDING", 50),
        ("eval", "gpu", "alice", "RUNNING", 50),
    ];
    for (name, pool, user, status, at) in rows {
        let mut new = new_wf(name, at);
        new.pool = pool.into();
        new.submitted_by = user.into();
        store
            .insert_workflow(new, |id| Initial {
                status: status.into(),
                ..initial(id)
            })
            .await
            .unwrap();
    }
    let ids = |filter: ListFilter| {
        let store = store.clone();
        async move {
            store
                .list_workflows(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|w| w.id)
                .collect::<Vec<_>>()
        }
    };
    // Newest first; equal times by number, then id, newest first.
    assert_eq!(
        ids(ListFilter::default()).await,
        [
            "eval-2",
            "Train-1",
            "pretrain-1",
            "eval-1",
            "train-2",
            "train-1"
        ]
    );
    // Name: case-sensitive substring.
    let by_name = |n: &str| ListFilter {
        name: Some(n.into()),
        ..ListFilter::default()
    };
    assert_eq!(
        ids(by_name("train")).await,
        ["pretrain-1", "train-2", "train-1"]
    );
    assert_eq!(ids(by_name("rain-")).await, Vec::<String>::new());
    assert_eq!(ids(by_name("Tr")).await, ["Train-1"]);
    assert_eq!(
        ids(by_name("%")).await,
        Vec::<String>::new(),
        "no LIKE wildcards"
    );
    assert_eq!(
        ids(by_name("")).await.len(),
        6,
        "empty name filters nothing"
    );
    // Statuses, pools, users, and all together.
    assert_eq!(
        ids(ListFilter {
            statuses: vec!["RUNNING".into(), "PENDING".into()],
            ..ListFilter::default()
        })
        .await,
        ["eval-2", "Train-1", "pretrain-1", "train-1"]
    );
    assert_eq!(
        ids(ListFilter {
            pools: vec!["cpu".into()],
            ..ListFilter::default()
        })
        .await,
        ["Train-1", "eval-1"]
    );
    assert_eq!(
        ids(ListFilter {
            submitted_by: vec!["bob".into(), "carol".into()],
            ..ListFilter::default()
        })
        .await,
        ["Train-1", "pretrain-1", "train-2"]
    );
    assert_eq!(
        ids(ListFilter {
            name: Some("ain".into()),
            statuses: vec!["RUNNING".into()],
            pools: vec!["gpu".into()],
            submitted_by: vec!["alice".into()],
            ..ListFilter::default()
        })
        .await,
        ["train-1"]
    );
    // Pages.
    let page = |limit, offset| ListFilter {
        limit: Some(limit),
        offset,
        ..ListFilter::default()
    };
    assert_eq!(ids(page(2, 0)).await, ["eval-2", "Train-1"]);
    assert_eq!(ids(page(2, 2)).await, ["pretrain-1", "eval-1"]);
    assert_eq!(ids(page(2, 4)).await, ["train-2", "train-1"]);
    assert_eq!(ids(page(2, 6)).await, Vec::<String>::new());
    assert_eq!(ids(page(0, 0)).await, Vec::<String>::new());

    let summary = &store.list_workflows(&page(1, 0)).await.unwrap()[0];
    assert_eq!(summary.name, "eval");
    assert_eq!(summary.pool, "gpu");
    assert_eq!(summary.priority, "NORMAL");
    assert_eq!(summary.status, "RUNNING");
    assert_eq!(summary.submitted_by, "alice");
    assert_eq!(summary.submitted_at, 50);
    assert_eq!(summary.updated_at, 50);
    assert_eq!(summary.finished_at, None);
    store.close().await;
}

async fn list_default_limit_and_cap(url: String) {
    let store = open(&url).await;
    for i in 0..25 {
        insert(&store, "many", i).await;
    }
    let all = store.list_workflows(&ListFilter::default()).await.unwrap();
    assert_eq!(all.len(), DEFAULT_LIST_LIMIT as usize);
    assert_eq!(all[0].id, "many-25");
    let all = store
        .list_workflows(&ListFilter {
            limit: Some(u32::MAX),
            offset: 3,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 22);
    assert_eq!(all.last().unwrap().id, "many-1");
    store.close().await;
}

async fn logs_filters_and_last_n(url: String) {
    let store = open(&url).await;
    let wf = insert(&store, "wf", 1).await;
    let other = insert(&store, "other", 1).await;
    store.append_logs(&[]).await.unwrap();
    let mut batch = Vec::new();
    for n in 0..3 {
        batch.push(log(&wf, "a", 0, n, "stdout"));
        batch.push(log(&wf, "b", 0, n, "stderr"));
        batch.push(log(&other, "a", 0, n, "stdout"));
    }
    store.append_logs(&batch).await.unwrap();
    store
        .append_logs(&[log(&wf, "a", 1, 0, "stdout"), log(&wf, "a", 1, 1, "stderr")])
        .await
        .unwrap();

    let all = store.logs(&wf, None, None, None).await.unwrap();
    assert_eq!(
        texts(&all),
        [
            "a/0 line 0",
            "b/0 line 0",
            "a/0 line 1",
            "b/0 line 1",
            "a/0 line 2",
            "b/0 line 2",
            "a/1 line 0",
            "a/1 line 1",
        ]
    );
    assert_eq!(
        all[1],
        log(&wf, "b", 0, 0, "stderr"),
        "every field round-trips"
    );
    assert_eq!(
        texts(&store.logs(&wf, Some("a"), None, None).await.unwrap()),
        [
            "a/0 line 0",
            "a/0 line 1",
            "a/0 line 2",
            "a/1 line 0",
            "a/1 line 1"
        ]
    );
    assert_eq!(
        texts(&store.logs(&wf, Some("a"), Some(0), None).await.unwrap()),
        ["a/0 line 0", "a/0 line 1", "a/0 line 2"]
    );
    assert_eq!(
        texts(&store.logs(&wf, None, Some(1), None).await.unwrap()),
        ["a/1 line 0", "a/1 line 1"]
    );
    // last_n: the newest n, still oldest first.
    assert_eq!(
        texts(&store.logs(&wf, Some("a"), Some(0), Some(2)).await.unwrap()),
        ["a/0 line 1", "a/0 line 2"]
    );
    assert_eq!(
        texts(&store.logs(&wf, None, None, Some(3)).await.unwrap()),
        ["b/0 line 2", "a/1 line 0", "a/1 line 1"]
    );
    assert_eq!(
        store.logs(&wf, None, None, Some(100)).await.unwrap().len(),
        8
    );
    assert!(
        store
            .logs(&wf, None, None, Some(0))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .logs(&wf, Some("zz"), None, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .logs("nope-1", None, None, None)
            .await
            .unwrap()
            .is_empty()
    );

    // A batch larger than one INSERT keeps its order.
    let big: Vec<_> = (0..2500)
        .map(|n| log(&other, "big", 0, n, "stdout"))
        .collect();
    store.append_logs(&big).await.unwrap();
    let got = store
        .logs(&other, Some("big"), Some(0), None)
        .await
        .unwrap();
    assert_eq!(got, big);
    let tail = store
        .logs(&other, Some("big"), None, Some(1001))
        .await
        .unwrap();
    assert_eq!(tail, big[1499..]);
    store.close().await;
}

async fn logs_for_unknown_workflow_fail_whole_batch(url: String) {
    let store = open(&url).await;
    let wf = insert(&store, "wf", 1).await;
    let err = store
        .append_logs(&[
            log(&wf, "a", 0, 0, "stdout"),
            log("nope-1", "a", 0, 1, "stdout"),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LogsForUnknownWorkflow(_)), "{err}");
    assert!(store.logs(&wf, None, None, None).await.unwrap().is_empty());
    store.close().await;
}

async fn reopen_keeps_data_and_migrations_run_once(url: String) {
    let store = open(&url).await;
    let id = store
        .insert_workflow(new_wf("wf", 1), initial)
        .await
        .unwrap();
    let e = json!({ "n": 1 });
    let s = json!({ "state": "after" });
    store
        .commit(&[commit(&id, 1, &[e], Some(&s), "RUNNING", 2)])
        .await
        .unwrap();
    store
        .append_logs(&[log(&id, "a", 0, 0, "stdout")])
        .await
        .unwrap();
    let before = store.get_workflow(&id).await.unwrap().unwrap();
    store.close().await;

    for round in 0..2 {
        let store = open(&url).await;
        assert_eq!(
            store.get_workflow(&id).await.unwrap().as_ref(),
            Some(&before)
        );
        assert_eq!(store.events(&id).await.unwrap().len(), 1);
        assert_eq!(store.logs(&id, None, None, None).await.unwrap().len(), 1);
        // The counter survives too.
        assert_eq!(insert(&store, "wf", 3).await, format!("wf-{}", round + 2));
        store.close().await;
    }
    let applied = scalar(
        &url,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM _sqlx_migrations",
    )
    .await;
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count();
    assert_eq!(applied as usize, files, "each migration applied once");
}

async fn corrupt_state_is_reported(url: String) {
    let store = open(&url).await;
    let id = insert(&store, "wf", 1).await;
    raw(
        &url,
        &format!("UPDATE snapshots SET state = 'not json' WHERE workflow_id = '{id}'"),
    )
    .await;
    let err = store.get_workflow(&id).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { what: "state", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );
    store.close().await;
}

/// A child process commits and then aborts without closing anything; the commit must be there.
async fn crash_after_commit_keeps_it(url: String) {
    let exe = std::env::current_exe().unwrap();
    let child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "crash_helper",
            "--include-ignored",
            "--nocapture",
        ])
        .env(CRASH_ENV, &url)
        .output()
        .await
        .unwrap();
    assert!(
        !child.status.success(),
        "the helper must die by abort, got {}:\n{}{}",
        child.status,
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    let store = open(&url).await;
    let row = store
        .get_workflow("crash-1")
        .await
        .unwrap()
        .expect("committed insert survived");
    assert_eq!(row.status, "RUNNING");
    assert_eq!(row.state, json!({ "crashed": "after commit" }));
    assert_eq!(store.events("crash-1").await.unwrap().len(), 1);
    store.close().await;
}

/// The child of `crash_after_commit_keeps_it`; does nothing when run on its own.
#[tokio::test]
#[ignore = "helper process of crash_after_commit_keeps_it"]
async fn crash_helper() {
    let Ok(url) = std::env::var(CRASH_ENV) else {
        return;
    };
    let store = open(&url).await;
    let id = insert(&store, "crash", 1).await;
    let e = json!({ "n": 1 });
    let s = json!({ "crashed": "after commit" });
    store
        .commit(&[commit(&id, 1, &[e], Some(&s), "RUNNING", 2)])
        .await
        .unwrap();
    std::process::abort();
}

// ---------------------------------------------------------------------------------------------
// SQLite-only behaviour

#[tokio::test]
async fn unsupported_url_says_what_to_use() {
    let err = Store::open("mysql://u:pw@h/d").await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedUrl(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("mysql://u:***@h/d"), "{text}");
    assert!(text.contains("sqlite://PATH?mode=rwc"), "{text}");
}

#[tokio::test]
async fn missing_sqlite_file_without_rwc_says_how_to_create() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("absent.db").display());
    let err = Store::open(&url).await.unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err}");
    assert!(err.to_string().contains("add `?mode=rwc`"), "{err}");
}

#[tokio::test]
async fn sqlite_file_is_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("osmo.db").display());
    let store = open(&url).await;
    insert(&store, "wf", 1).await;
    assert!(
        dir.path().join("osmo.db-wal").exists(),
        "a write-ahead log next to the file"
    );
    store.close().await;
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal", "WAL is a property of the file");
}

#[tokio::test]
async fn in_memory_sqlite_works_for_tests() {
    let store = open("sqlite::memory:").await;
    assert_eq!(insert(&store, "m", 1).await, "m-1");
    assert_eq!(insert(&store, "m", 2).await, "m-2");
    assert_eq!(
        store
            .list_workflows(&ListFilter::default())
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn log_batches_commit_with_events_and_are_stored_once_per_source(url: String) {
    let store = open(&url).await;
    let wf = insert(&store, "wf", 1).await;
    let batch = |seq: u64, n: i64| LogBatch {
        source: Some(("agent-1".to_string(), seq)),
        lines: vec![log(&wf, "a", 0, n, "stdout")],
    };
    let events = [commit(&wf, 1, &[json!(1)], None, "RUNNING", 5)];
    store
        .commit_with_logs(&events, &[batch(1, 0), batch(2, 1)])
        .await
        .unwrap();
    // Sent again after a lost acknowledgement: stored once; a newer batch goes in.
    store
        .commit_with_logs(&[], &[batch(2, 1), batch(3, 2)])
        .await
        .unwrap();
    // Another source numbers its own batches.
    let other = LogBatch {
        source: Some(("agent-2".to_string(), 1)),
        lines: vec![log(&wf, "b", 0, 3, "stdout")],
    };
    store.commit_with_logs(&[], &[other]).await.unwrap();
    // Both sources in one commit, a batch twice in it: each source's
    // batches are taken in order, once, and their lines keep that order.
    let second = |seq: u64, n: i64| LogBatch {
        source: Some(("agent-2".to_string(), seq)),
        lines: vec![log(&wf, "b", 0, n, "stdout")],
    };
    store
        .commit_with_logs(
            &[],
            &[
                batch(4, 4),
                second(2, 5),
                batch(4, 4),
                second(1, 3),
                batch(5, 6),
            ],
        )
        .await
        .unwrap();
    let lines = store.logs(&wf, None, None, None).await.unwrap();
    assert_eq!(
        texts(&lines),
        [
            "a/0 line 0",
            "a/0 line 1",
            "a/0 line 2",
            "b/0 line 3",
            "a/0 line 4",
            "b/0 line 5",
            "a/0 line 6"
        ]
    );
    assert_eq!(store.events(&wf).await.unwrap().len(), 1);
    // A line of an unknown workflow fails the commit whole, events included.
    let bad = LogBatch {
        source: None,
        lines: vec![log("nope-1", "a", 0, 9, "stdout")],
    };
    let err = store
        .commit_with_logs(&[commit(&wf, 2, &[json!(2)], None, "RUNNING", 6)], &[bad])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LogsForUnknownWorkflow(_)), "{err}");
    assert_eq!(store.events(&wf).await.unwrap().len(), 1);
    store.close().await;
}
