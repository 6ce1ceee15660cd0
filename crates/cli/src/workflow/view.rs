//! Text views of the API's documents: a workflow with its attempts, and the
//! workflow list. Pure functions of the document and a [`Clock`], so they
//! are pinned by snapshot tests.

use comfy_table::Table;

use crate::output::{Clock, duration, or_dash, table, table_text};
use osmo_server::api_types::{GroupDoc, WorkflowDoc, WorkflowListDoc};

/// The header and the attempts table of `osmo workflow query`.
pub fn workflow_text(doc: &WorkflowDoc, clock: &Clock) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<12}: {value}\n"));
    field("Workflow ID", doc.name.clone());
    field("Status", doc.status.clone());
    field("Pool", format!("{} (priority {})", doc.pool, doc.priority));
    field(
        "Submitted",
        format!(
            "{} by {}",
            clock.time(doc.submit_time.as_deref()),
            doc.submitted_by
        ),
    );
    if !doc.labels.is_empty() {
        let labels: Vec<String> = doc.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        field("Labels", labels.join(", "));
    }
    if !doc.tags.is_empty() {
        field("Tags", doc.tags.join(", "));
    }
    if doc.start_time.is_some() {
        field("Started", clock.time(doc.start_time.as_deref()));
    }
    if doc.end_time.is_some() {
        field("Ended", clock.time(doc.end_time.as_deref()));
    }
    field(
        "Duration",
        doc.duration
            .map(duration)
            .unwrap_or_else(|| "-".to_string()),
    );
    if let Some(by) = &doc.canceled_by {
        let why = doc
            .cancel_message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        field("Canceled", format!("by {by}{why}"));
    }
    out.push('\n');
    out.push_str(&table_text(&tasks_table(doc, clock)));
    for group in doc.groups.iter().filter(|g| g.failure_message.is_some()) {
        out.push_str(&format!(
            "group {} {}: {}\n",
            group.name,
            group.status,
            group.failure_message.as_deref().unwrap_or_default()
        ));
    }
    out
}

/// One row per attempt shown (the latest of each task, or all with `verbose`).
pub fn tasks_table(doc: &WorkflowDoc, clock: &Clock) -> Table {
    let show_group = !doc.groups.iter().all(is_plain_task_group);
    let mut header = Vec::new();
    if show_group {
        header.push("Group");
    }
    header.extend([
        "Task",
        "Retry ID",
        "Status",
        "Exit Code",
        "Start",
        "Duration",
        "Message",
    ]);
    let mut t = table(header);
    for group in &doc.groups {
        for task in &group.tasks {
            let mut row = Vec::new();
            if show_group {
                row.push(group.name.clone());
            }
            let name = if show_group && task.lead && group.tasks.len() > 1 {
                format!("{} (lead)", task.name)
            } else {
                task.name.clone()
            };
            let seconds = clock.seconds(task.start_time.as_deref(), task.end_time.as_deref());
            row.extend([
                name,
                task.retry_id.to_string(),
                task.status.clone(),
                or_dash(task.exit_code),
                clock.time(task.start_time.as_deref()),
                seconds.map(duration).unwrap_or_else(|| "-".to_string()),
                message(task),
            ]);
            t.add_row(row);
        }
    }
    t
}

/// The attempt's message: its restarts in place, if any, then why it ended
/// (for a success, the exit-action rule that decided it; "-" for a plain
/// zero exit that no rule listed).
pub fn message(task: &osmo_server::api_types::TaskDoc) -> String {
    let reason = ended_because(task);
    let restarts: Vec<&str> = task
        .runs
        .iter()
        .filter_map(|r| r.stopped_because.as_deref())
        .collect();
    if task.runs.len() < 2 || restarts.is_empty() {
        return reason;
    }
    let last = restarts.last().copied().unwrap_or_default();
    let ran = format!("{} runs ({last})", task.runs.len());
    if reason == "-" {
        ran
    } else {
        format!("{ran}; {reason}")
    }
}

