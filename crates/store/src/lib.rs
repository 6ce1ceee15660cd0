//! osmo-store: the durable state of the workflow service.
//!
//! The server keeps one writer per workflow and works event-sourced: every decision of the engine
//! is an event, and [`Store::commit_event`] writes the event, the new engine state, the status and
//! the commands the engine asked for **in one transaction**, before anyone acts on them or
//! acknowledges them. Commands stay in an outbox ([`Store::pending_commands`]) until the server
//! acknowledges them as carried out ([`Store::ack_commands`]), so a restart re-drives whatever was
//! decided but not yet done; [`Store::load_unfinished`] gives back every workflow to rebuild the
//! in-memory state from.
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
//! Each event is one database transaction, so the log can't end in a torn (half-written) record:
//! after a crash, SQLite's WAL and PostgreSQL's recovery roll an unfinished transaction back as a
//! whole. Replay therefore reads either all of an event, its state and its commands, or none of
//! them. Every event row carries the `schema_version` of its body and every state document its
//! `state_version`, for the engine to read old documents.
//!
//! # Ids
//!
//! Workflow ids are `<name>-<N>`, `N` counting up from 1 per name, allocated inside the insert
//! transaction (an upsert on `name_counters`), so concurrent submissions of one name get distinct
//! ids on both backends.

mod error;

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

/// A workflow about to be submitted; [`Store::insert_workflow`] gives it its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The first state of a workflow, made by the caller once its id is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Initial {
    /// The engine's state document.
    pub state: Value,
    /// The schema version of `state`.
    pub state_version: u32,
    /// The status to show.
    pub status: String,
    /// Commands to carry out; they get outbox sequence numbers `1..=commands.len()`.
    pub commands: Vec<Value>,
}

/// One event and everything it decided, for [`Store::commit_event`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventCommit<'a> {
    /// The event.
    pub event: &'a Value,
    /// The schema version of `event`.
    pub event_version: u32,
    /// When it happened, milliseconds since the Unix epoch; becomes `updated_at`.
    pub at: i64,
    /// The engine's state after the event; replaces the stored one.
    pub state: &'a Value,
    /// The schema version of `state`.
    pub state_version: u32,
    /// The status after the event.
    pub status: &'a str,
    /// When the workflow finished, if this event finished it. Once set it is kept: a later
    /// commit neither clears nor moves it.
    pub finished_at: Option<i64>,
    /// Commands the engine asked for; they enter the outbox.
    pub commands: &'a [Value],
}

/// What [`Store::commit_event`] assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The event's sequence number in its workflow, from 1.
    pub event_seq: u64,
    /// The outbox sequence number of the event's last command. The event's `n` commands got
    /// `last_command_seq - n + 1 ..= last_command_seq`; with no commands this is the workflow's
    /// latest number so far. Acknowledge with [`Store::ack_commands`] once they are carried out.
    pub last_command_seq: u64,
}

/// A workflow as stored, with its state document.
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
    /// The engine's state document.
    pub state: Value,
    /// The schema version of `state`.
    pub state_version: u32,
    /// Sequence number of the latest event; 0 before the first.
    pub last_event_seq: u64,
    /// Outbox sequence number of the latest command; 0 before the first.
    pub last_command_seq: u64,
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
    /// At most this many ([`DEFAULT_LIST_LIMIT`] when `None`, never more than
    /// [`MAX_LIST_LIMIT`]).
    pub limit: Option<u32>,
    /// Skip this many of the newest first.
    pub offset: u64,
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

/// A command decided but not yet acknowledged as carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCommand {
    /// The workflow that decided it.
    pub workflow_id: String,
    /// Its outbox sequence number in that workflow, from 1.
    pub seq: u64,
    /// The command.
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

/// The durable state of the workflow service; cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
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

