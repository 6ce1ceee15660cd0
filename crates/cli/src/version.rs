//! `osmo version`: this client's version, and the service's when it answers
//! (`GET /api/version`).

use serde_json::{Value, json};

use crate::Outcome;
use crate::output::{FormatArgs, print_json};
use crate::workflow::ServiceArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct VersionArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

pub fn run(args: VersionArgs) -> anyhow::Result<Outcome> {
    let client_version = env!("CARGO_PKG_VERSION");
    // The client's version is worth printing even when no service answers.
    let service = args.service.client().and_then(|c| {
        c.get_json(&["api", "version"], &[])
            .map(|v| (c.url().to_string(), v))
    });
    if args.format.json() {
        let service = match &service {
            Ok((url, v)) => json!({ "url": url, "version": service_version(v) }),
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
        print_json(&json!({ "client": client_version, "service": service }))?;
    } else {
        println!("Client  : osmo {client_version}");
        match &service {
            Ok((url, v)) => println!("Service : osmo {} at {url}", service_version(v)),
            Err(e) => println!("Service : not reached ({e:#})"),
        }
    }
    Ok(Outcome::Success)
}

/// `major.minor.revision`, as OSMO's version endpoint gives it.
fn service_version(v: &Value) -> String {
    let part = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v[k].to_string())
    };
    format!("{}.{}.{}", part("major"), part("minor"), part("revision"))
}
