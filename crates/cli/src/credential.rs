//! `osmo credential set/list/delete`: your credentials on the service, as
//! OSMO's CLI has them (`/api/credentials`). DATA credentials open the data
//! URLs under their `endpoint`; GENERIC and REGISTRY ones are key-value
//! pairs a workflow's `credentials:` hands its tasks. Secrets go to the
//! service, which seals them; nothing here prints them back.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::{Value, json};

use crate::Outcome;
use crate::output::{FormatArgs, print_json, table, table_text};
use crate::workflow::ServiceArgs;

#[derive(Debug, clap::Subcommand)]
pub enum CredentialCommand {
    /// Create or replace a credential.
    Set(SetArgs),
    /// Your credentials: name, type and endpoint (never their secrets).
    List(ListArgs),
    /// Delete a credential.
    Delete(DeleteArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum CredentialType {
    /// An object store's keys, for the data URLs under its `endpoint`.
    Data,
    /// A container registry's.
    Registry,
    /// Any key-value pairs a workflow's tasks are given.
    Generic,
    /// The same as DATA.
    #[value(name = "s3")]
    S3,
}

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:
  osmo credential set my-bucket --type DATA --payload access_key_id=AKIA... access_key=... endpoint=s3://my-bucket
  osmo credential set minio --type s3 --access-key AKIA... --secret-key ... --endpoint s3://data --override-url http://minio:9000
  osmo credential set wandb --payload api_key=...
  osmo credential set ssh --payload-file key=$HOME/.ssh/id_ed25519")]
pub struct SetArgs {
    /// A letter, then letters, digits, - and _.
    pub name: String,
    /// DATA (or s3), REGISTRY or GENERIC.
    #[arg(
        long = "type",
        value_enum,
        ignore_case = true,
        default_value = "GENERIC"
    )]
    pub cred_type: CredentialType,
    /// KEY=VALUE pairs. DATA: access_key_id, access_key, endpoint (the URL prefix it opens,
    /// e.g. s3://bucket); optional region, override_url (an S3-compatible server),
    /// addressing_style (path or virtual). REGISTRY: auth; optional registry, username.
    #[arg(long, num_args = 1.., value_name = "KEY=VALUE")]
    pub payload: Vec<String>,
    /// KEY=FILE pairs: each value read from a file.
    #[arg(long, num_args = 1.., value_name = "KEY=FILE")]
    pub payload_file: Vec<String>,
    /// DATA: the access key ID (access_key_id).
    #[arg(long, value_name = "ID")]
    pub access_key: Option<String>,
    /// DATA: the secret access key (access_key).
    #[arg(long, value_name = "SECRET")]
    pub secret_key: Option<String>,
    /// DATA: the URL prefix the credential opens, e.g. s3://bucket.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// DATA: the store's region.
    #[arg(long)]
    pub region: Option<String>,
    /// DATA: an S3-compatible server instead of AWS, e.g. http://minio:9000.
    #[arg(long, value_name = "URL")]
    pub override_url: Option<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    pub name: String,
    #[command(flatten)]
    pub service: ServiceArgs,
}

pub fn run(command: CredentialCommand) -> anyhow::Result<Outcome> {
    match command {
        CredentialCommand::Set(args) => set(args),
        CredentialCommand::List(args) => {
            let answer = args
                .service
                .client()?
                .get_json(&["api", "credentials"], &[])?;
            if args.format.json() {
                print_json(&answer)?;
            } else {
                print!("{}", list_text(&answer));
            }
            Ok(Outcome::Success)
        }
        CredentialCommand::Delete(args) => {
            args.service
                .client()?
                .delete(&["api", "credentials", &args.name])?;
            println!("Deleted credential {}.", args.name);
            Ok(Outcome::Success)
        }
    }
}

fn set(args: SetArgs) -> anyhow::Result<Outcome> {
    let mut payload = BTreeMap::new();
    for item in &args.payload {
        let (k, v) = pair(item)?;
        payload.insert(k.to_string(), v.to_string());
    }
    for item in &args.payload_file {
        let (k, path) = pair(item)?;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        payload.insert(
            k.to_string(),
            text.trim_end_matches(['\r', '\n']).to_string(),
        );
    }
    for (key, value) in [
        ("access_key_id", &args.access_key),
        ("access_key", &args.secret_key),
        ("endpoint", &args.endpoint),
        ("region", &args.region),
        ("override_url", &args.override_url),
    ] {
        if let Some(v) = value {
            payload.insert(key.to_string(), v.clone());
        }
    }
    if payload.is_empty() {
        anyhow::bail!(
            "give the credential's values: --payload KEY=VALUE ... (or --payload-file, or the DATA flags)"
        );
    }
    let (kind, body) = match args.cred_type {
        CredentialType::Data | CredentialType::S3 => ("DATA", json!({"data_credential": payload})),
        CredentialType::Registry => ("REGISTRY", json!({"registry_credential": payload})),
        CredentialType::Generic => (
            "GENERIC",
            json!({"generic_credential": {"credential": payload}}),
        ),
    };
    let answer = args
        .service
        .client()?
        .post_json(&["api", "credentials", &args.name], &body)?;
    if args.format.json() {
        print_json(&answer)?;
    } else {
        println!("Set {kind} credential {}.", args.name);
    }
    Ok(Outcome::Success)
}

fn pair(item: &str) -> anyhow::Result<(&str, &str)> {
    match item.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k, v)),
        _ => anyhow::bail!("`{item}` is not KEY=VALUE with a non-empty key and value"),
    }
}

fn list_text(answer: &Value) -> String {
    let mut t = table(["Name", "Type", "Endpoint"]);
    for c in answer["credentials"].as_array().into_iter().flatten() {
        let field = |k: &str| {
            c[k].as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("-")
                .to_string()
        };
        t.add_row([field("cred_name"), field("cred_type"), field("profile")]);
    }
    table_text(&t)
}
