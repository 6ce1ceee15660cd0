//! Valid workflows load to the expected model: the seed's three examples,
//! the conformance specs and OSMO documentation examples.

use std::time::Duration;

use osmo_spec::model::{Input, Workflow};
use osmo_spec::{Action, Tokens, Values, load};

fn ok(yaml: &str) -> Workflow {
    load(yaml, "wf.yaml", &Values::default(), None)
        .unwrap_or_else(|e| panic!("should load:\n{e}\n--- spec:\n{yaml}"))
}

/// `(action, codes text)` of a task's exit actions, in file order.
fn actions(wf: &Workflow, task: &str) -> Vec<(Action, String)> {
    let (g, t) = wf.find_task(task).expect("task exists");
    wf.groups[g].tasks[t]
        .exit_actions
        .rules
        .iter()
        .map(|r| (r.action, r.codes.text.clone()))
        .collect()
}

fn group_names(wf: &Workflow) -> Vec<&str> {
    wf.groups.iter().map(|g| g.name.as_str()).collect()
}

const SEED_1: &str = "\
workflow:
  name: exit-actions-example
  tasks:
  - name: example
    image: ubuntu
    command: [/bin/sh]
    args: [/tmp/run.sh]
    files:
    - contents: |
        echo hello
        exit 16
      path: /tmp/run.sh

    exitActions:
      COMPLETE: 0,1-10,16,20
";

const SEED_2: &str = "\
workflow:
  name: exit-actions-example
  tasks:
  - name: example
    image: ubuntu
    command: [/bin/sh]
    args: [/tmp/run.sh]
    files:
    - contents: |
        echo hello
        exit 16
      path: /tmp/run.sh

    exitActions:
      COMPLETE: 0-10
      RESCHEDULE: 11-20
";

const SEED_3: &str = "\
workflow:
  name: preflight-failure-action-example
  groups:
  - name: my_group
    tasks:
    - name: task1
      image: ubuntu
      command: [bash]
      args: [/tmp/run.sh]
      files:
      - contents: |
          date
          sleep 10
        path: /tmp/run.sh
      exitActions:
        RESCHEDULE: 1001
      lead: true
    - name: task2
      image: ubuntu
      command: [bash]
      args: [/tmp/run.sh]
      files:
      - contents: |
          echo hello
          sleep 10
          echo bye
        path: /tmp/run.sh
";

#[test]
fn seed_example_1() {
    let wf = ok(SEED_1);
    assert_eq!(wf.name, "exit-actions-example");
    assert_eq!(group_names(&wf), ["example-group"]);
    let g = &wf.groups[0];
    assert_eq!(
        (g.lead, g.barrier, g.ignore_nonlead_status),
        (0, true, true)
    );
    let task = &g.tasks[0];
    assert!(task.lead);
    assert_eq!(task.command, ["/bin/sh"]);
    assert_eq!(task.args, ["/tmp/run.sh"]);
    assert_eq!(task.files[0].path, "/tmp/run.sh");
    assert_eq!(task.files[0].contents, "echo hello\nexit 16\n");
    assert_eq!(
        actions(&wf, "example"),
        [(Action::Complete, "0,1-10,16,20".to_string())]
    );
    let rules = &task.exit_actions;
    assert_eq!(
        rules.lookup(16).map(|(r, _)| r.action),
        Some(Action::Complete)
    );
    assert_eq!(rules.lookup(11), None);
    assert_eq!(task.resource, "default");
    assert!(wf.resources.contains_key("default"));
}

#[test]
fn seed_example_2() {
    let wf = ok(SEED_2);
    assert_eq!(
        actions(&wf, "example"),
        [
            (Action::Complete, "0-10".to_string()),
            (Action::Reschedule, "11-20".to_string())
        ]
    );
    let (g, t) = wf.find_task("example").unwrap();
    let (rule, range) = wf.groups[g].tasks[t].exit_actions.lookup(16).unwrap();
    assert_eq!(
        (rule.action, range.to_string()),
        (Action::Reschedule, "11-20".to_string())
    );
}