fn ended_because(task: &osmo_server::api_types::TaskDoc) -> String {
    let field = |k: &str| {
        task.exit_rule
            .as_ref()
            .and_then(|r| r.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let plain_success = task.status == "COMPLETED" && field("origin").as_deref() == Some("default");
    if plain_success {
        return "-".to_string();
    }
    if let Some(m) = &task.failure_message {
        return m.clone();
    }
    match (
        task.exit_code,
        field("action"),
        field("range"),
        field("origin"),
    ) {
        (Some(code), Some(action), Some(range), Some(origin)) => {
            format!("exit code {code} matched {action} {range} ({origin})")
        }
        _ => "-".to_string(),
    }
}

/// A group made by OSMO from a plain `tasks:` entry: one task, named `<task>-group`.
fn is_plain_task_group(group: &GroupDoc) -> bool {
    group.tasks.first().is_some_and(|first| {
        group.tasks.iter().all(|t| t.name == first.name)
            && group.name == format!("{}-group", first.name)
    })
}

/// The table of `osmo workflow list`.
pub fn list_text(list: &WorkflowListDoc, clock: &Clock) -> String {
    if list.workflows.is_empty() {
        return "No workflows found.\n".to_string();
    }
    let mut t = table([
        "Workflow ID",
        "Status",
        "Pool",
        "User",
        "Submitted",
        "Ended",
    ]);
    for w in &list.workflows {
        t.add_row([
            w.name.clone(),
            w.status.clone(),
            w.pool.clone(),
            w.submitted_by.clone(),
            clock.time(w.submit_time.as_deref()),
            clock.time(w.end_time.as_deref()),
        ]);
    }
    table_text(&t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use osmo_server::api_types::{TaskDoc, WorkflowSummaryDoc};

    fn task(
        name: &str,
        retry_id: u32,
        status: &str,
        exit_code: Option<u32>,
        message: Option<&str>,
    ) -> TaskDoc {
        TaskDoc {
            name: name.into(),
            retry_id,
            status: status.into(),
            exit_code,
            lead: true,
            failure_message: message.map(str::to_string),
            exit_codes: Vec::new(),
            exit_rule: None,
            node_name: Some("local".into()),
            gpus: vec![],
            scheduling_time: Some(format!("2026-03-01T10:00:0{retry_id}.000Z")),
            start_time: Some(format!("2026-03-01T10:00:0{retry_id}.500Z")),
            end_time: exit_code.map(|_| format!("2026-03-01T10:01:1{retry_id}.000Z")),
            runs: Vec::new(),
        }
    }

    #[test]
    fn a_success_decided_by_a_rule_shows_the_rule() {
        let mut t = task("example", 0, "COMPLETED", Some(16), None);
        assert_eq!(message(&t), "-");
        t.exit_rule =
            Some(serde_json::json!({"origin": "task", "action": "COMPLETE", "range": "16"}));
        assert_eq!(message(&t), "exit code 16 matched COMPLETE 16 (task)");
        t.failure_message = Some("kept as is".into());
        assert_eq!(message(&t), "kept as is");
    }

    fn group(name: &str, status: &str, tasks: Vec<TaskDoc>) -> GroupDoc {
        GroupDoc {
            name: name.into(),
            status: status.into(),
            failure_message: None,
            remaining_upstream_groups: Vec::new(),
            downstream_groups: Vec::new(),
            tasks,
        }
    }

    fn workflow(groups: Vec<GroupDoc>) -> WorkflowDoc {
        WorkflowDoc {
            name: "exit-actions-example-1".into(),
            status: "COMPLETED".into(),
            pool: "default".into(),
            priority: "NORMAL".into(),
            submitted_by: "alice".into(),
            submit_time: Some("2026-03-01T09:59:59.000Z".into()),
            start_time: Some("2026-03-01T10:00:00.500Z".into()),
            end_time: Some("2026-03-01T10:01:11.000Z".into()),
            duration: Some(70.5),
            exec_timeout: None,
            queue_timeout: None,
            canceled_by: None,
            cancel_message: None,
            overview: String::new(),
            labels: Default::default(),
            warnings: Vec::new(),
            tags: Vec::new(),
            groups,
        }
    }

    #[test]
    fn verbose_query_of_a_rescheduled_task() {
        let doc = workflow(vec![group(
            "example-group",
            "COMPLETED",
            vec![
                task(
                    "example",
                    0,
                    "RESCHEDULED",
                    Some(16),
                    Some("exit code 16 matched RESCHEDULE 11-20 (task); attempt 2 of 4 scheduled"),
                ),
                task("example", 1, "COMPLETED", Some(0), None),
            ],
        )]);
        insta::assert_snapshot!(workflow_text(
            &doc,
            &Clock::fixed_utc("2026-03-01T10:05:00Z")
        ));
    }

    #[test]
    fn groups_are_shown_when_a_group_has_several_tasks() {
        let mut client = task("client", 0, "RUNNING", None, None);
        client.lead = false;
        let mut doc = workflow(vec![group(
            "my_group",
            "RUNNING",
            vec![task("server", 0, "RUNNING", None, None), client],
        )]);
        doc.status = "RUNNING".into();
        doc.end_time = None;
        doc.canceled_by = Some("bob".into());
        doc.cancel_message = Some("wrong data".into());
        insta::assert_snapshot!(workflow_text(
            &doc,
            &Clock::fixed_utc("2026-03-01T10:00:30Z")
        ));
    }

    #[test]
    fn list() {
        let list = WorkflowListDoc {
            workflows: vec![
                WorkflowSummaryDoc {
                    name: "wf-2".into(),
                    status: "RUNNING".into(),
                    pool: "default".into(),
                    priority: "NORMAL".into(),
                    submitted_by: "alice".into(),
                    user: "alice".into(),
                    overview: String::new(),
                    submit_time: Some("2026-03-01T10:00:00Z".into()),
                    end_time: None,
                    labels: Default::default(),
                    tags: Vec::new(),
                },
                WorkflowSummaryDoc {
                    name: "wf-1".into(),
                    status: "FAILED".into(),
                    pool: "default".into(),
                    priority: "LOW".into(),
                    submitted_by: "bob".into(),
                    user: "bob".into(),
                    overview: String::new(),
                    submit_time: Some("2026-03-01T09:00:00Z".into()),
                    end_time: Some("2026-03-01T09:00:05Z".into()),
                    labels: Default::default(),
                    tags: Vec::new(),
                },
            ],
        };
        let clock = Clock::fixed_utc("2026-03-01T10:05:00Z");
        insta::assert_snapshot!(list_text(&list, &clock));
        assert_eq!(
            list_text(
                &WorkflowListDoc {
                    workflows: Vec::new()
                },
                &clock
            ),
            "No workflows found.\n"
        );
    }
}
