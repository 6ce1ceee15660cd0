//! Scenario tests: each rule of SEMANTICS §2–§5 driven through a `TestEnv`,
//! which checks every invariant after every event. Grouped by section; the
//! conformance cases they mirror are named in the test names.

use std::time::Duration;

use osmo_engine::testkit::{GroupBuilder, TestEnv, WorkflowBuilder, actions, code};
use osmo_engine::{
    Action, AttemptCause, AttemptId, CodeSource, Command, Event, ReportedCode, RuleOrigin, Rules,
    TaskKey, TaskStatus, TimeoutKind, WorkflowState, WorkflowStatus,
};

use Action::{Complete, Fail, Reschedule};
use TaskStatus as S;

fn launches(commands: &[Command]) -> Vec<AttemptId> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Launch { attempt } => Some(*attempt),
            _ => None,
        })
        .collect()
}

fn stops(commands: &[Command]) -> Vec<AttemptId> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Stop { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect()
}

fn releases(commands: &[Command]) -> Vec<Vec<AttemptId>> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Release { attempts } => Some(attempts.clone()),
            _ => None,
        })
        .collect()
}

fn finished(commands: &[Command]) -> Option<WorkflowStatus> {
    commands.iter().find_map(|c| match c {
        Command::Finished { status } => Some(*status),
        _ => None,
    })
}

fn timers(commands: &[Command]) -> Vec<(u32, TimeoutKind, u64)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::SetTimer { group, kind, at } => Some((*group, *kind, *at)),
            _ => None,
        })
        .collect()
}

fn statuses(env: &TestEnv, task: &str) -> Vec<TaskStatus> {
    env.attempts(task).iter().map(|a| a.status).collect()
}

fn budget(n: u32) -> Rules {
    Rules {
        max_retry_per_task: n,
        ..Rules::default()
    }
}

/// The seed's preflight example: task1 leads and reschedules on 1001.
fn preflight_group() -> TestEnv {
    let wf = WorkflowBuilder::new("preflight-failure-action-example")
        .group(
            GroupBuilder::new("my_group")
                .task_with("task1", &[(Reschedule, "1001")])
                .task("task2")
                .lead("task1"),
        )
        .build();
    TestEnv::new(wf, budget(3))
}

fn preflight_failure() -> Vec<ReportedCode> {
    vec![ReportedCode {
        code: 1001,
        source: CodeSource::Preflight,
        detail: Some("preflight nccl-bandwidth failed".into()),
    }]
}

// ----- §2/§3: the seed's examples --------------------------------------------

#[test]
fn seed_01_complete_on_16() {
    let wf = WorkflowBuilder::new("exit-actions-example")
        .task("example", &[(Complete, "0,1-10,16,20")])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    assert_eq!(launches(&env.take()), vec![env.id("example", 0)]);
    assert_eq!(env.state.status(), WorkflowStatus::Pending);
    env.run("example");
    assert_eq!(env.state.status(), WorkflowStatus::Running);
    let out = env.exit("example", 16);
    let a = env.current("example");
    assert_eq!(
        (a.status, a.exit_code, a.retry_id),
        (S::Completed, Some(16), 0)
    );
    let rule = a.rule.as_ref().unwrap();
    assert_eq!(
        (rule.origin, rule.action, rule.range.as_deref()),
        (RuleOrigin::Task, Some(Complete), Some("16"))
    );
    assert_eq!(a.action, Some(Complete));
    assert_eq!(
        a.failure_message.as_deref(),
        Some("exit code 16 matched COMPLETE 16 (task)"),
        "a COMPLETED attempt keeps its message (SEMANTICS §3)"
    );
    assert_eq!(a.runs.len(), 1);
    assert_eq!(a.runs[0].exit_code, Some(16));
    assert_eq!(finished(&out), Some(WorkflowStatus::Completed));
    assert_eq!(env.attempts("example").len(), 1);
    assert!(env.state.end_time().is_some() && env.state.start_time().is_some());
}

#[test]
fn seed_02_reschedule_on_16_until_the_budget_is_spent() {
    let wf = WorkflowBuilder::new("exit-actions-example")
        .task("example", &[(Complete, "0-10"), (Reschedule, "11-20")])
        .build();
    let mut env = TestEnv::new(wf, budget(2));
    env.take();
    for retry in 0..3 {
        assert_eq!(env.current_id("example").retry_id, retry);
        env.run("example");
        let out = env.exit("example", 16);
        if retry < 2 {
            assert_eq!(launches(&out), vec![env.id("example", retry + 1)]);
            assert_eq!(env.state.status(), WorkflowStatus::Running);
            assert_eq!(
                env.group_status("example-group"),
                S::Running,
                "the group stays RUNNING"
            );
        } else {
            assert!(launches(&out).is_empty());
            assert_eq!(finished(&out), Some(WorkflowStatus::Failed));
        }
    }
    assert_eq!(
        statuses(&env, "example"),
        [S::Rescheduled, S::Rescheduled, S::Failed]
    );
    let attempts = env.attempts("example");
    assert!(attempts.iter().all(|a| a.exit_code == Some(16)));
    assert_eq!(
        attempts[0].failure_message.as_deref(),
        Some("exit code 16 matched RESCHEDULE 11-20 (task); attempt 2 of 3 scheduled")
    );
    assert_eq!(attempts[0].action, Some(Reschedule));
    assert_eq!(
        attempts[1].failure_message.as_deref(),
        Some("exit code 16 matched RESCHEDULE 11-20 (task); attempt 3 of 3 scheduled")
    );
    assert_eq!(
        attempts[2].failure_message.as_deref(),
        Some("exit code 16 matched RESCHEDULE 11-20 (task) but retry limit 2 reached; FAILED")
    );
    assert_eq!(
        attempts[2].action, None,
        "no action applied once the budget is spent"
    );
    assert_eq!(
        attempts.iter().map(|a| a.cause).collect::<Vec<_>>(),
        [
            AttemptCause::First,
            AttemptCause::Rescheduled,
            AttemptCause::Rescheduled
        ]
    );
    assert_eq!(env.state.status(), WorkflowStatus::Failed);
}

