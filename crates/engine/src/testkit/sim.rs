//! A random server: answers the engine's commands with plausible events
//! (including skipped phases, stale and duplicate events, preemptions,
//! timeouts and cancels) until the workflow finishes.

use std::time::Duration;

use osmo_spec::codes::{CodeSource, ExitRule};
use osmo_spec::model::Workflow;

use super::builder::{GroupBuilder, WorkflowBuilder, actions};
use super::env::TestEnv;
use super::rng::Choices;
use crate::api::{
    Action, AttemptId, Command, Event, ExitActions, Millis, ReportedCode, TaskKey, TaskStatus,
    TimeoutKind, WorkflowStatus,
};
use crate::decide::Rules;

/// Disjoint code lists an exit-action rule may use (no overlaps, as the loader demands).
const BUCKETS: [&str; 13] = [
    "0",
    "1-10",
    "11-20",
    "21-255",
    "256-257",
    "1001",
    "2002-2040",
    "3000",
    "3001",
    "3002",
    "3003-3005",
    "3006",
    "4000",
];

/// Codes an attempt may report, most common first; index 0 is a clean exit.
const CODES: [(u32, CodeSource); 22] = [
    (0, CodeSource::User),
    (0, CodeSource::User),
    (0, CodeSource::User),
    (1, CodeSource::User),
    (3, CodeSource::User),
    (16, CodeSource::User),
    (12, CodeSource::User),
    (137, CodeSource::User),
    (255, CodeSource::User),
    (256, CodeSource::Init),
    (1001, CodeSource::Preflight),
    (2010, CodeSource::Runtime),
    (2024, CodeSource::Runtime),
    (3001, CodeSource::Service),
    (3003, CodeSource::Service),
    (3004, CodeSource::Service),
    (3005, CodeSource::Service),
    (3006, CodeSource::Service),
    (3006, CodeSource::Service),
    (3000, CodeSource::Service),
    (3002, CodeSource::Service),
    (301, CodeSource::Service),
];

fn random_actions(ch: &mut impl Choices, per_bucket_per_mille: u32) -> ExitActions {
    let mut lists: [Vec<&str>; 3] = Default::default();
    for bucket in BUCKETS {
        if ch.chance(per_bucket_per_mille) {
            lists[ch.below(3) as usize].push(bucket);
        }
    }
    let mut rules = Vec::new();
    for (action, list) in Action::ALL.into_iter().zip(lists) {
        if !list.is_empty() {
            rules.extend(actions(&[(action, &list.join(","))]).rules);
        }
    }
    let rules: Vec<ExitRule> = rules;
    ExitActions { rules }
}

/// A random workflow: up to `max_groups` groups of up to `max_tasks` tasks,
/// random DAG edges to earlier groups, leads, barrier and ignoreNonleadStatus
/// flags, exit actions (RESCHEDULE ranges included) and timeouts.
pub fn random_workflow(ch: &mut impl Choices, max_groups: u32, max_tasks: u32) -> Workflow {
    let groups = 1 + ch.below(max_groups.max(1));
    let mut builder = WorkflowBuilder::new("sim");
    for g in 0..groups {
        let tasks = if ch.chance(500) {
            1
        } else {
            1 + ch.below(max_tasks.max(1))
        };
        let mut group = GroupBuilder::new(&format!("g{g}"))
            .barrier(!ch.chance(250))
            .ignore_nonlead_status(!ch.chance(500));
        for t in 0..tasks {
            let mut spec = super::builder::task(&format!("g{g}t{t}"));
            spec.exit_actions = random_actions(ch, 250);
            group = group.spec(spec);
        }
        group = group.lead(&format!("g{g}t{}", ch.below(tasks)));
        let mut after = Vec::new();
        for u in 0..g {
            if after.len() < 3 && ch.chance(300) {
                after.push(format!("g{u}"));
            }
        }
        let after: Vec<&str> = after.iter().map(String::as_str).collect();
        builder = builder.group(group.after(&after));
    }
    if ch.chance(300) {
        builder = builder.queue_timeout(Duration::from_millis(u64::from(200 + ch.below(30) * 100)));
    }
    if ch.chance(300) {
        builder = builder.exec_timeout(Duration::from_millis(u64::from(500 + ch.below(50) * 100)));
    }
    builder.build()
}

