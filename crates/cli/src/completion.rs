//! `osmo completion SHELL`: a completion script on stdout.

use clap::CommandFactory;

use super::{Cli, Outcome};

/// Shells with completion scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `osmo completion` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  osmo completion bash > ~/.local/share/bash-completion/completions/osmo\n  \
        osmo completion zsh > \"${fpath[1]}/_osmo\"\n  osmo completion fish > ~/.config/fish/completions/osmo.fish"
)]
pub struct CompletionArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: CompletionArgs) -> anyhow::Result<Outcome> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "osmo", &mut std::io::stdout());
    Ok(Outcome::Success)
}
