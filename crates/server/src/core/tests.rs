//! The core's unit tests, with a FakeBackend: no processes, no store.

use osmo_engine::testkit::WorkflowBuilder;
use osmo_engine::{Rules, TaskKey, TaskStatus};

use super::*;
use crate::backend::FakeBackend;

struct Setup {
    core: Core,
    backend: Arc<FakeBackend>,
    inbox: mpsc::UnboundedReceiver<LinkEvent>,
    _dir: tempfile::TempDir,
}

fn setup(cpus: f64) -> Setup {
    setup_with(FakeBackend::with_cpus(cpus))
}

fn setup_with(backend: FakeBackend) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(backend);
    let (config, backends) = FakeBackend::one_pool(&backend);
    let (tx, inbox) = mpsc::unbounded_channel();
    let core = Core::new(
        config,
        backends,
        tx,
        dir.path().to_path_buf(),
        None,
        crate::credentials::Vault::empty(),
    );
    Setup {
        core,
        backend,
        inbox,
        _dir: dir,
    }
}

fn workflow(id: &str, tasks: &[&str]) -> (WorkflowState, Vec<Command>) {
    let mut b = WorkflowBuilder::new("wf");
    for t in tasks {
        b = b.task(t, &[]);
    }
    WorkflowState::new(id.to_string(), b.build(), Rules::default(), now_ms())
}

fn attempt(task: u32) -> AttemptKey {
    AttemptKey {
        workflow_id: "wf-1".into(),
        attempt: AttemptId {
            task: TaskKey {
                group: task,
                task: 0,
            },
            retry_id: 0,
        },
    }
}

fn msg(msg: FromAgent) -> LinkEvent {
    LinkEvent::Message { conn: 1, msg }
}

fn hello(attempts: Vec<(AttemptKey, Phase)>) -> LinkEvent {
    msg(FromAgent::Hello {
        node: "n".into(),
        pid: 1,
        attempts,
        starts_prepared: false,
    })
}

/// The attempts of the messages `pick` takes, in order.
fn keys(sent: &[ToAgent], pick: impl Fn(&ToAgent) -> Option<&AttemptKey>) -> Vec<AttemptKey> {
    sent.iter().filter_map(pick).cloned().collect()
}

fn launched(sent: &[ToAgent]) -> Vec<AttemptKey> {
    keys(sent, |m| match m {
        ToAgent::Launch(l) => Some(&l.key),
        _ => None,
    })
}

fn exited(key: AttemptKey, code: u32) -> LinkEvent {
    msg(FromAgent::Exited {
        key,
        codes: vec![ReportedCode {
            code,
            source: CodeSource::User,
            detail: None,
        }],
    })
}

/// Hands `wf-1` to the core as a submit does.
fn add(core: &mut Core, engine: WorkflowState, commands: Vec<Command>) {
    core.add(
        "wf-1".into(),
        engine,
        commands,
        "default".into(),
        Priority::Normal,
        "me".into(),
    );
}

/// Prepares and commits the batch, as the shell does once the store said yes.
fn commit(core: &mut Core) -> Vec<Commit> {
    let commits = core.prepare();
    core.committed(&commits);
    commits
}

#[test]
fn a_launch_waits_for_the_backends_hello() {
    let mut s = setup(4.0);
    let (engine, commands) = workflow("wf-1", &["a", "b"]);
    add(&mut s.core, engine, commands);
    assert!(
        launched(&s.backend.take()).is_empty(),
        "no launch before the backend said what it runs"
    );
    s.core.handle_link(hello(vec![]));
    // The launches were decided, and committed, with the workflow.
    s.core.dispatch();
    assert_eq!(launched(&s.backend.take()), [attempt(0), attempt(1)]);
    commit(&mut s.core);
    assert!(
        launched(&s.backend.take()).is_empty(),
        "each launch goes once"
    );
}