#[test]
fn reschedule_01_then_complete() {
    let wf = WorkflowBuilder::new("flaky")
        .task("flaky", &[(Reschedule, "11-20")])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.run("flaky");
    env.exit("flaky", 16);
    env.run("flaky");
    let out = env.exit("flaky", 0);
    assert_eq!(statuses(&env, "flaky"), [S::Rescheduled, S::Completed]);
    assert_eq!(
        env.current("flaky").rule.as_ref().unwrap().origin,
        RuleOrigin::Default
    );
    assert_eq!(finished(&out), Some(WorkflowStatus::Completed));
}

#[test]
fn seed_03_preflight_failure_of_the_lead_restarts_the_group() {
    let mut env = preflight_group();
    let first = launches(&env.take());
    assert_eq!(first.len(), 2, "both tasks launched together");
    env.start("task2"); // task2 set up, waits at the barrier
    env.init("task1");
    let out = env.exit_codes("task1", preflight_failure());
    let t1 = &env.attempts("task1")[0];
    assert_eq!((t1.status, t1.exit_code), (S::Rescheduled, Some(1001)));
    assert_eq!(t1.codes[0].source, CodeSource::Preflight);
    assert_eq!(
        t1.failure_message.as_deref(),
        Some("exit code 1001 matched RESCHEDULE 1001 (task); attempt 2 of 4 scheduled")
    );
    // task2 waits at the barrier: it keeps waiting, the same attempt, for task1's new one.
    assert_eq!(statuses(&env, "task2"), [S::Initializing]);
    assert!(stops(&out).is_empty(), "nothing of task2's is stopped");
    assert_eq!(launches(&out), vec![env.id("task1", 1)]);
    assert!(
        releases(&out).is_empty(),
        "task1's new attempt is not set up yet"
    );
    assert_eq!(
        env.state.own_reschedules(env.key("task2")),
        0,
        "a group restart spends no budget"
    );
    // task1's second attempt passes the barrier with task2's first, then both complete.
    let out = env.start("task1");
    assert_eq!(
        releases(&out),
        vec![vec![env.id("task1", 1), env.id("task2", 0)]]
    );
    env.running("task1");
    env.running("task2");
    env.exit("task2", 0);
    let out = env.exit("task1", 0);
    assert_eq!(statuses(&env, "task1"), [S::Rescheduled, S::Completed]);
    assert_eq!(statuses(&env, "task2"), [S::Completed]);
    assert_eq!(env.current("task2").runs.len(), 1);
    assert_eq!(env.group_status("my_group"), S::Completed);
    assert_eq!(finished(&out), Some(WorkflowStatus::Completed));
}

#[test]
fn seed_03_when_task2_fails_its_preflight_first_it_keeps_failed_and_restarts() {
    let mut env = preflight_group();
    env.init("task1");
    env.init("task2");
    env.exit_codes("task2", preflight_failure());
    assert_eq!(
        env.status("task2"),
        S::Failed,
        "a non-lead failure with ignoreNonleadStatus only fails it"
    );
    assert_eq!(env.group_status("my_group"), S::Running);
    let out = env.exit_codes("task1", preflight_failure());
    assert!(stops(&out).is_empty(), "task2 was already finished");
    assert_eq!(statuses(&env, "task2"), [S::Failed, S::Scheduling]);
    env.start("task1");
    env.start("task2");
    env.running("task1");
    env.running("task2");
    env.exit("task1", 0);
    assert_eq!(
        statuses(&env, "task2"),
        [S::Failed, S::Completed],
        "stopped by the lead, takes its status"
    );
    assert_eq!(
        env.current("task2").failure_message.as_deref(),
        Some("lead task task1 finished COMPLETED")
    );
    assert_eq!(env.group_status("my_group"), S::Completed);
    assert_eq!(env.state.status(), WorkflowStatus::Completed);
}

// ----- §2/§3: codes and lookups ---------------------------------------------

#[test]
fn default_01_nonzero_fails() {
    let wf = WorkflowBuilder::new("defaults")
        .task("ok", &[])
        .task("bad", &[])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.run("ok");
    env.exit("ok", 0);
    env.run("bad");
    let out = env.exit("bad", 3);
    assert_eq!(
        (env.status("ok"), env.status("bad")),
        (S::Completed, S::Failed)
    );
    assert_eq!(
        env.current("bad").failure_message.as_deref(),
        Some(
            "exit code 3 is not listed in exitActions; user failure: the task's command exited \
             with this code → FAILED (default)"
        )
    );
    assert_eq!(finished(&out), Some(WorkflowStatus::Failed));
}

