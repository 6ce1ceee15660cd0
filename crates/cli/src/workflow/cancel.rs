//! `osmo workflow cancel ID...`: `POST /api/workflow/{id}/cancel`.

use serde_json::Value;

use super::ServiceArgs;
use crate::Outcome;
use crate::client::typed;
use crate::output::{FormatArgs, print_json};
use osmo_server::api_types::CancelResponse;

/// `osmo workflow cancel` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Cancel workflows: every unfinished group ends FAILED_CANCELED and its tasks are \
        stopped. Who canceled, and why (--message), is recorded. Each ID is tried even if an \
        earlier one fails; the exit code is 1 if any failed."
)]
pub struct CancelArgs {
    /// The workflow IDs.
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,
    /// Why, recorded with the cancellation.
    #[arg(long, short = 'm', value_name = "MESSAGE")]
    pub message: Option<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: CancelArgs) -> anyhow::Result<Outcome> {
    let client = args.service.client()?;
    let mut answers: Vec<Value> = Vec::new();
    let mut ok = true;
    for id in &args.ids {
        match client.cancel(id, args.message.as_deref()) {
            Ok(answer) => {
                if !args.format.json() {
                    let response: CancelResponse = typed(&answer, "cancel response")?;
                    println!(
                        "Cancel requested for workflow {} (status: {}).",
                        response.name, response.status
                    );
                }
                answers.push(answer);
            }
            Err(e) => {
                ok = false;
                eprintln!("error: cannot cancel {id}: {}", crate::error_text(&e));
            }
        }
    }
    if args.format.json() {
        print_json(&answers)?;
    }
    Ok(Outcome::from_ok(ok))
}
