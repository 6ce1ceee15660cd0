//! One row per invalid workflow: inline YAML in, the exact diagnostics out
//! (`LINE:COL: MESSAGE`, plus ` (found: VALUE)` when there is one), in order.

use osmo_spec::{Diagnostics, NodeCapacity, PoolConfig, Values, load};

fn headers(diagnostics: &Diagnostics) -> Vec<String> {
    diagnostics
        .iter()
        .map(|d| {
            let mut s = format!("{}:{}: {}", d.line, d.column, d.message);
            if let Some(v) = &d.value {
                s.push_str(&format!(" (found: {v})"));
            }
            s
        })
        .collect()
}

fn errors_with(yaml: &str, pool: Option<&PoolConfig>) -> Vec<String> {
    match load(yaml, "wf.yaml", &Values::default(), pool) {
        Ok(w) => panic!("expected errors, got a workflow: {w:#?}\n--- spec:\n{yaml}"),
        Err(d) => headers(&d),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    errors_with(yaml, None)
}

/// A one-task workflow with `extra` lines added to the task (indented 4).
fn task_with(extra: &str) -> String {
    let mut s = String::from(
        "workflow:\n  name: wf\n  tasks:\n  - name: t\n    image: ubuntu\n    command: [sh]\n",
    );
    for line in extra.lines() {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

#[track_caller]
fn check(yaml: &str, expected: &[&str]) {
    let got = errors(yaml);
    assert_eq!(got, expected, "--- spec:\n{yaml}");
}

#[test]
fn top_level() {
    let rows: &[(&str, &[&str])] = &[
        (
            "version: 1\nworkflow: {name: w, tasks: [{name: t, image: i, command: [x]}]}\n",
            &["1:10: unsupported version `1`; only version 2 is accepted"],
        ),
        (
            "verison: 2\nworkflow: {name: w, tasks: [{name: t, image: i, command: [x]}]}\n",
            &["1:1: unknown field `verison` at line 1, column 1; did you mean `version`?"],
        ),
        (
            "version: 2\n",
            &[
                "1:1: missing `workflow`; a workflow file needs a `workflow:` mapping with a name and tasks",
            ],
        ),
        (
            "[1, 2]\n",
            &["1:1: expected a mapping (`key: value`), found a list"],
        ),
        (
            "workflow: {name: 1abc, tasks: [{name: t, image: i, command: [x]}]}\n",
            &[
                "1:18: workflow name `1abc` is not valid; a name starts with a letter, ends with a letter or digit, and has only letters, digits, `-` and `_`",
            ],
        ),
        (
            &format!(
                "workflow: {{name: {}, tasks: [{{name: t, image: i, command: [x]}}]}}\n",
                "a".repeat(65)
            ),
            &[&format!(
                "1:18: workflow name is 65 characters long; at most 64 are allowed (found: {})",
                "a".repeat(65)
            )],
        ),
        (
            "workflow:\n  name: w\n  tasks: [{name: t, image: i, command: [x]}]\n  groups: [{name: g, tasks: [{name: u, image: i, command: [x]}]}]\n",
            &[
                "4:11: a workflow has either `tasks` or `groups`, not both; put the plain tasks into groups",
            ],
        ),
        (
            "workflow:\n  name: w\n",
            &["2:3: the workflow has no `tasks` and no `groups`; give one of them"],
        ),
        (
            "workflow:\n  name: w\n  tasks: []\n",
            &["3:10: `tasks` is empty; a workflow needs at least one task"],
        ),
        (
            "workflow:\n  tasks: [{name: t, image: i, command: [x]}]\n",
            &["2:3: missing `name` of the workflow"],
        ),
        (
            "workflow:\n  name: w\n  timeout: {exec_timeout: 2x, queue_timeout: 10m, run_timeout: 1h}\n  tasks: [{name: t, image: i, command: [x]}]\n",
            &[
                "3:27: invalid `exec_timeout`: `2x` has an unknown unit `x`; expected a duration such as `30s`, `10m`, `2h`, `1d` or `PT10S` (found: 2x)",
                "3:51: unknown field `run_timeout` at line 3, column 51; expected one of `exec_timeout`, `queue_timeout`",
            ],
        ),
        (
            "default-values: [1]\nworkflow: {}\n",
            &["1:1: `default-values` must be a mapping of names to values, found a list"],
        ),
    ];
    for (yaml, expected) in rows {
        check(yaml, expected);
    }
}

#[test]
fn tasks() {
    let rows: &[(String, &[&str])] = &[
        (task_with("exitAction: {COMPLETE: 0}"), &["7:5: unknown field `exitAction` at line 7, column 5; did you mean `exitActions`?"]),
        (
            task_with("colour: red"),
            &["7:5: unknown field `colour` at line 7, column 5; expected one of `name`, `image`, `command`, `args`, `lead`, `environment`, `files`, `inputs`, `outputs`, `exitActions`, `resource`, `credentials`, `checkpoint`, `privileged`, `hostNetwork`, `volumeMounts`, `kpis`, `downloadType`, `cacheSize`"],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: bad name, image: i, command: [x]}\n".into(),
            &["4:12: task name `bad name` is not valid; a name starts with a letter, ends with a letter or digit, and has only letters, digits, `-` and `_`"],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: osmo-ctrl, image: i, command: [x]}\n".into(),
            &["4:12: a task cannot be named `osmo-ctrl`; that name is reserved for OSMO"],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: train, image: i, command: [x]}\n  - {name: Train, image: i, command: [x]}\n  - {name: a-b, image: i, command: [x]}\n  - {name: a_b, image: i, command: [x]}\n".into(),
            &[
                "5:12: task name `Train` is already used by task `train` at line 4, column 12; task names must be unique (ignoring case, with `-` equal to `_`)",
                "7:12: task name `a_b` is already used by task `a-b` at line 6, column 12; task names must be unique (ignoring case, with `-` equal to `_`)",
            ],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {image: i, command: [x]}\n".into(),
            &["4:5: a task is missing `name`"],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: t, command: [x]}\n".into(),
            &["4:5: task `t` is missing `image`"],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: t, image: i}\n".into(),
            &["4:5: task `t` is missing `command`; give it as a list, e.g. `[sh, -c, \"...\"]`"],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: t, image: i, command: []}\n".into(),
            &["4:34: `command` of task `t` is empty; give at least the program to run"],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: t, image: i, command: sh -c true}\n".into(),
            &["4:34: expected a list, found a string (found: sh -c true)"],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: t, image: i, command: [x, [y]], args: [1, {a: b}]}\n".into(),
            &[
                "4:38: `command` of task `t` must be a string, found a list",
                "4:54: `args` of task `t` must be a string, found a mapping",
            ],
        ),
        (task_with("lead: yes"), &["7:11: `lead` of task `t` must be `true` or `false`, found a string (found: yes)"]),
        (
            task_with("environment: {A: 1, B: , C: [x]}"),
            &[
                "7:25: environment variable `B` of task `t` has no value; write `\"\"` for an empty one",
                "7:33: environment variable `C` must be a string, found a list",
            ],
        ),
        (
            task_with("files:\n- {path: run.sh, contents: x}\n- {path: /osmo/run.sh, contents: x}\n- {path: /tmp/a, contents: x}\n- {path: /tmp/a, contents: y}\n- {path: /tmp/b, contents: '!!!', base64: true}\n- {path: /tmp/c}\n- {localpath: ./x, path: /tmp/d}"),
            &[
                "8:14: file path `run.sh` must be absolute (start with `/`)",
                "9:14: file path `/osmo/run.sh` is under `/osmo`, which is reserved for OSMO; pick another directory",
                "11:14: task `t` writes `/tmp/a` twice (first at line 10, column 14); file paths must be unique",
                "12:32: contents of `/tmp/b` are marked `base64: true` but are not valid base64",
                "13:7: a file of task `t` is missing `contents`",
                "14:19: `localpath` must be inlined before submission; give the file's text in `contents` (found: ./x)",
            ],
        ),
        (
            task_with("resource: big"),
            &["7:15: task `t` uses resource `big`, which is not defined in `resources` (defined: `default`)"],
        ),
        (
            task_with("inputs: [{task: a, url: s3://x}, {regex: x}, {task: 'wf-1:'}, {dataset: {name: d}}]"),
            &[
                "7:14: an input of task `t` needs exactly one of `task` (a task of this workflow) or `url`",
                "7:38: an input of task `t` needs exactly one of `task` (a task of this workflow) or `url`",
                "7:57: input `wf-1:` must be WORKFLOW_ID:TASK (another workflow's task) or a task of this workflow",
                "7:77: task `t` takes a `dataset` input, which needs OSMO's dataset service; osmo has none: use `url:` (or `task:`) instead",
            ],
        ),
        (
            task_with("outputs: [{regex: x}]\ncheckpoint: [{path: /ckpt, url: s3://b, frequency: often}]\ncredentials: {a: 5, b: /mnt/b, c: {ENV: key}}\nvolumeMounts: /data\nprivileged: 1"),
            &[
                "7:15: an output of task `t` is missing `url`",
                "8:56: invalid checkpoint `frequency`: `often` is not a duration; expected a duration such as `30s`, `10m`, `2h`, `1d` or `PT10S` (found: often)",
                "9:22: credential `a` must be a mount path (`/path`) or a mapping of environment variables to keys",
                "10:19: expected a list, found a string (found: /data)",
                "11:17: `privileged` of task `t` must be `true` or `false`, found an integer (found: 1)",
            ],
        ),
    ];
    for (yaml, expected) in rows {
        check(yaml, expected);
    }
}

