//! `osmo token create`: a user's API token, for servers with `auth: tokens`.
//! Run on the server's machine: it writes to the server's store directly
//! (only the token's hash is kept) and prints the token once.

use anyhow::Context;

use super::Outcome;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token for a user and print it (it is not shown again).
    Create(CreateArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Who the token speaks for: workflows it submits are theirs.
    #[arg(long)]
    pub user: String,
    /// `user` (their own workflows) or `admin` (everyone's).
    #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
    pub role: String,
    /// The server's data directory (its SQLite store).
    #[arg(long, value_name = "DIR", default_value = "./osmo-data")]
    pub data_dir: std::path::PathBuf,
    /// The server's PostgreSQL store instead (`postgres://...`).
    #[arg(
        long,
        value_name = "URL",
        env = "OSMO_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

pub fn run(command: TokenCommand) -> anyhow::Result<Outcome> {
    let TokenCommand::Create(args) = command;
    if args.user.trim().is_empty() {
        anyhow::bail!("--user must name someone");
    }
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            let db = args.data_dir.join("osmo.db");
            if !db.exists() {
                anyhow::bail!(
                    "no store at {}: give the server's --data-dir (or --database-url)",
                    db.display()
                );
            }
            format!("sqlite://{}", db.display())
        }
    };
    let token = osmo_server::auth::new_token()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = osmo_store::Store::open(&url)
            .await
            .context("cannot open the server's store")?;
        store
            .add_token(
                &osmo_server::auth::token_hash(&token),
                args.user.trim(),
                &args.role,
                osmo_server::now_ms() as i64,
            )
            .await
            .context("cannot store the token")?;
        store.close().await;
        anyhow::Ok(())
    })?;
    println!("{token}");
    eprintln!(
        "A {} token for {}: give it to them (`osmo login URL --token ...`); it is not shown again.",
        args.role,
        args.user.trim()
    );
    Ok(Outcome::Success)
}
