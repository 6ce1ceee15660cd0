//! Resolved workflows built in code, as the spec loader would produce them.

use std::collections::BTreeMap;
use std::time::Duration;

use osmo_spec::codes::{CodeList, CodeSource, ExitRule};
use osmo_spec::model::{Group, Input, Resource, Task, Timeouts, Workflow};

use crate::api::{Action, ExitActions, ReportedCode};

/// Exit actions from `(action, "codes")` pairs. Panics on a bad code list.
pub fn actions(list: &[(Action, &str)]) -> ExitActions {
    ExitActions {
        rules: list
            .iter()
            .map(|(action, text)| ExitRule {
                action: *action,
                codes: CodeList::parse(text)
                    .unwrap_or_else(|e| panic!("bad code list {text:?}: {e}")),
            })
            .collect(),
    }
}

/// A reported code with the source the seed's tables give it.
pub fn code(code: u32) -> ReportedCode {
    let source = match code {
        0..=255 => CodeSource::User,
        256..=999 => CodeSource::Init,
        1000..=1999 => CodeSource::Preflight,
        2000..=2999 => CodeSource::Runtime,
        3000..=3999 => CodeSource::Service,
        _ => CodeSource::Unknown,
    };
    ReportedCode {
        code,
        source,
        detail: None,
    }
}

/// A task with nothing but a name (image `ubuntu`, command `true`).
pub fn task(name: &str) -> Task {
    Task {
        name: name.to_string(),
        image: "ubuntu".to_string(),
        command: vec!["true".to_string()],
        args: Vec::new(),
        lead: false,
        environment: BTreeMap::new(),
        files: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        exit_actions: ExitActions::default(),
        resource: "default".to_string(),
        credentials: BTreeMap::new(),
        checkpoint: Vec::new(),
        privileged: false,
        host_network: false,
        volume_mounts: Vec::new(),
    }
}

/// One group. Defaults as in a spec: barrier on, ignoreNonleadStatus on,
/// the first task leads unless [`GroupBuilder::lead`] says otherwise.
#[derive(Debug, Clone)]
pub struct GroupBuilder {
    name: String,
    tasks: Vec<Task>,
    lead: Option<String>,
    barrier: bool,
    ignore_nonlead_status: bool,
    after: Vec<String>,
}

impl GroupBuilder {
    pub fn new(name: &str) -> GroupBuilder {
        GroupBuilder {
            name: name.to_string(),
            tasks: Vec::new(),
            lead: None,
            barrier: true,
            ignore_nonlead_status: true,
            after: Vec::new(),
        }
    }

    pub fn task(self, name: &str) -> GroupBuilder {
        self.task_with(name, &[])
    }

    pub fn task_with(mut self, name: &str, exit_actions: &[(Action, &str)]) -> GroupBuilder {
        let mut t = task(name);
        t.exit_actions = actions(exit_actions);
        self.tasks.push(t);
        self
    }

    /// Adds a task as given.
    pub fn spec(mut self, task: Task) -> GroupBuilder {
        self.tasks.push(task);
        self
    }

    pub fn lead(mut self, name: &str) -> GroupBuilder {
        self.lead = Some(name.to_string());
        self
    }

    pub fn barrier(mut self, on: bool) -> GroupBuilder {
        self.barrier = on;
        self
    }

    pub fn ignore_nonlead_status(mut self, on: bool) -> GroupBuilder {
        self.ignore_nonlead_status = on;
        self
    }

    /// Depends on these groups or on the groups owning these tasks.
    pub fn after(mut self, names: &[&str]) -> GroupBuilder {
        self.after.extend(names.iter().map(|s| s.to_string()));
        self
    }
}

/// A workflow, group by group, in file order.
#[derive(Debug, Clone)]
pub struct WorkflowBuilder {
    name: String,
    groups: Vec<GroupBuilder>,
    timeout: Timeouts,
}

impl WorkflowBuilder {
    pub fn new(name: &str) -> WorkflowBuilder {
        WorkflowBuilder {
            name: name.to_string(),
            groups: Vec::new(),
            timeout: Timeouts::default(),
        }
    }

