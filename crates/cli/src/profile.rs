//! `osmo profile list` and `osmo profile set pool NAME`: who the service
//! takes you for, your default pool (used by `submit` without `--pool`), and
//! the pools you may use (`/api/profile/settings`).

use serde_json::{Value, json};

use crate::Outcome;
use crate::output::{FormatArgs, print_json};
use crate::workflow::ServiceArgs;

#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// Your user name, roles, default pool and the pools you may use.
    List(ProfileListArgs),
    /// Set a setting of your profile: `pool NAME` (the default pool).
    Set(ProfileSetArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ProfileListArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Example:\n  osmo profile set pool gpu-cluster")]
pub struct ProfileSetArgs {
    /// What to set.
    #[arg(value_enum)]
    pub setting: Setting,
    /// Its new value.
    pub value: String,
    #[command(flatten)]
    pub service: ServiceArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Setting {
    /// The pool `workflow submit` uses without `--pool`.
    Pool,
}

pub fn run(command: ProfileCommand) -> anyhow::Result<Outcome> {
    match command {
        ProfileCommand::List(args) => {
            let answer = args
                .service
                .client()?
                .get_json(&["api", "profile", "settings"], &[])?;
            if args.format.json() {
                print_json(&answer)?;
            } else {
                print!("{}", profile_text(&answer));
            }
        }
        ProfileCommand::Set(args) => {
            let Setting::Pool = args.setting;
            args.service.client()?.post_json(
                &["api", "profile", "settings"],
                &json!({ "pool": args.value }),
            )?;
            println!("Default pool set to {}.", args.value);
        }
    }
    Ok(Outcome::Success)
}

fn profile_text(answer: &Value) -> String {
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let profile = &answer["profile"];
    format!(
        "User         : {}\nRoles        : {}\nDefault pool : {}\nPools        : {}\n",
        profile["username"].as_str().unwrap_or("-"),
        list(&answer["roles"]),
        profile["pool"].as_str().unwrap_or("-"),
        list(&answer["pools"]),
    )
}
