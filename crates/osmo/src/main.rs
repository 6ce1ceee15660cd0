//! The `osmo` binary: every role in one — `osmo server`, `osmo agent`,
//! `osmo exec` and the user's `osmo workflow ...` (the `osmo-cli` crate).

fn main() -> std::process::ExitCode {
    // The template renderer runs as a resource-limited child of this binary.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == osmo_server::render_guard::RENDER_ARG)
    {
        return osmo_server::render_guard::serve_one();
    }
    osmo_cli::main()
}