#[test]
fn a_failed_commit_acts_on_nothing_and_is_prepared_again_unchanged() {
    let mut s = setup(1.0);
    let (engine, commands) = workflow("wf-1", &["a", "b"]);
    add(&mut s.core, engine, commands);
    s.core.handle_link(hello(vec![]));
    commit(&mut s.core);
    assert_eq!(
        launched(&s.backend.take()),
        [attempt(0)],
        "one CPU: one at a time"
    );

    s.core.handle_link(exited(attempt(0), 0));
    let first = s.core.prepare();
    // The store failed: nothing may be acknowledged or carried out yet.
    assert!(s.backend.take().is_empty());
    let again = s.core.prepare();
    assert_eq!(again, first, "the retry commits exactly the same events");
    // Its phases were never reported: they are recorded before its exit.
    assert_eq!(first[0].events.len(), 4);
    assert_eq!(first[0].first_seq, 1);
    s.core.committed(&again);
    let sent = s.backend.take();
    let acks = sent
        .iter()
        .filter(|m| matches!(m, ToAgent::Ack { key } if *key == attempt(0)))
        .count();
    assert_eq!(acks, 1, "acknowledged once, after the commit: {sent:?}");
    assert_eq!(launched(&sent), [attempt(1)], "the freed CPU goes to b");
    // Nothing is applied twice: a later batch numbers its events on.
    s.core.handle_link(exited(attempt(1), 0));
    let next = s.core.prepare();
    assert_eq!(next[0].first_seq, 5);
    assert_eq!(next[0].status, "COMPLETED");
    assert!(
        next[0].snapshot.is_some(),
        "a finished workflow is snapshotted"
    );
}

#[test]
fn reconcile_adopts_what_the_backend_holds_and_fails_what_it_lost() {
    let mut s = setup(4.0);
    let (mut engine, _) = workflow("wf-1", &["kept", "lost"]);
    // Before the restart both ran.
    let mut out = Vec::new();
    for t in [0, 1] {
        let a = attempt(t).attempt;
        engine.apply(
            &Event::Initializing {
                attempt: a,
                node: None,
                gpus: Vec::new(),
            },
            1,
            &mut out,
        );
        engine.apply(&Event::Running { attempt: a }, 2, &mut out);
    }
    s.core.restore(Restored {
        id: "wf-1".into(),
        engine,
        pool: "default".into(),
        priority: Priority::Normal,
        submitted_by: "me".into(),
        snapshot_seq: 4,
        last_seq: 4,
    });
    s.core
        .handle_link(hello(vec![(attempt(0), Phase::Running)]));
    let commits = commit(&mut s.core);
    assert!(
        launched(&s.backend.take()).is_empty(),
        "nothing is launched twice"
    );
    assert_eq!(commits[0].first_seq, 5);
    let doc = s.core.query("wf-1", true).unwrap();
    let status = |name: &str| {
        doc.groups
            .iter()
            .flat_map(|g| &g.tasks)
            .find(|t| t.name == name)
            .map(|t| (t.status.clone(), t.exit_code))
            .unwrap()
    };
    assert_eq!(status("kept"), (TaskStatus::Running.to_string(), None));
    assert_eq!(
        status("lost"),
        (TaskStatus::FailedBackendError.to_string(), Some(3001))
    );
    assert!(s.inbox.try_recv().is_err());
}

#[test]
fn a_launch_names_the_hosts_of_its_group_as_the_backend_does() {
    let mut s = setup(4.0);
    let mut client = osmo_engine::testkit::task("client");
    client.command = vec!["nc".into(), "{{host:server}}".into(), "24831".into()];
    let wf = WorkflowBuilder::new("pair")
        .group(
            osmo_engine::testkit::GroupBuilder::new("g")
                .task("server")
                .spec(client)
                .lead("server"),
        )
        .build();
    let (engine, commands) = WorkflowState::new("wf-1".into(), wf, Rules::default(), now_ms());
    add(&mut s.core, engine, commands);
    s.core.handle_link(hello(vec![]));
    s.core.dispatch();
    let sent = s.backend.take();
    let client = sent
        .iter()
        .find_map(|m| match m {
            ToAgent::Launch(l) if l.task == "client" => Some(l.command.clone()),
            _ => None,
        })
        .expect("the client was launched");
    assert_eq!(client, ["nc", "server.fake", "24831"]);
}

/// The agent protocol, fuzzed: whatever an agent (buggy, old, or hostile)
/// says — unknown attempts, groups that do not exist, phases out of order,
/// exits of attempts never launched, repeated Hellos — the core neither
/// panics nor hands out more CPUs than the pool has, and keeps answering.
mod agent_protocol {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Said {
        Hello(Vec<(u32, u32, Phase)>),
        Phase(u32, u32, Phase, Option<Vec<u32>>),
        Exited(u32, u32, Vec<(u32, u8)>),
        RunStopped(u32, u32, Vec<(u32, u8)>),
        Logs(u32, u32, String),
        OtherWorkflow(u32),
        Disconnected,
        Commit,
    }

