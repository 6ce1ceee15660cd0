//! The one task that owns every unfinished workflow's engine state.
//!
//! It `select!`s over API requests, agent messages and timers. Each event is
//! applied to the engine at once and queued; the events that arrived together
//! (an agent reporting 50 exits) are then committed to the store in one
//! transaction, and only then are their commands carried out (launch through
//! the scheduler, release, restart, stop, timers) and their results
//! acknowledged. A commit that fails is retried until it lands: nothing is
//! acted on before it is durable, nothing decided is lost or applied twice.
//!
//! The cost of an event does not depend on the workflow's size: the store
//! appends the event, and the engine state is written as a snapshot only once
//! as many events as the workflow has tasks (at least [`SNAPSHOT_MIN`]) went
//! by, and when it finishes. After a restart the manager loads each unfinished
//! workflow's snapshot, replays the events after it, and reconciles with the
//! backends' report of what still runs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use osmo_engine::{
    AttemptId, Command, Event, Rules, TaskKey, TaskStatus, TimeoutKind, WorkflowState,
};
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};
use osmo_spec::config::{BackendKind, PoolConfig, ServiceConfig};
use osmo_spec::model::Workflow;
use osmo_store::{Commit, LogBatch, NewEvent, Snapshot, Store};
use tokio::sync::{mpsc, oneshot};

use super::agent_link::{AgentLink, LinkEvent};
use super::backend::BackendLink;
use super::docs::{self, DocMeta};
use super::launch::LaunchBuilder;
use super::persisted::{EVENT_VERSION, Persisted, STATE_VERSION};
use super::scheduler::{GroupRef, Scheduler};
use super::slurm::SlurmLink;
use crate::api_types::WorkflowDoc;
use crate::now_ms;
use crate::proto::{AttemptKey, FromAgent, Phase, ToAgent};

/// Requests from the API that change state.
pub enum Request {
    Submit {
        pool: String,
        priority: Priority,
        submitted_by: String,
        workflow: Box<Workflow>,
        source: String,
        rendered: String,
        reply: oneshot::Sender<anyhow::Result<String>>,
    },
    Cancel {
        id: String,
        by: String,
        message: Option<String>,
        reply: oneshot::Sender<Result<String, CancelError>>,
    },
    /// The live document of an unfinished workflow; None when it is not
    /// running here (finished: the store has its final state).
    Query {
        id: String,
        verbose: bool,
        reply: oneshot::Sender<Option<WorkflowDoc>>,
    },
}

/// Events between snapshots, at least: a snapshot costs O(workflow), so one
/// every `max(SNAPSHOT_MIN, tasks)` events keeps the cost per event constant
/// on average and bounds what a restart replays.
pub const SNAPSHOT_MIN: u64 = 256;

/// The most events one commit takes from the backends' queue.
const MAX_BATCH: usize = 4096;

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

struct Active {
    engine: WorkflowState,
    pool: String,
    priority: Priority,
    submitted_by: String,
    /// The furthest phase the agent reported per attempt (events only move forward).
    phases: HashMap<AttemptId, Phase>,
    /// The number of the latest event applied (committed, or in the batch being built).
    last_seq: u64,
    /// The number of the latest event the stored snapshot includes.
    snapshot_seq: u64,
    /// Events between snapshots: `max(SNAPSHOT_MIN, tasks)`.
    snapshot_every: u64,
}

impl Active {
    fn meta(&self, id: &str) -> DocMeta {
        DocMeta {
            id: id.to_string(),
            pool: self.pool.clone(),
            priority: self.priority.as_str().to_string(),
            submitted_by: self.submitted_by.clone(),
        }
    }
}

fn snapshot_every(engine: &WorkflowState) -> u64 {
    let tasks: usize = engine.workflow().groups.iter().map(|g| g.tasks.len()).sum();
    SNAPSHOT_MIN.max(tasks as u64)
}

/// What waits for the batch being built to be committed.
#[derive(Default)]
struct Batch {
    /// Events by workflow, in order.
    events: Vec<(String, NewEvent)>,
    /// Commands by workflow, in the order they were decided.
    commands: Vec<(String, Vec<Command>)>,
    /// Results to acknowledge once committed.
    acks: Vec<AttemptKey>,
    /// Log lines, committed with the events.
    logs: Vec<LogBatch>,
    /// The node agent's log batch to acknowledge once committed.
    logs_ack: Option<u64>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: u64,
    workflow: String,
    group: u32,
    kind: TimeoutKind,
}

