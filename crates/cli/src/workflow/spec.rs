//! `osmo workflow spec ID`: `GET /api/workflow/{id}/spec`.

use serde_json::json;

use super::ServiceArgs;
use crate::Outcome;
use crate::output::{FormatArgs, print_json};

/// `osmo workflow spec` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SpecArgs {
    /// The workflow ID.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print the file after Jinja rendering, not as written.
    #[arg(long)]
    pub rendered: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: SpecArgs) -> anyhow::Result<Outcome> {
    let client = args.service.client()?;
    let text = client.spec(&args.id, args.rendered)?;
    if args.format.json() {
        print_json(&json!({"name": args.id, "rendered": args.rendered, "spec": text}))?;
    } else {
        print!(
            "{text}{}",
            if text.ends_with('\n') || text.is_empty() {
                ""
            } else {
                "\n"
            }
        );
    }
    Ok(Outcome::Success)
}
