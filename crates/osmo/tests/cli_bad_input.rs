//! `osmo workflow validate` on hostile files: a clear error, quickly, never a panic or a hang.

use std::process::Command;
use std::time::{Duration, Instant};

const OSMO: &str = env!("CARGO_BIN_EXE_osmo");

/// Runs validate on `contents`; returns (exit code, stderr+stdout, elapsed).
fn validate(contents: &[u8]) -> (i32, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wf.yaml");
    std::fs::write(&path, contents).unwrap();
    let start = Instant::now();
    let out = Command::new(OSMO)
        .args(["workflow", "validate"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code().unwrap_or(-1), text, start.elapsed())
}

fn assert_refused(contents: &[u8], expect: &str) {
    let (code, text, elapsed) = validate(contents);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(expect), "wanted {expect:?} in: {text}");
    assert!(!text.contains("panicked"), "{text}");
    // Generous against a loaded CI machine; measured well under 2 s here.
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
}

#[test]
fn a_template_that_needs_gigabytes_is_stopped() {
    let bomb = "{% set a = 'x' * 100000000 %}{% set b = a ~ a ~ a ~ a %}{% set c = b ~ b ~ b ~ b %}\nworkflow:\n  name: bomb\n  tasks:\n  - {name: t, image: ubuntu, command: [\"{{ c|length }}\"]}\n";
    assert_refused(bomb.as_bytes(), "needed more than 1024 MiB of memory");
}

#[test]
fn a_template_loop_that_never_ends_is_stopped() {
    let looping = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}\nworkflow:\n  name: x\n";
    assert_refused(looping.as_bytes(), "wf.yaml");
    let nested = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\nworkflow:\n  name: x\n";
    assert_refused(nested.as_bytes(), "wf.yaml");
}

#[test]
fn truncated_garbage_and_huge_files_get_a_clear_error() {
    assert_refused(
        b"workflow:\n  name: cut\n  tasks:\n  - {name: t, image: ubuntu, command: [sh",
        "wf.yaml:",
    );
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert_refused(&garbage, "wf.yaml");
    assert_refused(&vec![b'a'; 50 * 1024 * 1024], "at most 4 MiB");
}
