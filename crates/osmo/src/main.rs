fn main() -> std::process::ExitCode {
    // The template renderer runs as a resource-limited child of this binary.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == osmo::render_guard::RENDER_ARG)
    {
        return osmo::render_guard::serve_one();
    }
    osmo::cli::main()
}
