//! [`WorkflowState`]: one workflow's groups, tasks and attempts, and the rules
//! of SEMANTICS §3–§5 that move them forward.
//!
//! Every event touches one group (plus, when a group finishes, the groups
//! downstream of it), so `apply` is O(size of that group). Per-group counters
//! (attempts in SCHEDULING, finished, past set-up, waiting at the barrier) and
//! per-workflow tallies (finished groups by status) are kept incrementally;
//! [`WorkflowState::sanity_check`] recomputes them all from scratch.

use osmo_spec::codes::well_known;
use osmo_spec::model::Workflow;
use serde::{Deserialize, Serialize};

use crate::api::{
    Action, Attempt, AttemptCause, AttemptId, CodeSource, Command, Event, Millis, ReportedCode,
    RunRecord, TaskKey, TaskStatus, TimeoutKind, WorkflowStatus,
};
use crate::decide::{Rules, decide_with, resolve_code};

/// Where the current attempt of a task stands with its group's barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Barrier {
    /// Set-up (files, inputs, preflight) not finished yet.
    Setup,
    /// Set up; waits for [`Command::Release`].
    Waiting,
    /// Released (or seen running): past the barrier.
    Released,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TaskState {
    /// Oldest first; never empty. Only the last one may be unfinished.
    pub(crate) attempts: Vec<Attempt>,
    /// RESCHEDULE actions this task's own exit codes triggered.
    pub(crate) own_reschedules: u32,
    /// Barrier state of the current (last) attempt.
    pub(crate) barrier: Barrier,
    /// A [`Command::Restart`] of the current attempt is on its way, with its
    /// reason: the backend has not yet said the run stopped (or started again).
    #[serde(default)]
    pub(crate) restarting: Option<String>,
    /// Completed in an earlier run of the workflow (`osmo workflow restart`):
    /// that workflow's id and the attempt whose outputs this task has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) inherited: Option<(String, u32)>,
}

/// What one task contributes to its group's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Flags {
    pub(crate) scheduling: bool,
    pub(crate) finished: bool,
    /// Finished, or past set-up: does not hold the barrier back.
    pub(crate) ready: bool,
    pub(crate) waiting: bool,
}

impl TaskState {
    pub(crate) fn current(&self) -> &Attempt {
        self.attempts.last().expect("a task always has an attempt")
    }

    fn current_mut(&mut self) -> &mut Attempt {
        self.attempts
            .last_mut()
            .expect("a task always has an attempt")
    }

