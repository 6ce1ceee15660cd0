//! `osmo workflow restart ID [--pool P]`: `POST /api/workflow/{id}/restart`.

use super::ServiceArgs;
use crate::Outcome;
use crate::output::{FormatArgs, print_json};

/// `osmo workflow restart` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Run a finished workflow that did not complete (FAILED, or canceled) again, as a \
        new workflow, as OSMO does: only the groups that did not complete run; the completed \
        ones keep their outputs, which the new run's tasks read as their inputs. Nothing that \
        completed runs twice."
)]
pub struct RestartArgs {
    /// The workflow ID.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Run it in this pool instead of its own.
    #[arg(long, short = 'p')]
    pub pool: Option<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: RestartArgs) -> anyhow::Result<Outcome> {
    let client = args.service.client()?;
    let answer = client.restart(&args.id, args.pool.as_deref())?;
    if args.format.json() {
        print_json(&answer)?;
    } else {
        let new_id = answer["name"].as_str().unwrap_or("?");
        println!("Workflow {} restarted as {new_id}.", args.id);
    }
    Ok(Outcome::Success)
}