/// Random pool rules: a budget of 0 to 4 and sometimes default exit actions.
pub fn random_rules(ch: &mut impl Choices) -> Rules {
    Rules {
        max_retry_per_task: ch.below(5),
        default_exit_actions: if ch.chance(300) {
            random_actions(ch, 100)
        } else {
            ExitActions::default()
        },
    }
}

/// How the simulated server behaves.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Chance of a cancel per step.
    pub cancel_per_mille: u32,
    /// Chance of a stale, duplicate or premature event per step.
    pub noise_per_mille: u32,
    /// Chance of the clock jumping ahead (up to 2 s) per step.
    pub time_per_mille: u32,
    /// Give up (an error) after this many events.
    pub max_events: usize,
    /// Round-trip the whole state through JSON after every event.
    pub check_serde: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            cancel_per_mille: 2,
            noise_per_mille: 40,
            time_per_mille: 60,
            max_events: 200_000,
            check_serde: false,
        }
    }
}

/// What a simulation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub status: Option<WorkflowStatus>,
    /// Attempt records at the end (every task's every attempt).
    pub attempts: usize,
    /// Attempts launched.
    pub launched: usize,
    pub events: usize,
    pub exits: usize,
    pub stale: usize,
    pub timeouts: usize,
    /// Attempts made by group restarts.
    pub restarts: usize,
    /// Attempts by final status (index: `TaskStatus as usize`).
    pub by_status: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Launched,
    Initializing,
    /// Set up, waiting for its Release.
    SetupDone,
    Released,
    Running,
    /// Asked to restart in place: its run is being stopped.
    Restarting,
    /// Asked to restart, and released again before the run stopped.
    RestartingReleased,
}

struct Live {
    id: AttemptId,
    phase: Phase,
}

/// Half the time a clean exit, else any code of [`CODES`].
fn pick(ch: &mut impl Choices) -> ReportedCode {
    let i = ch.below(2 * CODES.len() as u32) as usize;
    let (code, source) = if i < CODES.len() {
        CODES[i]
    } else {
        (0, CodeSource::User)
    };
    ReportedCode {
        code,
        source,
        detail: None,
    }
}

fn random_codes(ch: &mut impl Choices) -> Vec<ReportedCode> {
    let mut codes = vec![pick(ch)];
    match ch.below(40) {
        0..=33 => {}
        34..=38 => codes.push(pick(ch)),
        _ => codes.clear(),
    }
    codes
}

/// What the simulated server learns from sending `event`: the phase its
/// attempt reaches (an `Exited` ends it).
fn track(live: &mut Vec<Live>, event: &Event) {
    let (id, next) = match event {
        Event::Initializing { attempt, .. } => (attempt, Phase::Initializing),
        Event::SetupDone { attempt } => (attempt, Phase::SetupDone),
        Event::Running { attempt } => (attempt, Phase::Running),
        Event::RunStopped { attempt, .. } => {
            if let Some(l) = live.iter_mut().find(|l| l.id == *attempt) {
                l.phase = match l.phase {
                    Phase::Restarting => Phase::SetupDone,
                    Phase::RestartingReleased => Phase::Released,
                    other => other,
                };
            }
            return;
        }
        Event::Exited { attempt, .. } => {
            live.retain(|l| l.id != *attempt);
            return;
        }
        _ => return,
    };
    if let Some(l) = live.iter_mut().find(|l| l.id == *id) {
        let moves = match next {
            Phase::Initializing => l.phase == Phase::Launched,
            Phase::SetupDone => matches!(l.phase, Phase::Launched | Phase::Initializing),
            _ => l.phase != Phase::Running,
        };
        if moves {
            l.phase = next;
        }
    }
}

fn service(code: u32) -> Vec<ReportedCode> {
    vec![ReportedCode {
        code,
        source: CodeSource::Service,
        detail: None,
    }]
}

