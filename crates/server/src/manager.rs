//! The async shell around the server's [`Core`]: it owns the store, takes
//! API requests, backend messages and timers from their channels, hands them
//! to the core, and commits what the core prepares before the core acts on
//! it. The events that arrived together (an agent reporting 50 exits) are
//! committed in one transaction; a commit that fails is retried until it
//! lands (nothing is acted on before it is durable, nothing decided is lost
//! or applied twice).
//!
//! After a restart it loads each unfinished workflow's snapshot, replays the
//! events after it (a bounded tail: see [`SNAPSHOT_MIN`](super::core::SNAPSHOT_MIN)) and hands the result
//! to the core, which reconciles with the backends' report of what still runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use osmo_engine::{Command, Event, Rules, WorkflowState};
use osmo_spec::config::ServiceConfig;
use osmo_spec::model::Workflow;
use osmo_store::Store;
use tokio::sync::{mpsc, oneshot};

use super::agent_link::LinkEvent;
use super::backend::Backend;
use super::core::{Core, Restored};
use super::persisted::{Persisted, STATE_VERSION};
use crate::api_types::WorkflowDoc;
use crate::now_ms;

/// The most events one commit takes from the backends' queue.
const MAX_BATCH: usize = 4096;
/// How long a batch that nothing waits for (phases, exits that decide
/// nothing) may wait for the next commit: the live state shows it at once;
/// only its durability (and an exit's acknowledgement) waits.
const LAZY_FLUSH: Duration = Duration::from_millis(5);
/// Submits stored in one transaction at most.
const MAX_SUBMITS: usize = 256;

/// Gives `workflow` the pool's default timeouts where it sets none; the
/// pool's retry rules.
fn with_pool_defaults(workflow: &mut Workflow, pool: &osmo_spec::config::PoolConfig) -> Rules {
    if workflow.timeout.exec.is_none() {
        workflow.timeout.exec = pool.default_exec_timeout;
    }
    if workflow.timeout.queue.is_none() {
        workflow.timeout.queue = pool.default_queue_timeout;
    }
    Rules {
        max_retry_per_task: pool.max_retry_per_task,
        default_exit_actions: pool.default_exit_actions.clone(),
    }
}

/// A submit: what the API checked, and where the new workflow's ID goes.
pub struct Submit {
    pub pool: String,
    pub priority: Priority,
    pub submitted_by: String,
    pub workflow: Box<Workflow>,
    pub source: String,
    pub rendered: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub reply: oneshot::Sender<anyhow::Result<String>>,
}

/// Requests from the API that change state.
pub enum Request {
    Submit(Submit),
    Cancel {
        id: String,
        by: String,
        message: Option<String>,
        reply: oneshot::Sender<Result<String, CancelError>>,
    },
    /// Runs a finished workflow again as a new one: only its groups that did
    /// not complete run (OSMO's `workflow restart`); `pool` moves it.
    Restart {
        id: String,
        pool: Option<String>,
        by: String,
        reply: oneshot::Sender<Result<String, RestartError>>,
    },
    /// Each pool's use now.
    Usage {
        reply: oneshot::Sender<Vec<super::core::PoolUsage>>,
    },
    /// Task list rows of the running workflows (or of one).
    TaskRows {
        id: Option<String>,
        reply: oneshot::Sender<Option<Vec<serde_json::Value>>>,
    },
    /// The live gauges of a metrics scrape.
    Live {
        reply: oneshot::Sender<crate::metrics::Live>,
    },
    /// The live document of a workflow here: an unfinished one, or one
    /// that finished whose end's commit has not landed yet. None when it is
    /// not here (finished and committed: the store has its final state).
    Query {
        id: String,
        verbose: bool,
        reply: oneshot::Sender<Option<WorkflowDoc>>,
    },
    /// Answers once everything taken so far is committed. The live state
    /// shows a task's end before its commit lands (which may wait for the
    /// next batch), and the log lines that came before it land with it: a
    /// reader of the store (the logs, the events) asks this first, so that
    /// a workflow seen finished has all its lines and events there.
    Synced {
        reply: oneshot::Sender<()>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("workflow {0} is not known; `osmo workflow list` shows the workflows")]
    Unknown(String),
    #[error("workflow {0} is {1}: only a finished workflow that did not complete can be restarted")]
    NotRestartable(String, String),
    #[error("there is no pool `{0}`")]
    UnknownPool(String),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("workflow {0} is not known; `osmo workflow list` shows the workflows")]
    Unknown(String),
    #[error("workflow {0} already finished with status {1}; nothing to cancel")]
    Finished(String, String),
    #[error("{0}")]
    Store(String),
}

