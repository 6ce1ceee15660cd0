//! The CLI's local commands through the real binary: validate, explain,
//! completion, help and usage errors. No service involved.

mod cli_support;

use cli_support::*;

// ---- validate ------------------------------------------------------------

#[test]
fn the_seed_examples_are_valid() {
    for file in [
        "seed-complete.yaml",
        "seed-reschedule.yaml",
        "seed-preflight.yaml",
        "pipeline.yaml",
    ] {
        let out = osmo(&["workflow", "validate", file]);
        assert_eq!(out.code, 0, "{file}: {out:#?}");
        assert!(out.stdout.contains("is valid"), "{file}: {out:#?}");
        assert!(out.stderr.is_empty(), "{file}: {out:#?}");
    }
}

#[test]
fn validate_summarizes_groups_and_edges() {
    let out = osmo(&["workflow", "validate", "pipeline.yaml"]);
    assert_eq!(out.code, 0, "{out:#?}");
    insta::assert_snapshot!("validate_pipeline", out.stdout);
    let out = osmo(&["workflow", "validate", "seed-preflight.yaml"]);
    assert_eq!(out.code, 0, "{out:#?}");
    insta::assert_snapshot!("validate_preflight_group", out.stdout);
}

#[test]
fn validate_json() {
    let out = osmo(&[
        "workflow",
        "validate",
        "pipeline.yaml",
        "--format-type",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    let doc = out.json();
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["name"], "ml-pipeline");
    assert_eq!(doc["group_count"], 3);
    assert_eq!(doc["task_count"], 3);
    assert_eq!(doc["edge_count"], 2);
    assert_eq!(doc["groups"][1]["name"], "train-group");
    assert_eq!(
        doc["groups"][1]["upstream"],
        serde_json::json!(["preprocess-group"])
    );
    assert_eq!(doc["groups"][1]["lead"], "train");
}

#[test]
fn validate_reports_every_error_with_its_place() {
    let out = osmo(&["workflow", "validate", "invalid-many.yaml"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    let err = &out.stderr;
    // The unknown key, the overlap and the reversed range, all at once.
    assert!(err.contains("invalid-many.yaml:7:"), "{err}");
    assert!(err.contains("exitAction"), "{err}");
    assert!(err.contains("COMPLETE") && err.contains("FAIL"), "{err}");
    assert!(err.contains("20-11"), "{err}");
    let places = err
        .lines()
        .filter(|l| l.starts_with("invalid-many.yaml:"))
        .count();
    assert!(places >= 3, "want at least 3 located errors: {err}");
    assert!(err.trim_end().ends_with("errors"), "{err}");
    assert!(err.contains('^'), "a caret under the column: {err}");
}

#[test]
fn validate_errors_as_json() {
    let out = osmo(&["workflow", "validate", "invalid-many.yaml", "-t", "json"]);
    assert_eq!(out.code, 1, "{out:#?}");
    let doc = out.json();
    assert_eq!(doc["valid"], false);
    let errors = doc["errors"].as_array().unwrap();
    assert!(errors.len() >= 3, "{doc:#}");
    assert_eq!(doc["error_count"], errors.len());
    assert!(
        errors
            .iter()
            .all(|e| e["file"] == "invalid-many.yaml" && e["line"].as_u64().unwrap() > 0),
        "{doc:#}"
    );
    assert_eq!(errors[0]["line"], 7, "{doc:#}");
}

#[test]
fn validate_finds_cycles() {
    let out = osmo(&["workflow", "validate", "invalid-cycle.yaml"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("cycle"), "{out:#?}");
    assert!(out.stderr.contains("invalid-cycle.yaml:"), "{out:#?}");
}

#[test]
fn template_values_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("templated.yaml");
    std::fs::write(
        &path,
        "default-values: {n: 2}\nworkflow:\n  name: \"{{ name }}\"\n  tasks:\n  {% for i in range(n) %}\n  - {name: t{{ i }}, image: ubuntu, command: [\"true\"]}\n  {% endfor %}\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let out = osmo(&["workflow", "validate", path]);
    assert_eq!(out.code, 1, "`name` is undefined: {out:#?}");
    assert!(out.stderr.contains("name"), "{out:#?}");
    let out = osmo(&[
        "workflow",
        "validate",
        path,
        "--set-string",
        "name=wf",
        "--set",
        "n=4",
        "-t",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.json()["name"], "wf");
    assert_eq!(out.json()["task_count"], 4);
}

#[test]
fn bad_set_values_are_usage_errors() {
    let out = osmo(&["workflow", "validate", "pipeline.yaml", "--set", "nonsense"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("KEY=VALUE"), "{out:#?}");
}

#[test]
fn unreadable_files_are_clear_errors() {
    let out = osmo(&["workflow", "validate", "no-such-file.yaml"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr
            .starts_with("error: cannot read the workflow file no-such-file.yaml"),
        "{out:#?}"
    );
    let out = osmo(&["workflow", "validate", "."]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("is a directory"), "{out:#?}");
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, b"workflow:\n  name: \xff\xfe\n").unwrap();
    let out = osmo(&["workflow", "validate", binary.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("not UTF-8"), "{out:#?}");
}

#[test]
fn huge_files_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(50 << 20).unwrap();
    let out = osmo(&["workflow", "validate", path.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("at most 4 MiB"), "{out:#?}");
    assert!(out.took.as_secs() < 5, "took {:?}", out.took);
}

#[test]
fn validate_against_a_pool() {
    let out = osmo(&[
        "workflow",
        "validate",
        "pipeline.yaml",
        "--config",
        "pools.yaml",
        "--pool",
        "strict",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout.contains("resources fit pool `strict`"),
        "{out:#?}"
    );
    let out = osmo(&[
        "workflow",
        "validate",
        "pipeline.yaml",
        "--config",
        "pools.yaml",
        "--pool",
        "nope",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains("no pool `nope`") && out.stderr.contains("default, strict"),
        "{out:#?}"
    );
    let out = osmo(&["workflow", "validate", "pipeline.yaml", "--pool", "strict"]);
    assert_eq!(out.code, 2, "--pool needs --config: {out:#?}");
    let out = osmo(&[
        "workflow",
        "validate",
        "pipeline.yaml",
        "--config",
        "seed-complete.yaml",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains("pools configuration is not valid"),
        "{out:#?}"
    );
}

// ---- explain -------------------------------------------------------------

fn headline(out: &Output) -> &str {
    out.stdout.lines().next().unwrap_or_default()
}

#[test]
fn explain_seed_complete_on_16() {
    let out = osmo(&[
        "workflow",
        "explain",
        "seed-complete.yaml",
        "--task",
        "example",
        "--exit-code",
        "16",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        headline(&out),
        "exit code 16 → rule COMPLETE 16 (task exitActions) → COMPLETED"
    );
}

#[test]
fn explain_seed_reschedule_on_16() {
    let out = osmo(&[
        "workflow",
        "explain",
        "seed-reschedule.yaml",
        "--task",
        "example",
        "--exit-code",
        "16",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        headline(&out),
        "exit code 16 → rule RESCHEDULE 11-20 (task exitActions) → RESCHEDULED: a new attempt (retry 1 of 3) is scheduled"
    );
    insta::assert_snapshot!("explain_reschedule", out.stdout);
}

#[test]
fn explain_retry_limit() {
    let args = [
        "workflow",
        "explain",
        "seed-reschedule.yaml",
        "--task",
        "example",
        "--exit-code",
        "16",
    ];
    let out = osmo(&[&args[..], &["--retry-id", "3", "--config", "pools.yaml"]].concat());
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        headline(&out),
        "exit code 16 → rule RESCHEDULE 11-20 (task exitActions) → FAILED: retry limit 3 reached, so the code's own status stands"
    );
    assert!(out.stdout.contains("retry limit 3 reached"), "{out:#?}");
    // A pool that allows no retry refuses even the first reschedule.
    let out = osmo(&[&args[..], &["--config", "pools.yaml", "--pool", "strict"]].concat());
    assert!(
        headline(&out).contains("FAILED: retry limit 0 reached"),
        "{out:#?}"
    );
}

#[test]
fn explain_pool_rule() {
    let out = osmo(&[
        "workflow",
        "explain",
        "pipeline.yaml",
        "--task",
        "evaluate",
        "--exit-code",
        "7",
        "--config",
        "pools.yaml",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        headline(&out),
        "exit code 7 → rule COMPLETE 7 (pool `default` default_exit_actions) → COMPLETED"
    );
    insta::assert_snapshot!("explain_pool_rule", out.stdout);
    let out = osmo(&[
        "workflow",
        "explain",
        "pipeline.yaml",
        "--task",
        "evaluate",
        "--exit-code",
        "7",
        "--config",
        "pools.yaml",
        "-t",
        "json",
    ]);
    let doc = out.json();
    assert_eq!(doc["decision"]["rule"]["origin"], "pool");
    assert_eq!(doc["decision"]["rule"]["action"], "COMPLETE");
    assert_eq!(doc["decision"]["status"], "COMPLETED");
    assert_eq!(doc["pool"], "default");
    assert_eq!(doc["lookup"].as_array().unwrap().len(), 3);
}

#[test]
fn explain_default_rule() {
    let out = osmo(&[
        "workflow",
        "explain",
        "pipeline.yaml",
        "--task",
        "evaluate",
        "--exit-code",
        "137",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(headline(&out), "exit code 137 → no rule (default) → FAILED");
    assert!(out.stdout.contains("SIGKILL"), "{out:#?}");
    let out = osmo(&[
        "workflow",
        "explain",
        "pipeline.yaml",
        "--task",
        "evaluate",
        "--exit-code",
        "0",
        "-t",
        "json",
    ]);
    let doc = out.json();
    assert_eq!(doc["decision"]["rule"]["origin"], "default");
    assert_eq!(doc["decision"]["status"], "COMPLETED");
    assert_eq!(doc["meaning"], "task completed");
    // The task's own rule for 137 wins over everything.
    let out = osmo(&[
        "workflow",
        "explain",
        "pipeline.yaml",
        "--task",
        "train",
        "--exit-code",
        "137",
    ]);
    assert!(
        headline(&out).contains("rule RESCHEDULE 137 (task exitActions) → RESCHEDULED"),
        "{out:#?}"
    );
}

#[test]
fn explain_preflight_seed() {
    let out = osmo(&[
        "workflow",
        "explain",
        "seed-preflight.yaml",
        "--task",
        "task1",
        "--exit-code",
        "1001",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        headline(&out).contains("rule RESCHEDULE 1001 (task exitActions) → RESCHEDULED"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("preflight"), "{out:#?}");
}

#[test]
fn explain_unknown_task_and_bad_spec() {
    let out = osmo(&[
        "workflow",
        "explain",
        "pipeline.yaml",
        "--task",
        "nope",
        "--exit-code",
        "1",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr
            .contains("has no task `nope`; its tasks: preprocess, train, evaluate"),
        "{out:#?}"
    );
    let out = osmo(&[
        "workflow",
        "explain",
        "invalid-many.yaml",
        "--task",
        "t",
        "--exit-code",
        "1",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("invalid-many.yaml:7:"), "{out:#?}");
    let out = osmo(&["workflow", "explain", "pipeline.yaml", "--task", "train"]);
    assert_eq!(out.code, 2, "--exit-code is required: {out:#?}");
}

// ---- completion, help, usage ---------------------------------------------

#[test]
fn completion_scripts() {
    for (shell, marker) in [
        ("bash", "complete"),
        ("zsh", "#compdef osmo"),
        ("fish", "complete -c osmo"),
    ] {
        let out = osmo(&["completion", shell]);
        assert_eq!(out.code, 0, "{shell}: {out:#?}");
        assert!(
            out.stdout.contains(marker),
            "{shell}: {}",
            &out.stdout[..out.stdout.len().min(300)]
        );
        assert!(
            out.stdout.contains("validate"),
            "{shell} completes subcommands"
        );
    }
    assert_eq!(osmo(&["completion", "powershell"]).code, 2);
}

#[test]
fn help_for_every_command() {
    let commands: &[&[&str]] = &[
        &[],
        &["server"],
        &["workflow"],
        &["workflow", "validate"],
        &["workflow", "explain"],
        &["workflow", "submit"],
        &["workflow", "run"],
        &["workflow", "query"],
        &["workflow", "list"],
        &["workflow", "cancel"],
        &["workflow", "logs"],
        &["workflow", "spec"],
        &["completion"],
        &["agent"],
    ];
    for command in commands {
        let out = osmo(&[command, &["--help"][..]].concat());
        assert_eq!(out.code, 0, "{command:?}: {out:#?}");
        assert!(out.stdout.contains("Usage: osmo"), "{command:?}: {out:#?}");
    }
    let top = osmo(&["--help"]).stdout;
    assert!(
        !top.contains("\n  agent") && !top.contains("\n  exec"),
        "internal commands are hidden: {top}"
    );
    let version = osmo(&["--version"]);
    assert_eq!(version.code, 0);
    assert!(version.stdout.starts_with("osmo "), "{version:#?}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["workflow", "submit"][..],
        &["nonsense"],
        &["workflow", "list", "--count", "0"],
        &["workflow", "list", "-s", "BOGUS"],
    ] {
        let out = osmo(args);
        assert_eq!(out.code, 2, "{args:?}: {out:#?}");
        assert!(
            out.stderr.contains("Usage:") || out.stderr.contains("error:"),
            "{args:?}: {out:#?}"
        );
    }
    // Status names are case-insensitive.
    let out = osmo(&[
        "workflow",
        "list",
        "-s",
        "running",
        "--url",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
}

#[test]
fn exec_needs_its_server_and_attempt() {
    // `osmo exec` is the in-task controller the Slurm backend starts; by hand
    // it is a usage error without the server and attempt it was given.
    let out = osmo(&["exec", "--anything"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("--server"), "{out:#?}");
}