    /// A plain task: a one-task group named `<task>-group`.
    pub fn task(self, name: &str, exit_actions: &[(Action, &str)]) -> WorkflowBuilder {
        self.group(GroupBuilder::new(&format!("{name}-group")).task_with(name, exit_actions))
    }

    /// A plain task depending on the named tasks or groups (`inputs: [{task}]`).
    pub fn task_after(
        self,
        name: &str,
        exit_actions: &[(Action, &str)],
        after: &[&str],
    ) -> WorkflowBuilder {
        self.group(
            GroupBuilder::new(&format!("{name}-group"))
                .task_with(name, exit_actions)
                .after(after),
        )
    }

    pub fn group(mut self, group: GroupBuilder) -> WorkflowBuilder {
        self.groups.push(group);
        self
    }

    pub fn exec_timeout(mut self, timeout: Duration) -> WorkflowBuilder {
        self.timeout.exec = Some(timeout);
        self
    }

    pub fn queue_timeout(mut self, timeout: Duration) -> WorkflowBuilder {
        self.timeout.queue = Some(timeout);
        self
    }

    /// The resolved workflow. Panics on an unknown dependency or lead name,
    /// or on an empty group (what the loader refuses).
    pub fn build(self) -> Workflow {
        let owner = |name: &str| -> usize {
            self.groups
                .iter()
                .position(|g| g.name == name || g.tasks.iter().any(|t| t.name == name))
                .unwrap_or_else(|| panic!("no group or task named {name}"))
        };
        let mut groups = Vec::with_capacity(self.groups.len());
        for builder in &self.groups {
            assert!(
                !builder.tasks.is_empty(),
                "group {} has no task",
                builder.name
            );
            let lead = match &builder.lead {
                Some(name) => builder
                    .tasks
                    .iter()
                    .position(|t| &t.name == name)
                    .unwrap_or_else(|| panic!("no task {name} in group {}", builder.name)),
                None => 0,
            };
            let mut upstream: Vec<usize> = builder.after.iter().map(|n| owner(n)).collect();
            upstream.sort_unstable();
            upstream.dedup();
            let mut tasks = builder.tasks.clone();
            for (i, t) in tasks.iter_mut().enumerate() {
                t.lead = i == lead;
                for name in &builder.after {
                    if self
                        .groups
                        .iter()
                        .any(|g| g.tasks.iter().any(|t| &t.name == name))
                    {
                        t.inputs.push(Input::Task {
                            task: name.clone(),
                            regex: None,
                        });
                    }
                }
            }
            groups.push(Group {
                name: builder.name.clone(),
                tasks,
                lead,
                barrier: builder.barrier,
                ignore_nonlead_status: builder.ignore_nonlead_status,
                upstream,
            });
        }
        Workflow {
            name: self.name,
            labels: BTreeMap::new(),
            resources: BTreeMap::from([("default".to_string(), Resource::default())]),
            timeout: self.timeout,
            groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_groups_leads_and_edges() {
        let wf = WorkflowBuilder::new("wf")
            .task("a", &[(Action::Complete, "0,16")])
            .group(
                GroupBuilder::new("g")
                    .task("x")
                    .task("y")
                    .lead("y")
                    .after(&["a"])
                    .ignore_nonlead_status(false),
            )
            .task_after("z", &[], &["g"])
            .build();
        assert_eq!(wf.groups.len(), 3);
        assert_eq!(wf.groups[0].name, "a-group");
        assert!(wf.groups[0].tasks[0].lead);
        assert_eq!(wf.groups[1].lead, 1);
        assert!(!wf.groups[1].tasks[0].lead && wf.groups[1].tasks[1].lead);
        assert_eq!(wf.groups[1].upstream, vec![0]);
        assert!(!wf.groups[1].ignore_nonlead_status);
        assert_eq!(wf.groups[2].upstream, vec![1]);
        assert_eq!(
            wf.groups[0].tasks[0]
                .exit_actions
                .lookup(16)
                .map(|(r, _)| r.action),
            Some(Action::Complete)
        );
        assert_eq!(code(1001).source, CodeSource::Preflight);
    }
}