#[test]
fn exit_actions() {
    let rows: &[(&str, &[&str])] = &[
        (
            "exitActions: {RESTART: 1}",
            &["7:19: unknown exit action `RESTART`; expected one of COMPLETE, FAIL, RESCHEDULE"],
        ),
        (
            "exitActions: {COMPLETE: 1-a}",
            &[
                "7:29: invalid codes for COMPLETE: `1-a` is not an exit code or range; expected `N` or `START-END` with non-negative integers (found: 1-a)",
            ],
        ),
        (
            "exitActions: {RESCHEDULE: 20-11}",
            &[
                "7:31: invalid codes for RESCHEDULE: reversed range `20-11`: the start must not exceed the end (did you mean `11-20`?) (found: 20-11)",
            ],
        ),
        (
            "exitActions: {COMPLETE: 0-10, FAIL: '5,11-20'}",
            &[
                "7:35: exit codes 5 are listed under both COMPLETE and FAIL; each code may have one action",
            ],
        ),
        (
            "exitActions: {COMPLETE: 0-10, FAIL: 8-12, RESCHEDULE: 10-30}",
            &[
                "7:35: exit codes 8-10 are listed under both COMPLETE and FAIL; each code may have one action",
                "7:47: exit codes 10 are listed under both COMPLETE and RESCHEDULE; each code may have one action",
                "7:47: exit codes 10-12 are listed under both FAIL and RESCHEDULE; each code may have one action",
            ],
        ),
        (
            "exitActions: {COMPLETE: 1, complete: 2}",
            &[
                "7:32: exit action COMPLETE is given twice (first at line 7, column 19); put all its codes in one list",
            ],
        ),
        (
            "exitActions: {FAIL: [1, 2]}",
            &["7:25: codes for FAIL must be a list such as `0,1-10,16`, found a list"],
        ),
        (
            "exitActions: {FAIL: ''}",
            &[
                "7:25: invalid codes for FAIL: empty exit-code list; expected codes such as `0,1-10,16` (found: )",
            ],
        ),
        (
            "exitActions: [COMPLETE]",
            &["7:18: expected a mapping (`key: value`), found a list"],
        ),
    ];
    for (extra, expected) in rows {
        check(&task_with(extra), expected);
    }
}

