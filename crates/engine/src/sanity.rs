//! [`WorkflowState::sanity_check`]: every invariant of the state, recomputed
//! from scratch (O(workflow); tests run it after every event).

use std::fmt::Write as _;

use osmo_spec::codes::well_known;

use crate::api::{Action, AttemptCause, TaskStatus, WorkflowStatus};
use crate::state::{Barrier, Flags, WorkflowState};

impl WorkflowState {
    /// Checks every invariant over the whole state; the error lists each one
    /// that does not hold. Also useful on a state read back from storage.
    pub fn sanity_check(&self) -> Result<(), String> {
        let mut errors = String::new();
        macro_rules! fail {
            ($($arg:tt)*) => {{
                let _ = writeln!(errors, $($arg)*);
            }};
        }
        let wf = &self.workflow;
        if self.groups.len() != wf.groups.len() || self.downstream.len() != wf.groups.len() {
            return Err(format!(
                "{} group states and {} downstream lists for {} groups",
                self.groups.len(),
                self.downstream.len(),
                wf.groups.len()
            ));
        }
        let mut finished_groups = 0u32;
        let mut tallies = [0u32; TaskStatus::ALL.len()];
        let mut any_ran = false;
        for (g, (group, spec)) in self.groups.iter().zip(&wf.groups).enumerate() {
            let gname = &spec.name;
            if group.tasks.len() != spec.tasks.len() {
                fail!(
                    "group {gname}: {} task states for {} tasks",
                    group.tasks.len(),
                    spec.tasks.len()
                );
                continue;
            }
            for &d in &self.downstream[g] {
                if !wf.groups[d as usize].upstream.contains(&g) {
                    fail!("group {gname}: downstream {d} does not list it upstream");
                }
            }
            for &u in &spec.upstream {
                if !self.downstream[u].contains(&(g as u32)) {
                    fail!("group {gname}: upstream {u} does not list it downstream");
                }
            }
            let status = group.status;
            let final_ = status.is_finished();
            if final_ {
                finished_groups += 1;
                tallies[status as usize] += 1;
            }
            if matches!(
                status,
                TaskStatus::Rescheduled | TaskStatus::Submitting | TaskStatus::Processing
            ) {
                fail!("group {gname}: status {status} is not a group status");
            }
            if group.start_time.is_some() {
                any_ran = true;
            }
            if status == TaskStatus::Running && group.start_time.is_none() {
                fail!("group {gname}: RUNNING without a start time");
            }
            if final_ != group.end_time.is_some() {
                fail!(
                    "group {gname}: status {status} but end time {:?}",
                    group.end_time
                );
            }
            // Upstream bookkeeping.
            let remaining = spec
                .upstream
                .iter()
                .filter(|&&u| self.groups[u].status != TaskStatus::Completed)
                .count() as u32;
            if remaining != group.remaining_upstream {
                fail!(
                    "group {gname}: remaining_upstream {} but {remaining} upstream unfinished",
                    group.remaining_upstream
                );
            }
            let upstream_failed = spec
                .upstream
                .iter()
                .any(|&u| self.groups[u].status.is_failed());
            if upstream_failed && !final_ {
                fail!("group {gname}: an upstream group failed but it is {status}");
            }
            if status == TaskStatus::Waiting && remaining == 0 {
                fail!("group {gname}: WAITING with every upstream group COMPLETED");
            }
            if status == TaskStatus::Completed && remaining != 0 {
                fail!("group {gname}: COMPLETED before its upstream groups");
            }
            // Tasks and attempts.
            let mut counts = [0u32; 4];
            for (t, (task, tspec)) in group.tasks.iter().zip(&spec.tasks).enumerate() {
                let tname = &tspec.name;
                if task.attempts.is_empty() {
                    fail!("task {tname}: no attempt");
                    continue;
                }
                let current = task.current();
                let launched = task.attempts.iter().any(|a| a.scheduling_time.is_some());
                if launched && group.remaining_upstream != 0 {
                    fail!("task {tname}: launched before its upstream groups completed");
                }
                let mut own = 0;
                for (i, a) in task.attempts.iter().enumerate() {
                    let last = i + 1 == task.attempts.len();
                    if a.retry_id != i as u32 {
                        fail!("task {tname}: attempt {i} has retry_id {}", a.retry_id);
                    }
                    if (i == 0) != (a.cause == AttemptCause::First) {
                        fail!("task {tname}: attempt {i} has cause {:?}", a.cause);
                    }
                    if !last && !a.status.is_finished() {
                        fail!(
                            "task {tname}: attempt {i} is {} but not the latest",
                            a.status
                        );
                    }
                    if a.status.is_finished() != a.end_time.is_some() {
                        fail!(
                            "task {tname}: attempt {i} is {} with end time {:?}",
                            a.status,
                            a.end_time
                        );
                    }
                    if a.status == TaskStatus::Waiting && i > 0 {
                        fail!("task {tname}: a retry is WAITING");
                    }
                    if !a.codes.is_empty() && a.exit_code != a.codes.iter().map(|c| c.code).max() {
                        fail!(
                            "task {tname}: attempt {i} exit code {:?} is not the highest of its codes",
                            a.exit_code
                        );
                    }
                    if a.status == TaskStatus::FailedUpstream
                        && a.exit_code != Some(well_known::UPSTREAM)
                    {
                        fail!(
                            "task {tname}: attempt {i} FAILED_UPSTREAM with exit code {:?}",
                            a.exit_code
                        );
                    }
                    if a.status.is_finished()
                        && a.exit_code.is_some()
                        && a.rule.is_none()
                        && a.status != TaskStatus::FailedUpstream
                    {
                        fail!("task {tname}: attempt {i} exited without a recorded rule");
                    }
                    if a.action.is_some() && a.rule.as_ref().and_then(|r| r.action) != a.action {
                        fail!(
                            "task {tname}: attempt {i} applied {:?} that no rule matched",
                            a.action
                        );
                    }
                    // SEMANTICS §3: an attempt decided by its own exit keeps its message.
                    if a.rule.is_some() && a.failure_message.is_none() {
                        fail!("task {tname}: attempt {i} was decided but has no message");
                    }
                    let by_own_action =
                        a.status == TaskStatus::Rescheduled && a.action == Some(Action::Reschedule);
                    if by_own_action {
                        own += 1;
                    }
                    if let Some(next) = task.attempts.get(i + 1) {
                        match next.cause {
                            AttemptCause::Rescheduled if !by_own_action => {
                                fail!(
                                    "task {tname}: attempt {} rescheduled but {i} did not ask for it",
                                    i + 1
                                )
                            }
                            AttemptCause::GroupRestart if by_own_action => {
                                fail!("task {tname}: attempt {} counted as a group restart", i + 1)
                            }
                            _ => {}
                        }
                    }
                }
                if own != task.own_reschedules {
                    fail!(
                        "task {tname}: own_reschedules {} but {own} own RESCHEDULE actions",
                        task.own_reschedules
                    );
                }
                if task.own_reschedules > self.rules.max_retry_per_task {
                    fail!(
                        "task {tname}: {} reschedules exceed the budget {}",
                        task.own_reschedules,
                        self.rules.max_retry_per_task
                    );
                }
                let cs = current.status;
                match task.barrier {
                    _ if cs.is_finished() => {}
                    Barrier::Setup => {}
                    // RUNNING and waiting: restarted in place, its next run not started.
                    Barrier::Waiting
                        if matches!(cs, TaskStatus::Initializing | TaskStatus::Running) => {}
                    Barrier::Released
                        if matches!(cs, TaskStatus::Initializing | TaskStatus::Running) => {}
                    b => fail!("task {tname}: {cs} with barrier state {b:?}"),
                }
                let run_open = current.runs.last().is_some_and(|r| r.end_time.is_none());
                if cs == TaskStatus::Running && current.runs.is_empty() {
                    fail!("task {tname}: RUNNING but no run of its command recorded");
                }
                if cs == TaskStatus::Running && task.barrier != Barrier::Released && run_open {
                    fail!("task {tname}: a run of its command is open but not past the barrier");
                }
                if task.restarting.is_some() && run_open {
                    fail!("task {tname}: restarting but a run is open");
                }
                if status == TaskStatus::Waiting
                    && (task.attempts.len() != 1 || cs != TaskStatus::Waiting)
                {
                    fail!(
                        "task {tname}: group WAITING but the task is {cs} with {} attempts",
                        task.attempts.len()
                    );
                }
                if final_ && !cs.is_finished() {
                    fail!("task {tname}: group {status} but the task is {cs}");
                }
                if !final_
                    && status != TaskStatus::Waiting
                    && cs.progress() < TaskStatus::Scheduling.progress()
                {
                    fail!("task {tname}: group {status} but the task is {cs}");
                }
                let Flags {
                    scheduling,
                    finished,
                    ready,
                    waiting,
                } = task.flags();
                for (n, f) in [scheduling, finished, ready, waiting]
                    .into_iter()
                    .enumerate()
                {
                    counts[n] += u32::from(f);
                }
                let _ = t;
            }
            let counters = [group.scheduling, group.finished, group.ready, group.waiting];
            if counts != counters {
                fail!(
                    "group {gname}: counters (scheduling, finished, ready, waiting) {counters:?} but {counts:?}"
                );
            }
            if !final_ {
                let barrier = spec.barrier && spec.tasks.len() > 1;
                if group.waiting > 0 && (!barrier || group.ready as usize == spec.tasks.len()) {
                    fail!(
                        "group {gname}: {} attempts wait at a barrier that holds nothing back",
                        group.waiting
                    );
                }
                if group.finished as usize == spec.tasks.len() {
                    fail!("group {gname}: every task finished but the group is {status}");
                }
                let expected = if group.start_time.is_some() {
                    TaskStatus::Running
                } else if status == TaskStatus::Waiting {
                    TaskStatus::Waiting
                } else if group.scheduling > 0 {
                    TaskStatus::Scheduling
                } else {
                    TaskStatus::Initializing
                };
                if status != expected {
                    fail!("group {gname}: status {status}, expected {expected}");
                }
            } else {
                if group.queue_deadline.is_some() || group.exec_deadline.is_some() {
                    fail!("group {gname}: finished with a timer in force");
                }
                let direct = matches!(
                    status,
                    TaskStatus::FailedCanceled
                        | TaskStatus::FailedExecTimeout
                        | TaskStatus::FailedQueueTimeout
                );
                if !direct {
                    let outcome = self.group_outcome(g).0;
                    if outcome != status {
                        fail!("group {gname}: finished {status} but its tasks say {outcome}");
                    }
                }
                if status.is_failed() && group.failure_message.is_none() {
                    fail!("group {gname}: {status} without a failure message");
                }
            }
            if group.queue_deadline.is_some() && group.scheduling == 0 {
                fail!("group {gname}: a queue timer but nothing SCHEDULING");
            }
            if group.exec_deadline.is_some() && !group.exec_armed {
                fail!("group {gname}: an exec timer but the exec clock never started");
            }
        }
        if finished_groups != self.finished_groups {
            fail!(
                "finished_groups {} but {finished_groups} groups are finished",
                self.finished_groups
            );
        }
        if tallies != self.tallies {
            fail!("tallies {:?} but {tallies:?}", self.tallies);
        }
        let all = finished_groups as usize == self.groups.len();
        if all != self.status.is_finished() {
            fail!(
                "workflow {} with {finished_groups} of {} groups finished",
                self.status,
                self.groups.len()
            );
        }
        if all {
            if self.status != self.final_status() {
                fail!(
                    "workflow {} but its groups say {}",
                    self.status,
                    self.final_status()
                );
            }
            if self.end_time.is_none() {
                fail!("workflow finished without an end time");
            }
        } else {
            let expected = if any_ran {
                WorkflowStatus::Running
            } else {
                WorkflowStatus::Pending
            };
            if self.status != expected {
                fail!("workflow {}, expected {expected}", self.status);
            }
            if self.end_time.is_some() {
                fail!("workflow unfinished with an end time");
            }
        }
        if (self.status == WorkflowStatus::Running) && self.start_time.is_none() {
            fail!("workflow RUNNING without a start time");
        }
        if self.status == WorkflowStatus::FailedCanceled && self.canceled_by.is_none() {
            fail!("workflow FAILED_CANCELED without who canceled it");
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("workflow {}:\n{errors}", self.id))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::api::{Action, TaskStatus, WorkflowStatus};
    use crate::decide::Rules;
    use crate::state::WorkflowState;
    use crate::testkit::{GroupBuilder, TestEnv, WorkflowBuilder};

    fn running_group() -> TestEnv {
        let wf = WorkflowBuilder::new("s")
            .group(
                GroupBuilder::new("g")
                    .task_with("a", &[(Action::Reschedule, "1")])
                    .task("b"),
            )
            .task_after("c", &[], &["g"])
            .build();
        let mut env = TestEnv::new(wf, Rules::default());
        env.start("a");
        env
    }

    fn broken(env: &TestEnv, f: impl FnOnce(&mut WorkflowState)) -> String {
        let mut state = env.state.clone();
        f(&mut state);
        state
            .sanity_check()
            .expect_err("the corruption must be found")
    }

    #[test]
    fn finds_corrupted_counters_statuses_and_records() {
        let env = running_group();
        env.state.sanity_check().unwrap();
        assert!(broken(&env, |s| s.groups[0].waiting = 0).contains("counters"));
        assert!(broken(&env, |s| s.groups[0].ready += 1).contains("counters"));
        assert!(
            broken(&env, |s| s.groups[1].status = TaskStatus::Running).contains("group c-group")
        );
        assert!(
            broken(&env, |s| s.groups[0].remaining_upstream = 1).contains("remaining_upstream")
        );
        assert!(broken(&env, |s| s.finished_groups = 1).contains("finished_groups"));
        assert!(broken(&env, |s| s.status = WorkflowStatus::Completed).contains("workflow"));
        assert!(
            broken(&env, |s| s.groups[0].tasks[0].own_reschedules = 1).contains("own_reschedules")
        );
        assert!(
            broken(&env, |s| s.groups[0].tasks[1].attempts[0].retry_id = 3).contains("retry_id")
        );
        assert!(
            broken(&env, |s| s.groups[0].tasks[1].attempts[0].status =
                TaskStatus::Running)
            .contains("no run")
        );
        assert!(
            broken(&env, |s| s.groups[0].tasks[1].attempts[0].status =
                TaskStatus::Completed)
            .contains("end time")
        );
    }

    #[test]
    fn finds_a_group_status_its_tasks_do_not_support() {
        let mut env = running_group();
        env.running("a");
        env.running("b");
        env.exit("b", 0);
        env.exit("a", 0);
        assert_eq!(env.status("c"), TaskStatus::Scheduling);
        env.state.sanity_check().unwrap();
        assert!(
            broken(&env, |s| {
                s.groups[0].status = TaskStatus::Failed;
                s.tallies[TaskStatus::Completed as usize] -= 1;
                s.tallies[TaskStatus::Failed as usize] += 1;
            })
            .contains("its tasks say COMPLETED")
        );
    }
}