    pub(crate) fn flags(&self) -> Flags {
        let status = self.current().status;
        let finished = status.is_finished();
        Flags {
            scheduling: status == TaskStatus::Scheduling,
            finished,
            ready: finished || self.barrier != Barrier::Setup,
            waiting: !finished && self.barrier == Barrier::Waiting,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupState {
    pub(crate) status: TaskStatus,
    pub(crate) tasks: Vec<TaskState>,
    /// Upstream groups not COMPLETED yet.
    pub(crate) remaining_upstream: u32,
    /// Tasks whose current attempt is SCHEDULING.
    pub(crate) scheduling: u32,
    /// Tasks whose current attempt is finished.
    pub(crate) finished: u32,
    /// Tasks whose current attempt is finished or past set-up.
    pub(crate) ready: u32,
    /// Tasks whose current attempt waits at the barrier.
    pub(crate) waiting: u32,
    /// Due time of the queue timer in force; None once nothing is SCHEDULING.
    pub(crate) queue_deadline: Option<Millis>,
    /// Due time of the exec timer; None until the group runs, and once it finished.
    pub(crate) exec_deadline: Option<Millis>,
    /// The exec clock started (it starts once per group).
    pub(crate) exec_armed: bool,
    pub(crate) failure_message: Option<String>,
    pub(crate) start_time: Option<Millis>,
    pub(crate) end_time: Option<Millis>,
}

impl GroupState {
    /// Changes task `t` through `f`, keeping the group's counters in step.
    pub(crate) fn update<R>(&mut self, t: usize, f: impl FnOnce(&mut TaskState) -> R) -> R {
        let before = self.tasks[t].flags();
        let result = f(&mut self.tasks[t]);
        let after = self.tasks[t].flags();
        let step = |counter: &mut u32, was: bool, is: bool| {
            *counter = *counter + u32::from(is) - u32::from(was);
        };
        step(&mut self.scheduling, before.scheduling, after.scheduling);
        step(&mut self.finished, before.finished, after.finished);
        step(&mut self.ready, before.ready, after.ready);
        step(&mut self.waiting, before.waiting, after.waiting);
        if self.scheduling == 0 {
            self.queue_deadline = None;
        }
        result
    }
}

/// Who canceled the workflow, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CanceledBy {
    pub(crate) by: String,
    pub(crate) reason: Option<String>,
}

/// The state of one workflow: the pure state machine of SEMANTICS §2–§5.
///
/// Built by [`WorkflowState::new`], moved forward by [`WorkflowState::apply`];
/// plain data, so the server persists it as is (serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowState {
    pub(crate) id: String,
    pub(crate) workflow: Workflow,
    pub(crate) rules: Rules,
    pub(crate) groups: Vec<GroupState>,
    /// Inverse of `Group::upstream`.
    pub(crate) downstream: Vec<Vec<u32>>,
    pub(crate) status: WorkflowStatus,
    pub(crate) finished_groups: u32,
    /// Finished groups by status (index: `TaskStatus as usize`).
    pub(crate) tallies: [u32; TaskStatus::ALL.len()],
    pub(crate) submit_time: Millis,
    pub(crate) start_time: Option<Millis>,
    pub(crate) end_time: Option<Millis>,
    pub(crate) canceled_by: Option<CanceledBy>,
}

pub(crate) fn new_attempt(
    retry_id: u32,
    cause: AttemptCause,
    status: TaskStatus,
    now: Option<Millis>,
) -> Attempt {
    Attempt {
        retry_id,
        cause,
        status,
        codes: Vec::new(),
        exit_code: None,
        rule: None,
        action: None,
        failure_message: None,
        node: None,
        gpus: Vec::new(),
        scheduling_time: now,
        initializing_time: None,
        start_time: None,
        end_time: None,
        runs: Vec::new(),
    }
}

fn millis(d: std::time::Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `2s`, `30m`, `2h`, `1500ms`: a timeout as a user wrote it.
fn human(d: std::time::Duration) -> String {
    let ms = millis(d);
    match ms {
        _ if ms.is_multiple_of(3_600_000) && ms > 0 => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) && ms > 0 => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

impl WorkflowState {
    /// A new workflow, submitted at `now`. Root groups (no upstream) start:
    /// the first attempts of their tasks are SCHEDULING and launched, and the
    /// queue clock starts when the workflow has a queue timeout. Every other
    /// group is WAITING, its tasks' first attempts too.
    pub fn new(
        id: String,
        workflow: Workflow,
        rules: Rules,
        now: Millis,
    ) -> (WorkflowState, Vec<Command>) {
        let mut state = WorkflowState::new_waiting(id, workflow, rules, now);
        let mut out = Vec::new();
        state.start_ready_groups(now, &mut out);
        state.maybe_finish(now, &mut out);
        (state, out)
    }

    /// A restart of `previous` (a finished workflow of the same file) as a new
    /// workflow, as OSMO's `workflow restart` does: every group that
    /// COMPLETED in `previous` is COMPLETED here from the start, without
    /// running again (its tasks keep their outputs there: [`Self::inherited`]);
    /// the others start as in [`Self::new`]. Fails when `workflow` does not
    /// have `previous`'s groups and tasks.
    pub fn restart_of(
        id: String,
        workflow: Workflow,
        rules: Rules,
        now: Millis,
        previous: &WorkflowState,
    ) -> Result<(WorkflowState, Vec<Command>), String> {
        let same = workflow.groups.len() == previous.workflow.groups.len()
            && workflow
                .groups
                .iter()
                .zip(&previous.workflow.groups)
                .all(|(a, b)| {
                    a.name == b.name
                        && a.tasks.len() == b.tasks.len()
                        && a.tasks.iter().zip(&b.tasks).all(|(x, y)| x.name == y.name)
                });
        if !same {
            return Err(format!(
                "the file of {} no longer has the same groups and tasks",
                previous.id
            ));
        }
        let mut state = WorkflowState::new_waiting(id, workflow, rules, now);
        let mut out = Vec::new();
        for g in 0..state.groups.len() {
            if previous.groups[g].status != TaskStatus::Completed {
                continue;
            }
            let message = format!("completed in {}; not run again", previous.id);
            let group = &mut state.groups[g];
            for t in 0..group.tasks.len() {
                let retry_id = previous.groups[g].tasks[t].current().retry_id;
                group.update(t, |task| {
                    task.inherited = Some((previous.id.clone(), retry_id));
                    let attempt = task.current_mut();
                    attempt.status = TaskStatus::Completed;
                    attempt.failure_message = Some(message.clone());
                    attempt.end_time = Some(now);
                });
            }
            group.status = TaskStatus::Completed;
            group.start_time = Some(now);
            group.end_time = Some(now);
            // A finished group means the workflow runs (it never goes back to PENDING).
            state.status = WorkflowStatus::Running;
            state.start_time = Some(now);
            state.finished_groups += 1;
            state.tallies[TaskStatus::Completed as usize] += 1;
            for i in 0..state.downstream[g].len() {
                let d = state.downstream[g][i] as usize;
                state.groups[d].remaining_upstream -= 1;
            }
        }
        state.start_ready_groups(now, &mut out);
        state.maybe_finish(now, &mut out);
        Ok((state, out))
    }

    /// [`Self::new`] without starting any group.
    fn new_waiting(id: String, workflow: Workflow, rules: Rules, now: Millis) -> WorkflowState {
        let mut downstream = vec![Vec::new(); workflow.groups.len()];
        for (g, group) in workflow.groups.iter().enumerate() {
            for &u in &group.upstream {
                downstream[u].push(g as u32);
            }
        }
        let groups = workflow
            .groups
            .iter()
            .map(|group| GroupState {
                status: TaskStatus::Waiting,
                tasks: group
                    .tasks
                    .iter()
                    .map(|_| TaskState {
                        attempts: vec![new_attempt(
                            0,
                            AttemptCause::First,
                            TaskStatus::Waiting,
                            None,
                        )],
                        own_reschedules: 0,
                        barrier: Barrier::Setup,
                        restarting: None,
                        inherited: None,
                    })
                    .collect(),
                remaining_upstream: group.upstream.len() as u32,
                scheduling: 0,
                finished: 0,
                ready: 0,
                waiting: 0,
                queue_deadline: None,
                exec_deadline: None,
                exec_armed: false,
                failure_message: None,
                start_time: None,
                end_time: None,
            })
            .collect();
        WorkflowState {
            id,
            workflow,
            rules,
            groups,
            downstream,
            status: WorkflowStatus::Pending,
            finished_groups: 0,
            tallies: [0; TaskStatus::ALL.len()],
            submit_time: now,
            start_time: None,
            end_time: None,
            canceled_by: None,
        }
    }

    /// Starts every WAITING group whose upstream groups all completed.
    fn start_ready_groups(&mut self, now: Millis, out: &mut Vec<Command>) {
        for g in 0..self.groups.len() {
            if self.groups[g].remaining_upstream == 0
                && self.groups[g].status == TaskStatus::Waiting
            {
                self.start_group(g, now, out);
            }
        }
    }

    /// Where the task's outputs are when its group completed in an earlier
    /// run (`workflow restart`): that workflow's id and attempt.
    pub fn inherited(&self, task: TaskKey) -> Option<(&str, u32)> {
        self.task(task)
            .inherited
            .as_ref()
            .map(|(id, retry)| (id.as_str(), *retry))
    }

    /// Applies one event at time `now`, pushing the commands it calls for
    /// onto `out`.
    ///
    /// Events about an attempt that is not its task's current one, that is
    /// already finished, or that was never launched are ignored, and so is
    /// everything once the workflow is finished. A `TimedOut` is acted on only
    /// when `now` has reached the deadline the engine stored for that group and
    /// clock (a timer superseded by a later one, or one whose clock stopped, is
    /// stale and ignored).
    pub fn apply(&mut self, event: &Event, now: Millis, out: &mut Vec<Command>) {
        if self.status.is_finished() {
            return;
        }
        match event {
            Event::Initializing {
                attempt,
                node,
                gpus,
            } => self.on_initializing(*attempt, node.as_deref(), gpus, now, out),
            Event::SetupDone { attempt } => self.on_setup_done(*attempt, now, out),
            Event::Running { attempt } => self.on_running(*attempt, now, out),
            Event::RunStopped { attempt, codes } => self.on_run_stopped(*attempt, codes),
            Event::Exited { attempt, codes } => self.on_exited(*attempt, codes, now, out),
            Event::TimedOut { group, kind } => self.on_timed_out(*group as usize, *kind, now, out),
            Event::Cancel { by, reason } => self.on_cancel(by, reason.as_deref(), now, out),
        }
        self.maybe_finish(now, out);
    }

    // ----- accessors -------------------------------------------------------

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// PENDING until a group runs, then RUNNING until every group finished
    /// (it never goes back to PENDING), then the final status of §5.
    pub fn status(&self) -> WorkflowStatus {
        self.status
    }

    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }

    /// The group's status. Panics if `group` is not a group of the workflow.
    pub fn group_status(&self, group: u32) -> TaskStatus {
        self.groups[group as usize].status
    }

    /// Why a failed group failed. Panics if `group` is not a group of the workflow.
    pub fn group_failure_message(&self, group: u32) -> Option<&str> {
        self.groups[group as usize].failure_message.as_deref()
    }

    /// When the group first ran (an attempt RUNNING or finished).
    pub fn group_start_time(&self, group: u32) -> Option<Millis> {
        self.groups[group as usize].start_time
    }

    pub fn group_end_time(&self, group: u32) -> Option<Millis> {
        self.groups[group as usize].end_time
    }

    /// Every attempt of the task, oldest first. Panics on an unknown task.
    pub fn attempts(&self, task: TaskKey) -> &[Attempt] {
        &self.task(task).attempts
    }

    /// The task's latest attempt. Panics on an unknown task.
    pub fn current(&self, task: TaskKey) -> &Attempt {
        self.task(task).current()
    }

    /// RESCHEDULE actions the task's own exit codes triggered so far (what
    /// [`crate::decide`] takes as `own_reschedules`). Panics on an unknown task.
    pub fn own_reschedules(&self, task: TaskKey) -> u32 {
        self.task(task).own_reschedules
    }

    pub fn submit_time(&self) -> Option<Millis> {
        Some(self.submit_time)
    }

    /// When the workflow became RUNNING.
    pub fn start_time(&self) -> Option<Millis> {
        self.start_time
    }

    pub fn end_time(&self) -> Option<Millis> {
        self.end_time
    }

    /// Who canceled the workflow and why.
    pub fn canceled_by(&self) -> Option<(&str, Option<&str>)> {
        self.canceled_by
            .as_ref()
            .map(|c| (c.by.as_str(), c.reason.as_deref()))
    }

    /// The timers in force: (group, clock, due time). A restarted server
    /// re-arms these; a `TimedOut` for anything else is ignored.
    pub fn pending_timers(&self) -> Vec<(u32, TimeoutKind, Millis)> {
        let mut timers = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            if let Some(at) = group.queue_deadline {
                timers.push((g as u32, TimeoutKind::Queue, at));
            }
            if let Some(at) = group.exec_deadline {
                timers.push((g as u32, TimeoutKind::Exec, at));
            }
        }
        timers
    }

    /// Whether the engine let this attempt through its barrier (released it,
    /// or saw it run) and has not sent it back since: what a restarted server
    /// must tell a backend whose attempt still waits at the barrier.
    pub fn is_released(&self, attempt: AttemptId) -> bool {
        let Some(task) = self
            .groups
            .get(attempt.task.group as usize)
            .and_then(|g| g.tasks.get(attempt.task.task as usize))
        else {
            return false;
        };
        let current = task.current();
        current.retry_id == attempt.retry_id
            && !current.status.is_finished()
            && task.barrier == Barrier::Released
    }

    fn task(&self, task: TaskKey) -> &TaskState {
        &self.groups[task.group as usize].tasks[task.task as usize]
    }

    // ----- events ----------------------------------------------------------

    /// The (group, task) of `id` if it is its task's current attempt, launched
    /// and unfinished.
    fn live(&self, id: AttemptId) -> Option<(usize, usize)> {
        let (g, t) = (id.task.group as usize, id.task.task as usize);
        let current = self.groups.get(g)?.tasks.get(t)?.current();
        let live = current.retry_id == id.retry_id
            && current.status.progress() >= TaskStatus::Scheduling.progress()
            && !current.status.is_finished();
        live.then_some((g, t))
    }

    fn on_initializing(
        &mut self,
        id: AttemptId,
        node: Option<&str>,
        gpus: &[u32],
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some((g, t)) = self.live(id) else { return };
        let group = &mut self.groups[g];
        if group.tasks[t].current().status != TaskStatus::Scheduling {
            return;
        }
        group.update(t, |task| {
            let attempt = task.current_mut();
            attempt.status = TaskStatus::Initializing;
            attempt.initializing_time = Some(now);
            if let Some(node) = node {
                attempt.node = Some(node.to_string());
            }
            attempt.gpus = gpus.to_vec();
        });
        self.refresh_group(g, now, out);
    }

    fn on_setup_done(&mut self, id: AttemptId, now: Millis, out: &mut Vec<Command>) {
        let Some((g, t)) = self.live(id) else { return };
        let group = &mut self.groups[g];
        let task = &group.tasks[t];
        if task.barrier != Barrier::Setup || task.current().status == TaskStatus::Running {
            return;
        }
        group.update(t, |task| {
            let attempt = task.current_mut();
            if attempt.status == TaskStatus::Scheduling {
                attempt.status = TaskStatus::Initializing;
                attempt.initializing_time = Some(now);
            }
            task.barrier = Barrier::Waiting;
        });
        let spec = &self.workflow.groups[g];
        let barrier = spec.barrier && spec.tasks.len() > 1;
        if group.waiting == 1 && (!barrier || group.ready as usize == spec.tasks.len()) {
            // Only this attempt waits: release it without looking at the others.
            group.update(t, |task| task.barrier = Barrier::Released);
            out.push(Command::Release { attempts: vec![id] });
        } else {
            self.maybe_release(g, out);
        }
        self.refresh_group(g, now, out);
    }

    fn on_running(&mut self, id: AttemptId, now: Millis, out: &mut Vec<Command>) {
        let Some((g, t)) = self.live(id) else { return };
        let group = &mut self.groups[g];
        // A run is open until it ends or is stopped for a restart: a second
        // `Running` for it is a repeat; one after a restart is the next run.
        let open = group.tasks[t]
            .current()
            .runs
            .last()
            .is_some_and(|run| run.end_time.is_none());
        if open {
            return;
        }
        // Running without (or before) a release: the attempt is past the barrier anyway.
        group.update(t, |task| {
            let attempt = task.current_mut();
            if attempt.status != TaskStatus::Running {
                attempt.status = TaskStatus::Running;
                attempt.start_time = Some(now);
            }
            attempt.runs.push(RunRecord {
                start_time: now,
                end_time: None,
                exit_code: None,
                stopped_because: None,
            });
            task.barrier = Barrier::Released;
            task.restarting = None;
        });
        let armed = self.enter_running(g, now);
        self.announce_exec(g, armed, out);
        self.maybe_release(g, out);
    }

    /// The backend stopped a run for a restart in place: record its code.
    fn on_run_stopped(&mut self, id: AttemptId, codes: &[ReportedCode]) {
        let Some((g, t)) = self.live(id) else { return };
        let task = &mut self.groups[g].tasks[t];
        if task.restarting.take().is_none() {
            return;
        }
        let code = user_code(codes);
        if let Some(run) = task.current_mut().runs.last_mut()
            && run.stopped_because.is_some()
            && run.exit_code.is_none()
        {
            run.exit_code = code;
        }
    }

    fn on_exited(
        &mut self,
        id: AttemptId,
        codes: &[ReportedCode],
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some((g, t)) = self.live(id) else { return };
        let spec = &self.workflow.groups[g];
        let exit_code = resolve_code(codes).unwrap_or(well_known::UNKNOWN);
        let task_state = &self.groups[g].tasks[t];
        if let Some(reason) = task_state.restarting.clone() {
            return self.on_exited_while_restarting(g, t, codes, exit_code, &reason, now, out);
        }
        let decision = decide_with(
            exit_code,
            &spec.tasks[t].exit_actions,
            &self.rules,
            task_state.own_reschedules,
            task_state.current().retry_id,
            true,
        );
        let status = decision.status;
        let applied: Option<Action> = if decision.retry_limit_reached {
            None
        } else {
            decision.rule.action
        };
        // SEMANTICS §3: every attempt keeps its message, a COMPLETED one too.
        let message = Some(decision.message);
        self.groups[g].update(t, |task| {
            let attempt = task.current_mut();
            close_run(attempt, codes, now);
            attempt.status = status;
            attempt.codes = codes.to_vec();
            attempt.exit_code = Some(exit_code);
            attempt.rule = Some(decision.rule);
            attempt.action = applied;
            attempt.failure_message = message;
            attempt.end_time = Some(now);
        });
        let armed = self.enter_running(g, now);

        // What the group does about it (SEMANTICS §4).
        let spec = &self.workflow.groups[g];
        let n = spec.tasks.len();
        let is_lead = t == spec.lead;
        let name = &spec.tasks[t].name;
        if status == TaskStatus::Rescheduled {
            let restart = (n > 1 && (is_lead || !spec.ignore_nonlead_status)).then(|| {
                if is_lead {
                    format!("restarted: lead {name} rescheduled")
                } else {
                    format!("restarted: non-lead {name} rescheduled")
                }
            });
            self.groups[g].tasks[t].own_reschedules += 1;
            self.push_attempt(g, t, AttemptCause::Rescheduled, now, out);
            if let Some(reason) = restart {
                for u in (0..n).filter(|&u| u != t) {
                    self.restart_task(g, u, &reason, now, out);
                }
            }
            // The queue clock is not re-armed (SEMANTICS §5): it covered the
            // group's first wait for resources only.
        } else if n > 1 && (is_lead || (status.is_failed() && !spec.ignore_nonlead_status)) {
            let (sibling_status, reason) = if is_lead {
                let sibling = if status == TaskStatus::Completed {
                    TaskStatus::Completed
                } else {
                    TaskStatus::Failed
                };
                (sibling, format!("lead task {name} finished {status}"))
            } else {
                (TaskStatus::Failed, format!("task {name} failed"))
            };
            for u in (0..n).filter(|&u| u != t) {
                self.stop_attempt(g, u, sibling_status, &reason, now, out);
            }
        }
        self.maybe_release(g, out);
        self.refresh_group(g, now, out);
        self.announce_exec(g, armed, out);
    }

    fn on_timed_out(&mut self, g: usize, kind: TimeoutKind, now: Millis, out: &mut Vec<Command>) {
        let Some(group) = self.groups.get(g) else {
            return;
        };
        if group.status.is_finished() {
            return;
        }
        let (deadline, limit, status, clock) = match kind {
            TimeoutKind::Queue => (
                group.queue_deadline.filter(|_| group.scheduling > 0),
                self.workflow.timeout.queue,
                TaskStatus::FailedQueueTimeout,
                "queue",
            ),
            TimeoutKind::Exec => (
                group.exec_deadline,
                self.workflow.timeout.exec,
                TaskStatus::FailedExecTimeout,
                "exec",
            ),
        };
        if deadline.is_none_or(|at| now < at) {
            return;
        }
        let reason = match limit {
            Some(limit) => format!("{clock} timeout of {} reached", human(limit)),
            None => format!("{clock} timeout reached"),
        };
        for t in 0..self.groups[g].tasks.len() {
            self.stop_attempt(g, t, status, &reason, now, out);
        }
        self.finish_group(g, status, Some(reason), true, now, out);
    }

    fn on_cancel(&mut self, by: &str, reason: Option<&str>, now: Millis, out: &mut Vec<Command>) {
        if self.canceled_by.is_none() {
            self.canceled_by = Some(CanceledBy {
                by: by.to_string(),
                reason: reason.map(str::to_string),
            });
        }
        let message = match reason {
            Some(reason) => format!("canceled by {by}: {reason}"),
            None => format!("canceled by {by}"),
        };
        for g in 0..self.groups.len() {
            if self.groups[g].status.is_finished() {
                continue;
            }
            for t in 0..self.groups[g].tasks.len() {
                self.stop_attempt(g, t, TaskStatus::FailedCanceled, &message, now, out);
            }
            // No cascade: every unfinished group is canceled, none is FAILED_UPSTREAM.
            self.finish_group(
                g,
                TaskStatus::FailedCanceled,
                Some(message.clone()),
                false,
                now,
                out,
            );
        }
    }

    // ----- building blocks -------------------------------------------------

    /// Launches the first attempts of every task of a WAITING group.
    fn start_group(&mut self, g: usize, now: Millis, out: &mut Vec<Command>) {
        let group = &mut self.groups[g];
        group.status = TaskStatus::Scheduling;
        for t in 0..group.tasks.len() {
            group.update(t, |task| {
                let attempt = task.current_mut();
                attempt.status = TaskStatus::Scheduling;
                attempt.scheduling_time = Some(now);
            });
            out.push(Command::Launch {
                attempt: AttemptId {
                    task: TaskKey {
                        group: g as u32,
                        task: t as u32,
                    },
                    retry_id: 0,
                },
            });
        }
        self.arm_queue(g, now, out);
    }

    /// (Re)starts the queue clock of a group whose attempts were just launched.
    fn arm_queue(&mut self, g: usize, now: Millis, out: &mut Vec<Command>) {
        let group = &mut self.groups[g];
        if let Some(queue) = self.workflow.timeout.queue
            && group.scheduling > 0
        {
            let at = now.saturating_add(millis(queue));
            group.queue_deadline = Some(at);
            out.push(Command::SetTimer {
                group: g as u32,
                kind: TimeoutKind::Queue,
                at,
            });
        }
    }

    /// A new SCHEDULING attempt of a task whose current attempt is finished, launched.
    fn push_attempt(
        &mut self,
        g: usize,
        t: usize,
        cause: AttemptCause,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let retry_id = self.groups[g].update(t, |task| {
            let retry_id = task.current().retry_id + 1;
            task.attempts.push(new_attempt(
                retry_id,
                cause,
                TaskStatus::Scheduling,
                Some(now),
            ));
            task.barrier = Barrier::Setup;
            task.restarting = None;
            retry_id
        });
        out.push(Command::Launch {
            attempt: AttemptId {
                task: TaskKey {
                    group: g as u32,
                    task: t as u32,
                },
                retry_id,
            },
        });
    }

    /// Group restart of one task (SEMANTICS §4), by where it stands:
    /// finished → a new attempt (its sandbox is gone; the finished one keeps
    /// its status); in set-up, or not placed yet → it goes on; waiting at the
    /// barrier → it keeps waiting, now for the new attempt that caused this;
    /// past the barrier (its command runs, or is about to) → restarted in
    /// place: the same attempt, its run closed, back at the barrier.
    fn restart_task(
        &mut self,
        g: usize,
        t: usize,
        reason: &str,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let task = &self.groups[g].tasks[t];
        let current = task.current();
        if current.status.is_finished() {
            self.push_attempt(g, t, AttemptCause::GroupRestart, now, out);
            return;
        }
        let launched = current.status.progress() >= TaskStatus::Scheduling.progress();
        if !launched || task.barrier != Barrier::Released {
            return;
        }
        let retry_id = current.retry_id;
        self.groups[g].update(t, |task| {
            task.barrier = Barrier::Waiting;
            task.restarting = Some(reason.to_string());
            if let Some(run) = task.current_mut().runs.last_mut()
                && run.end_time.is_none()
            {
                run.end_time = Some(now);
                run.stopped_because = Some(reason.to_string());
            }
        });
        out.push(Command::Restart {
            attempt: AttemptId {
                task: TaskKey {
                    group: g as u32,
                    task: t as u32,
                },
                retry_id,
            },
            reason: reason.to_string(),
        });
    }

    /// The attempt exited on its own before the restart asked of it reached
    /// its backend: its sandbox is gone, so it ends RESCHEDULED (its codes
    /// kept) and the task gets a new attempt, as a finished sibling would.
    #[allow(clippy::too_many_arguments)]
    fn on_exited_while_restarting(
        &mut self,
        g: usize,
        t: usize,
        codes: &[ReportedCode],
        exit_code: u32,
        reason: &str,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let message = format!(
            "{reason}; its command had already ended (exit code {exit_code}), so it runs again as a new attempt"
        );
        // The rule its code matches is kept for the record; no action is applied.
        let task_state = &self.groups[g].tasks[t];
        let rule = decide_with(
            exit_code,
            &self.workflow.groups[g].tasks[t].exit_actions,
            &self.rules,
            task_state.own_reschedules,
            task_state.current().retry_id,
            false,
        )
        .rule;
        self.groups[g].update(t, |task| {
            task.restarting = None;
            let attempt = task.current_mut();
            close_run(attempt, codes, now);
            attempt.status = TaskStatus::Rescheduled;
            attempt.codes = codes.to_vec();
            attempt.exit_code = Some(exit_code);
            attempt.rule = Some(rule);
            attempt.failure_message = Some(message);
            attempt.end_time = Some(now);
        });
        let armed = self.enter_running(g, now);
        self.push_attempt(g, t, AttemptCause::GroupRestart, now, out);
        self.maybe_release(g, out);
        self.refresh_group(g, now, out);
        self.announce_exec(g, armed, out);
    }

    /// Ends the task's current attempt with `status` unless it is finished;
    /// a launched one is stopped.
    fn stop_attempt(
        &mut self,
        g: usize,
        t: usize,
        status: TaskStatus,
        reason: &str,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let group = &mut self.groups[g];
        let current = group.tasks[t].current();
        if current.status.is_finished() {
            return;
        }
        let launched = current.status.progress() >= TaskStatus::Scheduling.progress();
        let retry_id = current.retry_id;
        group.update(t, |task| {
            let attempt = task.current_mut();
            if let Some(run) = attempt.runs.last_mut()
                && run.end_time.is_none()
            {
                run.end_time = Some(now);
                run.stopped_because = Some(reason.to_string());
            }
            attempt.status = status;
            attempt.failure_message = Some(reason.to_string());
            attempt.end_time = Some(now);
            task.restarting = None;
        });
        if launched {
            out.push(Command::Stop {
                attempt: AttemptId {
                    task: TaskKey {
                        group: g as u32,
                        task: t as u32,
                    },
                    retry_id,
                },
                reason: reason.to_string(),
            });
        }
    }

    /// Releases the attempts waiting at the barrier once none holds it back
    /// (or at once, without an effective barrier).
    fn maybe_release(&mut self, g: usize, out: &mut Vec<Command>) {
        let spec = &self.workflow.groups[g];
        let group = &mut self.groups[g];
        if group.waiting == 0 || group.status.is_finished() {
            return;
        }
        let barrier = spec.barrier && spec.tasks.len() > 1;
        if barrier && group.ready as usize != group.tasks.len() {
            return;
        }
        let mut attempts = Vec::with_capacity(group.waiting as usize);
        for t in 0..group.tasks.len() {
            if group.tasks[t].flags().waiting {
                let retry_id = group.update(t, |task| {
                    task.barrier = Barrier::Released;
                    task.current().retry_id
                });
                attempts.push(AttemptId {
                    task: TaskKey {
                        group: g as u32,
                        task: t as u32,
                    },
                    retry_id,
                });
            }
        }
        out.push(Command::Release { attempts });
    }

    /// The group (and so the workflow) runs: an attempt of it ran or
    /// finished. The exec clock starts here, once (SEMANTICS §5).
    /// Returns the exec deadline when it was just set: the caller announces it
    /// ([`Self::announce_exec`]) once the event is handled, unless the group
    /// finished meanwhile.
    #[must_use]
    fn enter_running(&mut self, g: usize, now: Millis) -> Option<Millis> {
        let group = &mut self.groups[g];
        let mut armed = None;
        if !group.exec_armed && !group.status.is_finished() {
            group.exec_armed = true;
            if let Some(exec) = self.workflow.timeout.exec {
                let at = now.saturating_add(millis(exec));
                group.exec_deadline = Some(at);
                armed = Some(at);
            }
        }
        if group.status.progress() < TaskStatus::Running.progress() {
            group.status = TaskStatus::Running;
            group.start_time = Some(now);
            if self.status == WorkflowStatus::Pending {
                self.status = WorkflowStatus::Running;
                self.start_time = Some(now);
            }
        }
        armed
    }

    /// Sets the timer of an exec clock [`Self::enter_running`] started, if it is still in force.
    fn announce_exec(&self, g: usize, armed: Option<Millis>, out: &mut Vec<Command>) {
        if let Some(at) = armed
            && self.groups[g].exec_deadline == Some(at)
        {
            out.push(Command::SetTimer {
                group: g as u32,
                kind: TimeoutKind::Exec,
                at,
            });
        }
    }

    /// Recomputes an unfinished group's status; finishes it when every task is.
    fn refresh_group(&mut self, g: usize, now: Millis, out: &mut Vec<Command>) {
        let group = &mut self.groups[g];
        if group.status.is_finished() {
            return;
        }
        if group.finished as usize == group.tasks.len() {
            let (status, message) = self.group_outcome(g);
            self.finish_group(g, status, message, true, now, out);
            return;
        }
        let queue = if group.scheduling > 0 {
            TaskStatus::Scheduling
        } else {
            TaskStatus::Initializing
        };
        if queue.progress() > group.status.progress() {
            group.status = queue;
        }
    }

    /// SEMANTICS §4: the status of a group whose tasks are all finished, with
    /// the message of the task that decided it.
    pub(crate) fn group_outcome(&self, g: usize) -> (TaskStatus, Option<String>) {
        let spec = &self.workflow.groups[g];
        let group = &self.groups[g];
        let considered = |t: usize| !spec.ignore_nonlead_status || t == spec.lead;
        let statuses = || {
            group
                .tasks
                .iter()
                .map(|task| task.current().status)
                .enumerate()
        };
        let any = |s: TaskStatus| statuses().any(|(_, x)| x == s);
        let any_considered = |s: TaskStatus| statuses().any(|(t, x)| considered(t) && x == s);
        let status = if any(TaskStatus::FailedUpstream) {
            TaskStatus::FailedUpstream
        } else if any(TaskStatus::FailedServerError) {
            TaskStatus::FailedServerError
        } else if any(TaskStatus::FailedPreempted) {
            TaskStatus::FailedPreempted
        } else if any_considered(TaskStatus::FailedEvicted) {
            TaskStatus::FailedEvicted
        } else if statuses().any(|(t, x)| considered(t) && x.is_failed()) {
            TaskStatus::Failed
        } else {
            return (TaskStatus::Completed, None);
        };
        // The task that decided it: one with that status (any failed one for
        // FAILED), preferring one that exited over one that was stopped.
        let decides = |t: usize, x: TaskStatus| {
            if status == TaskStatus::Failed {
                considered(t) && x.is_failed()
            } else {
                x == status
            }
        };
        let cause = statuses()
            .filter(|&(t, x)| decides(t, x))
            .max_by_key(|&(t, _)| {
                (
                    group.tasks[t].current().exit_code.is_some(),
                    t == spec.lead,
                    usize::MAX - t,
                )
            })
            .map(|(t, _)| t);
        let message = cause.map(|t| {
            let attempt = group.tasks[t].current();
            match &attempt.failure_message {
                Some(m) => format!("task {} {}: {m}", spec.tasks[t].name, attempt.status),
                None => format!("task {} {}", spec.tasks[t].name, attempt.status),
            }
        });
        (status, message)
    }

    /// Records a group's final status; completes or fails its downstream groups.
    fn finish_group(
        &mut self,
        g: usize,
        status: TaskStatus,
        message: Option<String>,
        cascade: bool,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let root = g;
        let mut next = Some((g, status, message));
        let mut stack = Vec::new();
        while let Some((g, status, message)) = next.take().or_else(|| stack.pop()) {
            let group = &mut self.groups[g];
            group.status = status;
            group.failure_message = message;
            group.end_time = Some(now);
            group.queue_deadline = None;
            group.exec_deadline = None;
            self.finished_groups += 1;
            self.tallies[status as usize] += 1;
            for i in 0..self.downstream[g].len() {
                let d = self.downstream[g][i] as usize;
                if status == TaskStatus::Completed {
                    let down = &mut self.groups[d];
                    down.remaining_upstream -= 1;
                    if down.remaining_upstream == 0 && down.status == TaskStatus::Waiting {
                        self.start_group(d, now, out);
                    }
                } else if cascade && !self.groups[d].status.is_finished() {
                    let reason =
                        format!("upstream group {} failed", self.workflow.groups[root].name);
                    self.fail_upstream(d, &reason, now);
                    stack.push((d, TaskStatus::FailedUpstream, Some(reason)));
                }
            }
        }
    }

    /// Marks a WAITING group FAILED_UPSTREAM: its tasks' attempts get exit code
    /// 3000 and no exit actions. Bookkeeping follows in `finish_group`.
    fn fail_upstream(&mut self, g: usize, reason: &str, now: Millis) {
        let group = &mut self.groups[g];
        group.status = TaskStatus::FailedUpstream;
        for t in 0..group.tasks.len() {
            if group.tasks[t].current().status.is_finished() {
                continue;
            }
            group.update(t, |task| {
                let attempt = task.current_mut();
                attempt.status = TaskStatus::FailedUpstream;
                attempt.exit_code = Some(well_known::UPSTREAM);
                attempt.failure_message = Some(reason.to_string());
                attempt.end_time = Some(now);
            });
        }
    }

    /// The workflow status of §5, once every group finished.
    pub(crate) fn final_status(&self) -> WorkflowStatus {
        let count = |s: TaskStatus| self.tallies[s as usize];
        for (group, workflow) in [
            (TaskStatus::FailedCanceled, WorkflowStatus::FailedCanceled),
            (
                TaskStatus::FailedServerError,
                WorkflowStatus::FailedServerError,
            ),
            (
                TaskStatus::FailedExecTimeout,
                WorkflowStatus::FailedExecTimeout,
            ),
            (
                TaskStatus::FailedQueueTimeout,
                WorkflowStatus::FailedQueueTimeout,
            ),
        ] {
            if count(group) > 0 {
                return workflow;
            }
        }
        let mut failed = TaskStatus::ALL
            .into_iter()
            .filter(|&s| s.is_failed() && s != TaskStatus::FailedUpstream && count(s) > 0);
        match (failed.next(), failed.next()) {
            (Some(only), None) => only.as_workflow_failure(),
            (Some(_), Some(_)) => WorkflowStatus::Failed,
            (None, _) if count(TaskStatus::FailedUpstream) > 0 => WorkflowStatus::Failed,
            (None, _) => WorkflowStatus::Completed,
        }
    }

    fn maybe_finish(&mut self, now: Millis, out: &mut Vec<Command>) {
        if self.finished_groups as usize == self.groups.len() && !self.status.is_finished() {
            self.status = self.final_status();
            self.end_time = Some(now);
            out.push(Command::Finished {
                status: self.status,
            });
        }
    }
}

/// The user command's own code among an attempt's codes.
fn user_code(codes: &[ReportedCode]) -> Option<u32> {
    codes
        .iter()
        .filter(|c| c.source == CodeSource::User)
        .map(|c| c.code)
        .max()
}

/// Ends the attempt's open run, if any, with the command's own code.
fn close_run(attempt: &mut Attempt, codes: &[ReportedCode], now: Millis) {
    if let Some(run) = attempt.runs.last_mut()
        && run.end_time.is_none()
    {
        run.end_time = Some(now);
        run.exit_code = user_code(codes);
    }
}