#[test]
fn groups_and_leads() {
    let rows: &[(&str, &[&str])] = &[
        (
            "workflow:\n  name: w\n  groups:\n  - name: g\n    tasks:\n    - {name: a, lead: true, image: i, command: [x]}\n    - {name: b, lead: true, image: i, command: [x]}\n",
            &[
                "7:23: group `g` has 2 lead tasks (`a`, `b`); exactly one task may have `lead: true`",
            ],
        ),
        (
            "workflow:\n  name: w\n  groups:\n  - name: g\n    tasks:\n    - {name: a, image: i, command: [x]}\n    - {name: b, image: i, command: [x]}\n",
            &["4:11: group `g` has 2 tasks but no lead; mark exactly one task with `lead: true`"],
        ),
        (
            "workflow:\n  name: w\n  groups:\n  - name: g\n    tasks: []\n  - name: h\n",
            &[
                "5:12: group `g` has no tasks; a group needs at least one task",
                "6:5: group `h` has no tasks; a group needs at least one task",
            ],
        ),
        (
            "workflow:\n  name: w\n  groups:\n  - {name: g, tasks: [{name: a, image: i, command: [x]}]}\n  - {name: G, tasks: [{name: b, image: i, command: [x]}]}\n",
            &[
                "5:12: group name `G` is already used by group `g` at line 4, column 12; group names must be unique (ignoring case, with `-` equal to `_`)",
            ],
        ),
        (
            "workflow:\n  name: w\n  groups:\n  - {name: g, barrier: no, ignoreNonleadStatus: 0, tasks: [{name: a, image: i, command: [x]}], lead: a}\n",
            &[
                "4:24: `barrier` must be `true` or `false`, found a string (found: no)",
                "4:49: `ignoreNonleadStatus` must be `true` or `false`, found an integer (found: 0)",
                "4:96: unknown field `lead` at line 4, column 96; expected one of `name`, `tasks`, `barrier`, `ignoreNonleadStatus`",
            ],
        ),
    ];
    for (yaml, expected) in rows {
        check(yaml, expected);
    }
}