/// OSMO's submit priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s.to_ascii_uppercase().as_str() {
            "LOW" => Some(Priority::Low),
            "NORMAL" => Some(Priority::Normal),
            "HIGH" => Some(Priority::High),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "LOW",
            Priority::Normal => "NORMAL",
            Priority::High => "HIGH",
        }
    }
}

pub struct Manager {
    store: Store,
    config: Arc<ServiceConfig>,
    core: Core,
    /// When the batch that waits for no one is committed at the latest.
    flush_by: Option<tokio::time::Instant>,
    /// The commit on its way to the store, on a task of its own: meanwhile
    /// the manager goes on taking backend messages and dispatching launches
    /// decided before, and gathers the next batch.
    in_flight: Option<InFlight>,
    /// A commit was asked for while another was on its way: it starts as
    /// soon as that one has landed.
    commit_wanted: bool,
    /// Commits started and landed so far, and the [`Request::Synced`]
    /// answers waiting for the commit numbered with them to land.
    started_commits: u64,
    landed_commits: u64,
    synced_waiting: Vec<(u64, oneshot::Sender<()>)>,
    /// Submits being stored, on a task of their own, and those that wait
    /// for that transaction to land (they go in the next).
    submitting: Option<tokio::task::JoinHandle<Stored>>,
    waiting_submits: Vec<Submit>,
}

/// A transaction of submits that has landed: each workflow's ID (or the
/// store's error) and its state, in the submits' order.
struct Stored {
    ids: Result<Vec<String>, osmo_store::Error>,
    made: Vec<Option<(WorkflowState, Vec<Command>)>>,
    submitters: Vec<Submitter>,
}

/// Who a stored submit is for, and where its ID goes.
struct Submitter {
    pool: String,
    priority: Priority,
    submitted_by: String,
    reply: oneshot::Sender<anyhow::Result<String>>,
}

/// A commit on its way; it hands back what it committed.
type InFlight = tokio::task::JoinHandle<Vec<osmo_store::Commit>>;

impl Manager {
    /// `backends` names each pool's backend; `inbox` is the sender of the
    /// channel the manager's `run` reads backend events from.
    pub async fn new(
        store: Store,
        config: Arc<ServiceConfig>,
        backends: HashMap<String, Arc<dyn Backend>>,
        inbox: mpsc::UnboundedSender<LinkEvent>,
        data_dir: PathBuf,
        task_url: Option<String>,
        vault: crate::credentials::Vault,
    ) -> anyhow::Result<Manager> {
        let core = Core::new(config.clone(), backends, inbox, data_dir, task_url, vault);
        let mut manager = Manager {
            store,
            config,
            core,
            flush_by: None,
            in_flight: None,
            commit_wanted: false,
            started_commits: 0,
            landed_commits: 0,
            synced_waiting: Vec::new(),
            submitting: None,
            waiting_submits: Vec::new(),
        };
        manager.recover().await?;
        Ok(manager)
    }