    fn phase() -> impl Strategy<Value = Phase> {
        prop_oneof![
            Just(Phase::Initializing),
            Just(Phase::SetupDone),
            Just(Phase::Running)
        ]
    }

    fn codes() -> impl Strategy<Value = Vec<(u32, u8)>> {
        prop::collection::vec(
            (
                prop_oneof![0u32..300, 1000u32..1002, 2000u32..4100, any::<u32>()],
                0u8..6,
            ),
            0..3,
        )
    }

    fn said() -> impl Strategy<Value = Said> {
        // Tasks 0..3 exist; 3..5 do not. Retries 0..3.
        let (task, retry) = (0u32..5, 0u32..3);
        prop_oneof![
            prop::collection::vec((task.clone(), retry.clone(), phase()), 0..4)
                .prop_map(Said::Hello),
            (
                task.clone(),
                retry.clone(),
                phase(),
                prop::option::of(prop::collection::vec(0u32..64, 0..3))
            )
                .prop_map(|(t, r, p, g)| Said::Phase(t, r, p, g)),
            (task.clone(), retry.clone(), codes()).prop_map(|(t, r, c)| Said::Exited(t, r, c)),
            (task.clone(), retry.clone(), codes()).prop_map(|(t, r, c)| Said::RunStopped(t, r, c)),
            (task.clone(), retry.clone(), ".{0,40}").prop_map(|(t, r, l)| Said::Logs(t, r, l)),
            (0u32..3).prop_map(Said::OtherWorkflow),
            Just(Said::Disconnected),
            Just(Said::Commit),
        ]
    }

    fn key(workflow: &str, task: u32, retry_id: u32) -> AttemptKey {
        AttemptKey {
            workflow_id: workflow.into(),
            attempt: AttemptId {
                task: TaskKey {
                    group: task,
                    task: 0,
                },
                retry_id,
            },
        }
    }

