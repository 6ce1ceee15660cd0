//! `osmo workflow events ID [--task T] [--retry-id N]`: `GET /api/workflow/{id}/events`.

use serde_json::json;

use super::ServiceArgs;
use crate::Outcome;
use crate::output::{FormatArgs, print_json};

/// `osmo workflow events` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// The workflow ID.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Only this task's events.
    #[arg(long)]
    pub task: Option<String>,
    /// Only this attempt of the task (needs --task).
    #[arg(long, short = 'r', requires = "task")]
    pub retry_id: Option<u32>,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: EventsArgs) -> anyhow::Result<Outcome> {
    let client = args.service.client()?;
    let text = client.events(&args.id, args.task.as_deref(), args.retry_id)?;
    if args.format.json() {
        let lines: Vec<&str> = text.lines().collect();
        print_json(&json!({"name": args.id, "events": lines}))?;
    } else {
        println!("Workflow {} has events:", args.id);
        print!("{text}");
    }
    Ok(Outcome::Success)
}
