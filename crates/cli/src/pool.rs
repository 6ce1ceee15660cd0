//! `osmo pool list`: `GET /api/pool` — each pool's backend, status, and what
//! it hands out (CPUs, GPUs): quota, in use, free, and groups waiting.

use serde_json::Value;

use crate::Outcome;
use crate::output::{FormatArgs, print_json, table, table_text};
use crate::workflow::ServiceArgs;

#[derive(Debug, clap::Subcommand)]
pub enum PoolCommand {
    /// Each pool with its CPUs and GPUs: quota, in use, free; groups waiting.
    List(PoolListArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct PoolListArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(command: PoolCommand) -> anyhow::Result<Outcome> {
    let PoolCommand::List(args) = command;
    let answer = args.service.client()?.get_json(&["api", "pool"], &[])?;
    if args.format.json() {
        print_json(&answer)?;
    } else {
        print!("{}", pools_text(&answer));
    }
    Ok(Outcome::Success)
}

/// A number as the tables show it: whole numbers without a fraction.
pub(crate) fn amount(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
        Some(f) => format!("{f:.2}"),
        None => "-".to_string(),
    }
}

fn pools_text(answer: &Value) -> String {
    let mut t = table([
        "Pool",
        "Backend",
        "Status",
        "CPU Quota",
        "CPU Used",
        "CPU Free",
        "GPU Quota",
        "GPU Used",
        "GPU Free",
        "Waiting",
    ]);
    let pools = answer["node_sets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|set| set["pools"].as_array().into_iter().flatten());
    for p in pools {
        let cpu = &p["cpu"];
        let free = match (cpu["capacity"].as_f64(), cpu["used"].as_f64()) {
            (Some(c), Some(u)) => amount(&Value::from((c - u).max(0.0))),
            _ => "-".to_string(),
        };
        let gpu = &p["resource_usage"];
        t.add_row([
            p["name"].as_str().unwrap_or("-").to_string(),
            p["backend"].as_str().unwrap_or("-").to_string(),
            p["status"].as_str().unwrap_or("-").to_string(),
            amount(&cpu["capacity"]),
            amount(&cpu["used"]),
            free,
            amount(&gpu["quota_limit"]),
            amount(&gpu["quota_used"]),
            amount(&gpu["quota_free"]),
            amount(&cpu["waiting_groups"]),
        ]);
    }
    table_text(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_row_shows_quota_use_and_free() {
        let answer = serde_json::json!({"node_sets": [{"pools": [{
            "name": "default", "backend": "local", "status": "ONLINE",
            "cpu": {"capacity": 16.0, "used": 2.5, "waiting_groups": 3},
            "resource_usage": {"quota_limit": 4, "quota_used": 1, "quota_free": 3}
        }]}]});
        let text = pools_text(&answer);
        let row = text.lines().nth(2).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "default", "local", "ONLINE", "16", "2.50", "13.50", "4", "1", "3", "3"
            ],
            "{text}"
        );
    }
}
