//! Runs one attempt of a command in the sandbox and prints what the
//! supervisor sees: `cargo run -p osmo-runtime --example attempt -- sh -c 'exit 3'`.
//! `OSMO_MEMORY_LIMIT=<bytes>` sets a memory limit.

use osmo_runtime::{AttemptSpec, StopHandle, Stream, Supervisor, run_attempt};

struct Print;

impl Supervisor for Print {
    fn log(&self, stream: Stream, line: &str) {
        println!("{stream:?}: {line}");
    }
    fn setup_done(&self) -> bool {
        println!("-- setup done");
        true
    }
    fn started(&self) {
        println!("-- started");
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("osmo-attempt-{}", std::process::id()));
    let spec = AttemptSpec {
        workflow_id: "example-1".into(),
        group: "example-group".into(),
        task: "example".into(),
        command: std::env::args().skip(1).collect(),
        output_dir: dir.join("output"),
        scratch_dir: dir.join("scratch"),
        memory_limit_bytes: std::env::var("OSMO_MEMORY_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..AttemptSpec::default()
    };
    let outcome = run_attempt(&spec, &Print, &StopHandle::new());
    println!("-- codes: {:?}", outcome.codes);
    let _ = std::fs::remove_dir_all(&dir);
}
