//! Exit decisions per second on a 10,000-task workflow.
//!
//! Each iteration takes a fresh copy of the submitted workflow (setup, not
//! timed) and answers every `Launch` with an `Exited` carrying a random code
//! (mostly 0, some RESCHEDULE matches, preemptions, failures) until the
//! workflow finishes. Throughput counts `Exited` events, so "elements/s" is
//! exit decisions per second, including everything they set off (group
//! restarts, stops, downstream starts, upstream cascades, workflow status).
//! `lifecycle` also feeds Initializing, SetupDone and Running before each exit.
//! `decide` measures the decision rule alone.

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use osmo_engine::testkit::{GroupBuilder, Rng, WorkflowBuilder, actions, code};
use osmo_engine::{
    Action, AttemptId, Command, Event, ExitActions, Rules, TaskKey, WorkflowState, decide,
};
use osmo_spec::Workflow;

const TEMPLATES: [&[(Action, &str)]; 5] = [
    &[],
    &[(Action::Complete, "0-10"), (Action::Reschedule, "11-20")],
    &[(Action::Reschedule, "3006")],
    &[(Action::Fail, "137"), (Action::Complete, "0")],
    &[(Action::Complete, "0,1-10,16,20")],
];

/// Codes an attempt exits with: mostly success.
const CODES: [u32; 20] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 16, 3006, 1, 137, 3004,
];

/// `groups` groups of `per_group` tasks, the last one leading; single-task
/// groups depend on up to two groups of the previous layer of 100 (a
/// 100-wide, 100-deep DAG) and reschedule on failures.
fn workflow(groups: usize, per_group: usize, rng: &mut Rng) -> Workflow {
    let mut builder = WorkflowBuilder::new("bench");
    for g in 0..groups {
        let mut group = GroupBuilder::new(&format!("g{g}"))
            .barrier(!rng.next_u64().is_multiple_of(4))
            .ignore_nonlead_status(rng.next_u64().is_multiple_of(2));
        for t in 0..per_group {
            let template = if per_group == 1 {
                // A deep DAG fails as soon as one task does: these tasks retry.
                &[
                    (Action::Complete, "0"),
                    (Action::Reschedule, "1-255,3004,3006"),
                ][..]
            } else {
                TEMPLATES[(rng.next_u64() % TEMPLATES.len() as u64) as usize]
            };
            group = group.task_with(&format!("g{g}t{t}"), template);
        }
        // The lead is launched (and so exits) last: its siblings exit on their own first.
        group = group.lead(&format!("g{g}t{}", per_group - 1));
        if per_group == 1 && g >= 100 {
            let layer = g / 100 - 1;
            let a = format!("g{}", layer * 100 + (rng.next_u64() % 100) as usize);
            let b = format!("g{}", layer * 100 + (rng.next_u64() % 100) as usize);
            group = group.after(&[&a, &b]);
        }
        builder = builder.group(group);
    }
    builder.build()
}

/// The code attempt `id` exits with: fixed per attempt, so every run is the same.
fn exit_code(id: AttemptId) -> u32 {
    let mut rng = Rng::new(
        (u64::from(id.task.group) << 40) ^ (u64::from(id.task.task) << 20) ^ u64::from(id.retry_id),
    );
    CODES[(rng.next_u64() % CODES.len() as u64) as usize]
}