    fn reported(codes: &[(u32, u8)]) -> Vec<ReportedCode> {
        let sources = [
            CodeSource::User,
            CodeSource::Init,
            CodeSource::Preflight,
            CodeSource::Runtime,
            CodeSource::Service,
            CodeSource::Unknown,
        ];
        codes
            .iter()
            .map(|(code, s)| ReportedCode {
                code: *code,
                source: sources[*s as usize % sources.len()],
                detail: None,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn whatever_an_agent_says_the_core_stays_within_the_pool(
            said in prop::collection::vec(said(), 1..40)
        ) {
            let mut s = setup(2.0);
            let (engine, commands) = workflow("wf-1", &["a", "b", "c"]);
            add(&mut s.core, engine, commands);
            s.core.handle_link(hello(vec![]));
            for said in said {
                let event = match said {
                    Said::Hello(attempts) => hello(
                        attempts.into_iter().map(|(t, r, p)| (key("wf-1", t, r), p)).collect(),
                    ),
                    Said::Phase(t, r, phase, gpus) => msg(FromAgent::Phase {
                        key: key("wf-1", t, r),
                        phase,
                        node: None,
                        gpus,
                    }),
                    Said::Exited(t, r, c) => msg(FromAgent::Exited {
                        key: key("wf-1", t, r),
                        codes: reported(&c),
                    }),
                    Said::RunStopped(t, r, c) => msg(FromAgent::RunStopped {
                        key: key("wf-1", t, r),
                        codes: reported(&c),
                    }),
                    Said::Logs(t, r, line) => msg(FromAgent::Logs {
                        lines: vec![crate::proto::LogLine {
                            key: key("wf-1", t, r),
                            task: "a".into(),
                            at_ms: 0,
                            stream: crate::proto::Stream::Stdout,
                            line,
                        }],
                        batch: None,
                    }),
                    Said::OtherWorkflow(t) => exited(key("wf-9", t, 0), 0),
                    Said::Disconnected => LinkEvent::Disconnected { conn: 1 },
                    Said::Commit => {
                        commit(&mut s.core);
                        continue;
                    }
                };
                s.core.handle_link(event);
                s.core.dispatch();
                let used = s.core.schedulers["default"].used().cpu;
                prop_assert!((0.0..=2.0 + 1e-9).contains(&used), "CPUs in use: {used}");
            }
            commit(&mut s.core);
            let _ = s.backend.take();
            // Still answering (the workflow may have ended and left the core).
            let _ = s.core.query("wf-1", true);
        }
    }
}

fn phase(key: AttemptKey, phase: Phase) -> LinkEvent {
    msg(FromAgent::Phase {
        key,
        phase,
        node: None,
        gpus: None,
    })
}

#[test]
fn an_exit_that_decides_nothing_waits_with_the_phases_and_one_that_launches_does_not() {
    let mut s = setup(4.0);
    // b runs after a; c stands alone.
    let wf = WorkflowBuilder::new("wf")
        .task("a", &[])
        .task_after("b", &[], &["a"])
        .task("c", &[])
        .build();
    let (engine, commands) = WorkflowState::new("wf-1".into(), wf, Rules::default(), now_ms());
    add(&mut s.core, engine, commands);
    s.core.handle_link(hello(vec![]));
    commit(&mut s.core);
    assert!(!s.core.urgent(), "an empty batch waits for nothing");
    // A task without a barrier: its release and timers are nothing to wait for.
    let c = attempt(2);
    for p in [Phase::Initializing, Phase::SetupDone, Phase::Running] {
        s.core.handle_link(phase(c.clone(), p));
    }
    assert_eq!(s.core.pending(), 3);
    assert!(!s.core.urgent(), "phases alone may wait");
    s.core.handle_link(exited(c.clone(), 0));
    assert!(
        !s.core.urgent(),
        "c's exit decides nothing anyone acts on: it waits with the phases"
    );
    s.backend.take();
    s.core.dispatch();
    let acks = |sent: &[ToAgent]| {
        keys(sent, |m| match m {
            ToAgent::Ack { key } => Some(key),
            _ => None,
        })
    };
    assert!(
        acks(&s.backend.take()).is_empty(),
        "an exit is acknowledged only once committed"
    );
    let commits = commit(&mut s.core);
    assert_eq!(
        commits[0].events.len(),
        4,
        "the phases and the exit go in one commit"
    );
    let sent = s.backend.take();
    assert_eq!(acks(&sent), vec![c], "acknowledged with its commit");
    let released = sent
        .iter()
        .filter(|m| matches!(m, ToAgent::Release { .. }))
        .count();
    assert_eq!(released, 0, "no barrier held it: no release to send");
    // a's exit starts b: that launch waits for this commit, so it is made at once.
    s.core.handle_link(phase(attempt(0), Phase::Running));
    s.core.handle_link(exited(attempt(0), 0));
    assert!(s.core.urgent(), "an exit that launches the next task");
}

#[test]
fn a_release_that_a_barrier_waits_for_is_committed_at_once() {
    let mut s = setup(4.0);
    let wf = WorkflowBuilder::new("wf")
        .group(
            osmo_engine::testkit::GroupBuilder::new("g")
                .task("a")
                .task("b"),
        )
        .build();
    let (engine, commands) = WorkflowState::new("wf-1".into(), wf, Rules::default(), now_ms());
    add(&mut s.core, engine, commands);
    s.core.handle_link(hello(vec![]));
    commit(&mut s.core);
    let member = |task| AttemptKey {
        workflow_id: "wf-1".into(),
        attempt: AttemptId {
            task: TaskKey { group: 0, task },
            retry_id: 0,
        },
    };
    s.core.handle_link(phase(member(0), Phase::SetupDone));
    assert!(
        !s.core.urgent(),
        "one of two at the barrier: nothing decided"
    );
    s.core.handle_link(phase(member(1), Phase::SetupDone));
    assert!(s.core.urgent(), "both wait at the barrier for this release");
    s.backend.take();
    commit(&mut s.core);
    let released: Vec<AttemptKey> = s
        .backend
        .take()
        .into_iter()
        .filter_map(|m| match m {
            ToAgent::Release { key } => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(released, [member(0), member(1)]);
}

fn prepared(sent: &[ToAgent]) -> Vec<AttemptKey> {
    keys(sent, |m| match m {
        ToAgent::Prepare(l) => Some(&l.key),
        _ => None,
    })
}

/// The first launch among `sent` (`Launch`, or `Prepare` when `ahead`), whole.
fn first_launch(sent: &[ToAgent], ahead: bool) -> crate::proto::Launch {
    sent.iter()
        .find_map(|m| match m {
            ToAgent::Launch(l) if !ahead => Some((**l).clone()),
            ToAgent::Prepare(l) if ahead => Some((**l).clone()),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "no {} in {sent:?}",
                if ahead { "Prepare" } else { "Launch" }
            )
        })
}

fn stopped(sent: &[ToAgent]) -> Vec<AttemptKey> {
    keys(sent, |m| match m {
        ToAgent::Stop { key } => Some(key),
        _ => None,
    })
}

#[test]
fn the_output_directory_is_made_by_the_server_only_for_a_backend_that_does_not_make_it() {
    for makes_output in [false, true] {
        let mut s = setup_with(FakeBackend {
            makes_output,
            ..FakeBackend::with_cpus(1.0)
        });
        let (engine, commands) = workflow("wf-1", &["a"]);
        add(&mut s.core, engine, commands);
        s.core.handle_link(hello(vec![]));
        commit(&mut s.core);
        let output = first_launch(&s.backend.take(), false).output_dir;
        // Left to the runtime: no `mkdir` on the core's thread, which
        // every launch and exit goes through.
        assert_eq!(output.is_dir(), !makes_output, "{output:?}");
    }
}

#[test]
fn the_next_queued_attempts_are_set_up_ahead_one_per_cpu_and_launched_when_it_frees() {
    let mut s = setup_with(FakeBackend {
        ahead: true,
        ..FakeBackend::with_cpus(1.0)
    });
    let (engine, commands) = workflow("wf-1", &["a", "b", "c"]);
    add(&mut s.core, engine, commands);
    s.core.handle_link(hello(vec![]));
    commit(&mut s.core);
    let sent = s.backend.take();
    assert_eq!(launched(&sent), [attempt(0)], "one CPU: one runs");
    assert_eq!(prepared(&sent), [attempt(1)], "and the next one is set up");
    let mut set_up = first_launch(&sent, true);

    // Nothing of the pool is held by it: the engine still has b queued.
    s.core.dispatch();
    assert!(s.backend.take().is_empty(), "each is set up once");

    s.core.handle_link(exited(attempt(0), 0));
    commit(&mut s.core);
    let sent = s.backend.take();
    assert_eq!(launched(&sent), [attempt(1)], "b launches where it waits");
    assert_eq!(prepared(&sent), [attempt(2)], "and c is set up next");
    // The agent runs what it set up only for the same launch.
    let mut launch = first_launch(&sent, false);
    assert!(launch.same_as_prepared(&set_up));
    set_up.gang += 1;
    assert!(
        launch.same_as_prepared(&set_up),
        "how many go together is not the attempt's"
    );
    launch
        .environment
        .insert("SECRET".into(), "rotated meanwhile".into());
    assert!(!launch.same_as_prepared(&set_up));

    // A cancel stops c's sandbox, queued though it is.
    s.core.cancel("wf-1", "me".into(), None);
    commit(&mut s.core);
    let sent = s.backend.take();
    assert!(stopped(&sent).contains(&attempt(2)), "{sent:?}");
    assert!(launched(&sent).is_empty() && prepared(&sent).is_empty());
}

#[test]
fn a_backend_that_does_not_set_up_ahead_is_sent_no_preparation() {
    let mut s = setup(1.0);
    let (engine, commands) = workflow("wf-1", &["a", "b"]);
    add(&mut s.core, engine, commands);
    s.core.handle_link(hello(vec![]));
    commit(&mut s.core);
    let sent = s.backend.take();
    assert_eq!(launched(&sent), [attempt(0)]);
    assert!(prepared(&sent).is_empty(), "{sent:?}");
}

#[test]
fn a_reconnected_agent_is_sent_its_preparations_again() {
    let mut s = setup_with(FakeBackend {
        ahead: true,
        ..FakeBackend::with_cpus(1.0)
    });
    let (engine, commands) = workflow("wf-1", &["a", "b"]);
    add(&mut s.core, engine, commands);
    s.core.handle_link(hello(vec![]));
    commit(&mut s.core);
    assert_eq!(prepared(&s.backend.take()), [attempt(1)]);
    // The agent dropped b's sandbox when it lost the server; a still runs.
    s.core
        .handle_link(hello(vec![(attempt(0), Phase::Running)]));
    s.core.dispatch();
    assert_eq!(prepared(&s.backend.take()), [attempt(1)]);
}
