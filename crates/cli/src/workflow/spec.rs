//! `osmo workflow spec ID`: `GET /api/workflow/{id}/spec`. As OSMO's CLI:
//! the rendered file, or with `--template` the file as written.

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
    /// Print the file as written (its Jinja template), not as rendered.
    #[arg(long, conflicts_with = "rendered")]
    pub template: bool,
    /// The rendered file (the default; kept for scripts that ask for it).
    #[arg(long, hide = true)]
    pub rendered: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: SpecArgs) -> anyhow::Result<Outcome> {
    let client = args.service.client()?;
    let rendered = !args.template;
    let text = client.spec(&args.id, rendered)?;
    if args.format.json() {
        print_json(&json!({"name": args.id, "rendered": rendered, "spec": text}))?;
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