#[test]
fn default_02_signal_137_matches_fail() {
    let wf = WorkflowBuilder::new("killed")
        .task("victim", &[(Fail, "137"), (Complete, "0")])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.run("victim");
    env.exit("victim", 137);
    assert_eq!(
        (env.status("victim"), env.current("victim").action),
        (S::Failed, Some(Fail))
    );
    assert_eq!(env.state.status(), WorkflowStatus::Failed);
}

#[test]
fn pool_01_default_exit_actions_after_the_tasks_own() {
    let wf = WorkflowBuilder::new("pool-defaults")
        .task("pool-rule", &[])
        .task("task-rule", &[(Fail, "7")])
        .build();
    let rules = Rules {
        max_retry_per_task: 3,
        default_exit_actions: actions(&[(Complete, "7")]),
    };
    let mut env = TestEnv::new(wf, rules);
    env.run("pool-rule");
    env.exit("pool-rule", 7);
    env.run("task-rule");
    env.exit("task-rule", 7);
    assert_eq!(env.status("pool-rule"), S::Completed);
    assert_eq!(
        env.current("pool-rule").rule.as_ref().unwrap().origin,
        RuleOrigin::Pool
    );
    assert_eq!(env.status("task-rule"), S::Failed);
    assert_eq!(
        env.current("task-rule").rule.as_ref().unwrap().origin,
        RuleOrigin::Task
    );
    assert_eq!(env.state.status(), WorkflowStatus::Failed);
}

#[test]
fn the_highest_code_wins_and_every_code_is_kept() {
    let wf = WorkflowBuilder::new("multi")
        .task("t", &[(Complete, "50")])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.run("t");
    let codes = vec![
        ReportedCode {
            code: 50,
            source: CodeSource::User,
            detail: None,
        },
        ReportedCode {
            code: 2010,
            source: CodeSource::Runtime,
            detail: Some("download failed".into()),
        },
    ];
    env.exit_codes("t", codes.clone());
    let a = env.current("t");
    assert_eq!(
        (a.exit_code, a.status),
        (Some(2010), S::Failed),
        "COMPLETE 50 does not apply: 2010 wins"
    );
    assert_eq!(a.codes, codes);
}

#[test]
fn no_code_at_all_is_unknown_4000() {
    let wf = WorkflowBuilder::new("lost").task("t", &[]).build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.exit_codes("t", vec![]);
    assert_eq!(
        (env.status("t"), env.current("t").exit_code),
        (S::Failed, Some(4000))
    );
}

#[test]
fn service_codes_take_their_statuses_and_actions_apply_to_them() {
    let wf = WorkflowBuilder::new("svc")
        .task("preempted", &[])
        .task("evicted", &[])
        .task("pull", &[])
        .task("rescued", &[(Reschedule, "3006")])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.exit("preempted", 3006);
    env.init("evicted");
    env.exit("evicted", 3004);
    env.exit("pull", 301);
    env.exit("rescued", 3006);
    assert_eq!(env.status("preempted"), S::FailedPreempted);
    assert_eq!(env.status("evicted"), S::FailedEvicted);
    assert_eq!(env.status("pull"), S::FailedImagePull);
    assert_eq!(statuses(&env, "rescued"), [S::Rescheduled, S::Scheduling]);
}

#[test]
fn upstream_and_server_error_codes_ignore_exit_actions() {
    let wf = WorkflowBuilder::new("noact")
        .task("up", &[(Complete, "3000")])
        .task("srv", &[(Reschedule, "3002")])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.exit("up", 3000);
    env.exit("srv", 3002);
    assert_eq!(env.status("up"), S::FailedUpstream);
    assert_eq!(env.status("srv"), S::FailedServerError);
    assert_eq!(env.attempts("srv").len(), 1);
    assert_eq!(env.state.status(), WorkflowStatus::FailedServerError);
}

// ----- §4: groups -----------------------------------------------------------

fn gang(ignore: bool) -> TestEnv {
    let wf = WorkflowBuilder::new("gang")
        .group(
            GroupBuilder::new("gang")
                .task_with("leader", &[(Reschedule, "11-20")])
                .task_with("worker", &[(Reschedule, "11-20")])
                .task("sidecar")
                .lead("leader")
                .ignore_nonlead_status(ignore),
        )
        .build();
    let mut env = TestEnv::new(wf, budget(3));
    for t in ["leader", "worker", "sidecar"] {
        env.start(t);
    }
    for t in ["leader", "worker", "sidecar"] {
        env.running(t);
    }
    env.take();
    env
}

#[test]
fn group_01_strict_nonlead_failure_stops_the_group() {
    let mut env = gang(false);
    let out = env.exit("worker", 5);
    assert_eq!(env.status("worker"), S::Failed);
    for t in ["leader", "sidecar"] {
        assert_eq!(env.status(t), S::Failed);
        assert_eq!(
            env.current(t).failure_message.as_deref(),
            Some("task worker failed")
        );
        assert_eq!(env.current(t).exit_code, None);
    }
    assert_eq!(stops(&out), vec![env.id("leader", 0), env.id("sidecar", 0)]);
    assert_eq!(env.group_status("gang"), S::Failed);
    let message = env.state.group_failure_message(0).unwrap();
    assert!(
        message.starts_with("task worker FAILED: exit code 5"),
        "{message}"
    );
    assert_eq!(finished(&out), Some(WorkflowStatus::Failed));
}