#[test]
fn dependencies() {
    let rows: &[(&str, &[&str])] = &[
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: a, image: i, command: [x], inputs: [{task: nope}]}\n",
            &[
                "4:55: task `a` takes input from task `nope`, which is not a task of this workflow (found: nope)",
            ],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: a, image: i, command: [x], inputs: [{task: a}]}\n",
            &["4:55: task `a` takes input from itself; that is a dependency cycle"],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: a, image: i, command: [x], inputs: [{task: c}]}\n  - {name: b, image: i, command: [x], inputs: [{task: a}]}\n  - {name: c, image: i, command: [x], inputs: [{task: b}]}\n  - {name: d, image: i, command: [x], inputs: [{task: c}]}\n",
            &[
                "4:55: dependency cycle: task `a` takes input from task `c`, task `c` takes input from task `b`, task `b` takes input from task `a`; remove one of these inputs",
            ],
        ),
        (
            "workflow:\n  name: w\n  groups:\n  - name: g\n    tasks:\n    - {name: a, lead: true, image: i, command: [x]}\n    - {name: b, image: i, command: [x], inputs: [{task: a}]}\n",
            &[
                "7:57: task `b` takes input from task `a` of its own group `g`; tasks of a group run together, so that is a dependency cycle (move one to another group)",
            ],
        ),
        (
            "workflow:\n  name: w\n  tasks:\n  - {name: a, image: i, command: [x, '{{input:0}}', '{{ input:b }}', '{{host:b}}']}\n  - {name: b, image: i, command: [x]}\n",
            &[
                "4:38: `{{input:0}}` in task `a` refers to input 0, but the task has 0 input(s) (counted from 0)",
                "4:53: `{{input:b}}` in task `a` names task `b`, which is not among its inputs; add `{task: b}` to its `inputs`",
                "4:70: `{{host:b}}` in task `a` names task `b`, which is not in its group `a-group`; only tasks of the same group can reach each other",
            ],
        ),
    ];
    for (yaml, expected) in rows {
        check(yaml, expected);
    }
}

#[test]
fn resources_against_the_pool() {
    let pool = PoolConfig {
        node: NodeCapacity {
            cpu: Some(8.0),
            gpu: Some(1),
            memory_bytes: Some(16 << 30),
            storage_bytes: None,
        },
        platforms: vec!["dgx".into()],
        ..PoolConfig::default()
    };
    let yaml = "workflow:\n  name: w\n  resources:\n    default: {cpu: 64, gpu: 2, memory: 32Gi, storage: 1Ti, platform: ovx}\n    unused: {cpu: 1000}\n    bad: {cpu: lots, memory: 1GB, colour: red}\n  tasks:\n  - {name: a, image: i, command: [x]}\n";
    assert_eq!(
        errors_with(yaml, Some(&pool)),
        [
            "4:20: resource `default` asks for 64 CPUs but a node of the pool has 8 (used by task `a`)",
            "4:29: resource `default` asks for 2 GPUs but a node of the pool has 1 (used by task `a`)",
            "4:40: resource `default` asks for 32Gi of memory but a node of the pool has 16Gi (used by task `a`)",
            "4:70: resource `default` asks for platform `ovx`, but the pool offers `dgx` (used by task `a`)",
            "6:16: invalid `cpu` of resource `bad`: `lots` is not a CPU count; expected a number of CPUs such as `2`, `0.5` or `500m` (found: lots)",
            "6:30: invalid `memory` of resource `bad`: `1GB` has an unknown suffix `GB`; expected a size such as `512Mi`, `16Gi`, `1G` or `1024` (found: 1GB)",
            "6:35: unknown field `colour` at line 6, column 35; expected one of `cpu`, `gpu`, `memory`, `storage`, `platform`, `nodesExcluded`, `topology`",
        ]
    );
    // Without a pool only the values themselves are checked.
    assert_eq!(errors(yaml).len(), 3);
    // An explicit `resources` without `default` leaves tasks without a resource.
    check(
        "workflow:\n  name: w\n  resources: {gpu: {gpu: 1}}\n  tasks:\n  - {name: a, image: i, command: [x]}\n",
        &[
            "5:5: task `a` uses resource `default`, which is not defined in `resources` (defined: `gpu`)",
        ],
    );
}

