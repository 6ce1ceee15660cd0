//! `osmo login URL --token TOKEN` / `osmo logout`: where the service is and
//! the token to show it, kept in the user's config
//! (`$XDG_CONFIG_HOME/osmo/osmo-rs.json`, else `~/.config/osmo/…`, mode
//! 0600), as OSMO's `osmo login` keeps its own. `--url`/`OSMO_URL` and
//! `OSMO_TOKEN` win over it.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::client::Client;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Login {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `--method dev`: the user name shown to a server without tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("osmo").join("osmo-rs.json"))
}

/// The stored login, if any (an unreadable one is ignored with a note).
pub fn load() -> Option<Login> {
    let path = path()?;
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(login) => Some(login),
        Err(e) => {
            eprintln!("note: ignoring {}: {e}", path.display());
            None
        }
    }
}

/// `osmo login` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// The service's address, e.g. http://osmo.example:8000.
    pub url: String,
    /// A token from `osmo token create` (servers with `auth: tokens`).
    #[arg(long, env = "OSMO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How to log in, as OSMO's CLI: `token` (with --token), or `dev` (a server
    /// without tokens, as --username) [default: token when --token is given, else dev].
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// `--method dev`: the user name to act as [default: OSMO_USER, USER].
    #[arg(long)]
    pub username: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    Token,
    Dev,
}

pub fn login(args: LoginArgs) -> anyhow::Result<Outcome> {
    let token = args.token.filter(|t| !t.is_empty());
    let method = args.method.unwrap_or(if token.is_some() {
        Method::Token
    } else {
        Method::Dev
    });
    if method == Method::Token && token.is_none() {
        anyhow::bail!(
            "--method token needs --token TOKEN (from `osmo token create` on the server)"
        );
    }
    let login = Login {
        url: args.url.trim_end_matches('/').to_string(),
        token: token.filter(|_| method == Method::Token),
        username: args
            .username
            .filter(|u| !u.is_empty())
            .filter(|_| method == Method::Dev),
    };
    // Checked before it is kept: a reachable service that takes the token.
    let mut client = Client::with_token(&login.url, login.token.clone())?;
    if let Some(user) = &login.username {
        client.set_user(user);
    }
    client.health()?;
    client
        .list(&Default::default())
        .context("the service refused the login")?;
    let path = path().context("no HOME or XDG_CONFIG_HOME to keep the login in")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_private(&path, &serde_json::to_string_pretty(&login)?)?;
    println!("Logged in to {}.", login.url);
    Ok(Outcome::Success)
}

pub fn logout() -> anyhow::Result<Outcome> {
    match path() {
        Some(path) if path.exists() => {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            println!("Logged out.");
        }
        _ => println!("Not logged in."),
    }
    Ok(Outcome::Success)
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