#[test]
fn seed_example_3() {
    let wf = ok(SEED_3);
    assert_eq!(group_names(&wf), ["my_group"]);
    let g = &wf.groups[0];
    assert_eq!(g.lead, 0);
    assert!(g.tasks[0].lead && !g.tasks[1].lead);
    assert_eq!(
        actions(&wf, "task1"),
        [(Action::Reschedule, "1001".to_string())]
    );
    assert!(actions(&wf, "task2").is_empty());
    assert!(g.upstream.is_empty());
}

#[test]
fn plain_tasks_with_inputs_become_a_chain_of_groups() {
    // conformance dag-01
    let wf = ok("\
workflow:
  name: cascade
  tasks:
  - {name: a, image: ubuntu, command: [sh, -c, \"exit 1\"]}
  - name: b
    image: ubuntu
    command: [sh, -c, \"exit 0\"]
    inputs: [{task: a}]
    exitActions: {COMPLETE: \"3000\"}
  - {name: c, image: ubuntu, command: [sh, -c, \"exit 0\"], inputs: [{task: b}]}
  - {name: other, image: ubuntu, command: [sh, -c, \"exit 0\"]}
");
    assert_eq!(
        group_names(&wf),
        ["a-group", "b-group", "c-group", "other-group"]
    );
    let upstream: Vec<Vec<usize>> = wf.groups.iter().map(|g| g.upstream.clone()).collect();
    assert_eq!(upstream, [vec![], vec![0], vec![1], vec![]]);
    assert_eq!(
        wf.groups[1].tasks[0].inputs,
        [Input::Task {
            task: "a".into(),
            regex: None
        }]
    );
}

#[test]
fn groups_in_any_order_and_a_group_named_like_its_task() {
    // conformance group-03, with the groups swapped: upstream may come later.
    let wf = ok(r#"
workflow:
  name: barrier
  groups:
  - name: check
    tasks:
    - name: check
      image: ubuntu
      command: [sh, -c, 'cat {{input:a}}/start {{input:b}}/start {{ input:1 }}']
      inputs: [{task: a}, {task: b}]
  - name: gang
    barrier: false
    ignoreNonleadStatus: false
    tasks:
    - name: a
      lead: true
      image: ubuntu
      command: [sh, -c, 'date > {{output}}/start; sleep 2']
    - name: b
      image: ubuntu
      command: [sh, -c, 'date > {{output}}/start; nc {{host:a}} 80']
"#);
    assert_eq!(group_names(&wf), ["check", "gang"]);
    assert_eq!(wf.groups[0].upstream, [1]);
    let gang = &wf.groups[1];
    assert_eq!(
        (gang.lead, gang.barrier, gang.ignore_nonlead_status),
        (0, false, false)
    );
    // Reserved tokens are kept for per-task substitution.
    assert_eq!(
        wf.groups[0].tasks[0].command[2],
        "cat {{input:a}}/start {{input:b}}/start {{ input:1 }}"
    );
}

#[test]
fn substitution_per_task() {
    let wf = ok(r#"
workflow:
  name: data-pass
  tasks:
  - name: producer
    image: ubuntu
    command: [sh, -c, "echo 42 > {{output}}/answer.txt"]
  - name: consumer
    image: ubuntu
    command: [sh, -c, 'test "$(cat {{input:0}}/answer.txt)" = "$(cat {{input:producer}}/answer.txt)"']
    environment: {WF: "{{workflow_id}}", N: 3}
    files: [{path: /tmp/id, contents: "{{ uuid }}"}, {path: /tmp/b, contents: "e3t1dWlkfX0=", base64: true}]
    inputs: [{task: producer}]
"#);
    let tokens = Tokens {
        output: "/out".into(),
        inputs: vec![("producer".into(), "/in/0".into())],
        workflow_id: "data-pass-1".into(),
        uuid: "u-1".into(),
        ..Tokens::default()
    };
    let (g, t) = wf.find_task("consumer").unwrap();
    let task = wf.groups[g].tasks[t].substituted(&tokens);
    assert_eq!(
        task.command[2],
        r#"test "$(cat /in/0/answer.txt)" = "$(cat /in/0/answer.txt)""#
    );
    assert_eq!(task.environment["WF"], "data-pass-1");
    assert_eq!(task.environment["N"], "3");
    assert_eq!(task.files[0].contents, "u-1");
    assert_eq!(
        task.files[1].contents, "e3t1dWlkfX0=",
        "base64 contents are left alone"
    );
}

#[test]
fn osmo_documentation_pipeline() {
    let wf = ok(r#"
version: 2
workflow:
  name: ml-pipeline
  pool: ignored-here
  resources:
    default: {cpu: 4, gpu: 1, memory: 16Gi, storage: 10Gi}
    small: {cpu: 500m, memory: 512Mi, platform: ovx-a40, nodesExcluded: [node-1]}
  timeout: {exec_timeout: 8h, queue_timeout: 6h}
  tasks:
  - {name: preprocess, image: "python:3.10", command: [python], args: [prep.py, "--out={{output}}", 3, 2.50], resource: small}
  - name: train
    image: pytorch/pytorch
    command: [python]
    args: [train.py, "--data={{input:0}}", "--out={{output}}"]
    inputs: [{task: preprocess}]
    outputs: [{url: "s3://bucket/models/"}]
    exitActions: {COMPLETE: "0", RESCHEDULE: "137,3001,3006"}
    checkpoint: [{path: /tmp/models, url: "s3://bucket/ckpt", frequency: 5m}]
    credentials: {s3-cred: /mnt/creds, wandb: {WANDB_API_KEY: key}}
  - {name: evaluate, image: "python:3.10", command: [python], args: [eval.py], inputs: [{task: train}]}
"#);
    assert_eq!(wf.timeout.exec, Some(Duration::from_secs(8 * 3600)));
    assert_eq!(wf.timeout.queue, Some(Duration::from_secs(6 * 3600)));
    let default = &wf.resources["default"];
    assert_eq!(
        (
            default.cpu,
            default.gpu,
            default.memory_bytes,
            default.storage_bytes
        ),
        (4.0, 1, Some(16 << 30), Some(10 * (1 << 30)))
    );
    let small = &wf.resources["small"];
    assert_eq!(
        (small.cpu, small.memory_bytes, small.platform.as_deref()),
        (0.5, Some(512 << 20), Some("ovx-a40"))
    );
    assert_eq!(small.nodes_excluded, ["node-1"]);
    let (g, t) = wf.find_task("preprocess").unwrap();
    assert_eq!(
        wf.groups[g].tasks[t].args,
        ["prep.py", "--out={{output}}", "3", "2.50"]
    );
    assert_eq!(wf.groups[g].tasks[t].resource, "small");
    assert_eq!(
        actions(&wf, "train"),
        [
            (Action::Complete, "0".to_string()),
            (Action::Reschedule, "137,3001,3006".to_string())
        ]
    );
    let upstream: Vec<Vec<usize>> = wf.groups.iter().map(|g| g.upstream.clone()).collect();
    assert_eq!(upstream, [vec![], vec![0], vec![1]]);
    let (g, t) = wf.find_task("train").unwrap();
    let train = &wf.groups[g].tasks[t];
    assert_eq!(train.checkpoint[0].frequency.as_deref(), Some("5m"));
    assert_eq!(train.credentials.len(), 2);
    assert_eq!(train.outputs[0].url, "s3://bucket/models/");
}

#[test]
fn osmo_documentation_jinja_example() {
    let source = r#"
default-values:
  workflow_name: jinja-example
  upload: s3://bucket/ckpt
workflow:
  name: {{ workflow_name }}
  groups:
  - name: training
    tasks:
    {% for i in range(3) %}
    - name: worker{{ i }}
      {% if i == 0 %}lead: true{% endif %}
      image: ubuntu
      command: [sh, -c, "echo {{ i }} > {{output}}/rank"]
      checkpoint: [{path: /tmp/models, url: "{{upload}}", frequency: 5m}]
    {% endfor %}
"#;
    let wf = load(
        source,
        "wf.yaml",
        &Values {
            set: vec![("workflow_name".into(), "renamed".into())],
            ..Values::default()
        },
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wf.name, "renamed");
    let g = &wf.groups[0];
    assert_eq!(g.tasks.len(), 3);
    assert_eq!(g.lead, 0);
    assert_eq!(g.tasks[2].command[2], "echo 2 > {{output}}/rank");
    assert_eq!(g.tasks[1].checkpoint[0].url, "s3://bucket/ckpt");
}

#[test]
fn yaml_anchors_merge_keys_and_int_codes() {
    let wf = ok(&"\
x-common: &common
  image: ubuntu
  command: [sh, -c, 'exit 3']
workflow:
  name: anchors
  tasks:
  - <<: *common
    name: a
    exitActions: {RESCHEDULE: 3, fail: 4-9}
  - <<: *common
    name: b
    command: [true]
"
    .replace("x-common", "default-values"));
    assert_eq!(wf.groups[0].tasks[0].command, ["sh", "-c", "exit 3"]);
    assert_eq!(wf.groups[1].tasks[0].command, ["true"]);
    assert_eq!(
        actions(&wf, "a"),
        [
            (Action::Reschedule, "3".to_string()),
            (Action::Fail, "4-9".to_string())
        ]
    );
}

#[test]
fn resources_fit_the_pool() {
    use osmo_spec::{NodeCapacity, PoolConfig};
    let pool = PoolConfig {
        node: NodeCapacity {
            cpu: Some(8.0),
            gpu: Some(1),
            memory_bytes: Some(16 << 30),
            storage_bytes: Some(1 << 40),
        },
        platforms: vec!["dgx".into()],
        ..PoolConfig::default()
    };
    let yaml = "workflow:\n  name: w\n  resources:\n    default: {cpu: 8, gpu: 1, memory: 16Gi, storage: 1Ti, platform: dgx}\n    huge: {cpu: 999}\n  tasks:\n  - {name: a, image: i, command: [x]}\n";
    assert!(load(yaml, "wf.yaml", &Values::default(), Some(&pool)).is_ok());
}

#[test]
fn local_files_are_inlined_by_the_client() {
    let source = "\
workflow:
  name: local
  tasks:
  - name: train
    image: pytorch
    command: [python, /tmp/train.py]
    files:
    - path: /tmp/train.py
      localpath: train.py
    - {localpath: \"conf/ds.json\", path: /tmp/ds.json}
";
    // Without inlining, the server refuses `localpath` (it has no access to the user's files).
    let err = load(source, "wf.yaml", &Values::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wf.yaml:9:18: `localpath` must be inlined before submission"),
        "{err}"
    );
    let read = |path: &str| match path {
        "train.py" => Ok("print({'out': '{{output}}'})\n".to_string()),
        "conf/ds.json" => Ok("{\"lr\": 0.1}".to_string()),
        other => Err(format!("{other} not found")),
    };
    let inlined = osmo_spec::inline_local_files(source, "wf.yaml", read).unwrap();
    let wf = ok(&inlined);
    let files = &wf.groups[0].tasks[0].files;
    assert_eq!(files[0].contents, "print({'out': '{{output}}'})\n");
    assert_eq!(files[1].contents, "{\"lr\": 0.1}");
    let tokens = Tokens {
        output: "/out".into(),
        ..Tokens::default()
    };
    assert_eq!(
        wf.groups[0].tasks[0].substituted(&tokens).files[0].contents,
        "print({'out': '/out'})\n"
    );
    let err =
        osmo_spec::inline_local_files("    localpath: nope.py\n", "wf.yaml", read).unwrap_err();
    assert_eq!(
        err.to_string(),
        "wf.yaml:1:5: cannot read local file `nope.py`: nope.py not found\n  |\n1 |     localpath: nope.py\n  |     ^\n1 error"
    );
}