#[test]
fn a_group_needing_more_gpus_than_a_local_node_is_refused() {
    let pool = PoolConfig {
        node: NodeCapacity {
            gpu: Some(4),
            ..NodeCapacity::default()
        },
        ..PoolConfig::default()
    };
    let yaml = "workflow:\n  name: w\n  resources:\n    default: {gpu: 2}\n  groups:\n  - name: fits\n    tasks:\n    - {name: a, image: i, command: [x], lead: true}\n    - {name: b, image: i, command: [x]}\n  - name: big\n    tasks:\n    - {name: c, image: i, command: [x], lead: true}\n    - {name: d, image: i, command: [x]}\n    - {name: e, image: i, command: [x]}\n";
    assert_eq!(
        errors_with(yaml, Some(&pool)),
        [
            "10:11: group `big` asks for 6 GPUs in all, but the pool hands out 4: a group's tasks run at the same time, each on GPUs of its own",
        ]
    );
    // Slurm spreads a group over nodes: only each task is checked.
    let slurm = PoolConfig {
        backend: osmo_spec::config::BackendKind::Slurm,
        ..pool
    };
    assert!(load(yaml, "wf.yaml", &Values::default(), Some(&slurm)).is_ok());
}

#[test]
fn yaml_problems() {
    check(
        "workflow:\n  name: w\n  name: v\n  tasks: [{name: t, image: i, command: [x]}]\n",
        &[
            "3:3: duplicate key `name` with a different value; it is already set at line 2, column 3",
        ],
    );
    // A key repeated with the same value is accepted, as PyYAML (and so OSMO) does.
    let repeated =
        "workflow:\n  name: w\n  name: w\n  tasks: [{name: t, image: i, command: [x]}]\n";
    assert_eq!(
        load(repeated, "wf.yaml", &Values::default(), None)
            .unwrap()
            .name,
        "w"
    );
    let truncated = "workflow:\n  name: w\n  tasks:\n  - {name: t, image: i, command: [x\n";
    let got = errors(truncated);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("5:1: yaml syntax error:"), "{got:?}");
    check("", &["0:0: the file is empty; expected a yaml mapping"]);
    check(
        "# only a comment\n",
        &["0:0: the file is empty; expected a yaml mapping"],
    );
}

#[test]
fn reports_every_error_at_once() {
    let yaml = "\
workflow:
  name: many
  tasks:
  - name: a
    image: ubuntu
    command: [sh]
    exitAction: {COMPLETE: 0}
  - name: b
    image: ubuntu
    command: [sh]
    inputs: [{task: zzz}]
    exitActions: {COMPLETE: 0-10, FAIL: 5}
  - name: A
    image: ubuntu
    command: []
";
    assert_eq!(
        errors(yaml),
        [
            "7:5: unknown field `exitAction` at line 7, column 5; did you mean `exitActions`?",
            "11:21: task `b` takes input from task `zzz`, which is not a task of this workflow (found: zzz)",
            "12:35: exit codes 5 are listed under both COMPLETE and FAIL; each code may have one action",
            "13:11: task name `A` is already used by task `a` at line 4, column 11; task names must be unique (ignoring case, with `-` equal to `_`)",
            "15:14: `command` of task `A` is empty; give at least the program to run",
        ]
    );
}

#[test]
fn display_names_file_line_column_and_counts() {
    let err = load(
        &task_with("exitAction: {COMPLETE: 0}"),
        "wf.yaml",
        &Values::default(),
        None,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "wf.yaml:7:5: unknown field `exitAction` at line 7, column 5; did you mean `exitActions`?\n  |\n7 |     exitAction: {COMPLETE: 0}\n  |     ^\n1 error"
    );
}

