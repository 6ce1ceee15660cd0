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

use osmo_engine::{AttemptId, Command, Event, TimeoutKind, WorkflowState};
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};
use osmo_spec::config::{BackendKind, PoolConfig, ServiceConfig};
use osmo_store::{Commit, LogBatch, NewEvent, Snapshot};
use tokio::sync::mpsc;

use super::agent_link::LinkEvent;
use super::backend::Backend;
use super::devices::DeviceSet;
use super::docs::{self, DocMeta};
use super::launch::LaunchBuilder;
use super::manager::Priority;
use super::persisted::{EVENT_VERSION, Persisted, STATE_VERSION};
use super::scheduler::{Footprint, GroupRef, Scheduler};
use crate::api_types::WorkflowDoc;
use crate::now_ms;
use crate::proto::{AttemptKey, FromAgent, Phase, ToAgent};

/// Events between snapshots, at least: a snapshot costs O(workflow), so one
/// every `max(SNAPSHOT_MIN, tasks)` events keeps the cost per event constant
/// on average and bounds what a restart replays.
pub const SNAPSHOT_MIN: u64 = 256;

/// Events and log batches a batch that is not [urgent](Core::urgent) may
/// gather before it is committed anyway.
const LAZY_MAX_PENDING: usize = 1024;

/// Attempts one pool's agent sets up ahead at most (else one per CPU of the
/// pool: enough to keep each CPU's next task ready).
const MAX_AHEAD: usize = 16;

