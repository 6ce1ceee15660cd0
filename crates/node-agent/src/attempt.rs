//! One attempt on its own thread: the runtime's controller in process, with a
//! supervisor that reports phases and logs and waits at the barrier.

use std::sync::{Arc, Condvar, Mutex};

use osmo_runtime::{StopHandle, Supervisor};
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};

use super::Shared;
use osmo_proto::{AttemptKey, FromAgent, Launch, LogLine, Phase, Stream};

/// What the agent keeps about a running attempt.
pub(crate) struct AttemptHandle {
    gate: Arc<Gate>,
    stop: StopHandle,
    /// Its group's and task's names (the key holds their indices).
    pub group: String,
    pub task: String,
}

/// The barrier gate: set once, to go (true) or abort (false).
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    phase: Option<Phase>,
    open: Option<bool>,
}

impl AttemptHandle {
    pub fn phase(&self) -> Phase {
        self.gate.lock().phase.unwrap_or(Phase::Initializing)
    }

    /// How to enter it (`osmo workflow exec`, `port-forward`) while it runs.
    pub fn entry(&self) -> Option<osmo_runtime::enter::Entry> {
        self.stop.entry()
    }

    pub fn release(&self) {
        self.gate.open(true);
    }

    pub fn stop(&self) {
        self.gate.open(false);
        self.stop.stop();
    }

    /// Restart in place: back to the barrier (a later `release` opens it
    /// again), and the runtime stops the running command.
    pub fn restart(&self, reason: &str) {
        self.gate.close_again();
        self.stop.restart(reason);
    }
}

impl Gate {
    fn open(&self, go: bool) {
        let mut state = self.lock();
        if state.open.is_none() || !go {
            state.open = Some(go);
        }
        self.changed.notify_all();
    }

    /// Closes an opened gate again (a restart in place); an abort stays.
    fn close_again(&self) {
        let mut state = self.lock();
        if state.open == Some(true) {
            state.open = None;
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.lock().phase = Some(phase);
    }

    /// The state, also after a panic elsewhere: one attempt's thread must not poison the agent.
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct AttemptSupervisor {
    shared: Arc<Shared>,
    key: AttemptKey,
    task: String,
    gate: Arc<Gate>,
    /// False: no barrier to wait for; the gate is only closed by a stop or
    /// a restart in place.
    barrier: bool,
}

impl Supervisor for AttemptSupervisor {
    fn log(&self, stream: osmo_runtime::Stream, line: &str) {
        let stream = Stream::from(stream);
        self.shared.send(FromAgent::Logs {
            batch: None,
            lines: vec![LogLine {
                key: self.key.clone(),
                task: self.task.clone(),
                at_ms: osmo_proto::now_ms(),
                stream,
                line: line.to_string(),
            }],
        });
    }

    fn setup_done(&self) -> bool {
        self.gate.set_phase(Phase::SetupDone);
        self.shared.set_phase(&self.key, Phase::SetupDone);
        if !self.barrier {
            // Nothing to wait for; only a stop (open: false) keeps the command from starting.
            return self.gate.lock().open != Some(false);
        }
        let mut state = self.gate.lock();
        while state.open.is_none() {
            state = self
                .gate
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.open == Some(true)
    }

    fn started(&self) {
        self.gate.set_phase(Phase::Running);
        self.shared.set_phase(&self.key, Phase::Running);
    }

    fn run_stopped(&self, codes: &[ReportedCode]) {
        self.shared.send(FromAgent::RunStopped {
            key: self.key.clone(),
            codes: codes.to_vec(),
        });
    }
}

/// Starts the attempt on a thread of its own (a kept one, see [`crate::workers`]).
pub(crate) fn spawn(shared: Arc<Shared>, launch: Launch) {
    let gate = Arc::new(Gate::default());
    gate.set_phase(Phase::Initializing);
    let stop = StopHandle::new();
    shared.lock_attempts().insert(
        launch.key.clone(),
        AttemptHandle {
            gate: gate.clone(),
            stop: stop.clone(),
            group: launch.group.clone(),
            task: launch.task.clone(),
        },
    );
    shared.set_phase(&launch.key, Phase::Initializing);
    let key = launch.key.clone();
    let spawned = shared.workers.run({
        let shared = shared.clone();
        move || run(shared, launch, gate, stop)
    });
    if let Err(e) = spawned {
        let detail = format!("the agent could not start a thread: {e}");
        let code = ReportedCode {
            code: well_known::BACKEND_ERROR,
            source: CodeSource::Service,
            detail: Some(detail),
        };
        finish(&shared, &key, vec![code]);
    }
}

fn run(shared: Arc<Shared>, launch: Launch, gate: Arc<Gate>, stop: StopHandle) {
    let scratch = shared.scratch.take();
    let mut spec = launch.attempt_spec(scratch.clone());
    let supervisor = AttemptSupervisor {
        shared: shared.clone(),
        key: launch.key.clone(),
        task: launch.task.clone(),
        gate,
        barrier: launch.barrier,
    };
    // The workflow's own network, when the pool gives it one and it can be made.
    let mut joined = None;
    if launch.network.is_some() && launch.runtime == osmo_spec::config::RuntimeKind::Docker {
        // The Docker runtime puts the container in its workflow's network.
        spec.container_network = true;
    } else if let Some(names) = &launch.network {
        let port = launch
            .environment
            .get("OSMO_URL")
            .and_then(|url| loopback_port(url));
        match shared
            .networks
            .join(&launch.key.workflow_id, names, port, &shared.state_dir)
        {
            Ok((net, task_net)) => {
                spec.network = Some(task_net);
                joined = Some(net);
            }
            Err(e) => supervisor.log(
                osmo_runtime::Stream::Osmo,
                &format!("no network of its own ({e}); the task uses the host's"),
            ),
        }
    }
    let runtime = osmo_runtime::for_kind(launch.runtime);
    let outcome = osmo_runtime::run_with_data(runtime, &spec, &supervisor, &stop);
    if let Some(net) = joined {
        shared.networks.leave(&launch.key.workflow_id, &net);
    }
    // Reported first: the scratch space's removal is off the attempt's critical path.
    finish(&shared, &launch.key, outcome.codes);
    shared.scratch.give_back(scratch);
}

fn finish(shared: &Shared, key: &AttemptKey, codes: Vec<ReportedCode>) {
    let msg = FromAgent::Exited {
        key: key.clone(),
        codes,
    };
    if let Err(e) = shared.results.keep(&msg) {
        eprintln!(
            "osmo agent: cannot keep the result of {}: {e}",
            key.file_stem()
        );
    }
    shared.lock_attempts().remove(key);
    shared.send(msg);
}

/// The port of a server URL on this host's loopback (`http://127.0.0.1:8000`).
fn loopback_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let host_port = rest.split('/').next()?;
    let (host, port) = host_port.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost").then(|| port.parse().ok())?
}
