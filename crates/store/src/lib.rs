//! osmo-store: the durable state of the workflow service.
//!
//! The server keeps one writer per workflow and works event-sourced: every decision of the engine
//! follows an event, and [`Store::commit`] writes the events **before anyone acts on them or
//! acknowledges them**. Events that arrive together (an agent reporting 50 exits, across any
//! number of workflows) are committed together, in one transaction and one fsync.
//!
//! The cost of a commit does not depend on the workflow's size: a commit appends its events and
//! updates one small row per workflow (status, times, the latest event's number). The engine's
//! state is rewritten only now and then, as a snapshot taken with a commit (the caller decides
//! when: say every time as many events as the workflow has tasks have gone by, so the cost is
//! constant per event on average, and at the end). [`Store::load_unfinished`] gives back every
//! unfinished workflow's latest snapshot, and [`Store::events_after`] the bounded tail of events
//! to replay on top of it.
//!
//! The store knows nothing of what states mean: engine state, events and commands are opaque JSON
//! documents, statuses opaque text. A workflow counts as finished once a commit gave it a
//! `finished_at`; that time is never rewritten afterwards.
//!
//! # Backends
//!
//! One [`Store`] serves both databases, picked by URL in [`Store::open`]:
//!
//! - `sqlite://PATH?mode=rwc`, the embedded default: a file in the server's data directory, in
//!   WAL mode with `synchronous=FULL` (a committed event survives a crash of the process and of
//!   the machine), a 30 s busy timeout and foreign keys on.
//! - `postgres://...`, when several API replicas share the state.
//!
//! The store holds an enum over the two native pools and a small macro (`with_pool!`) expands each
//! method's body once per backend, so every query is type-checked against both drivers and each
//! gets its native connection options; the queries themselves are the same text (`$1`-style
//! parameters, which SQLite accepts too). The schema lives in two migration folders,
//! `migrations/sqlite` and `migrations/postgres`, identical but for the auto-numbered log `seq`
//! (`INTEGER PRIMARY KEY` against `GENERATED ALWAYS AS IDENTITY`); JSON is stored as TEXT in both.
//!
//! # Replay and torn records
//!
//! Each commit is one database transaction, so the log can't end in a torn (half-written) record:
//! after a crash, SQLite's WAL and PostgreSQL's recovery roll an unfinished transaction back as a
//! whole. Replay therefore reads either all of a commit's events and snapshot, or none of them.
//! The caller numbers events itself, so a commit retried after an ambiguous failure (it did land,
//! but the answer was lost) writes nothing twice. Every event row carries the `schema_version` of
//! its body and every snapshot its `state_version`, for the engine to read old documents.
//!
//! # Ids
//!
//! Workflow ids are `<name>-<N>`, `N` counting up from 1 per name, allocated inside the insert
//! transaction (an upsert on `name_counters`), so concurrent submissions of one name get distinct
//! ids on both backends.

mod error;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use error::{Error, Result};

/// How many workflows [`Store::list_workflows`] returns when the filter names no limit.
pub const DEFAULT_LIST_LIMIT: u32 = 20;
/// The most workflows one [`Store::list_workflows`] call returns.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// Rows per multi-row `INSERT` (SQLite allows 32766 parameters per statement, PostgreSQL 65535).
const ROWS_PER_INSERT: usize = 1000;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file (or `sqlite::memory:`).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A workflow's labels and tags ([`Store::labels_and_tags`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelsAndTags {
    pub labels: std::collections::BTreeMap<String, String>,
    pub tags: Vec<String>,
}

/// A workflow about to be submitted; [`Store::insert_workflow`] gives it its id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewWorkflow {
    /// The workflow's name; the id is `<name>-<N>`.
    pub name: String,
    /// The pool it runs in.
    pub pool: String,
    /// Its priority, as text.
    pub priority: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// The file as submitted.
    pub spec_source: String,
    /// The file after template rendering.
    pub spec_rendered: String,
    /// Submission time, milliseconds since the Unix epoch.
    pub submitted_at: i64,
    /// Its labels (`key → value`), as the submitter set them.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The first state of a workflow, made by the caller once its id is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Initial {
    /// The engine's state document, as JSON text: the first snapshot (event 0).
    pub state: String,
    /// The schema version of `state`.
    pub state_version: u32,
    /// The status to show.
    pub status: String,
}

/// One event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// When it happened, milliseconds since the Unix epoch.
    pub at: i64,
    /// The schema version of `body`.
    pub schema_version: u32,
    /// The event, as JSON text.
    pub body: String,
}

/// The engine's state as of a commit's last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The state document, as JSON text.
    pub state: String,
    /// The schema version of `state`.
    pub state_version: u32,
}

