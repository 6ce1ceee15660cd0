//! The server's core: every decision about events, commits, launches,
//! timers, reconciliation after a restart and commit failure, synchronous and
//! without I/O of its own (HyperQueue's reactor and nextest's dispatcher are
//! built so). The async shell ([`super::manager`]) feeds it inputs, commits
//! what [`Core::prepare`] hands it, and then calls [`Core::committed`], which
//! carries the batch's commands out through the backends and acknowledges
//! its results. Nothing is acted on before it is durable; a commit that fails
//! is prepared again, unchanged, until it lands.
//!
//! Backends are reached through one trait, [`Backend`]: the core does not
//! know which backend runs a pool, only what the pool's backend says of its
//! capacity. Unit tests drive it with a [`FakeBackend`](super::backend::FakeBackend).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use osmo_engine::{AttemptId, Command, Event, TaskKey, TaskStatus, TimeoutKind, WorkflowState};
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};
use osmo_spec::config::{BackendKind, PoolConfig, ServiceConfig};
use osmo_store::{Commit, LogBatch, NewEvent, Snapshot};
use tokio::sync::mpsc;

use super::agent_link::LinkEvent;
use super::backend::Backend;
use super::docs::{self, DocMeta};
use super::launch::LaunchBuilder;
use super::manager::Priority;
use super::persisted::{EVENT_VERSION, Persisted, STATE_VERSION};
use super::scheduler::{GroupRef, Scheduler};
use crate::api_types::WorkflowDoc;
use crate::now_ms;
use crate::proto::{AttemptKey, FromAgent, Phase, ToAgent};

/// Events between snapshots, at least: a snapshot costs O(workflow), so one
/// every `max(SNAPSHOT_MIN, tasks)` events keeps the cost per event constant
/// on average and bounds what a restart replays.
pub const SNAPSHOT_MIN: u64 = 256;

/// What a pool hands out now, for `pool list`.
#[derive(Debug, Clone)]
pub struct PoolUsage {
    pub pool: String,
    pub cpu_used: f64,
    pub cpu_capacity: f64,
    pub waiting_groups: usize,
}

/// A workflow as stored, for [`Core::restore`]: its state after replay.
pub struct Restored {
    pub id: String,
    pub engine: WorkflowState,
    pub pool: String,
    pub priority: Priority,
    pub submitted_by: String,
    pub snapshot_seq: u64,
    pub last_seq: u64,
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
    /// With the pool whose backend sent it (the workflow may be gone by then).
    acks: Vec<(AttemptKey, Option<String>)>,
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

pub struct Core {
    config: Arc<ServiceConfig>,
    /// Every pool's backend.
    backends: HashMap<String, Arc<dyn Backend>>,
    /// One backend of each kind, for what concerns a backend as a whole
    /// (what it runs after a reconnection, log acknowledgements).
    by_kind: HashMap<BackendKind, Arc<dyn Backend>>,
    /// The core's own inbox, for exits the server decides itself.
    inbox: mpsc::UnboundedSender<LinkEvent>,
    launches: LaunchBuilder,
    active: HashMap<String, Active>,
    schedulers: HashMap<String, Scheduler>,
    /// Attempts handed to a backend and not yet exited, with their pool.
    launched: HashMap<AttemptKey, String>,
    timers: BinaryHeap<Reverse<Timer>>,
    node: String,
    batch: Batch,
    /// The batch handed to the shell by `prepare`, until `committed`.
    preparing: Option<Batch>,
}

impl Core {
    /// `backends` names each pool's backend.
    pub fn new(
        config: Arc<ServiceConfig>,
        backends: HashMap<String, Arc<dyn Backend>>,
        inbox: mpsc::UnboundedSender<LinkEvent>,
        data_dir: PathBuf,
        task_url: Option<String>,
    ) -> Core {
        let schedulers = config
            .pools
            .iter()
            .map(|(name, pool)| {
                let capacity = backends.get(name).map_or(1.0, |b| b.capacity(pool));
                (name.clone(), Scheduler::new(capacity))
            })
            .collect();
        let mut by_kind: HashMap<BackendKind, Arc<dyn Backend>> = HashMap::new();
        for backend in backends.values() {
            by_kind
                .entry(backend.kind())
                .or_insert_with(|| backend.clone());
        }
        Core {
            config: config.clone(),
            backends,
            by_kind,
            inbox,
            launches: LaunchBuilder::new(data_dir, config, task_url),
            active: HashMap::new(),
            schedulers,
            launched: HashMap::new(),
            timers: BinaryHeap::new(),
            node: crate::proto::hostname(),
            batch: Batch::default(),
            preparing: None,
        }
    }