    /// Rebuilds every unfinished workflow from the store: its snapshot, then
    /// the events after it replayed (their commands were carried out before,
    /// or are re-driven by reconciling with the backends).
    async fn recover(&mut self) -> anyhow::Result<()> {
        let mut replayed = 0;
        for row in self.store.load_unfinished().await? {
            let mut engine = Persisted::from_json(row.state)?.engine;
            let tail = self.store.events_after(&row.id, row.snapshot_seq).await?;
            let mut scratch = Vec::new();
            for record in &tail {
                let event: Event = serde_json::from_value(record.body.clone())
                    .map_err(|e| anyhow::anyhow!("event {} of {}: {e}", record.seq, row.id))?;
                engine.apply(&event, record.at as u64, &mut scratch);
                scratch.clear();
            }
            replayed += tail.len();
            self.core.restore(Restored {
                id: row.id,
                engine,
                pool: row.pool,
                priority: Priority::parse(&row.priority).unwrap_or(Priority::Normal),
                submitted_by: row.submitted_by,
                snapshot_seq: row.snapshot_seq,
                last_seq: row.last_event_seq.max(row.snapshot_seq + tail.len() as u64),
            });
        }
        if self.core.active_count() > 0 {
            tracing::info!(
                "resuming {} unfinished workflow(s), {replayed} event(s) replayed",
                self.core.active_count()
            );
        }
        Ok(())
    }

    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut link_events: mpsc::UnboundedReceiver<LinkEvent>,
    ) {
        loop {
            let next_timer = self.core.next_timer().map(|at| {
                tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
            });
            let wake = match (next_timer, self.flush_by) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async move {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Submit(first)) => {
                        // Group commit: the submits waiting behind this one go in
                        // its transaction; the first other request is served after.
                        self.waiting_submits.push(first);
                        let mut other = None;
                        while self.waiting_submits.len() < MAX_SUBMITS {
                            match requests.try_recv() {
                                Ok(Request::Submit(more)) => self.waiting_submits.push(more),
                                Ok(request) => {
                                    other = Some(request);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.start_submits();
                        if let Some(request) = other {
                            self.handle_request(request).await;
                        }
                    }
                    Some(request) => self.handle_request(request).await,
                    None => {
                        while self.submitting.is_some() {
                            let stored = landed(&mut self.submitting).await;
                            self.submitting = None;
                            self.submitted(stored);
                            self.start_submits();
                        }
                        self.settle().await;
                        return;
                    }
                },
                stored = landed(&mut self.submitting) => {
                    self.submitting = None;
                    self.submitted(stored);
                    self.start_submits();
                }
                commits = landed(&mut self.in_flight) => {
                    self.in_flight = None;
                    self.landed(&commits);
                    if self.commit_wanted || self.core.urgent() {
                        self.start_commit();
                    }
                }
                Some(event) = link_events.recv() => {
                    // Group commit: whatever else arrived meanwhile joins this batch.
                    self.core.handle_link(event);
                    while self.core.pending() < MAX_BATCH {
                        match link_events.try_recv() {
                            Ok(more) => self.core.handle_link(more),
                            Err(_) => break,
                        }
                    }
                    // CPUs freed by exits go to launches decided (and committed)
                    // before, while this batch commits: a launch acts on no
                    // decision of this batch. Were the server to die before the
                    // commit, the exits would be reported again and the new
                    // attempts found running.
                    self.core.dispatch();
                    // What no one acts on (phases, exits that decide nothing)
                    // waits a moment at most for the next commit: on a wide
                    // workflow, one commit per few tasks instead of three per
                    // task, and no launch waits for them.
                    if self.core.urgent() {
                        self.start_commit();
                    } else if self.flush_by.is_none() && !self.commit_wanted {
                        self.flush_by = Some(tokio::time::Instant::now() + LAZY_FLUSH);
                    }
                }
                _ = sleep => {
                    self.core.fire_timers(now_ms());
                    self.start_commit();
                }
            }
        }
    }

    async fn handle_request(&mut self, request: Request) {
        match request {
            Request::Submit(submit) => {
                self.waiting_submits.push(submit);
                self.start_submits();
            }
            Request::Cancel {
                id,
                by,
                message,
                reply,
            } => {
                let _ = reply.send(self.cancel(id, by, message).await);
            }
            Request::Restart {
                id,
                pool,
                by,
                reply,
            } => {
                let _ = reply.send(self.restart(id, pool, by).await);
            }
            Request::Usage { reply } => {
                let _ = reply.send(self.core.usage());
            }
            Request::TaskRows { id, reply } => {
                let _ = reply.send(self.core.task_rows(id.as_deref()));
            }
            Request::Live { reply } => {
                let _ = reply.send(self.core.live());
            }
            Request::Query { id, verbose, reply } => {
                let _ = reply.send(self.core.query(&id, verbose));
            }
            Request::Synced { reply } => self.synced(reply),
        }
    }

    /// Stores the submits waiting (up to [`MAX_SUBMITS`]) in one transaction,
    /// on a task of its own, unless a transaction of submits is on its way
    /// (they go in the next). Meanwhile the manager goes on with the rest:
    /// backend messages, launches, queries.
    fn start_submits(&mut self) {
        if self.submitting.is_some() || self.waiting_submits.is_empty() {
            return;
        }
        let rest = self
            .waiting_submits
            .split_off(self.waiting_submits.len().min(MAX_SUBMITS));
        let submits = std::mem::replace(&mut self.waiting_submits, rest);
        let now = now_ms();
        let mut workflows = Vec::with_capacity(submits.len());
        let mut news = Vec::with_capacity(submits.len());
        let mut submitters = Vec::with_capacity(submits.len());
        for s in submits {
            let pool_config = self.config.pools.get(&s.pool).cloned().unwrap_or_default();
            let mut workflow = *s.workflow;
            let rules = with_pool_defaults(&mut workflow, &pool_config);
            news.push(osmo_store::NewWorkflow {
                name: workflow.name.clone(),
                pool: s.pool.clone(),
                priority: s.priority.as_str().to_string(),
                submitted_by: s.submitted_by.clone(),
                spec_source: s.source,
                spec_rendered: s.rendered,
                submitted_at: now as i64,
                labels: s.labels,
            });
            workflows.push(Some((workflow, rules)));
            submitters.push(Submitter {
                pool: s.pool,
                priority: s.priority,
                submitted_by: s.submitted_by,
                reply: s.reply,
            });
        }
        let store = self.store.clone();
        self.submitting = Some(tokio::spawn(async move {
            let mut made: Vec<Option<(WorkflowState, Vec<Command>)>> =
                (0..workflows.len()).map(|_| None).collect();
            let ids = store
                .insert_workflows(news, |i, id| {
                    let (workflow, rules) = workflows[i].take().expect("one state per workflow");
                    let (engine, commands) =
                        WorkflowState::new(id.to_string(), workflow, rules, now);
                    let initial = osmo_store::Initial {
                        state: Persisted::to_text(&engine),
                        state_version: STATE_VERSION,
                        status: engine.status().as_str().to_string(),
                    };
                    made[i] = Some((engine, commands));
                    initial
                })
                .await;
            Stored {
                ids,
                made,
                submitters,
            }
        }));
    }

    /// Hands the stored workflows to the core and answers each submitter
    /// (all with the error if the store failed).
    fn submitted(&mut self, stored: Stored) {
        match stored.ids {
            Ok(ids) => {
                for ((id, made), s) in ids.into_iter().zip(stored.made).zip(stored.submitters) {
                    let (engine, commands) = made.expect("the store made every state");
                    self.core.add(
                        id.clone(),
                        engine,
                        commands,
                        s.pool,
                        s.priority,
                        s.submitted_by,
                    );
                    let _ = s.reply.send(Ok(id));
                }
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                for s in stored.submitters {
                    let _ = s.reply.send(Err(anyhow::anyhow!("{e:#}")));
                }
            }
        }
    }

    async fn cancel(
        &mut self,
        id: String,
        by: String,
        message: Option<String>,
    ) -> Result<String, CancelError> {
        // Finished in the live state, its commit maybe not landed yet: as
        // finished as in the store.
        if let Some(status) = self.core.finished_status(&id) {
            return Err(CancelError::Finished(id, status));
        }
        let Some(status) = self.core.cancel(&id, by, message) else {
            return match self.store.get_workflow(&id).await {
                Ok(Some(row)) => Err(CancelError::Finished(id, row.status)),
                Ok(None) => Err(CancelError::Unknown(id)),
                Err(e) => Err(CancelError::Store(e.to_string())),
            };
        };
        self.flush().await;
        Ok(status)
    }

    async fn restart(
        &mut self,
        id: String,
        pool: Option<String>,
        by: String,
    ) -> Result<String, RestartError> {
        let other = |e: &dyn std::fmt::Display| RestartError::Other(e.to_string());
        // A workflow the live state shows finished is one whose end the
        // store may not hold yet: it lands first (restarts are rare).
        if self.core.finished_status(&id).is_some() {
            self.flush().await;
        }
        let row = match self.store.get_workflow(&id).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(RestartError::Unknown(id)),
            Err(e) => return Err(other(&e)),
        };
        if row.finished_at.is_none() || row.status == "COMPLETED" {
            let status = if row.finished_at.is_none() {
                "still running (cancel it first)".to_string()
            } else {
                row.status.clone()
            };
            return Err(RestartError::NotRestartable(id, status));
        }
        let previous = Persisted::from_json(row.state.clone())
            .map_err(|e| other(&e))?
            .engine;
        let pool = pool.unwrap_or_else(|| row.pool.clone());
        let Some(pool_config) = self.config.pools.get(&pool).cloned() else {
            return Err(RestartError::UnknownPool(pool));
        };
        let mut workflow = osmo_spec::load_rendered(
            &row.spec_rendered,
            &row.spec_rendered,
            "workflow.yaml",
            Some(&pool_config),
        )
        .map_err(|d| {
            other(&format!(
                "the workflow file no longer loads in pool {pool}:\n{d}"
            ))
        })?;
        let rules = with_pool_defaults(&mut workflow, &pool_config);
        let now = now_ms();
        // Checked before anything is stored.
        WorkflowState::restart_of(id.clone(), workflow.clone(), rules.clone(), now, &previous)
            .map_err(|e| other(&e))?;
        let priority = Priority::parse(&row.priority).unwrap_or(Priority::Normal);
        let new = osmo_store::NewWorkflow {
            name: workflow.name.clone(),
            pool: pool.clone(),
            priority: priority.as_str().to_string(),
            submitted_by: by.clone(),
            spec_source: row.spec_source.clone(),
            spec_rendered: row.spec_rendered.clone(),
            submitted_at: now as i64,
            // The same job run again: its labels go with it.
            labels: self
                .store
                .labels_and_tags(std::slice::from_ref(&id))
                .await
                .map_err(|e| other(&e))?
                .remove(&id)
                .map(|lt| lt.labels)
                .unwrap_or_default(),
        };
        let mut made: Option<(WorkflowState, Vec<Command>)> = None;
        let new_id = self
            .store
            .insert_workflow(new, |new_id| {
                let (engine, commands) =
                    WorkflowState::restart_of(new_id.to_string(), workflow, rules, now, &previous)
                        .expect("checked above");
                let initial = osmo_store::Initial {
                    state: Persisted::to_text(&engine),
                    state_version: STATE_VERSION,
                    status: engine.status().as_str().to_string(),
                };
                made = Some((engine, commands));
                initial
            })
            .await
            .map_err(|e| other(&e))?;
        let (engine, commands) = made.expect("the store calls make_state once");
        tracing::info!("{new_id} restarts {id}");
        self.core
            .add(new_id.clone(), engine, commands, pool, priority, by);
        self.flush().await;
        Ok(new_id)
    }

    /// Commits everything so far and lets the core act on it, before it
    /// returns (for a decision a user waits for: a cancel, a restart).
    async fn flush(&mut self) {
        self.settle().await;
        self.start_commit();
        self.settle().await;
    }

    /// Starts committing what the core prepared, or, while another commit is
    /// on its way, has it start when that one has landed (with whatever
    /// arrived meanwhile): one commit at a time, in order.
    fn start_commit(&mut self) {
        self.flush_by = None;
        if self.in_flight.is_some() {
            self.commit_wanted = true;
            return;
        }
        self.commit_wanted = false;
        self.started_commits += 1;
        let commits = self.core.prepare();
        let logs = self.core.take_prepared_logs();
        self.in_flight = Some(tokio::spawn(commit(self.store.clone(), commits, logs)));
    }

    /// Waits for the commit on its way, if any, and lets the core act on it.
    async fn settle(&mut self) {
        if self.in_flight.is_some() {
            let commits = landed(&mut self.in_flight).await;
            self.in_flight = None;
            self.landed(&commits);
        }
    }

    /// A commit has landed: the core acts on it, and the `Synced` requests
    /// it covers are answered.
    fn landed(&mut self, commits: &[osmo_store::Commit]) {
        self.core.committed(commits);
        self.landed_commits += 1;
        let landed = self.landed_commits;
        let (done, waiting) = std::mem::take(&mut self.synced_waiting)
            .into_iter()
            .partition(|(number, _)| *number <= landed);
        self.synced_waiting = waiting;
        for (_, reply) in done {
            let _ = reply.send(());
        }
    }

    /// Answers once everything taken so far is committed, without waiting
    /// here: what is waiting goes in the commit now or the next one (after
    /// the one on its way), and the answer goes when that one has landed.
    fn synced(&mut self, reply: oneshot::Sender<()>) {
        let number = if self.core.pending() > 0 {
            let behind_another = self.in_flight.is_some();
            self.start_commit();
            self.started_commits + u64::from(behind_another)
        } else {
            self.started_commits
        };
        if number <= self.landed_commits {
            let _ = reply.send(());
        } else {
            self.synced_waiting.push((number, reply));
        }
    }
}

