//! History checks that a single state cannot show: what changed between two
//! events, and whether the commands match the change.

use std::collections::HashSet;

use osmo_spec::codes::well_known;

use crate::api::{
    Attempt, AttemptCause, AttemptId, Command, Event, Millis, TaskKey, TaskStatus, WorkflowStatus,
};
use crate::decide::resolve_code;
use crate::state::WorkflowState;

/// Remembers the previous state of every attempt and every command sent, and
/// checks each step against them:
///
/// - [`WorkflowState::sanity_check`] holds;
/// - statuses of attempts, groups and the workflow only move forward, a
///   finished attempt never changes, attempts are only appended;
/// - a task has at most `max_retry_per_task + 1` attempts of its own (plus
///   group restarts);
/// - every launched attempt got exactly one `Launch`, a `Release` only goes to
///   launched attempts set up and not yet released, once; a launched attempt
///   finishes only by its own `Exited` or with a `Stop`; `Finished` comes
///   exactly once, with the final status; timers match the state's deadlines;
/// - an `Exited` for a live attempt is never ignored, and its code is the highest.
#[derive(Debug, Clone)]
pub struct Checker {
    keys: Vec<TaskKey>,
    prev: Vec<Vec<Attempt>>,
    prev_groups: Vec<TaskStatus>,
    prev_status: WorkflowStatus,
    launched: HashSet<AttemptId>,
    released: HashSet<AttemptId>,
    stopped: HashSet<AttemptId>,
    /// Attempts restarted in place (they may be released again).
    restarted: HashSet<AttemptId>,
    finished_sent: u32,
}

