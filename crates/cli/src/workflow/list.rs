//! `osmo workflow list`: `GET /api/workflow`.

use super::view::list_text;
use super::{ServiceArgs, WORKFLOW_STATUSES};
use crate::Outcome;
use crate::client::{ListFilter, typed};
use crate::output::{Clock, FormatArgs, print_json};
use osmo_server::api_types::WorkflowListDoc;

/// `osmo workflow list` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Example:\n  osmo workflow list --status RUNNING --status PENDING -c 50")]
pub struct ListArgs {
    /// Only workflows whose name contains this.
    #[arg(long, short = 'n', value_name = "NAME")]
    pub name: Option<String>,
    /// Only workflows in this status (repeatable).
    #[arg(
        long,
        short = 's',
        value_name = "STATUS",
        ignore_case = true,
        value_parser = clap::builder::PossibleValuesParser::new(WORKFLOW_STATUSES)
    )]
    pub status: Vec<String>,
    /// Only workflows of this pool (repeatable).
    #[arg(long, short = 'p', value_name = "POOL")]
    pub pool: Vec<String>,
    /// Only workflows submitted by this user (repeatable).
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Vec<String>,
    /// Every user's workflows (a server with `auth: tokens` lists yours by default).
    #[arg(long, short = 'a', conflicts_with = "user")]
    pub all_users: bool,
    /// How many workflows to show (at most 1000).
    #[arg(long, short = 'c', value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// Skip this many of the newest workflows first.
    #[arg(long, short = 'f', value_name = "N")]
    pub offset: Option<u32>,
    /// Only workflows of this priority (several after one flag; repeatable).
    #[arg(long, value_name = "PRIORITY", num_args = 1.., ignore_case = true,
          value_parser = clap::builder::PossibleValuesParser::new(["HIGH", "NORMAL", "LOW"]))]
    pub priority: Vec<String>,
    /// Only workflows submitted on or after this day (YYYY-MM-DD, in your time zone).
    #[arg(long, value_name = "DATE", value_parser = local_day)]
    pub submitted_after: Option<jiff::Timestamp>,
    /// Only workflows submitted before this day (YYYY-MM-DD, in your time zone).
    #[arg(long, value_name = "DATE", value_parser = local_day)]
    pub submitted_before: Option<jiff::Timestamp>,
    /// Only workflows with a label matching KEY=SELECTOR: a value, `*` wildcards, or
    /// `(a|b)` alternatives (`project=(sim_*|hil_*)`); repeat to require all.
    #[arg(long = "label", value_name = "KEY=SELECTOR")]
    pub labels: Vec<String>,
    /// Only workflows without this label key (repeatable).
    #[arg(long = "no-label", value_name = "KEY")]
    pub no_labels: Vec<String>,
    /// Only workflows with these tags (all of them; several after one flag).
    #[arg(long, value_name = "TAG", num_args = 1..)]
    pub tags: Vec<String>,
    /// `desc`: newest first (the default); `asc`: newest last.
    #[arg(long, short = 'o', value_enum, default_value_t = Order::Desc)]
    pub order: Order,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    Asc,
    Desc,
}

/// The midnight that starts `YYYY-MM-DD` in the system's time zone.
fn local_day(text: &str) -> Result<jiff::Timestamp, String> {
    let day: jiff::civil::Date = text
        .parse()
        .map_err(|_| format!("`{text}` is not a date like 2023-05-03"))?;
    day.to_zoned(jiff::tz::TimeZone::system())
        .map(|z| z.timestamp())
        .map_err(|e| e.to_string())
}

/// As OSMO writes UTC times: no zone suffix.
fn utc(t: jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

pub fn run(args: ListArgs) -> anyhow::Result<Outcome> {
    if let (Some(after), Some(before)) = (args.submitted_after, args.submitted_before)
        && after >= before
    {
        anyhow::bail!("--submitted-before must be a later day than --submitted-after");
    }
    let client = args.service.client()?;
    let filter = ListFilter {
        name: args.name,
        statuses: args.status.iter().map(|s| s.to_ascii_uppercase()).collect(),
        pools: args.pool,
        users: args.user,
        all_users: args.all_users,
        limit: Some(args.count),
        offset: args.offset,
        priorities: args
            .priority
            .iter()
            .map(|p| p.to_ascii_uppercase())
            .collect(),
        submitted_after: args.submitted_after.map(utc),
        submitted_before: args.submitted_before.map(utc),
        labels: args.labels,
        no_labels: args.no_labels,
        tags: args.tags,
    };
    let mut answer = client.list(&filter)?;
    if args.order == Order::Asc
        && let Some(list) = answer["workflows"].as_array_mut()
    {
        list.reverse();
    }
    if args.format.json() {
        print_json(&answer)?;
    } else {
        let list: WorkflowListDoc = typed(&answer, "workflow list")?;
        print!("{}", list_text(&list, &Clock::system()));
    }
    Ok(Outcome::Success)
}
