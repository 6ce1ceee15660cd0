fn main() -> std::process::ExitCode {
    osmo::cli::main()
}