#[test]
fn group_02_lead_completion_ends_the_group_and_nonlead_failure_is_ignored() {
    let mut env = gang(true);
    let out = env.exit("sidecar", 4);
    assert!(stops(&out).is_empty());
    assert_eq!(env.group_status("gang"), S::Running);
    let out = env.exit("leader", 0);
    assert_eq!(
        env.status("sidecar"),
        S::Failed,
        "finished before the lead: keeps its status"
    );
    assert_eq!(
        env.status("worker"),
        S::Completed,
        "stopped by the lead: takes COMPLETED"
    );
    assert_eq!(
        env.current("worker").failure_message.as_deref(),
        Some("lead task leader finished COMPLETED")
    );
    assert_eq!(stops(&out), vec![env.id("worker", 0)]);
    assert_eq!(env.group_status("gang"), S::Completed);
    assert_eq!(env.state.group_failure_message(0), None);
    assert_eq!(finished(&out), Some(WorkflowStatus::Completed));
}

#[test]
fn a_failed_lead_fails_its_siblings_plainly() {
    let mut env = gang(true);
    env.exit("leader", 3006);
    assert_eq!(env.status("leader"), S::FailedPreempted);
    assert_eq!(
        (env.status("worker"), env.status("sidecar")),
        (S::Failed, S::Failed)
    );
    assert_eq!(env.group_status("gang"), S::FailedPreempted);
    assert_eq!(env.state.status(), WorkflowStatus::FailedPreempted);
}

