//! Properties over generated workflows and event streams (proptest shrinks
//! both the workflow's and the events' choice scripts).
//!
//! The run-level properties (statuses only move forward, a finished attempt
//! never changes, at most `max_retry_per_task + 1` attempts of a task's own
//! plus group restarts, commands consistent with the state) are checked after
//! every event by `testkit::Checker` inside `simulate`; here they must hold
//! for every generated run, and every run must reach a final status.

use osmo_engine::testkit::{
    Script, SimConfig, TestEnv, WorkflowBuilder, actions, random_rules, random_workflow, simulate,
};
use osmo_engine::{
    Action, AttemptCause, CodeSource, ExitActions, ReportedCode, Rules, TaskStatus, decide,
    resolve_code, status_for_code,
};
use proptest::prelude::*;

const SOURCES: [CodeSource; 6] = [
    CodeSource::User,
    CodeSource::Init,
    CodeSource::Preflight,
    CodeSource::Runtime,
    CodeSource::Service,
    CodeSource::Unknown,
];

fn codes() -> impl Strategy<Value = Vec<ReportedCode>> {
    prop::collection::vec(
        (
            prop_oneof![
                0u32..300,
                1000u32..1002,
                2000u32..2041,
                3000u32..3007,
                Just(4000)
            ],
            0usize..6,
        )
            .prop_map(|(code, s)| ReportedCode {
                code,
                source: SOURCES[s],
                detail: None,
            }),
        1..5,
    )
}

/// Task exit actions over disjoint lists.
fn exit_actions() -> impl Strategy<Value = ExitActions> {
    prop::collection::vec(prop::option::of(0usize..3), 6).prop_map(|picks| {
        const LISTS: [&str; 6] = ["0", "1-20", "21-255", "1001", "3001-3006", "2002-2040"];
        let mut by_action: [Vec<&str>; 3] = Default::default();
        for (list, pick) in LISTS.iter().zip(picks) {
            if let Some(a) = pick {
                by_action[a].push(list);
            }
        }
        let pairs: Vec<(Action, String)> = Action::ALL
            .into_iter()
            .zip(by_action)
            .filter(|(_, l)| !l.is_empty())
            .map(|(a, l)| (a, l.join(",")))
            .collect();
        let pairs: Vec<(Action, &str)> = pairs.iter().map(|(a, l)| (*a, l.as_str())).collect();
        actions(&pairs)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Every workflow reaches a final status after a finite stream of events
    /// (exits with random codes, preemptions, skipped phases, stale events,
    /// timeouts, cancels), with every invariant held after every event.
    #[test]
    fn every_run_finishes_with_every_invariant_held(
        shape in prop::collection::vec(any::<u32>(), 0..80),
        events in prop::collection::vec(any::<u32>(), 0..800),
        cancel in 0u32..4,
    ) {
        let mut script = Script::new(shape);
        let workflow = random_workflow(&mut script, 6, 4);
        let rules = random_rules(&mut script);
        let config = SimConfig { cancel_per_mille: cancel, check_serde: true, ..SimConfig::default() };
        let report = simulate(workflow, rules, &mut Script::new(events), config);
        prop_assert!(report.is_ok(), "{}", report.unwrap_err());
        let report = report.unwrap();
        prop_assert!(report.status.is_some_and(|s| s.is_finished()));
        prop_assert!(report.attempts >= report.launched);
    }

    /// The highest reported code is the attempt's exit code, whatever the
    /// order, and the attempt's status is what `decide` says for it.
    #[test]
    fn the_highest_code_wins(codes in codes(), task_actions in exit_actions(), budget in 0u32..3) {
        let expected = codes.iter().map(|c| c.code).max().unwrap();
        prop_assert_eq!(resolve_code(&codes), Some(expected));
        let mut reversed = codes.clone();
        reversed.reverse();
        prop_assert_eq!(resolve_code(&reversed), Some(expected));

        let mut wf = WorkflowBuilder::new("p").task("t", &[]).build();
        wf.groups[0].tasks[0].exit_actions = task_actions.clone();
        let rules = Rules { max_retry_per_task: budget, ..Rules::default() };
        let mut env = TestEnv::new(wf, rules.clone());
        env.run("t");
        env.exit_codes("t", codes.clone());
        let first = &env.attempts("t")[0];
        prop_assert_eq!(first.exit_code, Some(expected));
        prop_assert_eq!(&first.codes, &codes);
        let decision = decide(expected, &task_actions, &rules, 0, 0);
        prop_assert_eq!(first.status, decision.status);
        prop_assert_eq!(first.rule.as_ref(), Some(&decision.rule));
    }

    /// RESCHEDULE is granted exactly while the task's own budget lasts; once
    /// spent, the status of §2 stands; other actions ignore the budget.
    #[test]
    fn decide_respects_the_budget(
        code in prop_oneof![0u32..300, 3000u32..3007, Just(1001), Just(4000)],
        task_actions in exit_actions(),
        own in 0u32..6,
        max in 0u32..6,
        retry in 0u32..20,
    ) {
        let rules = Rules { max_retry_per_task: max, ..Rules::default() };
        let d = decide(code, &task_actions, &rules, own, retry.max(own));
        prop_assert_eq!(d.exit_code, code);
        let listed = task_actions.lookup(code).map(|(r, _)| r.action);
        let exempt = code == 3000 || code == 3002;
        match listed {
            Some(Action::Reschedule) if !exempt => {
                prop_assert_eq!(d.status == TaskStatus::Rescheduled, own < max);
                prop_assert_eq!(d.retry_limit_reached, own >= max);
                if own >= max {
                    prop_assert_eq!(d.status, status_for_code(code));
                    let limit = format!("retry limit {max} reached");
                    prop_assert!(d.message.contains(&limit), "{}", d.message);
                }
            }
            Some(Action::Complete) if !exempt => prop_assert_eq!(d.status, TaskStatus::Completed),
            Some(Action::Fail) if !exempt => prop_assert_eq!(d.status, TaskStatus::Failed),
            _ => {
                prop_assert_eq!(d.status, status_for_code(code));
                prop_assert!(!d.retry_limit_reached);
            }
        }
        prop_assert!(d.message.starts_with(&format!("exit code {code} ")), "{}", d.message);
    }

    /// A task that keeps asking to be rescheduled runs exactly budget + 1 times.
    #[test]
    fn a_task_runs_at_most_its_budget_plus_one(budget in 0u32..6, code in 1u32..256) {
        let wf = WorkflowBuilder::new("b").task("t", &[(Action::Reschedule, "1-255")]).build();
        let mut env = TestEnv::new(wf, Rules { max_retry_per_task: budget, ..Rules::default() });
        while !env.state.is_finished() {
            env.run("t");
            env.exit("t", code);
        }
        let attempts = env.attempts("t");
        prop_assert_eq!(attempts.len() as u32, budget + 1);
        prop_assert!(attempts.iter().skip(1).all(|a| a.cause == AttemptCause::Rescheduled));
        prop_assert_eq!(attempts.last().unwrap().status, TaskStatus::Failed);
        prop_assert!(attempts.last().unwrap().failure_message.as_deref().unwrap().contains("retry limit"));
    }
}