    /// Takes back a workflow found unfinished in the store after a restart.
    /// Launches are re-driven once its backend says what it still runs.
    pub fn restore(&mut self, w: Restored) {
        for (group, kind, at) in w.engine.pending_timers() {
            self.timers.push(Reverse(Timer {
                at,
                workflow: w.id.clone(),
                group,
                kind,
            }));
        }
        let every = snapshot_every(&w.engine);
        self.active.insert(
            w.id,
            Active {
                engine: w.engine,
                pool: w.pool,
                priority: w.priority,
                submitted_by: w.submitted_by,
                phases: HashMap::new(),
                last_seq: w.last_seq,
                snapshot_seq: w.snapshot_seq,
                snapshot_every: every,
            },
        );
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Takes a workflow just stored (its first state is its snapshot) and
    /// carries out what the engine decided at its start.
    pub fn add(
        &mut self,
        id: String,
        engine: WorkflowState,
        commands: Vec<Command>,
        pool: String,
        priority: Priority,
        submitted_by: String,
    ) {
        let every = snapshot_every(&engine);
        self.active.insert(
            id.clone(),
            Active {
                engine,
                pool,
                priority,
                submitted_by,
                phases: HashMap::new(),
                last_seq: 0,
                snapshot_seq: 0,
                snapshot_every: every,
            },
        );
        self.carry_out(&id, commands);
        self.dispatch();
    }

    /// Cancels a workflow running here; its status after the cancel, or None
    /// when it is not running here. Takes effect once the batch is committed.
    pub fn cancel(&mut self, id: &str, by: String, reason: Option<String>) -> Option<String> {
        self.active.get(id)?;
        self.apply(id, Event::Cancel { by, reason })
    }

    /// The live document of a workflow running here.
    pub fn query(&self, id: &str, verbose: bool) -> Option<WorkflowDoc> {
        self.active
            .get(id)
            .map(|a| docs::workflow_doc(&a.meta(id), &a.engine, verbose))
    }

    /// Each pool's CPUs in use, its capacity, and the groups waiting for CPUs.
    pub fn usage(&self) -> Vec<PoolUsage> {
        self.schedulers
            .iter()
            .map(|(pool, s)| PoolUsage {
                pool: pool.clone(),
                cpu_used: s.used(),
                cpu_capacity: s.capacity(),
                waiting_groups: s.waiting(),
            })
            .collect()
    }

    /// When the next timer is due.
    pub fn next_timer(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse(t)| t.at)
    }

    /// Events and log batches waiting to be committed.
    pub fn pending(&self) -> usize {
        self.batch.events.len() + self.batch.logs.len()
    }

    /// What the shell must commit before the batch's decisions are acted on.
    /// Until [`Core::committed`] is called, every call returns the same
    /// commit (with whatever arrived since added), so a failed commit is
    /// simply retried: nothing is lost, and the store writes nothing twice.
    pub fn prepare(&mut self) -> (Vec<Commit>, Vec<LogBatch>) {
        let mut batch = self.preparing.take().unwrap_or_default();
        let newer = std::mem::take(&mut self.batch);
        batch.events.extend(newer.events);
        batch.commands.extend(newer.commands);
        batch.acks.extend(newer.acks);
        batch.logs.extend(newer.logs);
        batch.logs_ack = batch.logs_ack.max(newer.logs_ack);
        let commits = self.commits(&batch);
        let logs = batch.logs.clone();
        self.preparing = Some(batch);
        (commits, logs)
    }

    /// The prepared batch is durable: carry out its commands, acknowledge its
    /// results and log batches, and dispatch launches.
    pub fn committed(&mut self, commits: &[Commit]) {
        let Some(batch) = self.preparing.take() else {
            return;
        };
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
        for (key, pool) in batch.acks {
            let backend = match &pool {
                Some(pool) => self.link_of(pool),
                None => self.link_for(&key),
            };
            backend.send(ToAgent::Ack { key });
        }
        if let Some(seq) = batch.logs_ack
            && let Some(local) = self.by_kind.get(&BackendKind::Local)
        {
            local.send(ToAgent::LogsAck { seq });
        }
        self.dispatch();
    }