pub struct Manager {
    store: Store,
    config: Arc<ServiceConfig>,
    link: AgentLink,
    /// The Slurm pools' links, by pool (every other pool is the local agent's).
    slurm: HashMap<String, SlurmLink>,
    launches: LaunchBuilder,
    active: HashMap<String, Active>,
    schedulers: HashMap<String, Scheduler>,
    /// Attempts handed to the agent and not yet exited, with their pool.
    launched: HashMap<AttemptKey, String>,
    timers: BinaryHeap<Reverse<Timer>>,
    node: String,
    batch: Batch,
}

impl Manager {
    pub async fn new(
        store: Store,
        config: Arc<ServiceConfig>,
        link: AgentLink,
        slurm: HashMap<String, SlurmLink>,
        data_dir: PathBuf,
    ) -> anyhow::Result<Manager> {
        let schedulers = config
            .pools
            .iter()
            .map(|(name, pool)| {
                // Slurm does its own placement: its pools admit every group at
                // once (a job pending in Slurm's queue is still SCHEDULING).
                let capacity = match pool.backend {
                    BackendKind::Slurm => pool.cpu_capacity.unwrap_or(1e12),
                    BackendKind::Local => cpu_capacity(pool),
                };
                (name.clone(), Scheduler::new(capacity))
            })
            .collect();
        let mut manager = Manager {
            store,
            config: config.clone(),
            link,
            slurm,
            launches: LaunchBuilder::new(data_dir, config),
            active: HashMap::new(),
            schedulers,
            launched: HashMap::new(),
            timers: BinaryHeap::new(),
            node: crate::proto::hostname(),
            batch: Batch::default(),
        };
        manager.recover().await?;
        Ok(manager)
    }