/// Answers launches until the workflow finishes; returns the number of exits.
fn drive(state: &mut WorkflowState, initial: &[Command], lifecycle: bool) -> u64 {
    let mut queue: VecDeque<AttemptId> = VecDeque::with_capacity(16_384);
    let mut out: Vec<Command> = Vec::with_capacity(64);
    let mut exited = Event::Exited {
        attempt: AttemptId {
            task: TaskKey { group: 0, task: 0 },
            retry_id: 0,
        },
        codes: vec![code(0)],
    };
    let mut exits = 0;
    let mut now = 1_000;
    let absorb = |out: &mut Vec<Command>, queue: &mut VecDeque<AttemptId>| {
        for command in out.drain(..) {
            if let Command::Launch { attempt } = command {
                queue.push_back(attempt);
            }
        }
    };
    for command in initial {
        if let Command::Launch { attempt } = command {
            queue.push_back(*attempt);
        }
    }
    if lifecycle {
        // Set every launched attempt up first so barriers open, then run and exit them.
        while !state.is_finished() {
            let batch: Vec<AttemptId> = queue.drain(..).collect();
            assert!(!batch.is_empty(), "unfinished with nothing launched");
            for &attempt in &batch {
                state.apply(
                    &Event::Initializing {
                        attempt,
                        node: None,
                        gpus: Vec::new(),
                    },
                    now,
                    &mut out,
                );
                state.apply(&Event::SetupDone { attempt }, now, &mut out);
                absorb(&mut out, &mut queue);
            }
            for &attempt in &batch {
                state.apply(&Event::Running { attempt }, now, &mut out);
                absorb(&mut out, &mut queue);
            }
            for &attempt in &batch {
                let current = state.current(attempt.task);
                if current.retry_id != attempt.retry_id || current.status.is_finished() {
                    continue;
                }
                exits += 1;
                if let Event::Exited { attempt: a, codes } = &mut exited {
                    *a = attempt;
                    codes[0] = code(exit_code(attempt));
                }
                state.apply(&exited, now, &mut out);
                absorb(&mut out, &mut queue);
                now += 1;
            }
        }
        return exits;
    }
    while let Some(attempt) = queue.pop_front() {
        let current = state.current(attempt.task);
        if current.retry_id != attempt.retry_id || current.status.is_finished() {
            continue;
        }
        exits += 1;
        if let Event::Exited { attempt: a, codes } = &mut exited {
            *a = attempt;
            codes[0] = code(exit_code(attempt));
        }
        state.apply(&exited, now, &mut out);
        absorb(&mut out, &mut queue);
        now += 1;
    }
    assert!(state.is_finished());
    exits
}

fn bench_workflow(c: &mut Criterion, name: &str, groups: usize, per_group: usize, lifecycle: bool) {
    let mut rng = Rng::new(42);
    let wf = workflow(groups, per_group, &mut rng);
    assert_eq!(wf.task_count(), 10_000);
    // The DAG's tasks get a larger budget: one failure fails everything downstream.
    let budget = if per_group == 1 { 10 } else { 3 };
    let rules = Rules {
        max_retry_per_task: budget,
        default_exit_actions: actions(&[(Action::Reschedule, "3006")]),
    };
    let (state, initial) = WorkflowState::new("bench-1".into(), wf, rules, 0);
    let exits = drive(&mut state.clone(), &initial, lifecycle);
    let mut group = c.benchmark_group("exits");
    group.throughput(Throughput::Elements(exits));
    group.sample_size(20);
    group.bench_function(name, |b| {
        b.iter_batched(
            || state.clone(),
            |mut s| {
                black_box(drive(&mut s, &initial, lifecycle));
                s
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    println!(
        "{name}: {exits} exit decisions per iteration, final status {}",
        {
            let mut s = state.clone();
            drive(&mut s, &initial, lifecycle);
            s.status()
        }
    );
}

fn exits(c: &mut Criterion) {
    bench_workflow(c, "10k_tasks_2500_groups_of_4", 2_500, 4, false);
    bench_workflow(c, "10k_tasks_single_task_groups_dag", 10_000, 1, false);
    bench_workflow(c, "lifecycle_10k_tasks_2500_groups_of_4", 2_500, 4, true);
}

fn decide_alone(c: &mut Criterion) {
    let task_actions: Vec<ExitActions> = TEMPLATES.iter().map(|t| actions(t)).collect();
    let rules = Rules {
        max_retry_per_task: 3,
        default_exit_actions: actions(&[(Action::Reschedule, "3006")]),
    };
    let mut rng = Rng::new(7);
    let cases: Vec<(u32, usize, u32)> = (0..1024)
        .map(|_| {
            let code = [0, 3, 16, 137, 1001, 3001, 3006, 4000][(rng.next_u64() % 8) as usize];
            (
                code,
                (rng.next_u64() % TEMPLATES.len() as u64) as usize,
                (rng.next_u64() % 5) as u32,
            )
        })
        .collect();
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(cases.len() as u64));
    group.bench_function("1024_codes", |b| {
        b.iter(|| {
            for &(code, t, own) in &cases {
                black_box(decide(black_box(code), &task_actions[t], &rules, own, own));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, exits, decide_alone);
criterion_main!(benches);
