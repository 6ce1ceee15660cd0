//! A small test environment: one workflow, a clock, every command recorded,
//! every step checked.

use osmo_spec::model::Workflow;

use super::builder::code;
use super::check::Checker;
use crate::api::{
    Attempt, AttemptId, Command, Event, Millis, ReportedCode, TaskKey, TaskStatus, TimeoutKind,
};
use crate::decide::Rules;
use crate::state::WorkflowState;

/// Drives one [`WorkflowState`]. Every step round-trips the event, the
/// commands (and, with `check_serde`, the whole state) through JSON, runs the
/// [`Checker`], and panics (`apply`) or errs (`try_apply`) on a violation.
/// Helpers address a task's current attempt by the task's name.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub state: WorkflowState,
    /// The clock passed with every event; starts at 1,000,000.
    pub now: Millis,
    /// Every command so far, in order.
    pub log: Vec<Command>,
    /// Round-trip the whole state through JSON after every step (default true).
    pub check_serde: bool,
    /// Commands not yet taken with [`TestEnv::take`].
    pending: Vec<Command>,
    checker: Checker,
}

impl TestEnv {
    pub fn new(workflow: Workflow, rules: Rules) -> TestEnv {
        TestEnv::try_new(workflow, rules).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new(workflow: Workflow, rules: Rules) -> Result<TestEnv, String> {
        let now = 1_000_000;
        let (state, commands) =
            WorkflowState::new(format!("{}-1", workflow.name), workflow, rules, now);
        let checker = Checker::new(&state, &commands, now)?;
        Ok(TestEnv {
            state,
            now,
            log: commands.clone(),
            check_serde: true,
            pending: commands,
            checker,
        })
    }

    /// Applies `event` at the current time; returns its commands.
    pub fn apply(&mut self, event: Event) -> Vec<Command> {
        self.try_apply(event).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_apply(&mut self, event: Event) -> Result<Vec<Command>, String> {
        let event = roundtrip(&event)?;
        let mut out = Vec::new();
        self.state.apply(&event, self.now, &mut out);
        let out: Vec<Command> = out.iter().map(roundtrip).collect::<Result<_, _>>()?;
        self.checker
            .check(&self.state, Some(&event), &out, self.now)
            .map_err(|e| format!("after {event:?}: {e}"))?;
        if self.check_serde {
            self.check_state_serde()?;
        }
        self.log.extend(out.iter().cloned());
        self.pending.extend(out.iter().cloned());
        Ok(out)
    }

    /// The state survives JSON unchanged.
    pub fn check_state_serde(&self) -> Result<(), String> {
        let back = roundtrip(&self.state)?;
        if back != self.state {
            return Err("the state changed through JSON".to_string());
        }
        back.sanity_check()
    }

    /// The commands since the last `take`.
    pub fn take(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.pending)
    }

    pub fn advance(&mut self, ms: Millis) {
        self.now += ms;
    }

    pub fn key(&self, task: &str) -> TaskKey {
        let (g, t) = self
            .state
            .workflow()
            .find_task(task)
            .unwrap_or_else(|| panic!("no task {task}"));
        TaskKey {
            group: g as u32,
            task: t as u32,
        }
    }

    pub fn group(&self, name: &str) -> u32 {
        self.state
            .workflow()
            .groups
            .iter()
            .position(|g| g.name == name)
            .unwrap_or_else(|| panic!("no group {name}")) as u32
    }

    /// The task's attempt `retry_id`.
    pub fn id(&self, task: &str, retry_id: u32) -> AttemptId {
        AttemptId {
            task: self.key(task),
            retry_id,
        }
    }

    /// The task's current attempt.
    pub fn current_id(&self, task: &str) -> AttemptId {
        let key = self.key(task);
        AttemptId {
            task: key,
            retry_id: self.state.current(key).retry_id,
        }
    }

    pub fn current(&self, task: &str) -> &Attempt {
        self.state.current(self.key(task))
    }

    pub fn attempts(&self, task: &str) -> &[Attempt] {
        self.state.attempts(self.key(task))
    }

    pub fn status(&self, task: &str) -> TaskStatus {
        self.current(task).status
    }

    pub fn group_status(&self, name: &str) -> TaskStatus {
        self.state.group_status(self.group(name))
    }

    pub fn init(&mut self, task: &str) -> Vec<Command> {
        let attempt = self.current_id(task);
        self.apply(Event::Initializing {
            attempt,
            node: Some("node-1".to_string()),
            gpus: Vec::new(),
        })
    }

    pub fn setup_done(&mut self, task: &str) -> Vec<Command> {
        let attempt = self.current_id(task);
        self.apply(Event::SetupDone { attempt })
    }

    pub fn running(&mut self, task: &str) -> Vec<Command> {
        let attempt = self.current_id(task);
        self.apply(Event::Running { attempt })
    }

    /// Initializing then SetupDone.
    pub fn start(&mut self, task: &str) -> Vec<Command> {
        let mut out = self.init(task);
        out.extend(self.setup_done(task));
        out
    }

    /// Initializing, SetupDone and Running, for a task that needs no barrier.
    pub fn run(&mut self, task: &str) -> Vec<Command> {
        let mut out = self.start(task);
        out.extend(self.running(task));
        out
    }

    /// The current attempt exits with one code (its source from the code's range).
    pub fn exit(&mut self, task: &str, exit_code: u32) -> Vec<Command> {
        self.exit_codes(task, vec![code(exit_code)])
    }

    pub fn exit_codes(&mut self, task: &str, codes: Vec<ReportedCode>) -> Vec<Command> {
        let attempt = self.current_id(task);
        self.apply(Event::Exited { attempt, codes })
    }

    pub fn timeout(&mut self, group: &str, kind: TimeoutKind) -> Vec<Command> {
        let group = self.group(group);
        self.apply(Event::TimedOut { group, kind })
    }

    pub fn cancel(&mut self, by: &str, reason: Option<&str>) -> Vec<Command> {
        self.apply(Event::Cancel {
            by: by.to_string(),
            reason: reason.map(str::to_string),
        })
    }
}

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    value: &T,
) -> Result<T, String> {
    let json =
        serde_json::to_string(value).map_err(|e| format!("cannot serialize {value:?}: {e}"))?;
    let back: T =
        serde_json::from_str(&json).map_err(|e| format!("cannot read back {json}: {e}"))?;
    if back != *value {
        return Err(format!("{value:?} came back from JSON as {back:?}"));
    }
    Ok(back)
}
