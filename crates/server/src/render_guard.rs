//! Jinja rendering in a child process with a memory and time ceiling.
//!
//! minijinja's fuel bounds the number of template steps, not memory: one
//! `{% set b = a ~ a ~ a %}` on a large string can take gigabytes in a single
//! step. So the server and the CLI render in a child of this same binary
//! (`osmo __render-template`, JSON over stdin/stdout) under `RLIMIT_AS` and a
//! wall-clock deadline; a child that dies or runs too long is a clear error
//! about the template, and the caller stays healthy.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use osmo_spec::{Diagnostic, Diagnostics, Values};
use serde::{Deserialize, Serialize};

/// The argument that turns `osmo` into the renderer (checked before clap).
pub const RENDER_ARG: &str = "__render-template";
/// Address space the renderer may use.
pub const MEMORY_LIMIT: u64 = 1 << 30;
/// Wall-clock time the renderer may take.
pub const TIME_LIMIT: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
struct Job {
    source: String,
    file: String,
    set: Vec<(String, String)>,
    set_string: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize)]
enum Answer {
    Rendered(String),
    Invalid(Diagnostics),
}

/// Renders `source` in a limited child process.
pub fn render(source: &str, file: &str, values: &Values) -> Result<String, Diagnostics> {
    let limit_error = |what: String| {
        Diagnostics::single(Diagnostic::whole_file(
            file,
            format!("rendering the Jinja template {what}; simplify the template"),
        ))
    };
    // Oversized files are refused by the spec crate without rendering; a file
    // with no Jinja in it (and no values to put in) renders to itself, safely
    // in process: there is nothing to bound.
    let no_values = values.set.is_empty() && values.set_string.is_empty();
    if source.len() > osmo_spec::MAX_INPUT_BYTES || (no_values && osmo_spec::is_plain(source)) {
        return osmo_spec::render(source, file, values);
    }
    let job = Job {
        source: source.to_string(),
        file: file.to_string(),
        set: values.set.clone(),
        set_string: values.set_string.clone(),
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Err(limit_error(format!("could not start ({e})"))),
    };
    let mut command = Command::new(exe);
    command
        .arg(RENDER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Err(limit_error(format!("could not start ({e})"))),
    };
    let input = serde_json::to_vec(&job).expect("jobs serialize");
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + TIME_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => break None,
        }
    };
    let _ = writer.join();
    let output = reader.join().ok().and_then(Result::ok).unwrap_or_default();
    let Some(status) = status else {
        return Err(limit_error(format!(
            "took longer than {} s",
            TIME_LIMIT.as_secs()
        )));
    };
    match serde_json::from_slice::<Answer>(&output) {
        Ok(Answer::Rendered(text)) if status.success() => Ok(text),
        Ok(Answer::Invalid(diagnostics)) => Err(diagnostics),
        _ => Err(limit_error(format!(
            "needed more than {} MiB of memory",
            MEMORY_LIMIT >> 20
        ))),
    }
}

/// The child's side: one job from stdin, the answer on stdout.
pub fn serve_one() -> std::process::ExitCode {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        return std::process::ExitCode::FAILURE;
    }
    let Ok(job) = serde_json::from_slice::<Job>(&input) else {
        return std::process::ExitCode::FAILURE;
    };
    let values = Values {
        set: job.set,
        set_string: job.set_string,
    };
    let answer = match osmo_spec::render(&job.source, &job.file, &values) {
        Ok(text) => Answer::Rendered(text),
        Err(diagnostics) => Answer::Invalid(diagnostics),
    };
    let out = serde_json::to_vec(&answer).expect("answers serialize");
    if std::io::stdout().write_all(&out).is_err() {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// Renders in a limited child, then validates: [`osmo_spec::load`] made safe
/// for untrusted templates.
pub fn load(
    source: &str,
    file: &str,
    values: &Values,
    pool: Option<&osmo_spec::PoolConfig>,
) -> Result<(osmo_spec::Workflow, String), Diagnostics> {
    let rendered = render(source, file, values)?;
    let workflow = osmo_spec::load_rendered(source, &rendered, file, pool)?;
    Ok((workflow, rendered))
}