/// Commits `commits` and `logs`, retrying until they land, and hands the
/// commits back for [`Core::committed`]. Not committed means not decided
/// yet: nothing was acted on, so the same commit is simply tried again (it
/// is idempotent).
async fn commit(
    store: Store,
    commits: Vec<osmo_store::Commit>,
    logs: Vec<osmo_store::LogBatch>,
) -> Vec<osmo_store::Commit> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    while let Err(e) = store.commit_with_logs(&commits, &logs).await {
        tracing::error!("cannot commit: {e}; retrying in {pause:?}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    crate::metrics::global()
        .commit
        .observe(started.elapsed().as_secs_f64());
    commits
}

/// What a task on its way (a commit, a transaction of submits) hands back,
/// once it has landed; never, when none is (a `select!` branch that stays
/// quiet).
async fn landed<T>(on_its_way: &mut Option<tokio::task::JoinHandle<T>>) -> T {
    match on_its_way {
        Some(handle) => match handle.await {
            Ok(done) => done,
            // These tasks do not fail; if one panicked, so does the manager, as before.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use osmo_engine::testkit::WorkflowBuilder;
    use osmo_engine::{AttemptId, TaskKey};
    use osmo_spec::codes::{Action, CodeSource, ReportedCode};
    use sqlx::Connection;

    use super::*;
    use crate::backend::FakeBackend;
    use crate::proto::{AttemptKey, FromAgent, ToAgent};

    fn key(workflow_id: &str, group: u32, retry_id: u32) -> AttemptKey {
        AttemptKey {
            workflow_id: workflow_id.into(),
            attempt: AttemptId {
                task: TaskKey { group, task: 0 },
                retry_id,
            },
        }
    }

    fn exited(key: AttemptKey, code: u32) -> LinkEvent {
        LinkEvent::Message {
            conn: 1,
            msg: FromAgent::Exited {
                key,
                codes: vec![ReportedCode {
                    code,
                    source: CodeSource::User,
                    detail: None,
                }],
            },
        }
    }

    /// Waits (10 s at most) until the backend was sent what `pick` finds.
    async fn sent(backend: &FakeBackend, pick: impl Fn(&ToAgent) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if backend.sent.lock().unwrap().iter().any(&pick) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    fn launch_of(key: &AttemptKey) -> impl Fn(&ToAgent) -> bool + '_ {
        move |m| matches!(m, ToAgent::Launch(l) if l.key == *key)
    }

    /// A submit of `workflow` to the pool, and where its answer comes.
    fn submit_of(workflow: Workflow) -> (Request, oneshot::Receiver<anyhow::Result<String>>) {
        let (reply, answer) = oneshot::channel();
        let submit = Submit {
            pool: "default".into(),
            priority: Priority::Normal,
            submitted_by: "me".into(),
            workflow: Box::new(workflow),
            source: String::new(),
            rendered: String::new(),
            labels: BTreeMap::new(),
            reply,
        };
        (Request::Submit(submit), answer)
    }

    async fn submit(requests: &mpsc::Sender<Request>, workflow: Workflow) -> String {
        let (request, answer) = submit_of(workflow);
        assert!(requests.send(request).await.is_ok());
        answer.await.unwrap().unwrap()
    }

    /// A manager of one pool of one CPU with a `FakeBackend` that said hello,
    /// on a SQLite file at the URL it gives, running on a task of its own;
    /// with its backend, its inbox and where requests go.
    async fn start() -> (
        tempfile::TempDir,
        String,
        Arc<FakeBackend>,
        mpsc::UnboundedSender<LinkEvent>,
        mpsc::Sender<Request>,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("osmo.db").display());
        let store = Store::open(&url).await.unwrap();
        let backend = Arc::new(FakeBackend::with_cpus(1.0));
        let (config, backends) = FakeBackend::one_pool(&backend);
        let (inbox, link_events) = mpsc::unbounded_channel();
        let manager = Manager::new(
            store,
            config,
            backends,
            inbox.clone(),
            dir.path().to_path_buf(),
            None,
            crate::credentials::Vault::empty(),
        )
        .await
        .unwrap();
        let (requests, request_rx) = mpsc::channel(16);
        let task = tokio::spawn(manager.run(request_rx, link_events));
        inbox
            .send(LinkEvent::Message {
                conn: 1,
                msg: FromAgent::Hello {
                    node: "n".into(),
                    pid: 1,
                    attempts: vec![],
                    starts_prepared: false,
                },
            })
            .unwrap();
        (dir, url, backend, inbox, requests, task)
    }

    /// Another connection that takes the store's write lock and keeps it
    /// until it rolls back.
    async fn lock_the_store(url: &str) -> sqlx::SqliteConnection {
        let mut holder = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        holder
    }

    /// A reader of the store who saw a task end in the live state finds its
    /// log lines once `Synced` has answered: the lines wait for the same
    /// commit as the end, and `Synced` answers only once that has landed.
    #[tokio::test]
    async fn synced_answers_once_the_lines_taken_so_far_are_stored() {
        let (_dir, url, backend, inbox, requests, task) = start().await;
        let reader = Store::open(&url).await.unwrap();
        let wf1 = submit(
            &requests,
            WorkflowBuilder::new("wf1").task("a", &[]).build(),
        )
        .await;
        let a = key(&wf1, 0, 0);
        assert!(sent(&backend, launch_of(&a)).await, "a launched");

        let mut holder = lock_the_store(&url).await;
        let line = crate::proto::LogLine {
            key: a.clone(),
            task: "a".into(),
            at_ms: 0,
            stream: crate::proto::Stream::Stdout,
            line: "the last line".into(),
        };
        inbox
            .send(LinkEvent::Message {
                conn: 1,
                msg: FromAgent::Logs {
                    batch: None,
                    lines: vec![line],
                },
            })
            .unwrap();
        inbox.send(exited(a, 0)).unwrap();
        // As a reader would: the live state shows the workflow finished
        // (its commit cannot land yet), then it asks for `Synced`.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (reply, doc) = oneshot::channel();
            let id = wf1.clone();
            let query = Request::Query {
                id,
                verbose: false,
                reply,
            };
            assert!(requests.send(query).await.is_ok());
            if doc.await.unwrap().is_some_and(|d| d.status == "COMPLETED") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the live state shows wf1 finished"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (reply, mut answer) = oneshot::channel();
        assert!(requests.send(Request::Synced { reply }).await.is_ok());
        // (A bounded wait for what must not happen.)
        let early = tokio::time::timeout(Duration::from_millis(200), &mut answer).await;
        assert!(early.is_err(), "no answer while the commit cannot land");

        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        answer.await.unwrap();
        let lines = reader
            .logs_of_stream(&wf1, None, None, None, None)
            .await
            .unwrap();
        assert!(
            lines.iter().any(|l| l.line == "the last line"),
            "{} line(s) stored",
            lines.len()
        );
        drop(requests);
        task.await.unwrap();
    }

    /// The manager goes on while a commit waits for the store: here the
    /// store's write lock is held by another connection, so a reschedule's
    /// commit cannot land; another task's exit still frees its CPU for the
    /// next launch, and the reschedule's launch and the acknowledgements
    /// wait for the commit.
    #[tokio::test]
    async fn launches_go_on_while_a_commit_waits_for_the_store() {
        let (_dir, url, backend, inbox, requests, task) = start().await;
        // One CPU: `a` runs, then `x`, then `y`.
        let wf1 = submit(
            &requests,
            WorkflowBuilder::new("wf1")
                .task("a", &[(Action::Reschedule, "16")])
                .build(),
        )
        .await;
        let wf2 = submit(
            &requests,
            WorkflowBuilder::new("wf2")
                .task("x", &[])
                .task("y", &[])
                .build(),
        )
        .await;
        let (a, x, y) = (key(&wf1, 0, 0), key(&wf2, 0, 0), key(&wf2, 1, 0));
        assert!(sent(&backend, launch_of(&a)).await, "a launched");

        let mut holder = lock_the_store(&url).await;

        // a asks to be rescheduled: a decision whose commit cannot land now.
        inbox.send(exited(a.clone(), 16)).unwrap();
        assert!(sent(&backend, launch_of(&x)).await, "a's CPU goes to x");
        inbox.send(exited(x.clone(), 0)).unwrap();
        assert!(
            sent(&backend, launch_of(&y)).await,
            "x's exit is taken while a's commit waits: its CPU goes to y"
        );
        let retry = key(&wf1, 0, 1);
        let acked = |m: &ToAgent| matches!(m, ToAgent::Ack { .. });
        {
            let sent = backend.sent.lock().unwrap();
            assert!(
                !sent.iter().any(launch_of(&retry)) && !sent.iter().any(acked),
                "nothing decided is acted on before its commit: {sent:?}"
            );
        }

        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        assert!(
            sent(&backend, |m| matches!(m, ToAgent::Ack { key } if *key == a)).await,
            "a's exit is acknowledged once committed"
        );
        inbox.send(exited(y, 0)).unwrap();
        assert!(
            sent(&backend, launch_of(&retry)).await,
            "a's retry is launched once committed, on the CPU y frees"
        );
        drop(requests);
        task.await.unwrap();
    }

    /// A submit whose transaction waits for the store holds up nothing else:
    /// a request is answered, an exit reported meanwhile frees its CPU for
    /// the next queued task, and the submitter has its answer once the store
    /// took the workflow.
    #[tokio::test]
    async fn launches_go_on_while_a_submit_waits_for_the_store() {
        let (_dir, url, backend, inbox, requests, task) = start().await;
        let wf1 = submit(
            &requests,
            WorkflowBuilder::new("wf1")
                .task("a", &[])
                .task("b", &[])
                .build(),
        )
        .await;
        let (a, b) = (key(&wf1, 0, 0), key(&wf1, 1, 0));
        assert!(sent(&backend, launch_of(&a)).await, "a launched");

        let mut holder = lock_the_store(&url).await;
        let (waiting, answer) = submit_of(WorkflowBuilder::new("wf2").task("x", &[]).build());
        assert!(requests.send(waiting).await.is_ok());
        // Requests are taken in order: once this one is answered, the submit
        // was taken and waits for the store.
        let (reply, usage) = oneshot::channel();
        assert!(requests.send(Request::Usage { reply }).await.is_ok());
        assert!(
            tokio::time::timeout(Duration::from_secs(10), usage)
                .await
                .is_ok(),
            "a request is answered while a submit waits for the store"
        );
        inbox.send(exited(a, 0)).unwrap();
        assert!(
            sent(&backend, launch_of(&b)).await,
            "a's exit is taken while the submit waits: its CPU goes to b"
        );

        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        let wf2 = answer.await.unwrap().unwrap();
        inbox.send(exited(b, 0)).unwrap();
        assert!(
            sent(&backend, launch_of(&key(&wf2, 0, 0))).await,
            "the stored workflow runs"
        );
        drop(requests);
        task.await.unwrap();
    }
}