    /// Rebuilds every unfinished workflow from the store: its snapshot, then
    /// the events after it replayed (their commands were carried out before,
    /// or are re-driven by reconciling with the backends). Launches are
    /// re-driven once the agent says what it still runs (`Hello`).
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
            for (group, kind, at) in engine.pending_timers() {
                self.timers.push(Reverse(Timer {
                    at,
                    workflow: row.id.clone(),
                    group,
                    kind,
                }));
            }
            let priority = Priority::parse(&row.priority).unwrap_or(Priority::Normal);
            let every = snapshot_every(&engine);
            self.active.insert(
                row.id.clone(),
                Active {
                    engine,
                    pool: row.pool,
                    priority,
                    submitted_by: row.submitted_by,
                    phases: HashMap::new(),
                    last_seq: row.last_event_seq.max(row.snapshot_seq + tail.len() as u64),
                    snapshot_seq: row.snapshot_seq,
                    snapshot_every: every,
                },
            );
        }
        if !self.active.is_empty() {
            tracing::info!(
                "resuming {} unfinished workflow(s), {replayed} event(s) replayed",
                self.active.len()
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
            let next_timer = self.timers.peek().map(|Reverse(t)| t.at);
            let sleep = async move {
                match next_timer {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => self.handle_request(request).await,
                    None => return,
                },
                Some(event) = link_events.recv() => {
                    // Group commit: whatever else arrived meanwhile joins this batch.
                    self.handle_link(event);
                    while self.batch.events.len() + self.batch.logs.len() < MAX_BATCH {
                        match link_events.try_recv() {
                            Ok(more) => self.handle_link(more),
                            Err(_) => break,
                        }
                    }
                    // CPUs freed by exits go to launches decided (and committed)
                    // before, while this batch commits: a launch acts on no
                    // decision of this batch. Were the server to die before the
                    // commit, the exits would be reported again and the new
                    // attempts found running.
                    self.dispatch();
                    self.flush().await;
                }
                _ = sleep => self.fire_timers().await,
            }
        }
    }

    async fn handle_request(&mut self, request: Request) {
        match request {
            Request::Submit {
                pool,
                priority,
                submitted_by,
                workflow,
                source,
                rendered,
                reply,
            } => {
                let result = self
                    .submit(pool, priority, submitted_by, *workflow, source, rendered)
                    .await;
                let _ = reply.send(result);
            }
            Request::Cancel {
                id,
                by,
                message,
                reply,
            } => {
                let _ = reply.send(self.cancel(id, by, message).await);
            }
            Request::Query { id, verbose, reply } => {
                let doc = self
                    .active
                    .get(&id)
                    .map(|a| docs::workflow_doc(&a.meta(&id), &a.engine, verbose));
                let _ = reply.send(doc);
            }
        }
    }

    async fn submit(
        &mut self,
        pool: String,
        priority: Priority,
        submitted_by: String,
        mut workflow: Workflow,
        source: String,
        rendered: String,
    ) -> anyhow::Result<String> {
        let pool_config = self.config.pools.get(&pool).cloned().unwrap_or_default();
        if workflow.timeout.exec.is_none() {
            workflow.timeout.exec = pool_config.default_exec_timeout;
        }
        if workflow.timeout.queue.is_none() {
            workflow.timeout.queue = pool_config.default_queue_timeout;
        }
        let rules = Rules {
            max_retry_per_task: pool_config.max_retry_per_task,
            default_exit_actions: pool_config.default_exit_actions.clone(),
        };
        let now = now_ms();
        let mut made: Option<(WorkflowState, Vec<Command>)> = None;
        let submitter = submitted_by.clone();
        let new = osmo_store::NewWorkflow {
            name: workflow.name.clone(),
            pool: pool.clone(),
            priority: priority.as_str().to_string(),
            submitted_by,
            spec_source: source,
            spec_rendered: rendered,
            submitted_at: now as i64,
        };
        let id = self
            .store
            .insert_workflow(new, |id| {
                let (engine, commands) = WorkflowState::new(id.to_string(), workflow, rules, now);
                let initial = osmo_store::Initial {
                    state: Persisted::to_text(&engine),
                    state_version: STATE_VERSION,
                    status: engine.status().as_str().to_string(),
                };
                made = Some((engine, commands));
                initial
            })
            .await?;
        let (engine, commands) = made.expect("the store calls make_state once");
        let every = snapshot_every(&engine);
        self.active.insert(
            id.clone(),
            Active {
                engine,
                pool,
                priority,
                submitted_by: submitter,
                phases: HashMap::new(),
                last_seq: 0,
                snapshot_seq: 0,
                snapshot_every: every,
            },
        );
        self.carry_out(&id, commands);
        self.dispatch();
        Ok(id)
    }

    async fn cancel(
        &mut self,
        id: String,
        by: String,
        message: Option<String>,
    ) -> Result<String, CancelError> {
        if !self.active.contains_key(&id) {
            return match self.store.get_workflow(&id).await {
                Ok(Some(row)) => Err(CancelError::Finished(id, row.status)),
                Ok(None) => Err(CancelError::Unknown(id)),
                Err(e) => Err(CancelError::Store(e.to_string())),
            };
        }
        let status = self.apply(
            &id,
            Event::Cancel {
                by,
                reason: message,
            },
        );
        self.flush().await;
        Ok(status.unwrap_or_else(|| "UNKNOWN".to_string()))
    }

    /// Applies one event to its workflow's engine and adds it to the batch;
    /// its commands wait for [`Manager::flush`]. Returns the workflow's
    /// status after it (None: not a workflow running here).
    fn apply(&mut self, id: &str, event: Event) -> Option<String> {
        let active = self.active.get_mut(id)?;
        if active.engine.is_finished() {
            // Nothing can change it any more; nothing to record.
            return Some(active.engine.status().as_str().to_string());
        }
        let now = now_ms();
        let mut commands = Vec::new();
        active.engine.apply(&event, now, &mut commands);
        active.last_seq += 1;
        let body = serde_json::to_string(&event).expect("events serialize");
        self.batch.events.push((
            id.to_string(),
            NewEvent {
                at: now as i64,
                schema_version: EVENT_VERSION,
                body,
            },
        ));
        if !commands.is_empty() {
            self.batch.commands.push((id.to_string(), commands));
        }
        Some(active.engine.status().as_str().to_string())
    }

    /// Commits the batch (retrying until it lands), then carries out its
    /// commands, acknowledges its results and dispatches launches.
    async fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let commits = self.commits(&batch);
        let mut pause = Duration::from_millis(50);
        while let Err(e) = self.store.commit_with_logs(&commits, &batch.logs).await {
            // Not committed means not decided yet: nothing was acted on, so
            // the same commit is simply tried again (it is idempotent).
            tracing::error!(
                "cannot commit {} event(s): {e}; retrying in {pause:?}",
                batch.events.len()
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        for (id, snapshot_seq) in commits
            .iter()
            .filter(|c| c.snapshot.is_some())
            .map(|c| (&c.workflow_id, c.last_seq()))
        {
            if let Some(active) = self.active.get_mut(id) {
                active.snapshot_seq = snapshot_seq;
            }
        }
        for (id, commands) in batch.commands {
            self.carry_out(&id, commands);
        }
        for key in batch.acks {
            self.link_for(&key).send(ToAgent::Ack { key });
        }
        if let Some(seq) = batch.logs_ack {
            self.link.send(ToAgent::LogsAck { seq });
        }
        self.dispatch();
    }

    /// One commit per workflow of the batch, with a snapshot where one is due.
    fn commits(&self, batch: &Batch) -> Vec<Commit> {
        let mut commits: Vec<Commit> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (id, event) in &batch.events {
            let i = *index.entry(id.as_str()).or_insert_with(|| {
                commits.push(Commit {
                    workflow_id: id.clone(),
                    first_seq: 0,
                    events: Vec::new(),
                    status: String::new(),
                    updated_at: 0,
                    finished_at: None,
                    snapshot: None,
                });
                commits.len() - 1
            });
            commits[i].events.push(event.clone());
        }
        for commit in &mut commits {
            let Some(active) = self.active.get(&commit.workflow_id) else {
                continue;
            };
            let engine = &active.engine;
            commit.first_seq = active.last_seq + 1 - commit.events.len() as u64;
            commit.status = engine.status().as_str().to_string();
            commit.updated_at = commit.events.last().map_or(0, |e| e.at);
            commit.finished_at = engine
                .is_finished()
                .then(|| engine.end_time().unwrap_or(commit.updated_at as u64) as i64);
            let due = active.last_seq - active.snapshot_seq >= active.snapshot_every;
            if due || engine.is_finished() {
                commit.snapshot = Some(Snapshot {
                    state: Persisted::to_text(engine),
                    state_version: STATE_VERSION,
                });
            }
        }
        commits
    }

    fn carry_out(&mut self, id: &str, commands: Vec<Command>) {
        let Some(active) = self.active.get(id) else {
            return;
        };
        let pool = active.pool.clone();
        let priority = active.priority as u8;
        let mut launches: Vec<(u32, Vec<AttemptId>)> = Vec::new();
        let mut finished = false;
        for command in commands {
            match command {
                Command::Launch { attempt } => {
                    match launches.iter_mut().find(|(g, _)| *g == attempt.task.group) {
                        Some((_, list)) => list.push(attempt),
                        None => launches.push((attempt.task.group, vec![attempt])),
                    }
                }
                Command::Release { attempts } => {
                    for attempt in attempts {
                        self.link_of(&pool).send(ToAgent::Release {
                            key: key(id, attempt),
                        });
                    }
                }
                Command::Stop { attempt, .. } => {
                    let queued = self
                        .schedulers
                        .get_mut(&pool)
                        .is_some_and(|s| s.dequeue(&(id.to_string(), attempt.task.group), attempt));
                    if !queued {
                        self.link_of(&pool).send(ToAgent::Stop {
                            key: key(id, attempt),
                        });
                    }
                }
                Command::Restart { attempt, reason } => {
                    self.link_of(&pool).send(ToAgent::Restart {
                        key: key(id, attempt),
                        reason,
                    });
                }
                Command::SetTimer { group, kind, at } => self.timers.push(Reverse(Timer {
                    at,
                    workflow: id.to_string(),
                    group,
                    kind,
                })),
                Command::Finished { .. } => finished = true,
            }
        }
        let workflow = active.engine.workflow();
        for (group, attempts) in launches {
            let footprint = self.launches.footprint(workflow, group as usize);
            if let Some(s) = self.schedulers.get_mut(&pool) {
                s.enqueue((id.to_string(), group), footprint, priority, attempts);
            }
        }
        if finished {
            for s in self.schedulers.values_mut() {
                s.forget_workflow(id);
            }
            self.active.remove(id);
        }
    }

    /// Hands admitted launches to the agent (only while one is connected).
    fn dispatch(&mut self) {
        let ready: Vec<String> = self
            .schedulers
            .keys()
            .filter(|pool| self.link_of(pool).connected())
            .cloned()
            .collect();
        let mut admitted: Vec<(String, GroupRef, AttemptId)> = Vec::new();
        for (pool, s) in self.schedulers.iter_mut() {
            if !ready.contains(pool) {
                continue;
            }
            admitted.extend(s.admit().into_iter().map(|(g, a)| (pool.clone(), g, a)));
        }
        for (pool, (workflow_id, _), attempt) in admitted {
            let Some(active) = self.active.get(&workflow_id) else {
                continue;
            };
            let pool_config = self.config.pools.get(&pool).cloned().unwrap_or_default();
            let attempt_key = key(&workflow_id, attempt);
            match self
                .launches
                .build(&active.engine, &pool_config, attempt_key.clone())
            {
                Ok(launch) => {
                    let sent = self.link_of(&pool).send(ToAgent::Launch(Box::new(launch)));
                    self.launched.insert(attempt_key.clone(), pool);
                    if !sent {
                        tracing::warn!(
                            "the agent went away before {} launched",
                            attempt_key.file_stem()
                        );
                    }
                }
                Err(e) => {
                    tracing::error!("cannot prepare {}: {e:#}", attempt_key.file_stem());
                    // Reported like any exit so the engine decides; no capacity is held.
                    if let Some(s) = self.schedulers.get_mut(&pool) {
                        s.finished(&(workflow_id.clone(), attempt.task.group));
                    }
                    let codes = vec![ReportedCode {
                        code: well_known::INIT_FILES,
                        source: CodeSource::Init,
                        detail: Some(format!("{e:#}")),
                    }];
                    let _ = self.link_exit_later(attempt_key, codes);
                }
            }
        }
    }

    /// The link that runs `pool`'s attempts.
    fn link_of(&self, pool: &str) -> &dyn BackendLink {
        match self.slurm.get(pool) {
            Some(link) => link,
            None => &self.link,
        }
    }

    /// The link that runs (or ran) this attempt.
    fn link_for(&self, key: &AttemptKey) -> &dyn BackendLink {
        match self
            .launched
            .get(key)
            .or_else(|| self.active.get(&key.workflow_id).map(|a| &a.pool))
        {
            Some(pool) => self.link_of(pool),
            None => &self.link,
        }
    }

    /// Sends to a backend as a whole (every Slurm pool shares one driver).
    fn send_to_backend(&self, backend: BackendKind, msg: ToAgent) -> bool {
        match backend {
            BackendKind::Local => self.link.send(msg),
            BackendKind::Slurm => self.slurm.values().next().is_some_and(|l| l.send(msg)),
        }
    }

    fn backend_of(&self, pool: &str) -> BackendKind {
        if self.slurm.contains_key(pool) {
            BackendKind::Slurm
        } else {
            BackendKind::Local
        }
    }

    /// Queues an exit the server itself decided, handled like an agent's.
    fn link_exit_later(&self, key: AttemptKey, codes: Vec<ReportedCode>) -> bool {
        self.link.loopback(LinkEvent::Message {
            conn: 0,
            msg: FromAgent::Exited { key, codes },
        })
    }

    /// Applies what a backend reported; commands and acknowledgements wait
    /// for the batch's commit ([`Manager::flush`]).
    fn handle_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Ready { backend, attempts } => {
                tracing::info!(
                    "the {backend:?} backend is ready with {} attempt(s)",
                    attempts.len()
                );
                self.reconcile(backend, attempts);
                for link in self.slurm.values() {
                    link.set_ready();
                }
            }
            LinkEvent::Disconnected { conn } => {
                tracing::warn!("node agent connection {conn} closed; waiting for it to dial back")
            }
            LinkEvent::Message {
                msg: FromAgent::Logs { lines, batch },
                ..
            } => {
                // Lines of workflows not running here (never known, or gone) have no row to go to.
                let rows = lines
                    .into_iter()
                    .filter(|l| self.active.contains_key(&l.key.workflow_id))
                    .map(|l| osmo_store::LogLine {
                        workflow_id: l.key.workflow_id,
                        task: l.task,
                        retry_id: l.key.attempt.retry_id,
                        at_ms: l.at_ms as i64,
                        stream: l.stream.as_str().to_string(),
                        line: l.line,
                    })
                    .collect();
                if let Some((_, seq)) = &batch {
                    self.batch.logs_ack = Some(self.batch.logs_ack.unwrap_or(0).max(*seq));
                }
                self.batch.logs.push(LogBatch {
                    source: batch,
                    lines: rows,
                });
            }
            LinkEvent::Message {
                msg: FromAgent::Phase { key, phase, node },
                ..
            } => {
                self.advance(&key, phase, node);
            }
            LinkEvent::Message {
                msg: FromAgent::RunStopped { key, codes },
                ..
            } => {
                // The next run's start is news again.
                if let Some(active) = self.active.get_mut(&key.workflow_id) {
                    active.phases.insert(key.attempt, Phase::SetupDone);
                }
                self.apply(
                    &key.workflow_id,
                    Event::RunStopped {
                        attempt: key.attempt,
                        codes,
                    },
                );
            }
            LinkEvent::Message {
                msg: FromAgent::Exited { key, codes },
                ..
            } => {
                // The command ran, but its phases were lost (a server restart
                // between them): record its run before its end.
                if codes.iter().any(|c| c.source == CodeSource::User) {
                    self.advance(&key, Phase::Running, None);
                }
                self.apply(
                    &key.workflow_id,
                    Event::Exited {
                        attempt: key.attempt,
                        codes,
                    },
                );
                // Acknowledged once committed: the backend keeps it until then.
                self.batch.acks.push(key.clone());
                if let Some(pool) = self.launched.remove(&key)
                    && let Some(s) = self.schedulers.get_mut(&pool)
                {
                    s.finished(&(key.workflow_id.clone(), key.attempt.task.group));
                }
            }
            LinkEvent::Message {
                conn,
                msg:
                    FromAgent::Hello {
                        node,
                        pid,
                        attempts,
                    },
            } => {
                tracing::info!(
                    "node agent {pid} on {node} connected with {} attempt(s)",
                    attempts.len()
                );
                self.node = node;
                let attempts = attempts.into_iter().map(|(k, p)| (k, Some(p))).collect();
                self.reconcile(BackendKind::Local, attempts);
                // Only now may launches go (at the batch's flush): before, an attempt
                // launched on this connection could be judged lost by the Hello that
                // was already on its way.
                self.link.set_ready(conn);
            }
        }
    }

    /// Feeds the engine every phase between what it knows and what the agent reports.
    fn advance(&mut self, key: &AttemptKey, phase: Phase, node: Option<String>) {
        let Some(active) = self.active.get_mut(&key.workflow_id) else {
            return;
        };
        let known = active.phases.get(&key.attempt).copied();
        if known.is_some_and(|k| k >= phase) {
            return;
        }
        active.phases.insert(key.attempt, phase);
        let attempt = key.attempt;
        let steps = [Phase::Initializing, Phase::SetupDone, Phase::Running];
        for step in steps
            .into_iter()
            .filter(|s| known.is_none_or(|k| *s > k) && *s <= phase)
        {
            let event = match step {
                Phase::Initializing => Event::Initializing {
                    attempt,
                    node: Some(node.clone().unwrap_or_else(|| self.node.clone())),
                },
                Phase::SetupDone => Event::SetupDone { attempt },
                Phase::Running => Event::Running { attempt },
            };
            self.apply(&key.workflow_id, event);
        }
    }

    /// After a (re)connection: adopt what the agent runs, re-queue what never
    /// reached it, and fail with 3001 what it lost.
    /// Only the pools of `backend` are reconciled; `None`: queued in the backend.
    fn reconcile(&mut self, backend: BackendKind, running: Vec<(AttemptKey, Option<Phase>)>) {
        let running: HashMap<AttemptKey, Option<Phase>> = running.into_iter().collect();
        for (key, phase) in &running {
            // An attempt the server no longer expects (its workflow finished, or
            // it is not the task's current unfinished attempt) must not linger.
            let expected = self.active.get(&key.workflow_id).filter(|active| {
                let engine = &active.engine;
                let groups = &engine.workflow().groups;
                let task = key.attempt.task;
                groups
                    .get(task.group as usize)
                    .is_some_and(|g| (task.task as usize) < g.tasks.len())
                    && {
                        let current = engine.current(task);
                        current.retry_id == key.attempt.retry_id && !current.status.is_finished()
                    }
            });
            let Some(active) = expected else {
                self.send_to_backend(backend, ToAgent::Stop { key: key.clone() });
                continue;
            };
            if !self.launched.contains_key(key) {
                let pool = active.pool.clone();
                let footprint = self
                    .launches
                    .footprint(active.engine.workflow(), key.attempt.task.group as usize);
                if let Some(s) = self.schedulers.get_mut(&pool) {
                    s.adopt((key.workflow_id.clone(), key.attempt.task.group), footprint);
                }
                self.launched.insert(key.clone(), pool);
            }
            let released = active.engine.is_released(key.attempt);
            let Some(phase) = *phase else {
                // Queued in the backend (Slurm) since before a restart: give
                // the job its launch again, for when it starts.
                let pool_config = self
                    .config
                    .pools
                    .get(&active.pool)
                    .cloned()
                    .unwrap_or_default();
                match self
                    .launches
                    .build(&active.engine, &pool_config, key.clone())
                {
                    Ok(launch) => {
                        self.link_for(key).send(ToAgent::Launch(Box::new(launch)));
                    }
                    Err(e) => tracing::error!("cannot prepare {} again: {e:#}", key.file_stem()),
                }
                continue;
            };
            self.advance(key, phase, None);
            if phase == Phase::SetupDone && released {
                self.link_for(key)
                    .send(ToAgent::Release { key: key.clone() });
            }
        }
        let mut lost = Vec::new();
        let mut requeue = Vec::new();
        for (id, active) in &self.active {
            if self.backend_of(&active.pool) != backend {
                continue;
            }
            let engine = &active.engine;
            for (g, group) in engine.workflow().groups.iter().enumerate() {
                for t in 0..group.tasks.len() {
                    let task = TaskKey {
                        group: g as u32,
                        task: t as u32,
                    };
                    let attempt = engine.current(task);
                    if attempt.status.is_finished() {
                        continue;
                    }
                    let k = key(
                        id,
                        AttemptId {
                            task,
                            retry_id: attempt.retry_id,
                        },
                    );
                    if running.contains_key(&k) {
                        continue;
                    }
                    let queued = self
                        .schedulers
                        .get(&active.pool)
                        .is_some_and(|s| s.is_queued(&(id.clone(), g as u32), k.attempt));
                    if self.launched.contains_key(&k) || attempt.status != TaskStatus::Scheduling {
                        lost.push(k);
                    } else if !queued && engine.group_status(g as u32) != TaskStatus::Waiting {
                        requeue.push((active.pool.clone(), active.priority as u8, k));
                    }
                }
            }
        }
        for (pool, priority, k) in requeue {
            let Some(active) = self.active.get(&k.workflow_id) else {
                continue;
            };
            let footprint = self
                .launches
                .footprint(active.engine.workflow(), k.attempt.task.group as usize);
            if let Some(s) = self.schedulers.get_mut(&pool) {
                s.enqueue(
                    (k.workflow_id.clone(), k.attempt.task.group),
                    footprint,
                    priority,
                    vec![k.attempt],
                );
            }
        }
        for k in lost {
            if let Some(pool) = self.launched.remove(&k)
                && let Some(s) = self.schedulers.get_mut(&pool)
            {
                s.finished(&(k.workflow_id.clone(), k.attempt.task.group));
            }
            let codes = vec![ReportedCode {
                code: well_known::BACKEND_ERROR,
                source: CodeSource::Service,
                detail: Some("the node agent lost this attempt".to_string()),
            }];
            self.apply(
                &k.workflow_id,
                Event::Exited {
                    attempt: k.attempt,
                    codes,
                },
            );
        }
    }

    async fn fire_timers(&mut self) {
        let now = now_ms();
        while self.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
            let Reverse(timer) = self.timers.pop().expect("peeked");
            self.apply(
                &timer.workflow,
                Event::TimedOut {
                    group: timer.group,
                    kind: timer.kind,
                },
            );
        }
        self.flush().await;
    }
}

fn key(workflow_id: &str, attempt: AttemptId) -> AttemptKey {
    AttemptKey {
        workflow_id: workflow_id.to_string(),
        attempt,
    }
}

/// The CPUs a pool hands out at once: its `cpu_capacity`, else one node's CPUs,
/// else this machine's.
pub fn cpu_capacity(pool: &PoolConfig) -> f64 {
    pool.cpu_capacity.or(pool.node.cpu).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0)
    })
}