/// What a pool hands out now, for `pool list`.
#[derive(Debug, Clone)]
pub struct PoolUsage {
    pub pool: String,
    pub cpu_used: f64,
    pub cpu_capacity: f64,
    pub gpu_used: u32,
    /// None: not limited here (Slurm places GPUs itself).
    pub gpu_capacity: Option<u32>,
    pub memory_used_bytes: u64,
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
    /// The GPU devices of the pools whose backend lets the core pick them.
    devices: HashMap<String, DeviceSet>,
    /// Attempts handed to a backend and not yet exited, with their pool.
    /// Backends that have reconciled once: only the first reconcile after a
    /// start adopts attempts this core did not launch (they ran before the
    /// restart); later, such a claim is a backend's mistake and is stopped.
    reconciled: std::collections::HashSet<BackendKind>,
    launched: HashMap<AttemptKey, String>,
    /// Queued attempts an agent sets up ahead ([`ToAgent::Prepare`]), with
    /// their pool: not launched, holding nothing of the pool.
    staged: HashMap<AttemptKey, String>,
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
        vault: crate::credentials::Vault,
    ) -> Core {
        let schedulers = config
            .pools
            .iter()
            .map(|(name, pool)| {
                let capacity = backends
                    .get(name)
                    .map_or(Footprint::cpus(1.0), |b| b.capacity(pool));
                (name.clone(), Scheduler::new(capacity))
            })
            .collect();
        let devices = config
            .pools
            .iter()
            .filter_map(|(name, pool)| {
                let count = backends.get(name)?.gpu_devices(pool)?;
                (count > 0).then(|| (name.clone(), DeviceSet::new(count)))
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
            launches: LaunchBuilder::new(data_dir, config, task_url, vault),
            active: HashMap::new(),
            schedulers,
            devices,
            launched: HashMap::new(),
            staged: HashMap::new(),
            reconciled: Default::default(),
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

    /// The status of a workflow here that has finished, its end perhaps
    /// not committed yet; None while it runs or when it is not here.
    pub fn finished_status(&self, id: &str) -> Option<String> {
        self.active
            .get(id)
            .filter(|a| a.engine.is_finished())
            .map(|a| a.engine.status().as_str().to_string())
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
                cpu_used: s.used().cpu,
                cpu_capacity: s.capacity().cpu,
                gpu_used: s.used().gpu,
                gpu_capacity: Some(s.capacity().gpu).filter(|g| *g != u32::MAX),
                memory_used_bytes: s.used().memory_bytes,
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

    /// Something in the batch waits for its commit: a decision a backend or
    /// a user acts on (a launch, a stop, a restart, a release a barrier
    /// waits for). Anything else may wait a moment for the next commit:
    /// phases, timers, barrier-free releases, a workflow's end, and exits
    /// that decide none of the above (a task of a wide workflow that ends).
    /// The live state shows them at once and nothing acts on them; an exit
    /// is acknowledged only with its commit (the backend keeps the result
    /// until then, and reports it again after a restart), and the CPUs it
    /// freed go to launches committed before ([`Core::dispatch`]).
    pub fn urgent(&self) -> bool {
        let batch = &self.batch;
        self.pending() >= LAZY_MAX_PENDING
            || batch.commands.iter().any(|(id, commands)| {
                commands.iter().any(|c| match c {
                    Command::SetTimer { .. } | Command::Finished { .. } => false,
                    Command::Release { attempts } => {
                        attempts.iter().any(|a| self.waits_at_barrier(id, *a))
                    }
                    _ => true,
                })
            })
    }

    /// The attempt's agent holds its command at the group's barrier until
    /// released (the launch said so; see `LaunchBuilder`).
    fn waits_at_barrier(&self, id: &str, attempt: AttemptId) -> bool {
        self.active.get(id).is_none_or(|a| {
            let groups = &a.engine.workflow().groups;
            groups
                .get(attempt.task.group as usize)
                .is_none_or(super::launch::waits_at_barrier)
        })
    }

    /// What the shell must commit before the batch's decisions are acted on;
    /// what arrives meanwhile goes in the next batch. The shell commits it
    /// (with [`Core::take_prepared_logs`]), retrying until it lands, then
    /// calls [`Core::committed`]; a call before that returns the same commit
    /// with whatever arrived since added.
    pub fn prepare(&mut self) -> Vec<Commit> {
        let mut batch = self.preparing.take().unwrap_or_default();
        let newer = std::mem::take(&mut self.batch);
        batch.events.extend(newer.events);
        batch.commands.extend(newer.commands);
        batch.acks.extend(newer.acks);
        batch.logs.extend(newer.logs);
        batch.logs_ack = batch.logs_ack.max(newer.logs_ack);
        let commits = self.commits(&batch);
        self.preparing = Some(batch);
        commits
    }

    /// The log lines of the prepared batch, committed with its events (taken
    /// out: the commit owns them, and [`Core::committed`] needs only their
    /// acknowledgement). Once per prepared batch: the shell retries the
    /// commit it holds, lines and all, and prepares no other meanwhile (a
    /// second `prepare` would not hold the lines taken).
    pub fn take_prepared_logs(&mut self) -> Vec<LogBatch> {
        self.preparing
            .as_mut()
            .map(|b| std::mem::take(&mut b.logs))
            .unwrap_or_default()
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
        count_outcome(&active.pool, &active.engine, &event);
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

    /// OSMO's task list rows of the workflows running here (`id`: only that
    /// one, None when it does not run here).
    pub fn task_rows(&self, id: Option<&str>) -> Option<Vec<serde_json::Value>> {
        match id {
            Some(id) => self
                .active
                .get(id)
                .map(|a| docs::task_rows(&a.meta(id), &a.engine)),
            // The running ones: a finished workflow whose end is not
            // committed yet is finished here too.
            None => Some(
                self.active
                    .iter()
                    .filter(|(_, a)| !a.engine.is_finished())
                    .flat_map(|(id, a)| docs::task_rows(&a.meta(id), &a.engine))
                    .collect(),
            ),
        }
    }

    /// The gauges of a metrics scrape: running workflows and their tasks by
    /// status, and each pool's use.
    pub fn live(&self) -> crate::metrics::Live {
        let mut workflows: HashMap<&str, usize> = HashMap::new();
        let mut tasks: HashMap<&str, usize> = HashMap::new();
        // (A finished one whose end is not committed yet is not running.)
        for active in self.active.values().filter(|a| !a.engine.is_finished()) {
            let engine = &active.engine;
            *workflows.entry(engine.status().as_str()).or_default() += 1;
            for (g, group) in engine.workflow().groups.iter().enumerate() {
                for t in 0..group.tasks.len() {
                    let key = osmo_engine::TaskKey {
                        group: g as u32,
                        task: t as u32,
                    };
                    *tasks
                        .entry(engine.current(key).status.as_str())
                        .or_default() += 1;
                }
            }
        }
        let own =
            |m: HashMap<&str, usize>| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        crate::metrics::Live {
            workflows: own(workflows),
            tasks: own(tasks),
            pools: self.usage(),
        }
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
                // Launched already (re-queued by a reconnection while the
                // decision was in flight): once is enough.
                Command::Launch { attempt } if self.launched.contains_key(&key(id, attempt)) => {}
                Command::Launch { attempt } => {
                    match launches.iter_mut().find(|(g, _)| *g == attempt.task.group) {
                        Some((_, list)) => list.push(attempt),
                        None => launches.push((attempt.task.group, vec![attempt])),
                    }
                }
                Command::Release { attempts } => {
                    // A task no barrier holds started when it was set up:
                    // its release would be a message for nothing.
                    let held = |a: &AttemptId| self.waits_at_barrier(id, *a);
                    for attempt in attempts.into_iter().filter(held) {
                        self.link_of(&pool).send(ToAgent::Release {
                            key: key(id, attempt),
                        });
                    }
                }
                Command::Stop { attempt, .. } => {
                    let group = (id.to_string(), attempt.task.group);
                    let queued = self
                        .schedulers
                        .get_mut(&pool)
                        .is_some_and(|s| s.dequeue(&group, attempt));
                    let held = self.schedulers.get(&pool).is_some_and(|s| s.holds(&group));
                    if !held && let Some(d) = self.devices.get_mut(&pool) {
                        d.release_group(id, group.1);
                    }
                    // A queued attempt set up ahead: its sandbox goes too.
                    let staged = self.staged.remove(&key(id, attempt)).is_some();
                    if !queued || staged {
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
            self.drop_staged(|key| key.workflow_id == id);
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
        // Built first, then handed over with how many of their group go
        // together (a backend that allocates a group whole waits for them all).
        let mut built: Vec<(String, crate::proto::Launch)> = Vec::new();
        let now = now_ms();
        for (pool, (workflow_id, _), attempt) in admitted {
            let Some(active) = self.active.get(&workflow_id) else {
                continue;
            };
            if let Some(since) = active
                .engine
                .attempts(attempt.task)
                .get(attempt.retry_id as usize)
                .and_then(|a| a.scheduling_time)
            {
                crate::metrics::global()
                    .scheduling
                    .get_or_create(&crate::metrics::PoolLabels { pool: pool.clone() })
                    .observe(now.saturating_sub(since) as f64 / 1000.0);
            }
            let attempt_key = key(&workflow_id, attempt);
            // Set up ahead, its sandbox waits for this launch.
            self.staged.remove(&attempt_key);
            match self.build_launch(&pool, &attempt_key) {
                Ok(mut launch) => {
                    if let Some(d) = self.devices.get_mut(&pool) {
                        launch.gpus = d.take(&workflow_id, attempt.task, launch.gpu);
                    }
                    built.push((pool, launch));
                }
                Err(e) => {
                    tracing::error!("cannot prepare {}: {e:#}", attempt_key.file_stem());
                    // Reported like any exit so the engine decides; no capacity is held.
                    self.attempt_done(&pool, &(workflow_id.clone(), attempt.task.group));
                    let codes = vec![ReportedCode {
                        code: well_known::INIT_FILES,
                        source: CodeSource::Init,
                        detail: Some(format!("{e:#}")),
                    }];
                    let _ = self.link_exit_later(attempt_key, codes);
                }
            }
        }
        let mut together: HashMap<(String, u32), u32> = HashMap::new();
        for (_, launch) in &built {
            let group = (
                launch.key.workflow_id.clone(),
                launch.key.attempt.task.group,
            );
            *together.entry(group).or_default() += 1;
        }
        for (pool, mut launch) in built {
            let group = (
                launch.key.workflow_id.clone(),
                launch.key.attempt.task.group,
            );
            launch.gang = together.get(&group).copied().unwrap_or(1);
            let attempt_key = launch.key.clone();
            tracing::debug!("launching {}", attempt_key.file_stem());
            let sent = self.link_of(&pool).send(ToAgent::Launch(Box::new(launch)));
            self.launched.insert(attempt_key.clone(), pool);
            if !sent {
                tracing::warn!(
                    "the agent went away before {} launched",
                    attempt_key.file_stem()
                );
            }
        }
        self.set_up_ahead(&ready);
    }

    /// Has the backends of `pools` that can set up the next queued attempts
    /// ahead (one per CPU of the pool, at most [`MAX_AHEAD`]): their
    /// sandboxes are made while the running attempts finish, and each starts
    /// as soon as its launch comes, instead of only then being set up. Only
    /// attempts next in the queue, of groups that ask for no GPU; nothing of
    /// the pool is held, and the engine hears of them only at their launch.
    fn set_up_ahead(&mut self, pools: &[String]) {
        for pool in pools {
            let pool_config = self.config.pools.get(pool).cloned().unwrap_or_default();
            if !self.link_of(pool).sets_up_ahead(&pool_config) {
                continue;
            }
            let Some(s) = self.schedulers.get(pool) else {
                continue;
            };
            let most = (s.capacity().cpu.ceil() as usize).clamp(1, MAX_AHEAD);
            let mut count = self.staged.values().filter(|p| *p == pool).count();
            for ((workflow_id, _), attempt) in s.upcoming(most) {
                if count >= most {
                    break;
                }
                let attempt_key = key(&workflow_id, attempt);
                if self.staged.contains_key(&attempt_key)
                    || self.launched.contains_key(&attempt_key)
                {
                    continue;
                }
                let Some(active) = self.active.get(&workflow_id) else {
                    continue;
                };
                // One that downloads its inputs first waits for its
                // admission (a download made ahead is lost if the wait is long).
                let downloads = active
                    .engine
                    .workflow()
                    .groups
                    .get(attempt.task.group as usize)
                    .and_then(|g| g.tasks.get(attempt.task.task as usize))
                    .is_none_or(|t| {
                        t.inputs
                            .iter()
                            .any(|i| matches!(i, osmo_spec::model::Input::Url { .. }))
                    });
                if downloads {
                    continue;
                }
                // A launch that cannot be built is left to its admission,
                // which reports why.
                let Ok(launch) = self.build_launch(pool, &attempt_key) else {
                    continue;
                };
                tracing::debug!("setting up {} ahead", attempt_key.file_stem());
                if self.link_of(pool).send(ToAgent::Prepare(Box::new(launch))) {
                    self.staged.insert(attempt_key, pool.clone());
                    count += 1;
                }
            }
        }
    }

    /// Stops the sandboxes set up ahead of the attempts `which` selects.
    fn drop_staged(&mut self, which: impl Fn(&AttemptKey) -> bool) {
        let gone: Vec<AttemptKey> = self.staged.keys().filter(|k| which(k)).cloned().collect();
        for key in gone {
            if let Some(pool) = self.staged.remove(&key) {
                self.link_of(&pool).send(ToAgent::Stop { key });
            }
        }
    }

    /// An admitted attempt of `group` ended: its share of the pool goes
    /// back, and with the group's last attempt its devices.
    fn attempt_done(&mut self, pool: &str, group: &GroupRef) {
        if let Some(s) = self.schedulers.get_mut(pool) {
            s.finished(group);
        }
        self.release_devices_if_free(pool, group);
    }

    fn release_devices_if_free(&mut self, pool: &str, group: &GroupRef) {
        let held = self.schedulers.get(pool).is_some_and(|s| s.holds(group));
        if !held && let Some(d) = self.devices.get_mut(pool) {
            d.release_group(&group.0, group.1);
        }
    }

    /// The devices the core gave `key`'s task (none on backends that pick them).
    fn devices_of(&self, key: &AttemptKey) -> Vec<u32> {
        self.active
            .get(&key.workflow_id)
            .and_then(|a| self.devices.get(&a.pool))
            .and_then(|d| d.of(&key.workflow_id, key.attempt.task))
            .map(<[u32]>::to_vec)
            .unwrap_or_default()
    }

    /// The backend that runs `pool`'s attempts.
    /// The launch of attempt `key` on `pool`'s backend: its tasks' host
    /// names, and its output directory made here unless the backend's
    /// runtime makes it.
    fn build_launch(&self, pool: &str, key: &AttemptKey) -> anyhow::Result<crate::proto::Launch> {
        let active = self
            .active
            .get(&key.workflow_id)
            .ok_or_else(|| anyhow::anyhow!("workflow {} is not running", key.workflow_id))?;
        let pool_config = self.config.pools.get(pool).cloned().unwrap_or_default();
        let backend = self.link_of(pool);
        self.launches.build(
            &active.engine,
            &pool_config,
            key.clone(),
            &active.submitted_by,
            &|task| backend.task_host(&pool_config, &key.workflow_id, task),
            !backend.makes_output_dirs(),
        )
    }

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
    fn capacity(&self, _: &PoolConfig) -> Footprint {
        Footprint::default()
    }
    fn gpu_devices(&self, _: &PoolConfig) -> Option<u32> {
        None
    }
    fn task_host(&self, _: &PoolConfig, _: &str, _: &str) -> String {
        "127.0.0.1".to_string()
    }
}

mod backend_events;
#[cfg(test)]
mod tests;

/// Counts what `event` decided: an attempt's exit (its code and what
/// became of it: COMPLETE, RESCHEDULE or FAIL), a workflow's end.
fn count_outcome(pool: &str, engine: &WorkflowState, event: &Event) {
    let metrics = crate::metrics::global();
    if let Event::Exited { attempt, .. } = event
        && let Some(a) = engine.attempts(attempt.task).get(attempt.retry_id as usize)
        && a.status.is_finished()
    {
        metrics
            .exits
            .get_or_create(&crate::metrics::ExitLabels {
                pool: pool.to_string(),
                exit_code: a.exit_code.map_or_else(|| "none".into(), |c| c.to_string()),
                // What happened to it, whichever rule matched.
                action: match a.status {
                    osmo_engine::TaskStatus::Completed => "COMPLETE",
                    osmo_engine::TaskStatus::Rescheduled => "RESCHEDULE",
                    _ => "FAIL",
                }
                .to_string(),
            })
            .inc();
    }
    // Counted once: `apply` returns before this for a finished workflow.
    if engine.is_finished() {
        metrics
            .workflows_finished
            .get_or_create(&crate::metrics::StatusLabels {
                status: engine.status().as_str().to_string(),
            })
            .inc();
    }
}
