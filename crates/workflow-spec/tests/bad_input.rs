//! Hostile or broken files: each gives a clear error, quickly, and never a panic.

use std::time::{Duration, Instant};

use osmo_spec::{Diagnostics, Values, load, load_config};

#[track_caller]
fn quick_error(source: &str) -> Diagnostics {
    let start = Instant::now();
    let err = load(source, "wf.yaml", &Values::default(), None).expect_err("should be refused");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!err.is_empty());
    err
}

#[test]
fn truncated_file_is_a_syntax_error_with_a_place() {
    let cut =
        "workflow:\n  name: w\n  tasks:\n  - name: t\n    image: ubuntu\n    command: [sh, -c,\n";
    let err = quick_error(cut);
    assert_eq!(err.len(), 1, "{err}");
    let d = &err.0[0];
    assert!(d.message.starts_with("yaml syntax error:"), "{err}");
    assert_eq!((d.line, d.column), (7, 1), "{err}");
    assert_eq!(
        d.message,
        "yaml syntax error: while parsing a node, did not find expected node content"
    );
}

#[test]
fn binary_garbage() {
    let garbage: String = (0u32..4096)
        .map(|i| char::from_u32((i * 7919) % 0x2FF + 1).unwrap_or('?'))
        .collect();
    quick_error(&garbage);
    quick_error("\u{0}\u{1}\u{2}\u{7f}\u{fffd}:\n\t- ]]]");
}

#[test]
fn fifty_megabytes_are_refused_at_once() {
    let big = "a".repeat(50 << 20);
    let start = Instant::now();
    let err = load(&big, "big.yaml", &Values::default(), None).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        err.to_string(),
        "big.yaml: the file is 50.0 MiB (52428800 bytes) but the limit is 4.0 MiB (4194304 bytes); a workflow file must be smaller\n1 error"
    );
    assert!(
        load_config(&big, "config.yaml")
            .unwrap_err()
            .to_string()
            .contains("50.0 MiB")
    );
}

#[test]
fn deep_nesting_and_alias_bombs() {
    quick_error(&"[".repeat(1_000_000));
    quick_error(&format!("workflow: {}", "{a: ".repeat(200)));
    let mut bomb =
        String::from("default-values: {}\nworkflow:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            format!("b{}", i - 1)
        };
        bomb.push_str(&format!(
            "  b{i}: &b{i} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    let err = quick_error(&bomb);
    assert!(err.to_string().contains("aliases are expanded"), "{err}");
}

#[test]
fn many_errors_are_capped() {
    let mut source = String::from("workflow:\n  name: w\n  tasks:\n");
    for i in 0..1000 {
        source.push_str(&format!(
            "  - {{name: t{i}, image: i, command: [x], bad{i}: 1}}\n"
        ));
    }
    let err = quick_error(&source);
    assert_eq!(err.len(), 201);
    assert_eq!(err.0[200].message, "800 more errors not shown");
}

/// A configuration's diagnostics as `LINE:COL: MESSAGE`.
fn config_errors(config: &str) -> Vec<String> {
    load_config(config, "config.yaml")
        .unwrap_err()
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
        .collect()
}

#[test]
fn service_config_errors_are_all_reported() {
    let config = "\
pools:
  default:
    backend: kubernetes
    runtime: docker
    max_retry_per_task: -1
    default_exit_actions: {COMPLETE: 0-10, FAIL: 5, RESTART: 1}
    preflight:
    - {name: nccl, command: []}
    - {command: [true]}
    node: {cpu: 8, memory: 8Gi, disk: 1}
    default_exec_timeout: 2h
    colour: red
";
    assert_eq!(
        config_errors(config),
        [
            "3:14: unknown backend for pool `default`; expected `local` or `slurm`",
            "5:25: `max_retry_per_task` of pool `default` must be a non-negative integer",
            "6:44: exit codes 5 are listed under both COMPLETE and FAIL; each code may have one action",
            "6:53: unknown exit action `RESTART`; expected one of COMPLETE, FAIL, RESCHEDULE",
            "8:29: `command` of preflight test `nccl` is empty",
            "9:7: a preflight test of pool `default` is missing `name`",
            "10:33: unknown field `disk` at line 10, column 33; expected one of `cpu`, `gpu`, `memory`, `storage`",
            "12:5: unknown field `colour` at line 12, column 5; expected one of `backend`, `runtime`, `max_retry_per_task`, `max_tasks_per_workflow`, `default_exit_actions`, `preflight`, `node`, `cpu_capacity`, `gpu_capacity`, `default_exec_timeout`, `default_queue_timeout`, `platforms`, `allowed_mounts`, `hidden_paths`, `run_as_root`, `network`, `options`, `partition`, `account`, `qos`",
        ]
    );
}

#[test]
fn service_config_full() {
    let config = load_config(
        "\
pools:
  default:
    backend: slurm
    runtime: docker
    partition: debug
    options: {gres: 'gpu:1', nodes: 2}
    node: {cpu: 8, gpu: 2, memory: 8Gi, storage: 100G}
    cpu_capacity: 16
    default_exec_timeout: 2h
    default_queue_timeout: PT30M
    platforms: [dgx]
  other: {}
",
        "config.yaml",
    )
    .unwrap();
    let pool = &config.pools["default"];
    assert_eq!(pool.backend, osmo_spec::BackendKind::Slurm);
    assert_eq!(pool.runtime, osmo_spec::RuntimeKind::Docker);
    assert_eq!(pool.options["partition"], "debug");
    assert_eq!(pool.options["nodes"], 2);
    assert_eq!(pool.node.memory_bytes, Some(8 << 30));
    assert_eq!(pool.node.storage_bytes, Some(100_000_000_000));
    assert_eq!(pool.cpu_capacity, Some(16.0));
    assert_eq!(pool.default_queue_timeout, Some(Duration::from_secs(1800)));
    assert_eq!(config.pools["other"], osmo_spec::PoolConfig::default());
    assert!(
        load_config("pools: {}\n", "c.yaml")
            .unwrap_err()
            .to_string()
            .contains("`pools` is empty")
    );
    assert!(
        load_config("", "c.yaml")
            .unwrap_err()
            .to_string()
            .contains("the file is empty")
    );
}

#[test]
fn service_config_workflow_tags() {
    let config = load_config(
        "pools: {default: {}}\nworkflow_tags: [gold, v2]\n",
        "c.yaml",
    )
    .unwrap();
    assert_eq!(
        config.workflow_tags,
        Some(vec!["gold".to_string(), "v2".to_string()])
    );
    assert_eq!(
        load_config("pools: {default: {}}\n", "c.yaml")
            .unwrap()
            .workflow_tags,
        None
    );
    assert_eq!(
        config_errors("pools: {default: {}}\nworkflow_tags: [gold, 'bad tag']\n"),
        [
            "2:23: a workflow tag holds letters, digits, -, _ and . (at most 63, starting and ending with a letter or digit)"
        ]
    );
}