const WORKFLOW_COLUMNS: &str = "id, name, seq, pool, priority, status, submitted_by, \
     submitted_at, updated_at, finished_at, spec_source, spec_rendered, state, state_version, \
     last_event_seq, last_command_seq";

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
    last_event_seq: i64,
    last_command_seq: i64,
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
            last_event_seq: to_u64(self.last_event_seq),
            last_command_seq: to_u64(self.last_command_seq),
        })
    }
}

#[derive(sqlx::FromRow)]
struct LogRaw {
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
        let pool = match backend_of(url) {
            Some(Backend::Sqlite) => {
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(open_err)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true);
                let mut pool = SqlitePoolOptions::new();
                // A memory database lives and dies with its one connection.
                pool = if in_memory {
                    pool.max_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None)
                } else {
                    pool.max_connections(8)
                };
                let pool = pool.connect_with(options).await.map_err(open_err)?;
                SQLITE_MIGRATIONS.run(&pool).await?;
                Pool::Sqlite(pool)
            }
            Some(Backend::Postgres) => {
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .map_err(open_err)?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Pool::Postgres(pool)
            }
            None => return Err(Error::UnsupportedUrl(redact(url))),
        };
        Ok(Store { pool })
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
    /// In one transaction: allocates the id, calls `make_state(id)` for the first state, status
    /// and commands, and writes the row and the commands (outbox numbers `1..=n`). Nothing is
    /// stored if any step fails.
    pub async fn insert_workflow<F>(&self, new: NewWorkflow, make_state: F) -> Result<String>
    where
        F: FnOnce(&str) -> Initial,
    {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // A write first: on SQLite the transaction takes the write lock (waiting its turn)
            // before it reads anything, so it never has to upgrade a stale snapshot.
            let (n,): (i64,) = sqlx::query_as(
                "INSERT INTO name_counters (name, last) VALUES ($1, 1) \
                 ON CONFLICT (name) DO UPDATE SET last = name_counters.last + 1 \
                 RETURNING last",
            )
            .bind(&new.name)
            .fetch_one(&mut *tx)
            .await?;
            let id = format!("{}-{n}", new.name);
            let initial = make_state(&id);
            let state = to_text(&initial.state);
            sqlx::query(
                "INSERT INTO workflows (id, name, seq, pool, priority, status, submitted_by, \
                 submitted_at, updated_at, finished_at, spec_source, spec_rendered, state, \
                 state_version, last_event_seq, last_command_seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, NULL, $9, $10, $11, $12, 0, $13)",
            )
            .bind(&id)
            .bind(&new.name)
            .bind(n)
            .bind(&new.pool)
            .bind(&new.priority)
            .bind(&initial.status)
            .bind(&new.submitted_by)
            .bind(new.submitted_at)
            .bind(&new.spec_source)
            .bind(&new.spec_rendered)
            .bind(state)
            .bind(i64::from(initial.state_version))
            .bind(to_i64(initial.commands.len() as u64))
            .execute(&mut *tx)
            .await?;
            let mut next: i64 = 1;
            for chunk in initial.commands.chunks(ROWS_PER_INSERT) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO pending_commands (workflow_id, seq, body) ",
                );
                q.push_values(chunk, |mut b, command| {
                    b.push_bind(&id).push_bind(next).push_bind(to_text(command));
                    next += 1;
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Commits one event of workflow `id` with everything it decided, in one transaction:
    /// appends the event, replaces the state, sets the status (and `finished_at`, once), and puts
    /// the commands in the outbox. Call it before acting on the event or acknowledging it.
    pub async fn commit_event(&self, id: &str, commit: &EventCommit<'_>) -> Result<Committed> {
        let event = to_text(commit.event);
        let state = to_text(commit.state);
        let n_commands = to_i64(commit.commands.len() as u64);
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // The write comes first, as in `insert_workflow`.
            let row: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE workflows SET state = $2, state_version = $3, status = $4, \
                 updated_at = $5, finished_at = COALESCE(finished_at, $6), \
                 last_event_seq = last_event_seq + 1, \
                 last_command_seq = last_command_seq + $7 \
                 WHERE id = $1 RETURNING last_event_seq, last_command_seq",
            )
            .bind(id)
            .bind(&state)
            .bind(i64::from(commit.state_version))
            .bind(commit.status)
            .bind(commit.at)
            .bind(commit.finished_at)
            .bind(n_commands)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((event_seq, last_command_seq)) = row else {
                return Err(Error::UnknownWorkflow(id.to_owned()));
            };
            sqlx::query(
                "INSERT INTO events (workflow_id, seq, at, schema_version, body) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(event_seq)
            .bind(commit.at)
            .bind(i64::from(commit.event_version))
            .bind(&event)
            .execute(&mut *tx)
            .await?;
            let mut next = last_command_seq - n_commands + 1;
            for chunk in commit.commands.chunks(ROWS_PER_INSERT) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO pending_commands (workflow_id, seq, body) ",
                );
                q.push_values(chunk, |mut b, command| {
                    b.push_bind(id).push_bind(next).push_bind(to_text(command));
                    next += 1;
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Committed {
                event_seq: to_u64(event_seq),
                last_command_seq: to_u64(last_command_seq),
            })
        })
    }

    /// Acknowledges every command of workflow `id` up to and including outbox number `up_to_seq`
    /// as carried out; returns how many were still pending.
    pub async fn ack_commands(&self, id: &str, up_to_seq: u64) -> Result<u64> {
        with_pool!(self, pool => {
            let done = sqlx::query("DELETE FROM pending_commands WHERE workflow_id = $1 AND seq <= $2")
                .bind(id)
                .bind(to_i64(up_to_seq))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// Every command decided but not yet acknowledged, by workflow and then in order: what a
    /// restarted server carries out again.
    pub async fn pending_commands(&self) -> Result<Vec<PendingCommand>> {
        let rows: Vec<(String, i64, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT workflow_id, seq, body FROM pending_commands ORDER BY workflow_id, seq",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(workflow_id, seq, body)| {
                Ok(PendingCommand {
                    body: parse(&workflow_id, "command", &body)?,
                    workflow_id,
                    seq: to_u64(seq),
                })
            })
            .collect()
    }

    /// Every workflow without a `finished_at`, oldest first: the state to rebuild at start-up.
    pub async fn load_unfinished(&self) -> Result<Vec<WorkflowRow>> {
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE finished_at IS NULL \
             ORDER BY submitted_at, seq, id"
        );
        let rows: Vec<WorkflowRaw> = with_pool!(self, pool => {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.into_iter().map(WorkflowRaw::into_row).collect()
    }

    /// The workflow with this id, if there is one.
    pub async fn get_workflow(&self, id: &str) -> Result<Option<WorkflowRow>> {
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = $1");
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
            q.push(" ORDER BY submitted_at DESC, seq DESC, id DESC LIMIT ")
                .push_bind(i64::from(limit))
                .push(" OFFSET ")
                .push_bind(to_i64(filter.offset));
            Ok(q.build_query_as().fetch_all(pool).await?)
        })
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
            for chunk in lines.chunks(ROWS_PER_INSERT) {
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
                q.build().execute(&mut *tx).await?;
            }
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

fn to_text(value: &Value) -> String {
    // Serializing a `Value` can't fail: its map keys are strings.
    value.to_string()
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
    fn futures_are_send(store: &Store, v: &Value, lines: &[LogLine], filter: &ListFilter) {
        fn send<T: Send>(_: T) {}
        let commit = EventCommit {
            event: v,
            event_version: 1,
            at: 0,
            state: v,
            state_version: 1,
            status: "",
            finished_at: None,
            commands: &[],
        };
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
            },
            |_| Initial {
                state: Value::Null,
                state_version: 1,
                status: String::new(),
                commands: Vec::new(),
            },
        ));
        send(store.commit_event("", &commit));
        send(store.ack_commands("", 0));
        send(store.pending_commands());
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