#[test]
fn volume_mounts_are_checked_and_must_be_allowed_by_the_pool() {
    let yaml = "workflow:\n  name: w\n  tasks:\n  - name: t\n    image: i\n    command: [x]\n    volumeMounts: ['/opt:/home/foo:/bad', 'relative', '/data:/in/task', '/dev/shm']\n";
    assert_eq!(
        errors(yaml),
        [
            "7:20: volume mount `/opt:/home/foo:/bad` must be `/host/path` or `/host/path:/path/in/task`, with absolute paths",
            "7:43: volume mount `relative` must be `/host/path` or `/host/path:/path/in/task`, with absolute paths",
        ]
    );
    let fine = "workflow:\n  name: w\n  tasks:\n  - name: t\n    image: i\n    command: [x]\n    volumeMounts: ['/data/sets:/in/task', '/dev/shm']\n";
    let none = PoolConfig::default();
    assert_eq!(
        errors_with(fine, Some(&none)),
        [
            "7:20: volume mount `/data/sets:/in/task` of task `t` is not allowed: the pool allows no host mounts (its `allowed_mounts` is empty)",
            "7:43: volume mount `/dev/shm` of task `t` is not allowed: the pool allows no host mounts (its `allowed_mounts` is empty)",
        ]
    );
    let some = PoolConfig {
        allowed_mounts: vec!["/data/".into(), "/dev/shm".into()],
        ..PoolConfig::default()
    };
    let w = load(fine, "wf.yaml", &Values::default(), Some(&some)).unwrap();
    assert_eq!(
        w.groups[0].tasks[0].volume_mounts,
        ["/data/sets:/in/task", "/dev/shm"]
    );
    let near_miss = PoolConfig {
        allowed_mounts: vec!["/dat".into()],
        ..PoolConfig::default()
    };
    assert_eq!(
        errors_with(fine, Some(&near_miss)).len(),
        2,
        "/dat must not allow /data/sets"
    );
}

#[test]
fn a_dataset_input_gets_one_clear_refusal() {
    let yaml = "workflow:\n  name: w\n  tasks:\n  - name: t\n    image: i\n    command: [sh, -c, 'ls {{input:0}}']\n    inputs:\n    - dataset: {name: my_dataset}\n";
    let got = errors(yaml);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("8:16: task `t` takes a `dataset` input"),
        "{got:?}"
    );
}

#[test]
fn a_workflow_larger_than_the_pool_allows_is_refused_with_the_limit() {
    let yaml = "workflow:\n  name: wide\n  tasks:\n  - {name: a, image: i, command: [\"true\"]}\n  - {name: b, image: i, command: [\"true\"]}\n  - {name: c, image: i, command: [\"true\"]}\n";
    let small = PoolConfig {
        max_tasks_per_workflow: 2,
        ..PoolConfig::default()
    };
    let got = errors_with(yaml, Some(&small));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("has 3 tasks; the pool allows at most 2")
            && got[0].contains("max_tasks_per_workflow"),
        "{got:?}"
    );
    let enough = PoolConfig {
        max_tasks_per_workflow: 3,
        ..PoolConfig::default()
    };
    assert!(load(yaml, "wf.yaml", &Values::default(), Some(&enough)).is_ok());
    assert_eq!(
        PoolConfig::default().max_tasks_per_workflow,
        10_000,
        "at least 10,000 by default"
    );
}

#[test]
fn labels_of_the_file_are_kubernetes_labels() {
    assert_eq!(
        errors(
            "workflow:\n  name: wf\n  labels:\n    project: sim a\n    bad key: x\n    team: robotics\n  tasks:\n  - {name: t, image: ubuntu, command: [sh]}\n"
        ),
        [
            "4:14: label value `sim a` of `project` is not a valid non-empty Kubernetes label value (letters, digits, -, _ and ., at most 63, starting and ending with a letter or digit)",
            "5:5: label key `bad key` is not a valid Kubernetes label key ([prefix/]name: letters, digits, -, _ and ., at most 63)",
        ]
    );
    let many: String = (0..17).map(|i| format!("    k{i}: v\n")).collect();
    assert_eq!(
        errors(&format!(
            "workflow:\n  name: wf\n  labels:\n{many}  tasks:\n  - {{name: t, image: ubuntu, command: [sh]}}\n"
        )),
        ["4:5: a workflow may have at most 16 labels, not 17"]
    );
    let ok = load(
        "workflow:\n  name: wf\n  labels: {project: sim_a, example.com/team: robotics}\n  tasks:\n  - {name: t, image: ubuntu, command: [sh]}\n",
        "wf.yaml",
        &Values::default(),
        None,
    )
    .unwrap();
    assert_eq!(ok.labels["project"], "sim_a");
    assert_eq!(ok.labels["example.com/team"], "robotics");
}
