//! `osmo workflow logs ID`: `GET /api/workflow/{id}/logs`.

use serde_json::json;

use super::ServiceArgs;
use crate::Outcome;
use crate::client::LogsFilter;
use crate::output::{FormatType, print_json};

/// `osmo workflow logs` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Print a workflow's task logs, oldest first, one line each: \
        `YYYY/MM/DD HH:MM:SS [task retry-N][stream] text`.",
    after_help = "Example:\n  osmo workflow logs wf-1 -t train -r 1 -n 50"
)]
pub struct LogsArgs {
    /// The workflow ID.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Only this task's lines.
    #[arg(long, short = 't', value_name = "TASK")]
    pub task: Option<String>,
    /// Only this attempt's lines (with --task).
    #[arg(long, short = 'r', value_name = "R")]
    pub retry_id: Option<u32>,
    /// Only the last N lines.
    #[arg(long, short = 'n', value_name = "N")]
    pub last_n_lines: Option<u32>,
    /// Only what the tasks wrote to stderr.
    #[arg(long)]
    pub error: bool,
    /// Keep printing new lines as the tasks write them, until the workflow ends.
    #[arg(long, conflicts_with_all = ["last_n_lines", "format_type"])]
    pub follow: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Output format: `text` (the lines as they are) or `json` (`{"name", "lines": [...]}`).
    #[arg(long = "format-type", value_enum, default_value_t = FormatType::Text)]
    pub format_type: FormatType,
}

pub fn run(args: LogsArgs) -> anyhow::Result<Outcome> {
    let client = args.service.client()?;
    let filter = LogsFilter {
        task: args.task,
        retry_id: args.retry_id,
        last_n_lines: args.last_n_lines,
        errors_only: args.error,
    };
    if args.follow {
        client.follow_logs(&args.id, &filter, &mut std::io::stdout().lock())?;
        return Ok(Outcome::Success);
    }
    let text = client.logs(&args.id, &filter)?;
    match args.format_type {
        FormatType::Json => {
            print_json(&json!({"name": args.id, "lines": text.lines().collect::<Vec<_>>()}))?
        }
        FormatType::Text if text.is_empty() => eprintln!("no log lines (yet) for {}", args.id),
        FormatType::Text => print!("{text}{}", if text.ends_with('\n') { "" } else { "\n" }),
    }
    Ok(Outcome::Success)
}
