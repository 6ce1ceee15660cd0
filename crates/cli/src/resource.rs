//! `osmo resource list` and `osmo resource info NODE`: the nodes behind the
//! pools (`GET /api/resources`, `/api/resources/{node}`) — this machine on
//! the local backend, Slurm's nodes on a Slurm pool.

use serde_json::Value;

use crate::Outcome;
use crate::output::{FormatArgs, print_json, table, table_text};
use crate::pool::amount;
use crate::workflow::ServiceArgs;

#[derive(Debug, clap::Subcommand)]
pub enum ResourceCommand {
    /// Every node with what it has and what is in use.
    List(ResourceListArgs),
    /// One node in full.
    Info(ResourceInfoArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ResourceListArgs {
    /// Only the nodes of this pool (repeatable).
    #[arg(long, short = 'p', value_name = "POOL")]
    pub pool: Vec<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ResourceInfoArgs {
    /// The node's name (as `resource list` shows it).
    #[arg(value_name = "NODE")]
    pub node: String,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(command: ResourceCommand) -> anyhow::Result<Outcome> {
    match command {
        ResourceCommand::List(args) => {
            let query: Vec<(&str, String)> =
                args.pool.iter().map(|p| ("pools", p.clone())).collect();
            let answer = args
                .service
                .client()?
                .get_json(&["api", "resources"], &query)?;
            let nodes: Vec<&Value> = answer["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            if args.format.json() {
                print_json(&serde_json::json!({ "resources": nodes }))?;
            } else {
                print!("{}", list_text(&nodes));
            }
        }
        ResourceCommand::Info(args) => {
            let answer = args
                .service
                .client()?
                .get_json(&["api", "resources", &args.node], &[])?;
            if answer["resources"].as_array().is_some_and(Vec::is_empty) {
                anyhow::bail!(
                    "no node `{}` in any pool; `osmo resource list` shows the nodes",
                    args.node
                );
            }
            if args.format.json() {
                print_json(&answer)?;
            } else {
                print!("{}", info_text(&answer));
            }
        }
    }
    Ok(Outcome::Success)
}

fn pools_of(node: &Value) -> String {
    node["pool_platform_labels"]
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// `used/allocatable`, memory and storage in GiB.
fn usage(node: &Value, field: &str) -> String {
    let scale = |v: &Value| match field {
        "memory" | "storage" => v
            .as_f64()
            .map(|b| Value::from(b / (1u64 << 30) as f64))
            .unwrap_or(Value::Null),
        _ => v.clone(),
    };
    format!(
        "{}/{}",
        amount(&scale(&node["usage_fields"][field])),
        amount(&scale(&node["allocatable_fields"][field]))
    )
}

fn list_text(nodes: &[&Value]) -> String {
    let mut t = table([
        "Node",
        "Type",
        "Pools",
        "CPU",
        "GPU",
        "Memory GiB",
        "Storage GiB",
    ]);
    for n in nodes {
        t.add_row([
            n["hostname"].as_str().unwrap_or("-").to_string(),
            n["resource_type"].as_str().unwrap_or("-").to_string(),
            pools_of(n),
            usage(n, "cpu"),
            usage(n, "gpu"),
            usage(n, "memory"),
            usage(n, "storage"),
        ]);
    }
    table_text(&t)
}

fn info_text(answer: &Value) -> String {
    // `/api/resources/{node}` answers `{resources: [node]}` as OSMO does.
    let node = answer["resources"].get(0).unwrap_or(answer);
    let mut t = table(["Field", "Used", "Allocatable"]);
    for field in ["cpu", "gpu", "memory", "storage"] {
        let (used, total) = usage(node, field)
            .split_once('/')
            .map(|(u, a)| (u.to_string(), a.to_string()))
            .unwrap_or_default();
        let name = match field {
            "memory" | "storage" => format!("{field} (GiB)"),
            _ => field.to_string(),
        };
        t.add_row([name, used, total]);
    }
    format!(
        "Node  : {}\nType  : {}\nPools : {}\n\n{}",
        node["hostname"].as_str().unwrap_or("-"),
        node["resource_type"].as_str().unwrap_or("-"),
        pools_of(node),
        table_text(&t)
    )
}
