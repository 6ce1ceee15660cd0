//! One attempt on its own thread: the runtime's controller in process, with a
//! supervisor that reports phases and logs and waits at the barrier.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use osmo_runtime::{StopHandle, Supervisor};
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};

use super::Shared;
use crate::results::Unsynced;
use osmo_proto::{AttemptKey, FromAgent, Launch, LogLine, Phase, Stream};

/// What the agent keeps about a running attempt.
pub(crate) struct AttemptHandle {
    gate: Arc<Gate>,
    stop: StopHandle,
    /// Set up ahead: the launch it was set up for; a launch that differs
    /// ([`Launch::same_as_prepared`]: a credential changed meanwhile, say)
    /// is set up anew.
    pub staged_for: Option<Arc<Launch>>,
    /// Its group's and task's names (the key holds their indices).
    pub group: String,
    pub task: String,
}

/// How long an attempt set up ahead waits for its launch before it goes
/// (its launch then sets it up anew): set-up ahead pays where tasks are
/// short, and no sandbox should sit idle behind long ones.
const STAGED_MAX_WAIT: Duration = Duration::from_secs(2);

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
    /// Set up ahead ([`ToAgent::Prepare`](osmo_proto::ToAgent::Prepare)) and
    /// not launched yet: it waits after its set-up, and what it would tell
    /// the server (phases, logs) waits here until the launch.
    staged: bool,
    held_logs: Vec<LogLine>,
    /// The last phase the server was told of. A phase that the next one
    /// follows at once (set-up done, where the command starts without a
    /// barrier) is not told on its own: the server records every phase up
    /// to the one reported, and [`finish`] tells what is left untold before
    /// the exit.
    told: Option<Phase>,
    /// The command starts as soon as it is set up and launched: no barrier
    /// to wait for; the gate is only closed by a stop or a restart in place.
    starts_at_once: bool,
}

impl GateState {
    /// Tells the server of the phase reached so far, unless it knows it.
    fn tell(&mut self, shared: &Shared, key: &AttemptKey) {
        let phase = self.phase.unwrap_or(Phase::Initializing);
        if self.told.is_none_or(|told| told < phase) {
            self.told = Some(phase);
            shared.set_phase(key, phase);
        }
    }
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

    /// Set up ahead and not launched yet.
    pub fn is_staged(&self) -> bool {
        self.gate.lock().staged
    }

    /// The launch of an attempt set up ahead: the server hears its phases
    /// so far and its log lines, and it goes on (to its barrier, if any).
    /// Called with the attempts' lock held, as [`finish`] checks.
    pub fn launch(&self, shared: &Shared, key: &AttemptKey) {
        let mut state = self.gate.lock();
        if !state.staged {
            return;
        }
        state.staged = false;
        // One message for the phases so far: the server records each phase
        // up to the one reported. None where the command starts now: its
        // start reports them all.
        if !(state.starts_at_once && state.phase == Some(Phase::SetupDone)) {
            state.tell(shared, key);
        }
        let lines = std::mem::take(&mut state.held_logs);
        if !lines.is_empty() {
            shared.send(FromAgent::Logs { batch: None, lines });
        }
        self.gate.changed.notify_all();
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
}

impl AttemptSupervisor {
    /// Ends the wait of an attempt set up ahead that was not launched in
    /// time: it leaves the list (a later launch sets it up anew) and ends
    /// silently. False when its launch came meanwhile. Under the attempts'
    /// lock, as a launch.
    fn give_up_staged(&self) -> bool {
        let mut attempts = self.shared.lock_attempts();
        let mut state = self.gate.lock();
        if !state.staged {
            return false;
        }
        state.open = Some(false);
        remove_if_this(&mut attempts, &self.key, &self.gate);
        true
    }
}

/// Takes the attempt out of the list if the entry under its key is still
/// this one (`gate`): a later launch of the same key may have replaced it.
fn remove_if_this(
    attempts: &mut std::collections::HashMap<AttemptKey, AttemptHandle>,
    key: &AttemptKey,
    gate: &Arc<Gate>,
) {
    if attempts
        .get(key)
        .is_some_and(|h| Arc::ptr_eq(&h.gate, gate))
    {
        attempts.remove(key);
    }
}

impl Supervisor for AttemptSupervisor {
    fn log(&self, stream: osmo_runtime::Stream, line: &str) {
        let line = LogLine {
            key: self.key.clone(),
            task: self.task.clone(),
            at_ms: osmo_proto::now_ms(),
            stream: Stream::from(stream),
            line: line.to_string(),
        };
        let mut state = self.gate.lock();
        if state.staged {
            state.held_logs.push(line);
            return;
        }
        drop(state);
        self.shared.send(FromAgent::Logs {
            batch: None,
            lines: vec![line],
        });
    }

