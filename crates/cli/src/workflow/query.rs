//! `osmo workflow query ID`: `GET /api/workflow/{id}`.

use super::ServiceArgs;
use super::view::workflow_text;
use crate::Outcome;
use crate::client::typed;
use crate::output::{Clock, FormatArgs, print_json};
use osmo_server::api_types::WorkflowDoc;

/// `osmo workflow query` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Show a workflow: its status, pool, times, and one row per task with its \
        latest attempt (retry ID, status, exit code, start, duration, message). With --verbose, \
        every attempt, including RESCHEDULED ones."
)]
pub struct QueryArgs {
    /// The workflow ID (`<name>-<N>`).
    #[arg(value_name = "ID")]
    pub id: String,
    /// Show every attempt of each task, not only the latest.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: QueryArgs) -> anyhow::Result<Outcome> {
    let client = args.service.client()?;
    let answer = client.workflow(&args.id, args.verbose)?;
    if args.format.json() {
        print_json(&answer)?;
    } else {
        let doc: WorkflowDoc = typed(&answer, "workflow document")?;
        print!("{}", workflow_text(&doc, &Clock::system()));
        // What its labels break in the label policy of now.
        for warning in &doc.warnings {
            eprintln!("warning: {warning}");
        }
    }
    Ok(Outcome::Success)
}