impl Checker {
    /// Checks a new state and the commands [`WorkflowState::new`] returned.
    pub fn new(
        state: &WorkflowState,
        commands: &[Command],
        now: Millis,
    ) -> Result<Checker, String> {
        let wf = state.workflow();
        let keys: Vec<TaskKey> = wf
            .groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| {
                (0..group.tasks.len()).map(move |t| TaskKey {
                    group: g as u32,
                    task: t as u32,
                })
            })
            .collect();
        let mut checker = Checker {
            prev: keys.iter().map(|_| Vec::new()).collect(),
            keys,
            prev_groups: vec![TaskStatus::Submitting; wf.groups.len()],
            prev_status: WorkflowStatus::Pending,
            launched: HashSet::new(),
            released: HashSet::new(),
            stopped: HashSet::new(),
            restarted: HashSet::new(),
            finished_sent: 0,
        };
        checker.check(state, None, commands, now)?;
        Ok(checker)
    }

    /// Checks the step that applied `event` (None: the state was just made) and produced `commands`.
    pub fn check(
        &mut self,
        state: &WorkflowState,
        event: Option<&Event>,
        commands: &[Command],
        now: Millis,
    ) -> Result<(), String> {
        state.sanity_check()?;
        let mut stops = HashSet::new();
        let find = |id: AttemptId| -> Result<&Attempt, String> {
            let n = state
                .workflow()
                .groups
                .get(id.task.group as usize)
                .map(|g| g.tasks.len());
            if n.is_none_or(|n| id.task.task as usize >= n) {
                return Err(format!("a command names an unknown task {:?}", id.task));
            }
            state
                .attempts(id.task)
                .get(id.retry_id as usize)
                .ok_or_else(|| format!("no attempt {id:?}"))
        };
        for command in commands {
            match command {
                Command::Launch { attempt } => {
                    let a = find(*attempt)?;
                    if a.scheduling_time.is_none()
                        || state.current(attempt.task).retry_id != attempt.retry_id
                    {
                        return Err(format!(
                            "Launch {attempt:?} of an attempt that is not the current one, scheduled"
                        ));
                    }
                    if !self.launched.insert(*attempt) {
                        return Err(format!("Launch {attempt:?} twice"));
                    }
                }
                Command::Release { attempts } => {
                    if attempts.is_empty() {
                        return Err("an empty Release".to_string());
                    }
                    for id in attempts {
                        let a = find(*id)?;
                        let waits = a.status == TaskStatus::Initializing
                            || (a.status == TaskStatus::Running && self.restarted.contains(id));
                        if !self.launched.contains(id) || !waits {
                            return Err(format!(
                                "Release {id:?} which is {} (launched: {})",
                                a.status,
                                self.launched.contains(id)
                            ));
                        }
                        if !self.released.insert(*id) {
                            return Err(format!("Release {id:?} twice"));
                        }
                    }
                    // The barrier: nobody in the group may still be setting up.
                    let g = attempts[0].task.group as usize;
                    let spec = &state.workflow().groups[g];
                    if spec.barrier && spec.tasks.len() > 1 {
                        let group = &state.groups[g];
                        if let Some(t) = group.tasks.iter().position(|t| !t.flags().ready) {
                            return Err(format!(
                                "Release {attempts:?} while task {} is still setting up",
                                spec.tasks[t].name
                            ));
                        }
                    }
                }
                Command::Stop { attempt, reason } => {
                    let a = find(*attempt)?;
                    if !self.launched.contains(attempt) || !a.status.is_finished() {
                        return Err(format!(
                            "Stop {attempt:?} ({reason}) which is {} and launched: {}",
                            a.status,
                            self.launched.contains(attempt)
                        ));
                    }
                    if !self.stopped.insert(*attempt) {
                        return Err(format!("Stop {attempt:?} twice"));
                    }
                    stops.insert(*attempt);
                }
                Command::Restart { attempt, reason } => {
                    let a = find(*attempt)?;
                    if !self.launched.contains(attempt)
                        || a.status.is_finished()
                        || state.current(attempt.task).retry_id != attempt.retry_id
                    {
                        return Err(format!(
                            "Restart {attempt:?} ({reason}) which is {}, released: {}",
                            a.status,
                            self.released.contains(attempt)
                        ));
                    }
                    // Back at the barrier: it is released again later.
                    self.released.remove(attempt);
                    self.restarted.insert(*attempt);
                }
                Command::SetTimer { group, kind, at } => {
                    if *at < now || !state.pending_timers().contains(&(*group, *kind, *at)) {
                        return Err(format!(
                            "SetTimer {group} {kind:?} at {at} (now {now}) not in force"
                        ));
                    }
                }
                Command::Finished { status } => {
                    self.finished_sent += 1;
                    if self.finished_sent > 1 || *status != state.status() || !status.is_finished()
                    {
                        return Err(format!(
                            "Finished {status} (sent {} times, state {})",
                            self.finished_sent,
                            state.status()
                        ));
                    }
                }
            }
        }
        if state.is_finished() && self.finished_sent != 1 {
            return Err(format!(
                "workflow {} but Finished sent {} times",
                state.status(),
                self.finished_sent
            ));
        }
        // The workflow and its groups move forward.
        let status = state.status();
        let rank = |s: WorkflowStatus| match s {
            WorkflowStatus::Pending => 0,
            WorkflowStatus::Running => 1,
            _ => 2,
        };
        if rank(status) < rank(self.prev_status)
            || (self.prev_status.is_finished() && status != self.prev_status)
        {
            return Err(format!(
                "workflow went from {} to {status}",
                self.prev_status
            ));
        }
        self.prev_status = status;
        for (g, prev) in self.prev_groups.iter_mut().enumerate() {
            let now_status = state.group_status(g as u32);
            if now_status.progress() < prev.progress()
                || (prev.is_finished() && now_status != *prev)
            {
                return Err(format!(
                    "group {} went from {prev} to {now_status}",
                    state.workflow().groups[g].name
                ));
            }
            *prev = now_status;
        }
        // Attempts: only appended, forward, finished ones frozen.
        let exited = match event {
            Some(Event::Exited { attempt, codes }) => Some((*attempt, codes.as_slice())),
            _ => None,
        };
        let max_own = state.rules().max_retry_per_task as usize + 1;
        for (key, prev) in self.keys.iter().zip(self.prev.iter_mut()) {
            let attempts = state.attempts(*key);
            let name = &state.workflow().groups[key.group as usize].tasks[key.task as usize].name;
            if attempts.len() < prev.len() {
                return Err(format!(
                    "task {name}: attempts went from {} to {}",
                    prev.len(),
                    attempts.len()
                ));
            }
            for (old, new) in prev.iter().zip(attempts) {
                let id = AttemptId {
                    task: *key,
                    retry_id: new.retry_id,
                };
                if old.status.is_finished() {
                    if old != new {
                        return Err(format!(
                            "task {name}: finished attempt {} changed:\n{old:?}\n{new:?}",
                            old.retry_id
                        ));
                    }
                    continue;
                }
                if new.status.progress() < old.status.progress() {
                    return Err(format!(
                        "task {name}: attempt {} went from {} to {}",
                        old.retry_id, old.status, new.status
                    ));
                }
                let was_live = old.scheduling_time.is_some();
                if new.status.is_finished() && was_live {
                    let by_exit = exited.is_some_and(|(a, _)| a == id);
                    if !by_exit && !stops.contains(&id) {
                        return Err(format!(
                            "task {name}: launched attempt {} ended {} without a Stop",
                            old.retry_id, new.status
                        ));
                    }
                }
                if let Some((a, codes)) = exited
                    && a == id
                    && was_live
                {
                    if !new.status.is_finished() {
                        return Err(format!(
                            "task {name}: Exited for live attempt {} ignored",
                            a.retry_id
                        ));
                    }
                    let expected = resolve_code(codes).unwrap_or(well_known::UNKNOWN);
                    if new.exit_code != Some(expected) {
                        return Err(format!(
                            "task {name}: exit code {:?}, expected {expected}",
                            new.exit_code
                        ));
                    }
                }
            }
            for new in attempts {
                let id = AttemptId {
                    task: *key,
                    retry_id: new.retry_id,
                };
                if new.scheduling_time.is_some() != self.launched.contains(&id) {
                    return Err(format!(
                        "task {name}: attempt {} scheduled {:?} but launched {}",
                        new.retry_id,
                        new.scheduling_time,
                        self.launched.contains(&id)
                    ));
                }
            }
            let own = attempts
                .iter()
                .filter(|a| a.cause != AttemptCause::GroupRestart)
                .count();
            if own > max_own {
                return Err(format!(
                    "task {name}: {own} attempts of its own, budget allows {max_own}"
                ));
            }
            // Remember: refresh the unfinished tail, append the new ones.
            let keep = prev.iter().take_while(|a| a.status.is_finished()).count();
            prev.truncate(keep);
            prev.extend(attempts[keep..].iter().cloned());
        }
        Ok(())
    }

    /// Attempts launched and neither stopped nor known to have exited by the engine's record.
    pub fn launched(&self) -> usize {
        self.launched.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Rules;
    use crate::testkit::{WorkflowBuilder, code};

    fn setup() -> (WorkflowState, Checker, Vec<Command>) {
        let wf = WorkflowBuilder::new("c")
            .task("t", &[])
            .task("u", &[])
            .build();
        let (state, commands) = WorkflowState::new("c-1".into(), wf, Rules::default(), 10);
        let checker = Checker::new(&state, &commands, 10).unwrap();
        (state, checker, commands)
    }

    fn id(group: u32) -> AttemptId {
        AttemptId {
            task: TaskKey { group, task: 0 },
            retry_id: 0,
        }
    }

    #[test]
    fn accepts_a_real_step() {
        let (mut state, mut checker, _) = setup();
        let event = Event::Exited {
            attempt: id(0),
            codes: vec![code(0)],
        };
        let mut out = Vec::new();
        state.apply(&event, 20, &mut out);
        checker.check(&state, Some(&event), &out, 20).unwrap();
    }

    #[test]
    fn finds_a_status_moving_back() {
        let (mut state, mut checker, _) = setup();
        let event = Event::Initializing {
            attempt: id(0),
            node: None,
            gpus: Vec::new(),
        };
        let mut out = Vec::new();
        state.apply(&event, 20, &mut out);
        checker.check(&state, Some(&event), &out, 20).unwrap();
        state.groups[0].update(0, |t| t.attempts[0].status = TaskStatus::Scheduling);
        state.groups[0].status = TaskStatus::Scheduling;
        let err = checker.check(&state, None, &[], 20).unwrap_err();
        assert!(err.contains("went from"), "{err}");
    }

    #[test]
    fn finds_a_finished_attempt_that_changed() {
        let (mut state, mut checker, _) = setup();
        let event = Event::Exited {
            attempt: id(0),
            codes: vec![code(4)],
        };
        let mut out = Vec::new();
        state.apply(&event, 20, &mut out);
        checker.check(&state, Some(&event), &out, 20).unwrap();
        state.groups[0].tasks[0].attempts[0].failure_message = Some("rewritten".into());
        let err = checker.check(&state, None, &[], 20).unwrap_err();
        assert!(err.contains("finished attempt 0 changed"), "{err}");
    }

    #[test]
    fn finds_an_ignored_exit_and_a_silent_end() {
        let (state, mut checker, _) = setup();
        let event = Event::Exited {
            attempt: id(1),
            codes: vec![code(0)],
        };
        let err = checker
            .clone()
            .check(&state, Some(&event), &[], 20)
            .unwrap_err();
        assert!(err.contains("ignored"), "{err}");
        // Ending a launched attempt without its exit or a Stop.
        let mut state = state;
        state.groups[1].update(0, |t| {
            t.attempts[0].status = TaskStatus::Failed;
            t.attempts[0].end_time = Some(20);
        });
        state.groups[1].status = TaskStatus::Failed;
        state.groups[1].failure_message = Some("x".into());
        state.groups[1].end_time = Some(20);
        state.finished_groups += 1;
        state.tallies[TaskStatus::Failed as usize] += 1;
        state.groups[1].tasks[0].attempts[0].exit_code = None;
        let err = checker.check(&state, None, &[], 20).unwrap_err();
        assert!(err.contains("without a Stop"), "{err}");
    }

    #[test]
    fn finds_bad_commands() {
        let (state, checker, launched) = setup();
        let err = checker
            .clone()
            .check(&state, None, &launched, 20)
            .unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let release = [Command::Release {
            attempts: vec![id(0)],
        }];
        let err = checker
            .clone()
            .check(&state, None, &release, 20)
            .unwrap_err();
        assert!(err.contains("Release"), "{err}");
        let stop = [Command::Stop {
            attempt: id(0),
            reason: "x".into(),
        }];
        let err = checker.clone().check(&state, None, &stop, 20).unwrap_err();
        assert!(err.contains("Stop"), "{err}");
        let finished = [Command::Finished {
            status: WorkflowStatus::Completed,
        }];
        let err = checker
            .clone()
            .check(&state, None, &finished, 20)
            .unwrap_err();
        assert!(err.contains("Finished"), "{err}");
        let timer = [Command::SetTimer {
            group: 0,
            kind: crate::api::TimeoutKind::Exec,
            at: 30,
        }];
        let err = checker.clone().check(&state, None, &timer, 20).unwrap_err();
        assert!(err.contains("SetTimer"), "{err}");
    }
}