    /// Applies one event to its workflow's engine and adds it to the batch;
    /// its commands wait for [`Core::committed`]. Returns the workflow's
    /// status after it (None: not a workflow running here).
    pub fn apply(&mut self, id: &str, event: Event) -> Option<String> {
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
    pub fn dispatch(&mut self) {
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

    /// The backend that runs `pool`'s attempts.
    fn link_of(&self, pool: &str) -> &dyn Backend {
        match self.backends.get(pool) {
            Some(backend) => backend.as_ref(),
            None => &NoBackend,
        }
    }

    /// The backend that runs (or ran) this attempt.
    fn link_for(&self, key: &AttemptKey) -> &dyn Backend {
        match self
            .launched
            .get(key)
            .or_else(|| self.active.get(&key.workflow_id).map(|a| &a.pool))
        {
            Some(pool) => self.link_of(pool),
            None => &NoBackend,
        }
    }

    /// Sends to a backend as a whole (every pool of a kind shares one driver).
    fn send_to_backend(&self, backend: BackendKind, msg: ToAgent) -> bool {
        self.by_kind.get(&backend).is_some_and(|b| b.send(msg))
    }

    fn backend_of(&self, pool: &str) -> Option<BackendKind> {
        self.backends.get(pool).map(|b| b.kind())
    }

    /// Queues an exit the server itself decided, handled like a backend's.
    fn link_exit_later(&self, key: AttemptKey, codes: Vec<ReportedCode>) -> bool {
        self.inbox
            .send(LinkEvent::Message {
                conn: 0,
                msg: FromAgent::Exited { key, codes },
            })
            .is_ok()
    }

    /// Applies what a backend reported; commands and acknowledgements wait
    /// for the batch's commit ([`Core::committed`]).
    pub fn handle_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Ready { backend, attempts } => {
                tracing::info!(
                    "the {backend:?} backend is ready with {} attempt(s)",
                    attempts.len()
                );
                self.reconcile(backend, attempts);
                if let Some(b) = self.by_kind.get(&backend) {
                    b.set_ready(0);
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
                // Acknowledged once committed, by the backend that ran it: it
                // keeps the result until then.
                let launched = self.launched.remove(&key);
                if let Some(pool) = &launched
                    && let Some(s) = self.schedulers.get_mut(pool)
                {
                    s.finished(&(key.workflow_id.clone(), key.attempt.task.group));
                }
                let pool =
                    launched.or_else(|| self.active.get(&key.workflow_id).map(|a| a.pool.clone()));
                self.batch.acks.push((key, pool));
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
                if let Some(b) = self.by_kind.get(&BackendKind::Local) {
                    b.set_ready(conn);
                }
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
            if self.backend_of(&active.pool) != Some(backend) {
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

    /// Fires every timer due at `now`.
    pub fn fire_timers(&mut self, now: u64) {
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
    }
}

fn key(workflow_id: &str, attempt: AttemptId) -> AttemptKey {
    AttemptKey {
        workflow_id: workflow_id.to_string(),
        attempt,
    }
}

/// Stands for a pool no backend runs (a configuration the server refuses at
/// start; kept so that lookups never panic).
struct NoBackend;

impl Backend for NoBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }
    fn send(&self, _: ToAgent) -> bool {
        false
    }
    fn connected(&self) -> bool {
        false
    }
    fn set_ready(&self, _: u64) {}
    fn capacity(&self, _: &PoolConfig) -> f64 {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use osmo_engine::testkit::WorkflowBuilder;
    use osmo_engine::{Rules, TaskStatus};
    use osmo_spec::config::PoolConfig;

    use super::*;
    use crate::server::backend::FakeBackend;

    struct Setup {
        core: Core,
        backend: Arc<FakeBackend>,
        inbox: mpsc::UnboundedReceiver<LinkEvent>,
        _dir: tempfile::TempDir,
    }

    fn setup(cpus: f64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(ServiceConfig {
            pools: BTreeMap::from([("default".to_string(), PoolConfig::default())]),
        });
        let backend = Arc::new(FakeBackend::with_cpus(cpus));
        let backends: HashMap<String, Arc<dyn Backend>> =
            HashMap::from([("default".to_string(), backend.clone() as Arc<dyn Backend>)]);
        let (tx, inbox) = mpsc::unbounded_channel();
        let core = Core::new(config, backends, tx, dir.path().to_path_buf(), None);
        Setup {
            core,
            backend,
            inbox,
            _dir: dir,
        }
    }

    fn workflow(id: &str, tasks: &[&str]) -> (WorkflowState, Vec<Command>) {
        let mut b = WorkflowBuilder::new("wf");
        for t in tasks {
            b = b.task(t, &[]);
        }
        WorkflowState::new(id.to_string(), b.build(), Rules::default(), now_ms())
    }

    fn attempt(task: u32) -> AttemptKey {
        AttemptKey {
            workflow_id: "wf-1".into(),
            attempt: AttemptId {
                task: TaskKey {
                    group: task,
                    task: 0,
                },
                retry_id: 0,
            },
        }
    }

    fn msg(msg: FromAgent) -> LinkEvent {
        LinkEvent::Message { conn: 1, msg }
    }

    fn hello(attempts: Vec<(AttemptKey, Phase)>) -> LinkEvent {
        msg(FromAgent::Hello {
            node: "n".into(),
            pid: 1,
            attempts,
        })
    }

    fn launched(sent: &[ToAgent]) -> Vec<AttemptKey> {
        sent.iter()
            .filter_map(|m| match m {
                ToAgent::Launch(l) => Some(l.key.clone()),
                _ => None,
            })
            .collect()
    }

    fn exited(key: AttemptKey, code: u32) -> LinkEvent {
        msg(FromAgent::Exited {
            key,
            codes: vec![ReportedCode {
                code,
                source: CodeSource::User,
                detail: None,
            }],
        })
    }

    /// Prepares and commits the batch, as the shell does once the store said yes.
    fn commit(core: &mut Core) -> Vec<Commit> {
        let (commits, _) = core.prepare();
        core.committed(&commits);
        commits
    }

    #[test]
    fn a_launch_waits_for_the_backends_hello() {
        let mut s = setup(4.0);
        let (engine, commands) = workflow("wf-1", &["a", "b"]);
        s.core.add(
            "wf-1".into(),
            engine,
            commands,
            "default".into(),
            Priority::Normal,
            "me".into(),
        );
        assert!(
            launched(&s.backend.take()).is_empty(),
            "no launch before the backend said what it runs"
        );
        s.core.handle_link(hello(vec![]));
        // The launches were decided, and committed, with the workflow.
        s.core.dispatch();
        assert_eq!(launched(&s.backend.take()), [attempt(0), attempt(1)]);
        commit(&mut s.core);
        assert!(
            launched(&s.backend.take()).is_empty(),
            "each launch goes once"
        );
    }

    #[test]
    fn a_failed_commit_acts_on_nothing_and_is_prepared_again_unchanged() {
        let mut s = setup(1.0);
        let (engine, commands) = workflow("wf-1", &["a", "b"]);
        s.core.add(
            "wf-1".into(),
            engine,
            commands,
            "default".into(),
            Priority::Normal,
            "me".into(),
        );
        s.core.handle_link(hello(vec![]));
        commit(&mut s.core);
        assert_eq!(
            launched(&s.backend.take()),
            [attempt(0)],
            "one CPU: one at a time"
        );

        s.core.handle_link(exited(attempt(0), 0));
        let (first, _) = s.core.prepare();
        // The store failed: nothing may be acknowledged or carried out yet.
        assert!(s.backend.take().is_empty());
        let (again, _) = s.core.prepare();
        assert_eq!(again, first, "the retry commits exactly the same events");
        // Its phases were never reported: they are recorded before its exit.
        assert_eq!(first[0].events.len(), 4);
        assert_eq!(first[0].first_seq, 1);
        s.core.committed(&again);
        let sent = s.backend.take();
        let acks = sent
            .iter()
            .filter(|m| matches!(m, ToAgent::Ack { key } if *key == attempt(0)))
            .count();
        assert_eq!(acks, 1, "acknowledged once, after the commit: {sent:?}");
        assert_eq!(launched(&sent), [attempt(1)], "the freed CPU goes to b");
        // Nothing is applied twice: a later batch numbers its events on.
        s.core.handle_link(exited(attempt(1), 0));
        let (next, _) = s.core.prepare();
        assert_eq!(next[0].first_seq, 5);
        assert_eq!(next[0].status, "COMPLETED");
        assert!(
            next[0].snapshot.is_some(),
            "a finished workflow is snapshotted"
        );
    }

    #[test]
    fn reconcile_adopts_what_the_backend_holds_and_fails_what_it_lost() {
        let mut s = setup(4.0);
        let (mut engine, _) = workflow("wf-1", &["kept", "lost"]);
        // Before the restart both ran.
        let mut out = Vec::new();
        for t in [0, 1] {
            let a = attempt(t).attempt;
            engine.apply(
                &Event::Initializing {
                    attempt: a,
                    node: None,
                },
                1,
                &mut out,
            );
            engine.apply(&Event::Running { attempt: a }, 2, &mut out);
        }
        s.core.restore(Restored {
            id: "wf-1".into(),
            engine,
            pool: "default".into(),
            priority: Priority::Normal,
            submitted_by: "me".into(),
            snapshot_seq: 4,
            last_seq: 4,
        });
        s.core
            .handle_link(hello(vec![(attempt(0), Phase::Running)]));
        let commits = commit(&mut s.core);
        assert!(
            launched(&s.backend.take()).is_empty(),
            "nothing is launched twice"
        );
        assert_eq!(commits[0].first_seq, 5);
        let doc = s.core.query("wf-1", true).unwrap();
        let status = |name: &str| {
            doc.groups
                .iter()
                .flat_map(|g| &g.tasks)
                .find(|t| t.name == name)
                .map(|t| (t.status.clone(), t.exit_code))
                .unwrap()
        };
        assert_eq!(status("kept"), (TaskStatus::Running.to_string(), None));
        assert_eq!(
            status("lost"),
            (TaskStatus::FailedBackendError.to_string(), Some(3001))
        );
        assert!(s.inbox.try_recv().is_err());
    }
}