/// One workflow's share of a [`Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The workflow.
    pub workflow_id: String,
    /// The sequence number of the first of `events` (the workflow's events count from 1, with no
    /// gaps); the caller keeps count.
    pub first_seq: u64,
    /// The events, in order.
    pub events: Vec<NewEvent>,
    /// The status after them.
    pub status: String,
    /// Time of the last of them; becomes `updated_at`.
    pub updated_at: i64,
    /// When the workflow finished, if these events finished it. Once set it is kept: a later
    /// commit neither clears nor moves it.
    pub finished_at: Option<i64>,
    /// The state after the last of `events`, when the caller takes a snapshot now.
    pub snapshot: Option<Snapshot>,
}

impl Commit {
    /// The sequence number of the last event (or `first_seq - 1` with none).
    pub fn last_seq(&self) -> u64 {
        (self.first_seq + self.events.len() as u64).saturating_sub(1)
    }
}

/// A workflow as stored, with its latest snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRow {
    /// `<name>-<seq>`.
    pub id: String,
    /// The workflow's name.
    pub name: String,
    /// Its number among workflows of this name, from 1.
    pub seq: u64,
    /// The pool it runs in.
    pub pool: String,
    /// Its priority.
    pub priority: String,
    /// The latest status.
    pub status: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// Milliseconds since the Unix epoch.
    pub submitted_at: i64,
    /// Time of the latest event (the submission at first).
    pub updated_at: i64,
    /// When it finished; `None` while it runs.
    pub finished_at: Option<i64>,
    /// The file as submitted.
    pub spec_source: String,
    /// The file after rendering.
    pub spec_rendered: String,
    /// The engine's state document as of event `snapshot_seq`.
    pub state: Value,
    /// The schema version of `state`.
    pub state_version: u32,
    /// The last event the snapshot includes; 0 for the first state.
    pub snapshot_seq: u64,
    /// Sequence number of the latest event; 0 before the first. Events after `snapshot_seq`
    /// ([`Store::events_after`]) are to be replayed on top of `state`.
    pub last_event_seq: u64,
}

/// A workflow in a listing: no spec, no state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct WorkflowSummary {
    /// `<name>-<seq>`.
    pub id: String,
    /// The workflow's name.
    pub name: String,
    /// The pool it runs in.
    pub pool: String,
    /// Its priority.
    pub priority: String,
    /// The latest status.
    pub status: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// Milliseconds since the Unix epoch.
    pub submitted_at: i64,
    /// Time of the latest event.
    pub updated_at: i64,
    /// When it finished; `None` while it runs.
    pub finished_at: Option<i64>,
}

/// Which workflows [`Store::list_workflows`] returns. Empty lists and `None` don't filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFilter {
    /// Names containing this text (case-sensitive substring).
    pub name: Option<String>,
    /// Any of these statuses.
    pub statuses: Vec<String>,
    /// Any of these pools.
    pub pools: Vec<String>,
    /// Submitted by any of these users.
    pub submitted_by: Vec<String>,
    /// Of any of these priorities (`HIGH`, `NORMAL`, `LOW`).
    #[serde(default)]
    pub priorities: Vec<String>,
    /// At most this many ([`DEFAULT_LIST_LIMIT`] when `None`, never more than
    /// [`MAX_LIST_LIMIT`]).
    pub limit: Option<u32>,
    /// Skip this many of the newest first.
    pub offset: u64,
    /// Submitted at or after this time (ms since the epoch).
    #[serde(default)]
    pub submitted_after: Option<i64>,
    /// Submitted before this time (ms since the epoch).
    #[serde(default)]
    pub submitted_before: Option<i64>,
    /// Every selector matches one of the workflow's labels.
    #[serde(default)]
    pub labels: Vec<LabelSelector>,
    /// The workflow has none of these label keys.
    #[serde(default)]
    pub no_labels: Vec<String>,
    /// The workflow has every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `key` with a value matching any of `values`, each literal characters and
/// `*` (any run of characters). Label values are `[A-Za-z0-9._-]` only (the
/// API checks), so a pattern needs no other escaping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSelector {
    pub key: String,
    pub values: Vec<String>,
}

/// A committed event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Its sequence number in its workflow, from 1.
    pub seq: u64,
    /// When it happened, milliseconds since the Unix epoch.
    pub at: i64,
    /// The schema version of `body`.
    pub schema_version: u32,
    /// The event.
    pub body: Value,
}

/// One line a task wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The workflow.
    pub workflow_id: String,
    /// The task.
    pub task: String,
    /// Which attempt of the task, from 0.
    pub retry_id: u32,
    /// When it was written, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Where it came from (`stdout`, `stderr`, ...).
    pub stream: String,
    /// The text, without its line end.
    pub line: String,
}

/// Log lines committed with [`Store::commit`]. A batch with a `source` and `seq` is stored at
/// most once: the store remembers the highest `seq` it stored per source and skips any batch at
/// or below it (a source numbers its batches upwards, from 1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogBatch {
    /// Who sent it (say a node agent instance), with its batch number.
    pub source: Option<(String, u64)>,
    /// The lines, in order.
    pub lines: Vec<LogLine>,
}

