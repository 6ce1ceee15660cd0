//! The `osmo` binary: every role in one — `osmo server`, `osmo agent`,
//! `osmo exec` and the user's `osmo workflow ...` (the `osmo-cli` crate).

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: purge freed pages from a background thread within
/// about a second, so the server's resident size follows what it holds.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    // The agent's sandbox spawner: before anything else (it stays small).
    osmo_runtime::spawner::serve_if_asked();
    // The template renderer runs as a resource-limited child of this binary.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == osmo_server::render_guard::RENDER_ARG)
    {
        return osmo_server::render_guard::serve_one();
    }
    osmo_cli::main()
}
