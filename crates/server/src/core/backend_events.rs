//! What the backends report, fed to the engines: readiness with the attempts
//! a backend holds (reconciliation after a restart), phases, runs stopped for
//! restarts, exits, log lines, and the node agent's hello.

use std::collections::HashMap;

use osmo_engine::{AttemptId, Event, TaskKey, TaskStatus};
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};
use osmo_spec::config::BackendKind;
use osmo_store::LogBatch;

use super::{Core, key};
use crate::agent_link::LinkEvent;
use crate::proto::{AttemptKey, FromAgent, Phase, ToAgent};

impl Core {
    /// Applies what a backend reported; commands and acknowledgements wait
    /// for the batch's commit ([`Core::committed`]).
    pub fn handle_link(&mut self, event: LinkEvent) {
        if let LinkEvent::Message { msg, .. } = &event
            && let Some(key) = attempt_of(msg)
            && !self.names_a_task(key)
        {
            // A backend that names a task its workflow does not have (a bug,
            // another version, or a forgery) is not fed to the engine.
            tracing::warn!(
                "ignoring a backend report about {}: its workflow has no such task",
                key.file_stem()
            );
            if let FromAgent::Exited { key, .. } = msg {
                // Acknowledged, so the agent does not send it forever.
                let pool = self.active.get(&key.workflow_id).map(|a| a.pool.clone());
                self.batch.acks.push((key.clone(), pool));
            }
            return;
        }
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
            // The link answers it with the launch it holds (`agent_link`).
            LinkEvent::Message {
                msg: FromAgent::NotPrepared { .. },
                ..
            } => {}
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
                msg:
                    FromAgent::Phase {
                        key,
                        phase,
                        node,
                        gpus,
                    },
                ..
            } => {
                self.advance(&key, phase, node, gpus);
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
                    self.advance(&key, Phase::Running, None, None);
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
                if let Some(pool) = &launched {
                    self.attempt_done(pool, &(key.workflow_id.clone(), key.attempt.task.group));
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
                        ..
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

    /// False when `key`'s workflow runs here but has no task at `key`'s place
    /// (a workflow not running here is sorted out by each report's handling).
    fn names_a_task(&self, key: &AttemptKey) -> bool {
        let Some(active) = self.active.get(&key.workflow_id) else {
            return true;
        };
        let task = key.attempt.task;
        active
            .engine
            .workflow()
            .groups
            .get(task.group as usize)
            .is_some_and(|g| (task.task as usize) < g.tasks.len())
    }

    /// Feeds the engine every phase between what it knows and what the agent reports.
    fn advance(
        &mut self,
        key: &AttemptKey,
        phase: Phase,
        node: Option<String>,
        gpus: Option<Vec<u32>>,
    ) {
        let gpus = gpus.unwrap_or_else(|| self.devices_of(key));
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
                    gpus: gpus.clone(),
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
        let mut running: HashMap<AttemptKey, Option<Phase>> = running.into_iter().collect();
        let first = self.reconciled.insert(backend);
        // A reconnected agent dropped what it had set up ahead.
        self.staged
            .retain(|_, pool| self.backends.get(pool.as_str()).map(|b| b.kind()) != Some(backend));
        let mut refused = Vec::new();
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
            // After the first reconcile everything running here was launched
            // by this core: a claim of another attempt (one still queued, say)
            // would hold resources the scheduler never gave it.
            let expected = expected.filter(|_| first || self.launched.contains_key(key));
            let Some(active) = expected else {
                self.send_to_backend(backend, ToAgent::Stop { key: key.clone() });
                refused.push(key.clone());
                continue;
            };
            if !self.launched.contains_key(key) {
                tracing::debug!("adopting {} ({phase:?})", key.file_stem());
                let pool = active.pool.clone();
                let footprint = self
                    .launches
                    .footprint(active.engine.workflow(), key.attempt.task.group as usize);
                if let Some(s) = self.schedulers.get_mut(&pool) {
                    s.adopt((key.workflow_id.clone(), key.attempt.task.group), footprint);
                }
                // The devices it recorded stay its own.
                if let Some(d) = self.devices.get_mut(&pool) {
                    let recorded = &active.engine.current(key.attempt.task).gpus;
                    d.adopt(&key.workflow_id, key.attempt.task, recorded);
                }
                self.launched.insert(key.clone(), pool);
            }
            let released = active.engine.is_released(key.attempt);
            let Some(phase) = *phase else {
                // Queued in the backend (Slurm) since before a restart: give
                // the job its launch again, for when it starts.
                match self.build_launch(&active.pool, key) {
                    Ok(launch) => {
                        self.link_for(key).send(ToAgent::Launch(Box::new(launch)));
                    }
                    Err(e) => tracing::error!("cannot prepare {} again: {e:#}", key.file_stem()),
                }
                continue;
            };
            self.advance(key, phase, None, None);
            if phase == Phase::SetupDone && released {
                self.link_for(key)
                    .send(ToAgent::Release { key: key.clone() });
            }
        }
        // What was refused is judged as if the backend had not named it.
        for key in refused {
            running.remove(&key);
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
                    let launched = self.launched.contains_key(&k);
                    match attempt.status {
                        // Never handed to a backend: nothing to lose.
                        TaskStatus::Submitting | TaskStatus::Waiting | TaskStatus::Processing
                            if !launched => {}
                        TaskStatus::Scheduling if !launched => {
                            if !queued && engine.group_status(g as u32) != TaskStatus::Waiting {
                                requeue.push((active.pool.clone(), active.priority as u8, k));
                            }
                        }
                        _ => lost.push(k),
                    }
                }
            }
        }
        tracing::info!(
            "reconciled the {backend:?} backend: {} attempt(s) it runs, {} queued again, {} lost",
            running.len(),
            requeue.len(),
            lost.len()
        );
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
            if let Some(pool) = self.launched.remove(&k) {
                self.attempt_done(&pool, &(k.workflow_id.clone(), k.attempt.task.group));
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
}

/// The attempt a report is about (a Hello and log lines name several).
fn attempt_of(msg: &FromAgent) -> Option<&AttemptKey> {
    match msg {
        FromAgent::Phase { key, .. }
        | FromAgent::RunStopped { key, .. }
        | FromAgent::Exited { key, .. } => Some(key),
        FromAgent::Hello { .. } | FromAgent::Logs { .. } | FromAgent::NotPrepared { .. } => None,
    }
}