/// The durable state of the workflow service; cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Where the server's own writes go (its commits and submits): for a
    /// SQLite file, a connection of its own. SQLite drops a connection's page
    /// cache whenever another connection has written, so commits that took
    /// any connection of the pool read back the pages the last commit had
    /// written; on one connection they find them in its cache. Elsewhere the
    /// pool itself.
    writer: Pool,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the native pool of whichever backend the store has; the
/// body is expanded (and type-checked) once per backend.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// [`with_pool!`] for the store's own writes ([`Store::writer`]).
macro_rules! with_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.writer {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Inserts `lines` (log lines, in their order) in transaction `tx`, in
/// multi-row inserts of [`ROWS_PER_INSERT`]; `?` on an error.
macro_rules! insert_log_lines {
    ($tx:ident, $lines:expr) => {
        for chunk in $lines.chunks(ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO logs (workflow_id, task, retry_id, at_ms, stream, line) ",
            );
            q.push_values(chunk, |mut b, l| {
                b.push_bind(&l.workflow_id)
                    .push_bind(&l.task)
                    .push_bind(i64::from(l.retry_id))
                    .push_bind(l.at_ms)
                    .push_bind(&l.stream)
                    .push_bind(&l.line);
            });
            q.build().execute(&mut *$tx).await?;
        }
    };
}

/// A workflow with its spec and latest snapshot (`w`, `p` and `s` as in [`WORKFLOW_FROM`]).
const WORKFLOW_COLUMNS: &str = "w.id, w.name, w.seq, w.pool, w.priority, w.status, \
     w.submitted_by, w.submitted_at, w.updated_at, w.finished_at, p.source AS spec_source, \
     p.rendered AS spec_rendered, s.state, s.state_version, s.event_seq AS snapshot_seq, \
     w.last_event_seq";
const WORKFLOW_FROM: &str = "workflows w JOIN specs p ON p.workflow_id = w.id \
     JOIN snapshots s ON s.workflow_id = w.id";

const SUMMARY_COLUMNS: &str =
    "id, name, pool, priority, status, submitted_by, submitted_at, updated_at, finished_at";

#[derive(sqlx::FromRow)]
struct WorkflowRaw {
    id: String,
    name: String,
    seq: i64,
    pool: String,
    priority: String,
    status: String,
    submitted_by: String,
    submitted_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    spec_source: String,
    spec_rendered: String,
    state: String,
    state_version: i64,
    snapshot_seq: i64,
    last_event_seq: i64,
}

impl WorkflowRaw {
    fn into_row(self) -> Result<WorkflowRow> {
        let state = parse(&self.id, "state", &self.state)?;
        Ok(WorkflowRow {
            state,
            id: self.id,
            name: self.name,
            seq: to_u64(self.seq),
            pool: self.pool,
            priority: self.priority,
            status: self.status,
            submitted_by: self.submitted_by,
            submitted_at: self.submitted_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            spec_source: self.spec_source,
            spec_rendered: self.spec_rendered,
            state_version: to_u32(self.state_version),
            snapshot_seq: to_u64(self.snapshot_seq),
            last_event_seq: to_u64(self.last_event_seq),
        })
    }
}

#[derive(sqlx::FromRow)]
struct LogRaw {
    seq: i64,
    workflow_id: String,
    task: String,
    retry_id: i64,
    at_ms: i64,
    stream: String,
    line: String,
}

