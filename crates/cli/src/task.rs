//! `osmo task list`: `GET /api/task` — the current attempt of each task of
//! the running and pending workflows (or of one workflow), where it runs.

use serde_json::Value;

use crate::Outcome;
use crate::output::{Clock, FormatArgs, print_json, table, table_text};
use crate::workflow::{ServiceArgs, TASK_STATUSES};

#[derive(Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Tasks of running and pending workflows, or of one workflow.
    List(TaskListArgs),
}

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Example:\n  osmo task list --status RUNNING --pool default")]
pub struct TaskListArgs {
    /// Only the tasks of this workflow (finished ones too).
    #[arg(long, short = 'w', value_name = "ID")]
    pub workflow: Option<String>,
    /// Only tasks in this status (repeatable).
    #[arg(long, short = 's', value_name = "STATUS", ignore_case = true,
          value_parser = clap::builder::PossibleValuesParser::new(TASK_STATUSES))]
    pub status: Vec<String>,
    /// Only tasks of this pool (repeatable).
    #[arg(long, short = 'p', value_name = "POOL")]
    pub pool: Vec<String>,
    /// Only tasks on this node (repeatable).
    #[arg(long, value_name = "NODE")]
    pub node: Vec<String>,
    /// Only tasks of this user's workflows (repeatable).
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Vec<String>,
    /// Every user's tasks (a server with `auth: tokens` shows yours by default).
    #[arg(long, short = 'a', conflicts_with = "user")]
    pub all_users: bool,
    /// How many tasks to show (at most 1000).
    #[arg(long, short = 'c', value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// Also what each task asked for: CPUs, GPUs, memory and storage.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(command: TaskCommand) -> anyhow::Result<Outcome> {
    let TaskCommand::List(args) = command;
    let mut query: Vec<(&str, String)> = vec![("limit", args.count.to_string())];
    if let Some(w) = &args.workflow {
        query.push(("workflow_id", w.clone()));
    }
    query.extend(
        args.status
            .iter()
            .map(|s| ("statuses", s.to_ascii_uppercase())),
    );
    query.extend(args.pool.iter().map(|p| ("pools", p.clone())));
    query.extend(args.node.iter().map(|n| ("nodes", n.clone())));
    query.extend(args.user.iter().map(|u| ("users", u.clone())));
    if args.all_users {
        query.push(("all_users", "true".to_string()));
    }
    let answer = args.service.client()?.get_json(&["api", "task"], &query)?;
    if args.format.json() {
        print_json(&answer)?;
    } else {
        print!("{}", tasks_text(&answer, &Clock::system(), args.verbose));
    }
    Ok(Outcome::Success)
}

fn tasks_text(answer: &Value, clock: &Clock, verbose: bool) -> String {
    let mut header = vec![
        "Workflow", "Task", "Retry", "Status", "Pool", "Node", "GPUs", "Start",
    ];
    if verbose {
        header.extend(["CPU", "GPU", "Memory", "Storage"]);
    }
    let mut t = table(header);
    let tasks = answer["tasks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for task in tasks {
        let text = |k: &str| task[k].as_str().unwrap_or("-").to_string();
        let gpus: Vec<String> = task["gpus"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| g.to_string())
            .collect();
        let mut row = vec![
            text("workflow_id"),
            text("task_name"),
            task["retry_id"].to_string(),
            text("status"),
            text("pool"),
            text("node"),
            if gpus.is_empty() {
                "-".to_string()
            } else {
                gpus.join(",")
            },
            clock.time(task["start_time"].as_str()),
        ];
        if verbose {
            for k in ["cpu", "gpu", "memory", "storage"] {
                row.push(match &task[k] {
                    Value::Null => "-".to_string(),
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                });
            }
        }
        t.add_row(row);
    }
    let mut out = table_text(&t);
    if tasks.is_empty() {
        out = "No tasks.\n".to_string();
    } else if answer["more_entries"] == true {
        out += "(more tasks: raise --count)\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_row_names_its_workflow_node_and_gpus() {
        let answer = serde_json::json!({"more_entries": true, "tasks": [{
            "workflow_id": "train-3", "task_name": "worker", "retry_id": 1, "status": "RUNNING",
            "pool": "gpu", "node": "n7", "gpus": [0, 2], "start_time": "2026-11-25T11:20:02.123",
            "cpu": 4, "gpu": 2, "memory": 8589934592u64, "storage": null
        }]});
        let text = tasks_text(&answer, &Clock::fixed_utc("2026-11-25T12:00:00Z"), false);
        assert!(!text.contains("Memory"), "{text}");
        let verbose = tasks_text(&answer, &Clock::fixed_utc("2026-11-25T12:00:00Z"), true);
        assert!(
            verbose.contains("Memory") && verbose.contains("8589934592"),
            "{verbose}"
        );
        assert!(
            text.contains("train-3") && text.contains("n7") && text.contains("0,2"),
            "{text}"
        );
        assert!(text.contains("2026-11-25 11:20:02"), "{text}");
        assert!(text.ends_with("(more tasks: raise --count)\n"), "{text}");
        assert_eq!(
            tasks_text(
                &serde_json::json!({"tasks": []}),
                &Clock::fixed_utc("2026-11-25T12:00:00Z"),
                false
            ),
            "No tasks.\n"
        );
    }
}
