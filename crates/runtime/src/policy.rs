//! The attempt policy every runtime follows, in one place: which preflight
//! tests run (all, but `first_attempt_only` ones on the first attempt only),
//! and the codes a runtime reports for what it sees (1001 for a failed test,
//! 257 for a file that cannot be written, 3004 for the out-of-memory killer).
//! How codes combine is SEMANTICS §2: every one is reported with its source,
//! and the engine takes the highest.

use osmo_spec::codes::{CodeSource, ReportedCode, well_known};
use osmo_spec::config::PreflightTest;

use crate::AttemptSpec;

/// The preflight tests this attempt runs, in order; `skipped` hears of each
/// one left out (a `first_attempt_only` test on a retry).
pub fn preflight_tests(spec: &AttemptSpec, mut skipped: impl FnMut(&str)) -> Vec<&PreflightTest> {
    let mut tests = Vec::new();
    for t in &spec.preflight {
        if t.first_attempt_only && spec.retry_id > 0 {
            skipped(&format!(
                "preflight {} skipped: it runs on the first attempt only (this is retry {})",
                t.name, spec.retry_id
            ));
        } else {
            tests.push(t);
        }
    }
    tests
}

/// 1001: preflight test `name` failed (`how`: its exit, or why it could not run).
pub fn preflight_failed(name: &str, how: &str) -> ReportedCode {
    ReportedCode {
        code: well_known::PREFLIGHT,
        source: CodeSource::Preflight,
        detail: Some(format!("preflight {name} failed: {how}")),
    }
}

/// 3004: the kernel's OOM killer ended the command over its memory limit.
pub fn evicted_for_memory(limit_bytes: Option<u64>, inside: &str) -> ReportedCode {
    ReportedCode {
        code: well_known::EVICTED,
        source: CodeSource::Service,
        detail: Some(format!(
            "memory limit of {} bytes exceeded: {inside} killed by the kernel's OOM killer",
            limit_bytes.unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(name: &str, first_only: bool) -> PreflightTest {
        PreflightTest {
            name: name.into(),
            command: vec!["true".into()],
            first_attempt_only: first_only,
        }
    }

    #[test]
    fn first_attempt_only_tests_are_skipped_on_retries() {
        let mut spec = AttemptSpec {
            preflight: vec![test("nccl", true), test("gpu", false)],
            ..AttemptSpec::default()
        };
        let mut said = Vec::new();
        let names = |t: Vec<&PreflightTest>| t.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(preflight_tests(&spec, |m| said.push(m.to_string()))),
            ["nccl", "gpu"]
        );
        assert!(said.is_empty());
        spec.retry_id = 1;
        assert_eq!(
            names(preflight_tests(&spec, |m| said.push(m.to_string()))),
            ["gpu"]
        );
        assert_eq!(said.len(), 1);
        assert!(said[0].contains("nccl skipped"));
    }
}
