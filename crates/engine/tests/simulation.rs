//! Many random workflows (random DAGs, groups, leads, barrier and
//! ignoreNonleadStatus flags, exit actions with RESCHEDULE ranges, budgets,
//! timeouts) against a simulated server that answers every command with
//! random events: exits with random codes, preemptions, skipped phases,
//! stale and duplicate events, timer expiries and cancels. Every event is
//! followed by `sanity_check` and the history checks of `testkit::Checker`;
//! every workflow must reach a final status with nothing left running.

use std::time::Instant;

use osmo_engine::testkit::{Rng, SimConfig, random_rules, random_workflow, simulate};
use osmo_engine::{TaskStatus, WorkflowStatus};

const ATTEMPTS: usize = 100_000;

#[test]
fn random_workflows_finish_with_every_invariant_held() {
    let started = Instant::now();
    let (mut attempts, mut events, mut exits, mut stale, mut timeouts, mut restarts) =
        (0, 0, 0, 0, 0, 0);
    let mut by_status = [0usize; TaskStatus::ALL.len()];
    let mut workflows = [0usize; WorkflowStatus::ALL.len()];
    let mut seed = 0u64;
    while attempts < ATTEMPTS {
        let mut rng = Rng::new(seed);
        let workflow = random_workflow(&mut rng, 8, 5);
        let rules = random_rules(&mut rng);
        let config = SimConfig {
            check_serde: seed.is_multiple_of(64),
            ..SimConfig::default()
        };
        let report = simulate(workflow, rules, &mut rng, config)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let status = report.status.expect("finished");
        assert!(status.is_finished());
        workflows[status as usize] += 1;
        for (total, n) in by_status.iter_mut().zip(&report.by_status) {
            *total += n;
        }
        attempts += report.attempts;
        events += report.events;
        exits += report.exits;
        stale += report.stale;
        timeouts += report.timeouts;
        restarts += report.restarts;
        seed += 1;
    }
    println!(
        "simulated {seed} workflows: {attempts} attempts ({restarts} by group restarts), {events} events ({exits} exits, {stale} stale or odd, {timeouts} timers) in {:.1?}",
        started.elapsed()
    );
    for s in WorkflowStatus::ALL
        .into_iter()
        .filter(|s| workflows[*s as usize] > 0)
    {
        println!("  workflow {s}: {}", workflows[s as usize]);
    }
    for s in TaskStatus::ALL
        .into_iter()
        .filter(|s| by_status[*s as usize] > 0)
    {
        println!("  attempt {s}: {}", by_status[s as usize]);
    }
    assert!(attempts >= ATTEMPTS);
    assert!(restarts > 0, "no group restart happened");
    // The simulation reached every rule it is meant to exercise.
    for s in [
        WorkflowStatus::Completed,
        WorkflowStatus::Failed,
        WorkflowStatus::FailedCanceled,
        WorkflowStatus::FailedExecTimeout,
        WorkflowStatus::FailedQueueTimeout,
        WorkflowStatus::FailedPreempted,
        WorkflowStatus::FailedServerError,
    ] {
        assert!(workflows[s as usize] > 0, "no workflow ended {s}");
    }
    for s in [
        TaskStatus::Completed,
        TaskStatus::Rescheduled,
        TaskStatus::Failed,
        TaskStatus::FailedUpstream,
        TaskStatus::FailedCanceled,
        TaskStatus::FailedExecTimeout,
        TaskStatus::FailedQueueTimeout,
        TaskStatus::FailedPreempted,
        TaskStatus::FailedEvicted,
        TaskStatus::FailedStartError,
        TaskStatus::FailedImagePull,
        TaskStatus::FailedBackendError,
    ] {
        assert!(by_status[s as usize] > 0, "no attempt ended {s}");
    }
}
