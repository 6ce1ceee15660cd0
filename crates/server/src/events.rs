//! `GET /api/workflow/{id}/events`: a workflow's history, one line per
//! event, as OSMO's `osmo workflow events` prints it — ours says more: what
//! each backend reported (placement, set-up, runs, exits with every code and
//! its source) and what the engine decided about each exit and why (the
//! attempt's status and message, which never change once final).

use osmo_engine::{Attempt, AttemptId, Event, TaskKey, WorkflowState};

use super::docs::rfc3339;

/// The lines for `events` (seq, at, body), optionally of one task and one
/// attempt of it.
pub fn lines(
    engine: &WorkflowState,
    submitted: &str,
    events: &[osmo_store::EventRecord],
    task: Option<&str>,
    retry_id: Option<u32>,
) -> String {
    let workflow = engine.workflow();
    let name_of = |key: TaskKey| -> &str {
        workflow
            .groups
            .get(key.group as usize)
            .and_then(|g| g.tasks.get(key.task as usize))
            .map_or("?", |t| t.name.as_str())
    };
    let wanted = |a: &AttemptId| {
        task.is_none_or(|t| t == name_of(a.task)) && retry_id.is_none_or(|r| r == a.retry_id)
    };
    let attempt =
        |a: &AttemptId| -> Option<&Attempt> { engine.attempts(a.task).get(a.retry_id as usize) };
    let mut out = String::new();
    let mut line = |at: i64, who: &str, text: &str| {
        let stamp = stamp(at);
        out.push_str(&format!("{stamp} [{who}] {text}\n"));
    };
    if task.is_none() {
        line(
            engine.submit_time().unwrap_or_default() as i64,
            "workflow",
            &format!("submitted {submitted}"),
        );
    }
    for record in events {
        let Ok(event) = serde_json::from_value::<Event>(record.body.clone()) else {
            continue;
        };
        let at = record.at;
        match &event {
            Event::Initializing {
                attempt: a, node, ..
            } if wanted(a) => {
                let who = format!("{} retry-{}", name_of(a.task), a.retry_id);
                let place = node.as_deref().unwrap_or("its node");
                line(at, &who, &format!("placed on {place}; set-up begins"));
            }
            Event::SetupDone { attempt: a } if wanted(a) => {
                let who = format!("{} retry-{}", name_of(a.task), a.retry_id);
                line(at, &who, "set up; waiting at the group barrier");
            }
            Event::Running { attempt: a } if wanted(a) => {
                let who = format!("{} retry-{}", name_of(a.task), a.retry_id);
                line(at, &who, "command started");
            }
            Event::RunStopped { attempt: a, codes } if wanted(a) => {
                let who = format!("{} retry-{}", name_of(a.task), a.retry_id);
                let code = codes.iter().map(|c| c.code).max();
                let why = attempt(a)
                    .and_then(|x| x.runs.iter().rev().find_map(|r| r.stopped_because.clone()))
                    .unwrap_or_else(|| "restarted in place".to_string());
                let code = code.map_or("no code".to_string(), |c| format!("exit code {c}"));
                line(at, &who, &format!("command stopped ({code}): {why}"));
            }
            Event::Exited { attempt: a, codes } if wanted(a) => {
                let who = format!("{} retry-{}", name_of(a.task), a.retry_id);
                let listed: Vec<String> = codes
                    .iter()
                    .map(|c| format!("{} ({:?})", c.code, c.source).to_lowercase())
                    .collect();
                let mut text = format!(
                    "exited with {}",
                    if listed.is_empty() {
                        "no code".to_string()
                    } else {
                        listed.join(", ")
                    }
                );
                if let Some(x) = attempt(a).filter(|x| x.status.is_finished()) {
                    text.push_str(&format!(" → {}", x.status));
                    if let Some(m) = &x.failure_message {
                        text.push_str(&format!(": {m}"));
                    }
                }
                line(at, &who, &text);
            }
            Event::TimedOut { group, kind } if task.is_none() => {
                let name = workflow
                    .groups
                    .get(*group as usize)
                    .map_or("?", |g| g.name.as_str());
                line(
                    at,
                    &format!("group {name}"),
                    &format!("{kind:?} timeout fired").to_lowercase(),
                );
            }
            Event::Cancel { by, reason } if task.is_none() => {
                let text = match reason {
                    Some(r) => format!("canceled by {by}: {r}"),
                    None => format!("canceled by {by}"),
                };
                line(at, "workflow", &text);
            }
            _ => {}
        }
    }
    if task.is_none()
        && let Some(end) = engine.end_time()
    {
        line(
            end as i64,
            "workflow",
            &format!("finished {}", engine.status()),
        );
    }
    out
}

/// `2026/11/25 11:20:02.123`, UTC.
fn stamp(at_ms: i64) -> String {
    let text = rfc3339(Some(at_ms.max(0) as u64)).unwrap_or_default();
    text.replace('-', "/").replace('T', " ")
}
