//! Builds the API's workflow document from a workflow's engine state.

use osmo_engine::{Attempt, TaskKey, TaskStatus, WorkflowState};

use crate::api_types::{GroupDoc, RunDoc, TaskDoc, WorkflowDoc, WorkflowSummaryDoc};

pub fn rfc3339(ms: Option<u64>) -> Option<String> {
    let ms = ms?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    // OSMO writes UTC without a zone suffix (`2026-11-25T11:20:02.123`); its CLI reads no other.
    let text = humantime::format_rfc3339_millis(t).to_string();
    Some(text.trim_end_matches('Z').to_string())
}

/// What the document shows besides the engine's state.
pub struct DocMeta {
    pub id: String,
    pub pool: String,
    pub priority: String,
    pub submitted_by: String,
}

impl DocMeta {
    pub fn of(row: &osmo_store::WorkflowRow) -> DocMeta {
        DocMeta {
            id: row.id.clone(),
            pool: row.pool.clone(),
            priority: row.priority.clone(),
            submitted_by: row.submitted_by.clone(),
        }
    }
}

/// O(workflow): one pass over its groups and attempts.
pub fn workflow_doc(row: &DocMeta, engine: &WorkflowState, verbose: bool) -> WorkflowDoc {
    let workflow = engine.workflow();
    let mut downstream: Vec<Vec<String>> = vec![Vec::new(); workflow.groups.len()];
    for group in &workflow.groups {
        for &u in &group.upstream {
            downstream[u].push(group.name.clone());
        }
    }
    let groups = workflow
        .groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let mut tasks = Vec::new();
            for (t, spec) in group.tasks.iter().enumerate() {
                let attempts = engine.attempts(TaskKey {
                    group: g as u32,
                    task: t as u32,
                });
                let shown = if verbose {
                    attempts
                } else {
                    &attempts[attempts.len().saturating_sub(1)..]
                };
                tasks.extend(shown.iter().map(|a| task_doc(&spec.name, spec.lead, a)));
            }
            let remaining_upstream_groups = group
                .upstream
                .iter()
                .filter(|u| engine.group_status(**u as u32) != TaskStatus::Completed)
                .map(|u| workflow.groups[*u].name.clone())
                .collect();
            let downstream_groups = std::mem::take(&mut downstream[g]);
            GroupDoc {
                name: group.name.clone(),
                status: engine.group_status(g as u32).as_str().to_string(),
                failure_message: engine.group_failure_message(g as u32).map(str::to_string),
                remaining_upstream_groups,
                downstream_groups,
                tasks,
            }
        })
        .collect();
    let start = engine.start_time().or(engine.submit_time());
    let end = engine.end_time().unwrap_or_else(crate::now_ms);
    let (canceled_by, cancel_message) = match engine.canceled_by() {
        Some((by, why)) => (Some(by.to_string()), why.map(str::to_string)),
        None => (None, None),
    };
    WorkflowDoc {
        name: row.id.clone(),
        status: engine.status().as_str().to_string(),
        pool: row.pool.clone(),
        priority: row.priority.clone(),
        submitted_by: row.submitted_by.clone(),
        submit_time: rfc3339(engine.submit_time()),
        start_time: rfc3339(engine.start_time()),
        end_time: rfc3339(engine.end_time()),
        duration: start.map(|s| end.saturating_sub(s) as f64 / 1000.0),
        exec_timeout: workflow.timeout.exec.map(|d| d.as_secs_f64()),
        queue_timeout: workflow.timeout.queue.map(|d| d.as_secs_f64()),
        canceled_by,
        cancel_message,
        overview: format!("/api/workflow/{}", row.id),
        // Filled by the API from the store (they are not the engine's).
        labels: Default::default(),
        warnings: Vec::new(),
        tags: Vec::new(),
        groups,
    }
}

fn task_doc(name: &str, lead: bool, a: &Attempt) -> TaskDoc {
    TaskDoc {
        name: name.to_string(),
        retry_id: a.retry_id,
        status: a.status.as_str().to_string(),
        exit_code: a.exit_code,
        lead,
        failure_message: a.failure_message.clone(),
        exit_codes: a
            .codes
            .iter()
            .map(|c| serde_json::to_value(c).expect("serializes"))
            .collect(),
        exit_rule: a
            .rule
            .as_ref()
            .map(|r| serde_json::to_value(r).expect("serializes")),
        node_name: a.node.clone(),
        gpus: a.gpus.clone(),
        scheduling_time: rfc3339(a.scheduling_time),
        start_time: rfc3339(a.start_time),
        end_time: rfc3339(a.end_time),
        runs: a
            .runs
            .iter()
            .map(|r| RunDoc {
                start_time: rfc3339(Some(r.start_time)),
                end_time: rfc3339(r.end_time),
                exit_code: r.exit_code,
                stopped_because: r.stopped_because.clone(),
            })
            .collect(),
    }
}

pub fn summary_doc(row: &osmo_store::WorkflowSummary) -> WorkflowSummaryDoc {
    WorkflowSummaryDoc {
        name: row.id.clone(),
        status: row.status.clone(),
        pool: row.pool.clone(),
        priority: row.priority.clone(),
        submitted_by: row.submitted_by.clone(),
        user: row.submitted_by.clone(),
        overview: format!("/api/workflow/{}", row.id),
        submit_time: rfc3339(Some(row.submitted_at as u64)),
        end_time: rfc3339(row.finished_at.map(|t| t as u64)),
        labels: Default::default(),
        tags: Vec::new(),
    }
}

/// Each task's current attempt as a row of OSMO's task list (`GET
/// /api/task`): who, which workflow, its status and node, and what it asked
/// for (`cpu`, `gpu`, `memory` and `storage` in GiB, as OSMO counts them).
pub fn task_rows(meta: &DocMeta, engine: &WorkflowState) -> Vec<serde_json::Value> {
    let workflow = engine.workflow();
    let gib = |b: Option<u64>| b.map_or(0.0, |b| b as f64 / f64::from(1u32 << 30));
    let mut rows = Vec::new();
    for (g, group) in workflow.groups.iter().enumerate() {
        for (t, spec) in group.tasks.iter().enumerate() {
            let a = engine.current(TaskKey {
                group: g as u32,
                task: t as u32,
            });
            let r = workflow.resources.get(&spec.resource);
            rows.push(serde_json::json!({
                "user": meta.submitted_by,
                "workflow_id": meta.id,
                "workflow_uuid": meta.id,
                "task_name": spec.name,
                "group_name": group.name,
                "retry_id": a.retry_id,
                "status": a.status.as_str(),
                "pool": meta.pool,
                "priority": meta.priority,
                "node": a.node,
                "gpus": a.gpus,
                "start_time": rfc3339(a.start_time),
                "end_time": rfc3339(a.end_time),
                "exit_code": a.exit_code,
                "cpu": r.map_or(0.0, |r| r.cpu),
                "gpu": r.map_or(0, |r| r.gpu),
                "memory": gib(r.and_then(|r| r.memory_bytes)),
                "storage": gib(r.and_then(|r| r.storage_bytes)),
            }));
        }
    }
    rows
}