impl Store {
    /// Opens (creating with `?mode=rwc`) the database at `url` and brings its schema up to date.
    ///
    /// `url` is `sqlite://PATH?mode=rwc`, `sqlite::memory:` (tests) or `postgres://...`
    /// (`postgresql://` too). Running it again on an up-to-date database changes nothing.
    pub async fn open(url: &str) -> Result<Store> {
        let open_err = |cause| Error::Open {
            url: redact(url),
            cause,
        };
        let (pool, writer) = match backend_of(url) {
            Some(Backend::Sqlite) => {
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(open_err)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true);
                // A connection is checked by using it: a ping before each
                // transaction would cost a round trip to its thread.
                let options_of_pool = SqlitePoolOptions::new().test_before_acquire(false);
                // One connection kept for good: the writer's, which is also the
                // whole pool of a memory database (it lives and dies with it).
                let writer = options_of_pool
                    .clone()
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options.clone())
                    .await
                    .map_err(open_err)?;
                let pool = if in_memory {
                    writer.clone()
                } else {
                    options_of_pool
                        .max_connections(8)
                        .connect_with(options)
                        .await
                        .map_err(open_err)?
                };
                SQLITE_MIGRATIONS.run(&writer).await?;
                (Pool::Sqlite(pool), Pool::Sqlite(writer))
            }
            Some(Backend::Postgres) => {
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .map_err(open_err)?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                (Pool::Postgres(pool.clone()), Pool::Postgres(pool))
            }
            None => return Err(Error::UnsupportedUrl(redact(url))),
        };
        Ok(Store { pool, writer })
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Waits for running queries and closes every connection; later calls fail.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// Stores a new workflow and returns its id `<name>-<N>`.
    ///
    /// In one transaction: allocates the id, calls `make_state(id)` for the first state and
    /// status, and writes the row, the spec and the first snapshot. Nothing is stored if any
    /// step fails.
    pub async fn insert_workflow<F>(&self, new: NewWorkflow, make_state: F) -> Result<String>
    where
        F: FnOnce(&str) -> Initial,
    {
        let mut make_state = Some(make_state);
        let ids = self
            .insert_workflows(vec![new], |_, id| {
                (make_state.take().expect("called once per workflow"))(id)
            })
            .await?;
        Ok(ids.into_iter().next().expect("one id per workflow"))
    }

    /// Stores new workflows in one transaction (one fsync: submits that
    /// arrive together are committed together) and returns their ids in
    /// order; `make_state(i, id)` makes the `i`th one's first state. Nothing
    /// is stored if any step fails.
    pub async fn insert_workflows<F>(
        &self,
        news: Vec<NewWorkflow>,
        mut make_state: F,
    ) -> Result<Vec<String>>
    where
        F: FnMut(usize, &str) -> Initial,
    {
        with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut ids = Vec::with_capacity(news.len());
            for (i, new) in news.into_iter().enumerate() {
                // A write first: on SQLite the transaction takes the write lock (waiting its
                // turn) before it reads anything, so it never has to upgrade a stale snapshot.
                let (n,): (i64,) = sqlx::query_as(
                    "INSERT INTO name_counters (name, last) VALUES ($1, 1) \
                     ON CONFLICT (name) DO UPDATE SET last = name_counters.last + 1 \
                     RETURNING last",
                )
                .bind(&new.name)
                .fetch_one(&mut *tx)
                .await?;
                let id = format!("{}-{n}", new.name);
                let initial = make_state(i, &id);
                sqlx::query(
                    "INSERT INTO workflows (id, name, seq, pool, priority, status, submitted_by, \
                     submitted_at, updated_at, finished_at, last_event_seq) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, NULL, 0)",
                )
                .bind(&id)
                .bind(&new.name)
                .bind(n)
                .bind(&new.pool)
                .bind(&new.priority)
                .bind(&initial.status)
                .bind(&new.submitted_by)
                .bind(new.submitted_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO specs (workflow_id, source, rendered) VALUES ($1, $2, $3)")
                    .bind(&id)
                    .bind(&new.spec_source)
                    .bind(&new.spec_rendered)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO snapshots (workflow_id, event_seq, state_version, state) \
                     VALUES ($1, 0, $2, $3)",
                )
                .bind(&id)
                .bind(i64::from(initial.state_version))
                .bind(&initial.state)
                .execute(&mut *tx)
                .await?;
                for (key, value) in &new.labels {
                    sqlx::query(
                        "INSERT INTO workflow_labels (workflow_id, key, value) VALUES ($1, $2, $3)",
                    )
                    .bind(&id)
                    .bind(key)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
                }
                ids.push(id);
            }
            tx.commit().await?;
            Ok(ids)
        })
    }

    /// Commits the events of any number of workflows in one transaction (one fsync): for each,
    /// appends its events, sets its status, `updated_at` and (once) `finished_at`, and replaces
    /// its snapshot when it brings one. Call it before acting on the events or acknowledging
    /// them. Committing the same events again (a retry after an answer was lost) changes nothing.
    /// A workflow the store does not know fails the whole batch with
    /// [`Error::UnknownWorkflow`], and nothing of it is stored.
    pub async fn commit(&self, batch: &[Commit]) -> Result<()> {
        self.commit_with_logs(batch, &[]).await
    }

    /// [`Store::commit`], with log lines in the same transaction. A log line of a workflow the
    /// store does not know fails the whole commit ([`Error::LogsForUnknownWorkflow`]).
    pub async fn commit_with_logs(&self, batch: &[Commit], logs: &[LogBatch]) -> Result<()> {
        if batch.is_empty() && logs.iter().all(|l| l.lines.is_empty()) {
            return Ok(());
        }
        let result = self.commit_tx(batch, logs).await;
        result.map_err(|e| match e {
            Error::Database(e)
                if e.as_database_error().map(|d| d.kind())
                    == Some(sqlx::error::ErrorKind::ForeignKeyViolation) =>
            {
                Error::LogsForUnknownWorkflow(e)
            }
            other => other,
        })
    }

    async fn commit_tx(&self, batch: &[Commit], logs: &[LogBatch]) -> Result<()> {
        with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            for c in batch {
                // The write comes first, as in `insert_workflow`.
                let last = to_i64(c.last_seq());
                let done = sqlx::query(
                    "UPDATE workflows SET status = $2, updated_at = $3, \
                     finished_at = COALESCE(finished_at, $4), \
                     last_event_seq = CASE WHEN last_event_seq < $5 THEN $5 \
                     ELSE last_event_seq END WHERE id = $1",
                )
                .bind(&c.workflow_id)
                .bind(&c.status)
                .bind(c.updated_at)
                .bind(c.finished_at)
                .bind(last)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(Error::UnknownWorkflow(c.workflow_id.clone()));
                }
                let mut seq = to_i64(c.first_seq);
                for chunk in c.events.chunks(ROWS_PER_INSERT) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO events (workflow_id, seq, at, schema_version, body) ",
                    );
                    q.push_values(chunk, |mut b, e| {
                        b.push_bind(&c.workflow_id)
                            .push_bind(seq)
                            .push_bind(e.at)
                            .push_bind(i64::from(e.schema_version))
                            .push_bind(&e.body);
                        seq += 1;
                    });
                    q.push(" ON CONFLICT (workflow_id, seq) DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
                if let Some(snap) = &c.snapshot {
                    sqlx::query(
                        "UPDATE snapshots SET event_seq = $2, state_version = $3, state = $4 \
                         WHERE workflow_id = $1 AND event_seq <= $2",
                    )
                    .bind(&c.workflow_id)
                    .bind(last)
                    .bind(i64::from(snap.state_version))
                    .bind(&snap.state)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            // Each source's cursor is read once and moved once, and the
            // lines of every batch it takes go in the same multi-row inserts:
            // a commit carries a batch per attempt that ended, and a
            // statement per batch was a round trip each to the database.
            // By source: the cursor as stored, and as this commit moves it.
            let mut cursors: HashMap<&str, (i64, i64)> = HashMap::new();
            let mut lines: Vec<&LogLine> = Vec::new();
            for log in logs {
                if let Some((source, seq)) = &log.source {
                    let seq = to_i64(*seq);
                    let cursor = match cursors.get_mut(source.as_str()) {
                        Some(cursor) => cursor,
                        None => {
                            let stored: Option<(i64,)> =
                                sqlx::query_as("SELECT seq FROM log_cursors WHERE source = $1")
                                    .bind(source)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                            let at = stored.map_or(i64::MIN, |(s,)| s);
                            cursors.entry(source).or_insert((at, at))
                        }
                    };
                    // The cursor moves only forward: a batch that does not
                    // move it was stored before.
                    if seq <= cursor.1 {
                        continue;
                    }
                    cursor.1 = seq;
                }
                lines.extend(&log.lines);
            }
            for (source, (before, after)) in cursors {
                if after > before {
                    sqlx::query(
                        "INSERT INTO log_cursors (source, seq) VALUES ($1, $2) \
                         ON CONFLICT (source) DO UPDATE SET seq = excluded.seq \
                         WHERE log_cursors.seq < excluded.seq",
                    )
                    .bind(source)
                    .bind(after)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            insert_log_lines!(tx, lines);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The events of workflow `id` after number `after_seq`, oldest first: what to replay on top
    /// of a snapshot taken at `after_seq`.
    pub async fn events_after(&self, id: &str, after_seq: u64) -> Result<Vec<EventRecord>> {
        let rows: Vec<(i64, i64, i64, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT seq, at, schema_version, body FROM events \
                 WHERE workflow_id = $1 AND seq > $2 ORDER BY seq",
            )
            .bind(id)
            .bind(to_i64(after_seq))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(seq, at, schema_version, body)| {
                Ok(EventRecord {
                    seq: to_u64(seq),
                    at,
                    schema_version: to_u32(schema_version),
                    body: parse(id, "event", &body)?,
                })
            })
            .collect()
    }

    /// Every workflow without a `finished_at`, oldest first: the state to rebuild at start-up.
    pub async fn load_unfinished(&self) -> Result<Vec<WorkflowRow>> {
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM {WORKFLOW_FROM} WHERE w.finished_at IS NULL \
             ORDER BY w.submitted_at, w.seq, w.id"
        );
        let rows: Vec<WorkflowRaw> = with_pool!(self, pool => {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.into_iter().map(WorkflowRaw::into_row).collect()
    }

    /// The workflow with this id, if there is one.
    pub async fn get_workflow(&self, id: &str) -> Result<Option<WorkflowRow>> {
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM {WORKFLOW_FROM} WHERE w.id = $1");
        let row: Option<WorkflowRaw> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        });
        row.map(WorkflowRaw::into_row).transpose()
    }

    /// Workflows matching `filter`, newest submission first.
    pub async fn list_workflows(&self, filter: &ListFilter) -> Result<Vec<WorkflowSummary>> {
        let backend = self.backend();
        let limit = filter
            .limit
            .unwrap_or(DEFAULT_LIST_LIMIT)
            .min(MAX_LIST_LIMIT);
        with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {SUMMARY_COLUMNS} FROM workflows WHERE 1 = 1"
            ));
            if let Some(name) = filter.name.as_deref().filter(|n| !n.is_empty()) {
                // Plain substring, case-sensitive on both backends (no LIKE wildcards to escape).
                q.push(match backend {
                    Backend::Sqlite => " AND instr(name, ",
                    Backend::Postgres => " AND strpos(name, ",
                });
                q.push_bind(name).push(") > 0");
            }
            for (column, values) in [
                ("status", &filter.statuses),
                ("pool", &filter.pools),
                ("submitted_by", &filter.submitted_by),
                ("priority", &filter.priorities),
            ] {
                if values.is_empty() {
                    continue;
                }
                q.push(format_args!(" AND {column} IN ("));
                let mut list = q.separated(", ");
                for value in values {
                    list.push_bind(value);
                }
                q.push(")");
            }
            for selector in &filter.labels {
                q.push(" AND EXISTS (SELECT 1 FROM workflow_labels l WHERE l.workflow_id = workflows.id AND l.key = ")
                    .push_bind(&selector.key)
                    .push(" AND (");
                for (i, value) in selector.values.iter().enumerate() {
                    if i > 0 {
                        q.push(" OR ");
                    }
                    // Case-sensitive on both: GLOB (`*`) on SQLite, LIKE (`%`, `_` escaped) on PostgreSQL.
                    match backend {
                        Backend::Sqlite => q.push("l.value GLOB ").push_bind(value.clone()),
                        Backend::Postgres => q
                            .push("l.value LIKE ")
                            .push_bind(value.replace('_', "\\_").replace('*', "%"))
                            .push(" ESCAPE '\\'"),
                    };
                }
                q.push("))");
            }
            for key in &filter.no_labels {
                q.push(" AND NOT EXISTS (SELECT 1 FROM workflow_labels l WHERE l.workflow_id = workflows.id AND l.key = ")
                    .push_bind(key)
                    .push(")");
            }
            for tag in &filter.tags {
                q.push(" AND EXISTS (SELECT 1 FROM workflow_tags t WHERE t.workflow_id = workflows.id AND t.tag = ")
                    .push_bind(tag)
                    .push(")");
            }
            if let Some(after) = filter.submitted_after {
                q.push(" AND submitted_at >= ").push_bind(after);
            }
            if let Some(before) = filter.submitted_before {
                q.push(" AND submitted_at < ").push_bind(before);
            }
            q.push(" ORDER BY submitted_at DESC, seq DESC, id DESC LIMIT ")
                .push_bind(i64::from(limit))
                .push(" OFFSET ")
                .push_bind(to_i64(filter.offset));
            Ok(q.build_query_as().fetch_all(pool).await?)
        })
    }

    /// The labels and tags of these workflows (those with none are left out).
    pub async fn labels_and_tags(&self, ids: &[String]) -> Result<HashMap<String, LabelsAndTags>> {
        let mut out: HashMap<String, LabelsAndTags> = Default::default();
        if ids.is_empty() {
            return Ok(out);
        }
        with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT workflow_id, key, value FROM workflow_labels WHERE workflow_id IN (",
            );
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(id);
            }
            q.push(")");
            let rows: Vec<(String, String, String)> = q.build_query_as().fetch_all(pool).await?;
            for (id, key, value) in rows {
                out.entry(id).or_default().labels.insert(key, value);
            }
            let mut q = sqlx::QueryBuilder::new(
                "SELECT workflow_id, tag FROM workflow_tags WHERE workflow_id IN (",
            );
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(id);
            }
            q.push(") ORDER BY tag");
            let rows: Vec<(String, String)> = q.build_query_as().fetch_all(pool).await?;
            for (id, tag) in rows {
                out.entry(id).or_default().tags.push(tag);
            }
            Ok(out)
        })
    }

    /// Removes then adds tags of workflow `id` (one transaction); its tags after.
    /// An unknown workflow is [`Error::UnknownWorkflow`].
    pub async fn change_tags(
        &self,
        id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // A write first (a no-op one): on SQLite the transaction takes the write lock,
            // waiting its turn, instead of failing to upgrade a read ("database is locked").
            let known = sqlx::query("UPDATE workflows SET updated_at = updated_at WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if known == 0 {
                return Err(Error::UnknownWorkflow(id.to_string()));
            }
            for tag in remove {
                sqlx::query("DELETE FROM workflow_tags WHERE workflow_id = $1 AND tag = $2")
                    .bind(id)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?;
            }
            for tag in add {
                sqlx::query(
                    "INSERT INTO workflow_tags (workflow_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(tag)
                .execute(&mut *tx)
                .await?;
            }
            let tags: Vec<(String,)> =
                sqlx::query_as("SELECT tag FROM workflow_tags WHERE workflow_id = $1 ORDER BY tag")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(tags.into_iter().map(|(t,)| t).collect())
        })
    }

    /// Every tag in use, each once, sorted.
    pub async fn tags_in_use(&self) -> Result<Vec<String>> {
        with_pool!(self, pool => {
            let rows: Vec<(String,)> =
                sqlx::query_as("SELECT DISTINCT tag FROM workflow_tags ORDER BY tag")
                    .fetch_all(pool)
                    .await?;
            Ok(rows.into_iter().map(|(t,)| t).collect())
        })
    }

    /// Every credential, sealed: (user, name, type, profile, sealed payload).
    pub async fn credentials(&self) -> Result<Vec<(String, String, String, String, String)>> {
        with_pool!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT username, name, cred_type, profile, sealed FROM credentials ORDER BY username, name",
            )
            .fetch_all(pool)
            .await?)
        })
    }

    /// Sets (or replaces) a user's credential.
    pub async fn put_credential(
        &self,
        user: &str,
        name: &str,
        cred_type: &str,
        profile: &str,
        sealed: &str,
        at_ms: i64,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO credentials (username, name, cred_type, profile, sealed, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (username, name) DO UPDATE SET cred_type = excluded.cred_type, \
                 profile = excluded.profile, sealed = excluded.sealed, updated_at = excluded.updated_at",
            )
            .bind(user)
            .bind(name)
            .bind(cred_type)
            .bind(profile)
            .bind(sealed)
            .bind(at_ms)
            .execute(pool)
            .await
            .map(|_| ())?
        });
        Ok(())
    }

    /// Removes a user's credential; false when there was none.
    pub async fn delete_credential(&self, user: &str, name: &str) -> Result<bool> {
        with_pool!(self, pool => {
            let done = sqlx::query("DELETE FROM credentials WHERE username = $1 AND name = $2")
                .bind(user)
                .bind(name)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// A configuration changed through the API: its JSON document, if any.
    pub async fn service_config(&self, name: &str) -> Result<Option<String>> {
        with_pool!(self, pool => {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT body FROM service_configs WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?;
            Ok(row.map(|(body,)| body))
        })
    }

    /// Replaces a configuration's JSON document, saying who and why.
    pub async fn put_service_config(
        &self,
        name: &str,
        body: &str,
        description: &str,
        by: &str,
        at_ms: i64,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO service_configs (name, body, description, updated_by, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body, \
                 description = excluded.description, updated_by = excluded.updated_by, \
                 updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(body)
            .bind(description)
            .bind(by)
            .bind(at_ms)
            .execute(pool)
            .await
            .map(|_| ())?
        });
        Ok(())
    }

    /// Keeps an API token, by its hash (the token itself is never stored).
    pub async fn add_token(&self, hash: &str, user: &str, role: &str, at_ms: i64) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO tokens (hash, username, role, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(hash)
            .bind(user)
            .bind(role)
            .bind(at_ms)
            .execute(pool)
            .await
            .map(|_| ())?
        });
        Ok(())
    }

    /// Whose token has this hash, and their role.
    pub async fn token_owner(&self, hash: &str) -> Result<Option<(String, String)>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT username, role FROM tokens WHERE hash = $1")
                .bind(hash)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// The events of workflow `id` in order (empty for an unknown id).
    pub async fn events(&self, id: &str) -> Result<Vec<EventRecord>> {
        let rows: Vec<(i64, i64, i64, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT seq, at, schema_version, body FROM events WHERE workflow_id = $1 \
                 ORDER BY seq",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(seq, at, schema_version, body)| {
                Ok(EventRecord {
                    seq: to_u64(seq),
                    at,
                    schema_version: to_u32(schema_version),
                    body: parse(id, "event", &body)?,
                })
            })
            .collect()
    }

    /// Appends log lines, all in one transaction; lines keep their order in the slice.
    pub async fn append_logs(&self, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let result: Result<(), sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            insert_log_lines!(tx, lines);
            tx.commit().await
        }
        .await);
        result.map_err(|e| match e.as_database_error().map(|d| d.kind()) {
            Some(sqlx::error::ErrorKind::ForeignKeyViolation) => Error::LogsForUnknownWorkflow(e),
            _ => Error::Database(e),
        })
    }

    /// Log lines of workflow `id` in the order they were appended, optionally of one task and
    /// one attempt, optionally only the last `last_n`.
    pub async fn logs(
        &self,
        id: &str,
        task: Option<&str>,
        retry_id: Option<u32>,
        last_n: Option<usize>,
    ) -> Result<Vec<LogLine>> {
        self.logs_of_stream(id, task, retry_id, None, last_n).await
    }

    /// Up to `limit` lines after log sequence number `after` (0: from the
    /// start), oldest first, each with its sequence number: how a reader
    /// follows a running workflow's logs, one page per poll.
    pub async fn logs_after(
        &self,
        id: &str,
        task: Option<&str>,
        retry_id: Option<u32>,
        stream: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogLine)>> {
        let rows: Vec<LogRaw> = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT seq, workflow_id, task, retry_id, at_ms, stream, line FROM logs \
                 WHERE workflow_id = ",
            );
            q.push_bind(id);
            q.push(" AND seq > ").push_bind(to_i64(after));
            if let Some(task) = task {
                q.push(" AND task = ").push_bind(task);
            }
            if let Some(retry_id) = retry_id {
                q.push(" AND retry_id = ").push_bind(i64::from(retry_id));
            }
            if let Some(stream) = stream {
                q.push(" AND stream = ").push_bind(stream);
            }
            q.push(" ORDER BY seq LIMIT ").push_bind(to_i64(limit as u64));
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    to_u64(r.seq),
                    LogLine {
                        workflow_id: r.workflow_id,
                        task: r.task,
                        retry_id: to_u32(r.retry_id),
                        at_ms: r.at_ms,
                        stream: r.stream,
                        line: r.line,
                    },
                )
            })
            .collect())
    }

    /// [`Store::logs`], of one stream only when `stream` is given (`stderr`, say).
    pub async fn logs_of_stream(
        &self,
        id: &str,
        task: Option<&str>,
        retry_id: Option<u32>,
        stream: Option<&str>,
        last_n: Option<usize>,
    ) -> Result<Vec<LogLine>> {
        let rows: Vec<LogRaw> = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT seq, workflow_id, task, retry_id, at_ms, stream, line FROM logs \
                 WHERE workflow_id = ",
            );
            q.push_bind(id);
            if let Some(task) = task {
                q.push(" AND task = ").push_bind(task);
            }
            if let Some(retry_id) = retry_id {
                q.push(" AND retry_id = ").push_bind(i64::from(retry_id));
            }
            if let Some(stream) = stream {
                q.push(" AND stream = ").push_bind(stream);
            }
            match last_n {
                None => {
                    q.push(" ORDER BY seq");
                }
                Some(n) => {
                    q.push(" ORDER BY seq DESC LIMIT ").push_bind(to_i64(n as u64));
                }
            }
            let mut rows: Vec<LogRaw> = q.build_query_as().fetch_all(pool).await?;
            if last_n.is_some() {
                rows.reverse();
            }
            rows
        });
        Ok(rows
            .into_iter()
            .map(|r| LogLine {
                workflow_id: r.workflow_id,
                task: r.task,
                retry_id: to_u32(r.retry_id),
                at_ms: r.at_ms,
                stream: r.stream,
                line: r.line,
            })
            .collect())
    }
}