/// Runs `workflow` under `rules` against a simulated server whose every
/// choice comes from `ch`, checking every step with a [`TestEnv`]. Returns
/// what happened, or the first violation (or a stuck or endless run).
pub fn simulate(
    workflow: Workflow,
    rules: Rules,
    ch: &mut impl Choices,
    config: SimConfig,
) -> Result<SimReport, String> {
    let mut env = TestEnv::try_new(workflow, rules)?;
    env.check_serde = config.check_serde;
    let mut report = SimReport::default();
    let mut live: Vec<Live> = Vec::new();
    let mut timers: Vec<(u32, TimeoutKind, Millis)> = Vec::new();
    let mut finished = false;
    let mut absorb =
        |commands: Vec<Command>, live: &mut Vec<Live>, timers: &mut Vec<_>| -> Result<(), String> {
            for command in commands {
                match command {
                    Command::Launch { attempt } => live.push(Live {
                        id: attempt,
                        phase: Phase::Launched,
                    }),
                    Command::Stop { attempt, .. } => {
                        let i = live
                            .iter()
                            .position(|l| l.id == attempt)
                            .ok_or(format!("Stop {attempt:?} not live"))?;
                        live.swap_remove(i);
                    }
                    Command::Release { attempts } => {
                        for id in attempts {
                            let l = live
                                .iter_mut()
                                .find(|l| l.id == id)
                                .ok_or(format!("Release {id:?} not live"))?;
                            l.phase = match l.phase {
                                Phase::SetupDone => Phase::Released,
                                Phase::Restarting => Phase::RestartingReleased,
                                other => {
                                    return Err(format!("Release {id:?} in phase {other:?}"));
                                }
                            };
                        }
                    }
                    Command::Restart { attempt, .. } => {
                        let l = live
                            .iter_mut()
                            .find(|l| l.id == attempt)
                            .ok_or(format!("Restart {attempt:?} not live"))?;
                        if !matches!(
                            l.phase,
                            Phase::Released | Phase::Running | Phase::RestartingReleased
                        ) {
                            return Err(format!("Restart {attempt:?} in phase {:?}", l.phase));
                        }
                        l.phase = Phase::Restarting;
                    }
                    Command::SetTimer { group, kind, at } => timers.push((group, kind, at)),
                    Command::Finished { .. } => finished = true,
                }
            }
            Ok(())
        };
    let initial = env.take();
    absorb(initial, &mut live, &mut timers)?;
    while !env.state.is_finished() {
        if report.events >= config.max_events {
            return Err(format!("not finished after {} events", report.events));
        }
        // A server fires every due timer.
        timers.sort_by_key(|t| std::cmp::Reverse(t.2));
        if let Some(&(group, kind, at)) = timers.last()
            && at <= env.now
        {
            timers.pop();
            report.events += 1;
            report.timeouts += 1;
            let out = env.try_apply(Event::TimedOut { group, kind })?;
            absorb(out, &mut live, &mut timers)?;
            continue;
        }
        let actionable: Vec<usize> = (0..live.len())
            .filter(|&i| live[i].phase != Phase::SetupDone)
            .collect();
        if actionable.is_empty() {
            return Err(format!(
                "stuck: {} live attempts all wait at a barrier, workflow {}",
                live.len(),
                env.state.status()
            ));
        }
        let (noise, time, cancel) = (
            config.noise_per_mille,
            config.time_per_mille,
            config.cancel_per_mille,
        );
        let roll = ch.below(1000);
        let event = if roll < 1000 - noise - time - cancel {
            let id = live[actionable[ch.below(actionable.len() as u32) as usize]].id;
            let phase = live
                .iter()
                .find(|l| l.id == id)
                .map(|l| l.phase)
                .unwrap_or(Phase::Running);
            let r = ch.below(20);
            match phase {
                Phase::Launched => match r {
                    0..=17 => Event::Initializing {
                        attempt: id,
                        node: Some(format!("n{}", r % 3)),
                        gpus: Vec::new(),
                    },
                    18 => Event::SetupDone { attempt: id },
                    _ => match ch.below(3) {
                        0 => Event::Exited {
                            attempt: id,
                            codes: service(3003),
                        },
                        1 => Event::Exited {
                            attempt: id,
                            codes: service(3006),
                        },
                        _ => Event::Exited {
                            attempt: id,
                            codes: random_codes(ch),
                        },
                    },
                },
                Phase::Initializing => match r {
                    0..=17 => Event::SetupDone { attempt: id },
                    18 => Event::Exited {
                        attempt: id,
                        codes: vec![super::builder::code(1001)],
                    },
                    _ => match ch.below(2) {
                        0 => Event::Exited {
                            attempt: id,
                            codes: vec![super::builder::code(256)],
                        },
                        _ => Event::Exited {
                            attempt: id,
                            codes: random_codes(ch),
                        },
                    },
                },
                Phase::Released => match r {
                    0..=17 => Event::Running { attempt: id },
                    _ => Event::Exited {
                        attempt: id,
                        codes: random_codes(ch),
                    },
                },
                Phase::Running | Phase::SetupDone => Event::Exited {
                    attempt: id,
                    codes: random_codes(ch),
                },
                // The run is stopped (SIGTERM: 143), or it had ended by itself first.
                Phase::Restarting | Phase::RestartingReleased => match r {
                    0..=16 => Event::RunStopped {
                        attempt: id,
                        codes: vec![ReportedCode {
                            code: 143,
                            source: CodeSource::User,
                            detail: None,
                        }],
                    },
                    _ => Event::Exited {
                        attempt: id,
                        codes: random_codes(ch),
                    },
                },
            }
        } else if roll < 1000 - time - cancel {
            report.stale += 1;
            noise_event(&env, &live, ch)
        } else if roll < 1000 - cancel {
            env.advance(u64::from(ch.below(2000)));
            continue;
        } else {
            Event::Cancel {
                by: "sim".to_string(),
                reason: ch.chance(500).then(|| "random cancel".to_string()),
            }
        };
        if matches!(event, Event::Exited { .. }) {
            report.exits += 1;
        }
        track(&mut live, &event);
        report.events += 1;
        let out = env.try_apply(event)?;
        absorb(out, &mut live, &mut timers)?;
        env.advance(u64::from(ch.below(50)));
    }
    if !finished {
        return Err("finished without a Finished command".to_string());
    }
    if !live.is_empty() {
        return Err(format!(
            "workflow {} but {} attempts were never stopped",
            env.state.status(),
            live.len()
        ));
    }
    if config.check_serde {
        env.check_state_serde()?;
    }
    report.status = Some(env.state.status());
    report.launched = env
        .log
        .iter()
        .filter(|c| matches!(c, Command::Launch { .. }))
        .count();
    report.by_status = vec![0; TaskStatus::ALL.len()];
    for (g, group) in env.state.workflow().groups.iter().enumerate() {
        for t in 0..group.tasks.len() {
            for attempt in env.state.attempts(TaskKey {
                group: g as u32,
                task: t as u32,
            }) {
                report.attempts += 1;
                report.restarts +=
                    usize::from(attempt.cause == crate::api::AttemptCause::GroupRestart);
                report.by_status[attempt.status as usize] += 1;
            }
        }
    }
    Ok(report)
}