#[test]
fn lead_rescheduled_restarts_everyone_whatever_ignore_nonlead_says() {
    for ignore in [true, false] {
        let mut env = gang(ignore);
        env.exit("sidecar", 0); // finished: keeps COMPLETED, gets a new attempt
        let out = env.exit("leader", 12);
        assert_eq!(statuses(&env, "leader"), [S::Rescheduled, S::Scheduling]);
        // The running worker is restarted in place: the same attempt.
        assert_eq!(statuses(&env, "worker"), [S::Running]);
        assert_eq!(statuses(&env, "sidecar"), [S::Completed, S::Scheduling]);
        let reason = "restarted: lead leader rescheduled";
        assert_eq!(
            out.iter()
                .filter_map(|c| match c {
                    Command::Restart { attempt, reason } => Some((*attempt, reason.as_str())),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            vec![(env.id("worker", 0), reason)]
        );
        let run = &env.current("worker").runs[0];
        assert_eq!(run.stopped_because.as_deref(), Some(reason));
        assert!(run.end_time.is_some());
        assert!(stops(&out).is_empty(), "nothing is stopped for good");
        assert_eq!(
            launches(&out),
            vec![env.id("leader", 1), env.id("sidecar", 1)]
        );
        assert_eq!(env.current("sidecar").cause, AttemptCause::GroupRestart);
        assert_eq!(env.current("leader").cause, AttemptCause::Rescheduled);
        assert_eq!(env.group_status("gang"), S::Running);
        // The stopped run's code is recorded; the next run waits at the barrier.
        let worker = env.id("worker", 0);
        env.apply(Event::RunStopped {
            attempt: worker,
            codes: vec![code(143)],
        });
        assert_eq!(env.current("worker").runs[0].exit_code, Some(143));
        env.start("leader");
        let out = env.start("sidecar");
        assert_eq!(
            releases(&out),
            vec![vec![env.id("leader", 1), worker, env.id("sidecar", 1)]]
        );
        env.running("worker");
        assert_eq!(env.current("worker").runs.len(), 2, "a second run");
        env.running("leader");
        env.running("sidecar");
        env.exit("worker", 0);
        let w = env.current("worker");
        assert_eq!(
            (w.status, w.retry_id, w.exit_code),
            (S::Completed, 0, Some(0))
        );
        assert_eq!(w.runs[1].exit_code, Some(0));
        env.exit("sidecar", 0);
        let out = env.exit("leader", 0);
        assert_eq!(finished(&out), Some(WorkflowStatus::Completed));
    }
}

#[test]
fn a_restarted_attempt_that_exited_first_gets_a_new_attempt() {
    let mut env = gang(true);
    env.exit("leader", 12);
    // The worker's exit crossed the restart on its way: its sandbox is gone.
    env.exit("worker", 0);
    assert_eq!(statuses(&env, "worker"), [S::Rescheduled, S::Scheduling]);
    let old = &env.attempts("worker")[0];
    assert_eq!(old.exit_code, Some(0));
    assert!(
        old.failure_message
            .as_deref()
            .unwrap()
            .contains("already ended")
    );
    assert_eq!(env.current("worker").cause, AttemptCause::GroupRestart);
}

#[test]
fn nonlead_rescheduled_restarts_only_itself_when_ignored() {
    let mut env = gang(true);
    let out = env.exit("worker", 15);
    assert_eq!(launches(&out), vec![env.id("worker", 1)]);
    assert!(stops(&out).is_empty());
    assert_eq!(statuses(&env, "leader"), [S::Running]);
    // The others are past the barrier: the new attempt is released on its own.
    let out = env.start("worker");
    assert_eq!(releases(&out), vec![vec![env.id("worker", 1)]]);
}

#[test]
fn nonlead_rescheduled_restarts_everyone_when_not_ignored() {
    let mut env = gang(false);
    let out = env.exit("worker", 15);
    assert_eq!(statuses(&env, "leader"), [S::Running]);
    assert_eq!(
        env.current("leader").runs[0].stopped_because.as_deref(),
        Some("restarted: non-lead worker rescheduled")
    );
    let restarted: Vec<AttemptId> = out
        .iter()
        .filter_map(|c| match c {
            Command::Restart { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(restarted, vec![env.id("leader", 0), env.id("sidecar", 0)]);
    assert!(stops(&out).is_empty());
    assert_eq!(launches(&out), vec![env.id("worker", 1)]);
    // Everyone passes the barrier again, with the worker's new attempt.
    assert_eq!(releases(&env.start("worker")).concat().len(), 3);
}

#[test]
fn group_restarts_do_not_spend_the_budget() {
    let wf = WorkflowBuilder::new("budget")
        .group(
            GroupBuilder::new("g")
                .task_with("lead", &[(Reschedule, "1")])
                .task_with("other", &[(Reschedule, "1")])
                .barrier(false),
        )
        .build();
    let mut env = TestEnv::new(wf, budget(1));
    env.run("other");
    env.exit("lead", 1); // restarts other in place
    assert_eq!(env.attempts("other").len(), 1);
    env.running("other");
    assert_eq!(env.current("other").runs.len(), 2);
    env.exit("other", 1); // its own budget is untouched: granted
    assert_eq!(statuses(&env, "other"), [S::Rescheduled, S::Scheduling]);
    env.exit("other", 1); // now spent
    assert_eq!(env.status("other"), S::Failed);
    assert!(
        env.current("other")
            .failure_message
            .as_deref()
            .unwrap()
            .contains("retry limit 1 reached")
    );
    env.exit("lead", 1);
    assert_eq!(env.status("lead"), S::Failed);
    assert_eq!(env.group_status("g"), S::Failed);
}

#[test]
fn group_status_precedence() {
    // Any preempted task decides, even one that is not considered.
    let mut env = gang(true);
    env.exit("worker", 3006);
    env.exit("leader", 0);
    assert_eq!(env.group_status("gang"), S::FailedPreempted);
    assert_eq!(env.state.status(), WorkflowStatus::FailedPreempted);
    // An evicted non-lead is not considered when ignored...
    let mut env = gang(true);
    env.exit("worker", 3004);
    env.exit("leader", 0);
    assert_eq!(env.group_status("gang"), S::Completed);
    // ...and decides when it is.
    let mut env = gang(false);
    env.exit("worker", 3004);
    assert_eq!(env.group_status("gang"), S::FailedEvicted);
    // A server error anywhere wins over preemption.
    let mut env = gang(true);
    env.exit("sidecar", 3002);
    env.exit("worker", 3006);
    env.exit("leader", 0);
    assert_eq!(env.group_status("gang"), S::FailedServerError);
}

#[test]
fn group_status_follows_its_attempts_before_it_finishes() {
    let wf = WorkflowBuilder::new("q")
        .group(GroupBuilder::new("g").task("a").task("b"))
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    assert_eq!(env.group_status("g"), S::Scheduling);
    env.init("a");
    assert_eq!(
        env.group_status("g"),
        S::Scheduling,
        "b has no resources yet"
    );
    env.init("b");
    assert_eq!(env.group_status("g"), S::Initializing);
    env.start("a");
    env.start("b");
    assert_eq!(
        (env.group_status("g"), env.state.status()),
        (S::Initializing, WorkflowStatus::Pending)
    );
    env.running("a");
    assert_eq!(
        (env.group_status("g"), env.state.status()),
        (S::Running, WorkflowStatus::Running)
    );
}

// ----- §4: the barrier ------------------------------------------------------

#[test]
fn group_03_barrier_releases_everyone_together() {
    let wf = WorkflowBuilder::new("barrier")
        .group(GroupBuilder::new("gang").task("a").task("b").task("c"))
        .task_after("check", &[], &["a", "b"])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    assert_eq!(
        launches(&env.take()).len(),
        3,
        "check waits for its upstream"
    );
    assert!(releases(&env.start("a")).is_empty());
    assert!(releases(&env.start("b")).is_empty());
    env.init("c");
    assert_eq!(env.status("a"), S::Initializing);
    let out = env.setup_done("c");
    assert_eq!(
        releases(&out),
        vec![vec![env.id("a", 0), env.id("b", 0), env.id("c", 0)]]
    );
    for t in ["a", "b", "c"] {
        env.running(t);
    }
    // Duplicates change nothing and release nothing again.
    assert!(env.setup_done("a").is_empty());
    env.exit("b", 0);
    env.exit("c", 0);
    let out = env.exit("a", 0);
    assert_eq!(launches(&out), vec![env.id("check", 0)]);
    env.run("check");
    let out = env.exit("check", 0);
    assert_eq!(finished(&out), Some(WorkflowStatus::Completed));
}

#[test]
fn without_a_barrier_each_task_is_released_when_set_up() {
    let wf = WorkflowBuilder::new("nobarrier")
        .group(GroupBuilder::new("g").task("a").task("b").barrier(false))
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    assert_eq!(releases(&env.start("a")), vec![vec![env.id("a", 0)]]);
    assert_eq!(releases(&env.start("b")), vec![vec![env.id("b", 0)]]);
}

#[test]
fn a_finished_task_does_not_hold_the_barrier() {
    let wf = WorkflowBuilder::new("b")
        .group(GroupBuilder::new("g").task("lead").task("side"))
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    assert!(releases(&env.start("lead")).is_empty());
    env.init("side");
    let out = env.exit_codes("side", preflight_failure());
    assert_eq!(env.status("side"), S::Failed);
    assert_eq!(
        releases(&out),
        vec![vec![env.id("lead", 0)]],
        "the lead goes on alone"
    );
}

#[test]
fn running_without_a_release_passes_the_barrier() {
    let wf = WorkflowBuilder::new("b")
        .group(GroupBuilder::new("g").task("a").task("b"))
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.start("a");
    env.running("b"); // b skipped its set-up report
    assert_eq!(env.status("b"), S::Running);
    // a was the only one waiting, and b no longer holds it back.
    assert_eq!(releases(&env.take()), vec![vec![env.id("a", 0)]]);
}

// ----- §5: the DAG ----------------------------------------------------------

#[test]
fn dag_01_upstream_failure_cascades_without_exit_actions() {
    let wf = WorkflowBuilder::new("cascade")
        .task("a", &[])
        .task_after("b", &[(Complete, "3000")], &["a"])
        .task_after("c", &[], &["b"])
        .task("other", &[])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    assert_eq!(
        launches(&env.take()),
        vec![env.id("a", 0), env.id("other", 0)]
    );
    assert_eq!(env.group_status("b-group"), S::Waiting);
    assert_eq!(env.status("b"), S::Waiting);
    env.run("a");
    let out = env.exit("a", 1);
    assert!(launches(&out).is_empty() && stops(&out).is_empty());
    for t in ["b", "c"] {
        let a = env.current(t);
        assert_eq!(
            (a.status, a.exit_code, a.retry_id),
            (S::FailedUpstream, Some(3000), 0)
        );
        assert_eq!(
            a.failure_message.as_deref(),
            Some("upstream group a-group failed")
        );
        assert_eq!((a.rule.as_ref(), a.action), (None, None));
    }
    assert_eq!(env.group_status("c-group"), S::FailedUpstream);
    assert_eq!(
        env.state.status(),
        WorkflowStatus::Running,
        "other still runs"
    );
    env.run("other");
    let out = env.exit("other", 0);
    assert_eq!(env.status("other"), S::Completed);
    assert_eq!(finished(&out), Some(WorkflowStatus::Failed));
}

#[test]
fn dag_02_a_group_starts_when_all_its_upstream_completed() {
    let wf = WorkflowBuilder::new("diamond")
        .task("a", &[])
        .task_after("b", &[], &["a"])
        .task_after("c", &[], &["a"])
        .task_after("d", &[], &["b", "c"])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    assert_eq!(launches(&env.take()), vec![env.id("a", 0)]);
    let out = env.exit("a", 0);
    assert_eq!(launches(&out), vec![env.id("b", 0), env.id("c", 0)]);
    let out = env.exit("b", 0);
    assert!(launches(&out).is_empty(), "d still waits for c");
    let out = env.exit("c", 0);
    assert_eq!(launches(&out), vec![env.id("d", 0)]);
}

#[test]
fn a_diamond_fails_its_bottom_once() {
    let wf = WorkflowBuilder::new("diamond")
        .task("a", &[])
        .task_after("b", &[], &["a"])
        .task_after("c", &[], &["a"])
        .task_after("d", &[], &["b", "c"])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    let out = env.exit("a", 9);
    assert_eq!(finished(&out), Some(WorkflowStatus::Failed));
    assert_eq!(env.status("d"), S::FailedUpstream);
    assert_eq!(env.attempts("d").len(), 1);
}

// ----- §5: timeouts ---------------------------------------------------------

#[test]
fn timeout_01_exec_timeout_fails_the_group_without_exit_actions() {
    let wf = WorkflowBuilder::new("slow")
        .task("sleeper", &[(Reschedule, "1-4000")])
        .exec_timeout(Duration::from_secs(2))
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    assert!(
        timers(&env.take()).is_empty(),
        "no queue timeout, no exec clock yet"
    );
    env.start("sleeper");
    let out = env.running("sleeper");
    let at = env.now + 2000;
    assert_eq!(timers(&out), vec![(0, TimeoutKind::Exec, at)]);
    env.advance(1999);
    assert!(
        env.timeout("sleeper-group", TimeoutKind::Exec).is_empty(),
        "not due yet"
    );
    assert!(
        env.timeout("sleeper-group", TimeoutKind::Queue).is_empty(),
        "no queue clock"
    );
    env.advance(1);
    let out = env.timeout("sleeper-group", TimeoutKind::Exec);
    assert_eq!(stops(&out), vec![env.id("sleeper", 0)]);
    assert_eq!(env.status("sleeper"), S::FailedExecTimeout);
    assert_eq!(
        env.current("sleeper").failure_message.as_deref(),
        Some("exec timeout of 2s reached")
    );
    assert_eq!(finished(&out), Some(WorkflowStatus::FailedExecTimeout));
    // What the stopped attempt reports later is ignored.
    assert!(env.exit("sleeper", 137).is_empty());
    assert_eq!(env.attempts("sleeper").len(), 1);
}

#[test]
fn queue_timeout_only_while_something_waits_for_resources() {
    let wf = WorkflowBuilder::new("queued")
        .task("placed", &[])
        .task("stuck", &[])
        .task_after("after", &[], &["stuck"])
        .queue_timeout(Duration::from_secs(60))
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    let at = env.now + 60_000;
    assert_eq!(
        timers(&env.take()),
        vec![(0, TimeoutKind::Queue, at), (1, TimeoutKind::Queue, at)]
    );
    env.init("placed");
    env.advance(60_000);
    assert!(
        env.timeout("placed-group", TimeoutKind::Queue).is_empty(),
        "placed in time"
    );
    let out = env.timeout("stuck-group", TimeoutKind::Queue);
    assert_eq!(stops(&out), vec![env.id("stuck", 0)]);
    assert_eq!(env.status("stuck"), S::FailedQueueTimeout);
    assert_eq!(env.status("after"), S::FailedUpstream);
    assert!(
        env.timeout("stuck-group", TimeoutKind::Queue).is_empty(),
        "fires once"
    );
    env.start("placed");
    env.running("placed");
    let out = env.exit("placed", 0);
    assert_eq!(finished(&out), Some(WorkflowStatus::FailedQueueTimeout));
}

#[test]
fn the_queue_clock_covers_the_first_wait_only() {
    let wf = WorkflowBuilder::new("requeue")
        .task("t", &[(Reschedule, "3006")])
        .queue_timeout(Duration::from_secs(10))
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.advance(5_000);
    env.init("t");
    assert!(
        env.state.pending_timers().is_empty(),
        "it has its resources"
    );
    let out = env.exit("t", 3006);
    assert!(timers(&out).is_empty(), "a reschedule does not re-arm it");
    env.advance(20_000);
    assert!(env.timeout("t-group", TimeoutKind::Queue).is_empty());
    assert_eq!(statuses(&env, "t"), [S::Rescheduled, S::Scheduling]);
    env.run("t");
    let out = env.exit("t", 0);
    assert_eq!(finished(&out), Some(WorkflowStatus::Completed));
}

#[test]
fn the_exec_clock_starts_when_a_task_finishes_before_any_runs() {
    let wf = WorkflowBuilder::new("clock")
        .task("t", &[(Reschedule, "1001")])
        .exec_timeout(Duration::from_secs(10))
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.init("t");
    let out = env.exit_codes("t", preflight_failure());
    let at = env.now + 10_000;
    assert_eq!(timers(&out), vec![(0, TimeoutKind::Exec, at)]);
    env.run("t");
    assert!(
        env.state
            .pending_timers()
            .contains(&(0, TimeoutKind::Exec, at))
    );
}

// ----- §5: cancel and workflow status ---------------------------------------

#[test]
fn cancel_01_stops_everything_and_records_who() {
    let wf = WorkflowBuilder::new("to-cancel")
        .task("long", &[(Reschedule, "1-4000")])
        .task_after("later", &[], &["long"])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.run("long");
    let out = env.cancel("alice", Some("no longer needed"));
    assert_eq!(
        stops(&out),
        vec![env.id("long", 0)],
        "the waiting task was never launched"
    );
    assert_eq!(env.status("long"), S::FailedCanceled);
    assert_eq!(env.status("later"), S::FailedCanceled);
    assert_eq!(env.group_status("later-group"), S::FailedCanceled);
    assert_eq!(
        env.current("long").failure_message.as_deref(),
        Some("canceled by alice: no longer needed")
    );
    assert_eq!(
        env.state.canceled_by(),
        Some(("alice", Some("no longer needed")))
    );
    assert_eq!(finished(&out), Some(WorkflowStatus::FailedCanceled));
    assert!(env.exit("long", 137).is_empty());
    assert!(env.cancel("bob", None).is_empty());
    assert_eq!(env.state.canceled_by().unwrap().0, "alice");
    assert_eq!(env.attempts("long").len(), 1);
}

#[test]
fn workflow_status_precedence() {
    let two = |a: u32, b: u32| {
        let wf = WorkflowBuilder::new("two")
            .task("a", &[])
            .task("b", &[])
            .build();
        let mut env = TestEnv::new(wf, Rules::default());
        env.exit("a", a);
        env.exit("b", b);
        env.state.status()
    };
    assert_eq!(
        two(3006, 3006),
        WorkflowStatus::FailedPreempted,
        "all failures share one status"
    );
    assert_eq!(two(3006, 0), WorkflowStatus::FailedPreempted);
    assert_eq!(two(3006, 1), WorkflowStatus::Failed);
    assert_eq!(two(3006, 3002), WorkflowStatus::FailedServerError);
    assert_eq!(
        two(301, 0),
        WorkflowStatus::Failed,
        "a FAILED_IMAGE_PULL task makes a FAILED group"
    );
    assert_eq!(two(0, 0), WorkflowStatus::Completed);
}

#[test]
fn workflow_stays_running_between_groups() {
    let wf = WorkflowBuilder::new("serial")
        .task("a", &[])
        .task_after("b", &[], &["a"])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.run("a");
    let started = env.state.start_time();
    env.exit("a", 0);
    assert_eq!(env.group_status("b-group"), S::Scheduling);
    assert_eq!(
        env.state.status(),
        WorkflowStatus::Running,
        "statuses only move forward"
    );
    assert_eq!(env.state.start_time(), started);
}

// ----- stale and odd events ---------------------------------------------------

#[test]
fn stale_duplicate_and_unknown_events_are_ignored() {
    let wf = WorkflowBuilder::new("stale")
        .task("t", &[(Reschedule, "1")])
        .task_after("w", &[], &["t"])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.run("t");
    env.exit("t", 1);
    let old = env.id("t", 0);
    let before = env.state.clone();
    for event in [
        Event::Exited {
            attempt: old,
            codes: vec![code(0)],
        },
        Event::Running { attempt: old },
        Event::Initializing {
            attempt: old,
            node: None,
            gpus: Vec::new(),
        },
        Event::SetupDone {
            attempt: env.id("t", 7),
        },
        Event::Running {
            attempt: env.id("w", 0),
        }, // not launched yet
        Event::Exited {
            attempt: AttemptId {
                task: TaskKey { group: 9, task: 0 },
                retry_id: 0,
            },
            codes: vec![],
        },
        Event::Exited {
            attempt: AttemptId {
                task: TaskKey { group: 0, task: 5 },
                retry_id: 0,
            },
            codes: vec![],
        },
        Event::TimedOut {
            group: 42,
            kind: TimeoutKind::Exec,
        },
        Event::TimedOut {
            group: 0,
            kind: TimeoutKind::Queue,
        },
    ] {
        assert!(env.apply(event).is_empty());
    }
    assert_eq!(env.state, before);
    env.run("t");
    assert!(env.init("t").is_empty(), "statuses never go back");
    assert_eq!(env.status("t"), S::Running);
}

#[test]
fn exits_skipping_phases_are_taken() {
    let wf = WorkflowBuilder::new("skip")
        .task("a", &[])
        .task("b", &[])
        .build();
    let mut env = TestEnv::new(wf, Rules::default());
    env.exit("a", 3003); // never placed
    env.init("b");
    env.exit("b", 256); // failed while setting up
    assert_eq!(
        (env.status("a"), env.status("b")),
        (S::FailedStartError, S::Failed)
    );
    assert_eq!(env.current("b").node.as_deref(), Some("node-1"));
    assert!(env.current("a").start_time.is_none());
    assert_eq!(env.state.status(), WorkflowStatus::Failed);
}

// ----- workflow restart -------------------------------------------------------

#[test]
fn a_restart_reruns_only_the_groups_that_did_not_complete() {
    let wf = WorkflowBuilder::new("pipe")
        .task("prep", &[])
        .task_after("train", &[], &["prep"])
        .task_after("eval", &[], &["train"])
        .build();
    let mut env = TestEnv::new(wf.clone(), Rules::default());
    env.run("prep");
    env.exit("prep", 0);
    env.run("train");
    env.exit("train", 3);
    assert_eq!(env.state.status(), WorkflowStatus::Failed);

    let (mut again, out) =
        WorkflowState::restart_of("pipe-2".into(), wf, Rules::default(), 5_000, &env.state)
            .unwrap();
    again.sanity_check().unwrap();
    let prep = env.key("prep");
    assert_eq!(again.current(prep).status, S::Completed, "not run again");
    assert_eq!(again.inherited(prep), Some(("pipe-1", 0)));
    assert_eq!(
        again.current(prep).failure_message.as_deref(),
        Some("completed in pipe-1; not run again")
    );
    assert_eq!(
        launches(&out),
        vec![env.id("train", 0)],
        "only what failed starts"
    );
    assert_eq!(again.inherited(env.key("train")), None);
    // It finishes like any workflow.
    let mut cmds = Vec::new();
    let train = env.id("train", 0);
    again.apply(&Event::Running { attempt: train }, 5_001, &mut cmds);
    again.apply(
        &Event::Exited {
            attempt: train,
            codes: vec![code(0)],
        },
        5_002,
        &mut cmds,
    );
    let eval = env.id("eval", 0);
    assert_eq!(launches(&cmds), vec![eval]);
    again.apply(&Event::Running { attempt: eval }, 5_003, &mut cmds);
    again.apply(
        &Event::Exited {
            attempt: eval,
            codes: vec![code(0)],
        },
        5_004,
        &mut cmds,
    );
    again.sanity_check().unwrap();
    assert_eq!(again.status(), WorkflowStatus::Completed);
}

#[test]
fn a_restart_of_another_file_is_refused() {
    let a = WorkflowBuilder::new("w").task("x", &[]).build();
    let b = WorkflowBuilder::new("w").task("y", &[]).build();
    let (first, _) = WorkflowState::new("w-1".into(), a, Rules::default(), 0);
    let err = WorkflowState::restart_of("w-2".into(), b, Rules::default(), 1, &first).unwrap_err();
    assert!(err.contains("same groups and tasks"), "{err}");
}
