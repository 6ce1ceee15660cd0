//! `osmo workflow tag`: add and remove tags of workflows (removed first), or
//! list the tags in use (`POST /api/workflow/{id}/tag`, `GET /api/tag`).

use crate::Outcome;
use crate::workflow::ServiceArgs;

/// `osmo workflow tag` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  osmo workflow tag -w train-3 train-4 --add gold --remove candidate\n  osmo workflow tag"
)]
pub struct TagArgs {
    /// The workflows to change; without it, the tags in use are listed.
    #[arg(long, short = 'w', value_name = "ID", num_args = 1..)]
    pub workflow: Vec<String>,
    /// Tags to add (several after one flag).
    #[arg(long, short = 'a', value_name = "TAG", num_args = 1..)]
    pub add: Vec<String>,
    /// Tags to remove (several after one flag); removed before the adds.
    #[arg(long, short = 'r', value_name = "TAG", num_args = 1..)]
    pub remove: Vec<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

pub fn run(args: TagArgs) -> anyhow::Result<Outcome> {
    let changes = !args.add.is_empty() || !args.remove.is_empty();
    match (args.workflow.is_empty(), changes) {
        (true, true) => anyhow::bail!("no workflow to tag: give -w ID"),
        (false, false) => anyhow::bail!("no tags to add or remove: give --add or --remove"),
        _ => {}
    }
    let client = args.service.client()?;
    if args.workflow.is_empty() {
        let answer = client.get_json(&["api", "tag"], &[])?;
        let tags: Vec<&str> = answer["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        if tags.is_empty() {
            println!("No workflow has a tag yet.");
        } else {
            println!("Tags:");
            for tag in tags {
                println!("- {tag}");
            }
        }
        return Ok(Outcome::Success);
    }
    let mut failed = false;
    for id in &args.workflow {
        let mut query: Vec<(&str, String)> = args.add.iter().map(|t| ("add", t.clone())).collect();
        query.extend(args.remove.iter().map(|t| ("remove", t.clone())));
        match client.post_query(&["api", "workflow", id, "tag"], &query) {
            Ok(answer) => {
                let tags: Vec<String> = answer["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect();
                println!(
                    "Workflow {id} updated; its tags: {}.",
                    if tags.is_empty() {
                        "none".to_string()
                    } else {
                        tags.join(", ")
                    }
                );
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        Outcome::Failure
    } else {
        Outcome::Success
    })
}