    fn setup_done(&self) -> bool {
        let mut state = self.gate.lock();
        state.phase = Some(Phase::SetupDone);
        // Without a barrier the command starts now, and its start reports
        // this phase too; with one, the server must hear it to release it.
        if !state.staged && !state.starts_at_once {
            state.tell(&self.shared, &self.key);
        }
        // Set up ahead: wait for the launch (which reports this phase, or
        // leaves it to the command's start), a while at most.
        let deadline = Instant::now() + STAGED_MAX_WAIT;
        while state.staged && state.open != Some(false) {
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                if self.give_up_staged() {
                    return false;
                }
                state = self.gate.lock();
                continue;
            }
            state = self
                .gate
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if state.starts_at_once {
            // Nothing to wait for; only a stop (open: false) keeps the command from starting.
            return state.open != Some(false);
        }
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
        let mut state = self.gate.lock();
        state.phase = Some(Phase::Running);
        state.tell(&self.shared, &self.key);
    }

    fn run_stopped(&self, codes: &[ReportedCode]) {
        // The server takes the attempt back to set-up done: the next run's
        // start is news again.
        self.gate.lock().told = Some(Phase::SetupDone);
        self.shared.send(FromAgent::RunStopped {
            key: self.key.clone(),
            codes: codes.to_vec(),
        });
    }
}

/// Starts the attempt on a thread of its own (a kept one, see
/// [`crate::workers`]); `staged`: set up ahead, silent until launched.
pub(crate) fn spawn(shared: Arc<Shared>, launch: Launch, staged: bool) {
    let launch = Arc::new(launch);
    let gate = Arc::new(Gate::default());
    {
        let mut state = gate.lock();
        state.phase = Some(Phase::Initializing);
        state.staged = staged;
        state.starts_at_once = !launch.barrier;
    }
    let staged_for = staged.then(|| launch.clone());
    let stop = StopHandle::new();
    shared.lock_attempts().insert(
        launch.key.clone(),
        AttemptHandle {
            gate: gate.clone(),
            stop: stop.clone(),
            staged_for,
            group: launch.group.clone(),
            task: launch.task.clone(),
        },
    );
    if !staged {
        gate.lock().tell(&shared, &launch.key);
    }
    let key = launch.key.clone();
    let spawned = shared.workers.run({
        let shared = shared.clone();
        let gate = gate.clone();
        move || run(shared, launch, gate, stop)
    });
    if let Err(e) = spawned {
        let detail = format!("the agent could not start a thread: {e}");
        let code = ReportedCode {
            code: well_known::BACKEND_ERROR,
            source: CodeSource::Service,
            detail: Some(detail),
        };
        make_durable(finish(&shared, &key, vec![code], &gate), &key);
    }
}

fn run(shared: Arc<Shared>, launch: Arc<Launch>, gate: Arc<Gate>, stop: StopHandle) {
    let scratch = shared.scratch.take();
    let mut spec = launch.attempt_spec(scratch.clone());
    let supervisor = AttemptSupervisor {
        shared: shared.clone(),
        key: launch.key.clone(),
        task: launch.task.clone(),
        gate: gate.clone(),
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
    // Reported first: the scratch space's removal is off the attempt's
    // critical path. Given back before the result is made durable: the
    // server's answer (the next attempt, often) must find this scratch
    // directory readied, with its kept root and the init that stayed in it,
    // not the pool's next one, whose init would end for a new one.
    let unsynced = finish(&shared, &launch.key, outcome.codes, &gate);
    shared.scratch.give_back(scratch);
    make_durable(unsynced, &launch.key);
}

/// Reports the attempt's end to the server, with its result written to
/// the journal; the caller makes it durable ([`make_durable`]).
fn finish(
    shared: &Shared,
    key: &AttemptKey,
    codes: Vec<ReportedCode>,
    gate: &Arc<Gate>,
) -> Option<Unsynced> {
    {
        // Set up ahead and never launched (stopped, or its set-up failed):
        // the server queues it still and knows nothing of this try; a
        // launch sets it up again. Decided under the attempts' lock, which
        // a launch holds too.
        let mut attempts = shared.lock_attempts();
        let mut state = gate.lock();
        if state.staged {
            remove_if_this(&mut attempts, key, gate);
            return None;
        }
        // A phase not told because the command was to start at once (it
        // did not: stopped, or it could not start) is told before the end.
        state.tell(shared, key);
    }
    let msg = FromAgent::Exited {
        key: key.clone(),
        codes,
    };
    let kept = shared
        .results
        .keep(&msg)
        .map_err(|e| cannot_keep(key, e))
        .ok();
    shared.lock_attempts().remove(key);
    // Sent before the journal's sync, which runs while it travels: the
    // server acts on it only once its own commit holds it, and the next
    // launch on the CPUs it frees does not wait for this disk.
    shared.send(msg);
    kept
}

/// Waits until the journal holds the result [`finish`] wrote.
fn make_durable(unsynced: Option<Unsynced>, key: &AttemptKey) {
    if let Some(unsynced) = unsynced {
        let _ = unsynced.sync().map_err(|e| cannot_keep(key, e));
    }
}

fn cannot_keep(key: &AttemptKey, e: std::io::Error) {
    eprintln!(
        "osmo agent: cannot keep the result of {}: {e}",
        key.file_stem()
    )
}

/// The port of a server URL on this host's loopback (`http://127.0.0.1:8000`).
fn loopback_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let host_port = rest.split('/').next()?;
    let (host, port) = host_port.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost").then(|| port.parse().ok())?
}