/// Which backend a URL names, if any.
fn backend_of(url: &str) -> Option<Backend> {
    if url.starts_with("sqlite:") {
        Some(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(Backend::Postgres)
    } else {
        None
    }
}

/// `url` with any password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &authority[..colon],
        &rest[at..]
    )
}

fn parse(id: &str, what: &'static str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|cause| Error::Corrupt {
        id: id.to_owned(),
        what,
        cause,
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("postgres://osmo:secret@db:5432/osmo?sslmode=require"),
            "postgres://osmo:***@db:5432/osmo?sslmode=require"
        );
        assert_eq!(redact("postgres://osmo@db/osmo"), "postgres://osmo@db/osmo");
        assert_eq!(
            redact("sqlite:///tmp/a.db?mode=rwc"),
            "sqlite:///tmp/a.db?mode=rwc"
        );
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }

    /// The server spawns store calls on tokio's threads: every future must be `Send`.
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(store: &Store, batch: &[Commit], lines: &[LogLine], filter: &ListFilter) {
        fn send<T: Send>(_: T) {}
        send(Store::open(""));
        send(store.close());
        send(store.insert_workflow(
            NewWorkflow {
                name: String::new(),
                pool: String::new(),
                priority: String::new(),
                submitted_by: String::new(),
                spec_source: String::new(),
                spec_rendered: String::new(),
                submitted_at: 0,
                labels: Default::default(),
            },
            |_| Initial {
                state: String::new(),
                state_version: 1,
                status: String::new(),
            },
        ));
        send(store.commit(batch));
        send(store.events_after("", 0));
        send(store.load_unfinished());
        send(store.get_workflow(""));
        send(store.list_workflows(filter));
        send(store.events(""));
        send(store.append_logs(lines));
        send(store.logs("", None, None, None));
    }

    #[test]
    fn backends_by_scheme() {
        assert_eq!(backend_of("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(backend_of("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(backend_of("postgres://h/d"), Some(Backend::Postgres));
        assert_eq!(backend_of("postgresql://h/d"), Some(Backend::Postgres));
        assert_eq!(backend_of("mysql://h/d"), None);
    }
}