/// An event the engine must cope with but that changes nothing, or that a
/// racing server could send: one for an older attempt, a duplicate, a
/// preemption while waiting at the barrier, a timer that is not due.
fn noise_event(env: &TestEnv, live: &[Live], ch: &mut impl Choices) -> Event {
    let wf = env.state.workflow();
    let g = ch.below(wf.groups.len() as u32);
    let t = ch.below(wf.groups[g as usize].tasks.len() as u32);
    let key = TaskKey { group: g, task: t };
    let retries = env.state.attempts(key).len() as u32;
    let old = AttemptId {
        task: key,
        retry_id: ch.below(retries + 1),
    };
    match ch.below(7) {
        0 => Event::Exited {
            attempt: old,
            codes: random_codes(ch),
        },
        1 => Event::Running { attempt: old },
        2 => Event::Initializing {
            attempt: old,
            node: None,
            gpus: Vec::new(),
        },
        3 => Event::SetupDone { attempt: old },
        4 => Event::TimedOut {
            group: g,
            kind: if ch.chance(500) {
                TimeoutKind::Exec
            } else {
                TimeoutKind::Queue
            },
        },
        5 => match live.iter().find(|l| l.phase == Phase::SetupDone) {
            // Preempted while waiting at the barrier: a real exit, not noise.
            Some(l) => Event::Exited {
                attempt: l.id,
                codes: service(3006),
            },
            None => Event::Running { attempt: old },
        },
        _ => match live.first() {
            // A duplicate of an earlier phase: ignored.
            Some(l) => Event::Initializing {
                attempt: l.id,
                node: None,
                gpus: Vec::new(),
            },
            None => Event::SetupDone { attempt: old },
        },
    }
}
