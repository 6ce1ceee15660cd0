//! The CLI against a real service: `osmo server` in a child process, and
//! `osmo workflow run` with its embedded one.

mod cli_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::*;

const QUICK: &str = r#"workflow:
  name: quick
  tasks:
  - name: example
    image: ubuntu
    command: [sh, -c, "echo hello from $OSMO_TASK_NAME; exit 16"]
    exitActions:
      COMPLETE: 0,1-10,16,20
"#;

const RETRIED: &str = r#"workflow:
  name: retried
  tasks:
  - name: flaky
    image: ubuntu
    command: [sh, -c, "echo attempt $OSMO_RETRY_ID; if [ $OSMO_RETRY_ID = 0 ]; then exit 12; fi"]
    exitActions: {COMPLETE: 0-10, RESCHEDULE: 11-20}
"#;

const FAILING: &str = r#"workflow:
  name: failing
  tasks:
  - {name: boom, image: ubuntu, command: [sh, -c, "echo oops; exit 3"]}
"#;

const TYPO: &str = r#"workflow:
  name: typo
  tasks:
  - name: t
    image: ubuntu
    command: [sh, -c, "exit 0"]
    exitAction: {COMPLETE: "0"}
"#;

struct Service {
    dir: tempfile::TempDir,
    url: String,
    child: Child,
}

impl Service {
    fn start() -> Service {
        Service::start_with("")
    }

    /// A service whose configuration has `extra` after its one local pool.
    fn start_with(extra: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pools.yaml"),
            format!("pools:\n  default:\n    backend: local\n{extra}"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(OSMO)
            .arg("server")
            .arg("--config")
            .arg(dir.path().join("pools.yaml"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let service = Service {
            dir,
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return service;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not listen within 20 s: {}", service.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn spec(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn osmo(&self, args: &[&str]) -> Output {
        osmo_with(args, &[("OSMO_URL", &self.url)])
    }

    /// Polls `query --verbose -t json` until the workflow has finished.
    fn wait(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.osmo(&[
                "workflow",
                "query",
                id,
                "--verbose",
                "--format-type",
                "json",
            ]);
            assert_eq!(out.code, 0, "{out:#?}");
            let doc = out.json();
            if !["PENDING", "RUNNING", "WAITING"].contains(&doc["status"].as_str().unwrap()) {
                return doc;
            }
            assert!(
                Instant::now() < deadline,
                "{id} still {} after 60 s: {}",
                doc["status"],
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SAFETY: signals our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

#[test]
fn submit_query_list_logs_spec_cancel() {
    let service = Service::start();
    let quick = service.spec("quick.yaml", QUICK);
    let out = service.osmo(&["workflow", "submit", &quick, "--format-type", "json"]);
    assert_eq!(out.code, 0, "{out:#?}\n{}", service.log());
    let id = out.json()["name"].as_str().unwrap().to_string();
    assert_eq!(id, "quick-1");
    let doc = service.wait(&id);
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    assert_eq!(doc["groups"][0]["tasks"][0]["exit_code"], 16, "{doc:#}");

    let out = service.osmo(&["workflow", "query", &id]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout.contains("Workflow ID : quick-1") && out.stdout.contains("COMPLETED"),
        "{out:#?}"
    );

    let out = service.osmo(&["workflow", "list", "-t", "json"]);
    assert!(out.json()["workflows"][0]["name"] == "quick-1", "{out:#?}");
    let out = service.osmo(&["workflow", "list", "--status", "FAILED"]);
    assert_eq!(out.stdout, "No workflows found.\n", "{out:#?}");

    let out = service.osmo(&["workflow", "logs", &id, "--task", "example"]);
    assert!(
        out.stdout
            .contains("[example retry-0][stdout] hello from example"),
        "{out:#?}"
    );

    let out = service.osmo(&["workflow", "spec", &id]);
    assert_eq!(out.stdout, QUICK);

    let out = service.osmo(&["workflow", "cancel", &id]);
    assert_eq!(
        out.code, 1,
        "a finished workflow cannot be canceled: {out:#?}"
    );

    let out = service.osmo(&["workflow", "query", "nope-1"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("nope-1"), "{out:#?}");
}

#[test]
fn submit_of_a_bad_spec_says_where() {
    let service = Service::start();
    let typo = service.spec("typo.yaml", TYPO);
    let out = service.osmo(&["workflow", "submit", &typo]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains("exitAction") && out.stderr.contains("line 7"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("typo.yaml:7:"), "{out:#?}");
}

#[test]
fn cancel_a_running_workflow() {
    let service = Service::start();
    let slow = service.spec(
        "slow.yaml",
        "workflow:\n  name: slow\n  tasks:\n  - {name: sleeper, image: ubuntu, command: [sh, -c, \"sleep 30\"]}\n",
    );
    let id = service
        .osmo(&["workflow", "submit", &slow, "-t", "json"])
        .json()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let out = service.osmo(&["workflow", "cancel", &id, "-m", "not needed"]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout
            .starts_with(&format!("Cancel requested for workflow {id}")),
        "{out:#?}"
    );
    let doc = service.wait(&id);
    assert_eq!(doc["status"], "FAILED_CANCELED", "{doc:#}");
}

#[test]
fn run_shows_every_attempt_and_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retried.yaml");
    std::fs::write(&path, RETRIED).unwrap();
    let out = osmo(&["workflow", "run", path.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:#?}");
    let text = &out.stdout;
    assert!(
        text.contains("flaky retry 0 RESCHEDULED (exit 12)"),
        "{text}"
    );
    assert!(text.contains("flaky retry 1 COMPLETED (exit 0)"), "{text}");
    assert!(text.contains("[flaky retry-0][stdout] attempt 0"), "{text}");
    assert!(text.contains("[flaky retry-1][stdout] attempt 1"), "{text}");
    assert!(text.contains("Workflow retried-1 COMPLETED in"), "{text}");
}

#[test]
fn run_fails_when_the_workflow_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("failing.yaml");
    std::fs::write(&path, FAILING).unwrap();
    let data = dir.path().join("data");
    let out = osmo(&[
        "workflow",
        "run",
        path.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "-t",
        "json",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    let doc = out.json();
    assert_eq!(doc["status"], "FAILED");
    assert_eq!(doc["groups"][0]["tasks"][0]["exit_code"], 3);
    assert!(
        data.join("osmo.db").exists() || data.exists(),
        "the data directory is kept"
    );
    // A bad spec never starts a service.
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, TYPO).unwrap();
    let out = osmo(&["workflow", "run", typo.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("typo.yaml:7:"), "{out:#?}");
}

#[test]
fn events_tell_what_ran_and_what_each_exit_decided() {
    let service = Service::start();
    let retried = service.spec("retried.yaml", RETRIED);
    let out = service.osmo(&["workflow", "submit", &retried, "--format-type", "json"]);
    assert_eq!(out.code, 0, "{out:#?}\n{}", service.log());
    let id = out.json()["name"].as_str().unwrap().to_string();
    let doc = service.wait(&id);
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");

    let out = service.osmo(&["workflow", "events", &id]);
    assert_eq!(out.code, 0, "{out:#?}");
    let text = &out.stdout;
    assert!(
        text.starts_with(&format!("Workflow {id} has events:")),
        "{text}"
    );
    assert!(text.contains("[workflow] submitted by"), "{text}");
    assert!(text.contains("[flaky retry-0] command started"), "{text}");
    assert!(
        text.contains("[flaky retry-0] exited with 12 (user) → RESCHEDULED: exit code 12 matched RESCHEDULE 11-20 (task)"),
        "{text}"
    );
    assert!(
        text.contains("[flaky retry-1] exited with 0 (user) → COMPLETED"),
        "{text}"
    );
    assert!(text.contains("[workflow] finished COMPLETED"), "{text}");

    let out = service.osmo(&[
        "workflow",
        "events",
        &id,
        "--task",
        "flaky",
        "--retry-id",
        "1",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        !out.stdout.contains("retry-0") && out.stdout.contains("retry-1"),
        "{out:#?}"
    );
    let out = service.osmo(&["workflow", "events", &id, "--task", "nope"]);
    assert_ne!(out.code, 0, "{out:#?}");
}

#[test]
fn restart_runs_only_what_did_not_complete_and_reads_the_earlier_outputs() {
    let service = Service::start();
    // `prep` writes its output once; `train` fails in the first run only.
    let spec = r#"workflow:
  name: pipe
  tasks:
  - name: prep
    image: ubuntu
    command: [sh, -c, 'echo data > {{output}}/data; echo prep ran']
  - name: train
    image: ubuntu
    inputs: [{task: prep}]
    command: [sh, -c, 'cat {{input:prep}}/data; test "$OSMO_WORKFLOW_ID" != pipe-1']
"#;
    let path = service.spec("pipe.yaml", spec);
    let out = service.osmo(&["workflow", "submit", &path, "--format-type", "json"]);
    assert_eq!(out.code, 0, "{out:#?}");
    let first = out.json()["name"].as_str().unwrap().to_string();
    assert_eq!(service.wait(&first)["status"], "FAILED");

    let out = service.osmo(&["workflow", "restart", &first, "--format-type", "json"]);
    assert_eq!(out.code, 0, "{out:#?}\n{}", service.log());
    let second = out.json()["name"].as_str().unwrap().to_string();
    assert_eq!(second, "pipe-2");
    let doc = service.wait(&second);
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let prep = &doc["groups"][0]["tasks"][0];
    assert_eq!(prep["status"], "COMPLETED");
    assert_eq!(
        prep["failure_message"],
        format!("completed in {first}; not run again")
    );
    assert_eq!(
        prep["runs"].as_array().unwrap().len(),
        0,
        "prep did not run again"
    );
    let out = service.osmo(&["workflow", "logs", &second]);
    assert!(!out.stdout.contains("prep ran"), "{out:#?}");
    assert!(
        out.stdout.contains("data"),
        "train read prep's earlier output: {out:#?}"
    );

    // A completed workflow has nothing to restart.
    let out = service.osmo(&["workflow", "restart", &second]);
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(out.all().contains("COMPLETED"), "{out:#?}");
}

#[test]
fn logs_error_shows_stderr_only_and_wrong_methods_get_json() {
    let service = Service::start();
    let spec = "workflow:\n  name: both\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'echo to-out; echo to-err >&2']}\n";
    let path = service.spec("both.yaml", spec);
    let out = service.osmo(&["workflow", "submit", &path, "--format-type", "json"]);
    let id = out.json()["name"].as_str().unwrap().to_string();
    service.wait(&id);
    let out = service.osmo(&["workflow", "logs", &id, "--error"]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout.contains("to-err") && !out.stdout.contains("to-out"),
        "{out:#?}"
    );
    let all = service.osmo(&["workflow", "logs", &id]);
    assert!(
        all.stdout.contains("to-err") && all.stdout.contains("to-out"),
        "{all:#?}"
    );

    // OSMO's CLI asks error_logs; a wrong method is a JSON error too.
    let text = reqwest::blocking::get(format!("{}/api/workflow/{id}/error_logs", service.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains("to-err") && !text.contains("to-out"),
        "{text}"
    );
    let r = reqwest::blocking::Client::new()
        .delete(format!("{}/api/workflow/{id}/logs", service.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error_code"], "USER", "{body}");
}

#[test]
fn pool_task_resource_profile_and_version_describe_a_running_workflow() {
    let service = Service::start();
    let spec = service.spec(
        "sleeper.yaml",
        "workflow:\n  name: sleeper\n  tasks:\n  - {name: nap, image: ubuntu, command: [sh, -c, 'sleep 600']}\n",
    );
    let out = service.osmo(&["workflow", "submit", &spec]);
    assert_eq!(out.code, 0, "{out:#?}");
    // The task list shows it once it runs, on this machine's node.
    let deadline = Instant::now() + Duration::from_secs(30);
    let tasks = loop {
        let out = service.osmo(&["task", "list", "-t", "json"]);
        assert_eq!(out.code, 0, "{out:#?}");
        let doc = out.json();
        if doc["tasks"][0]["status"] == "RUNNING" {
            break doc;
        }
        assert!(Instant::now() < deadline, "never RUNNING: {doc:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let node = tasks["tasks"][0]["node"].as_str().unwrap().to_string();
    let out = service.osmo(&["task", "list", "--status", "running"]);
    assert!(
        out.stdout.contains("sleeper-1") && out.stdout.contains("nap"),
        "{out:#?}"
    );
    assert!(out.stdout.contains(&node), "{out:#?}");

    // The pool shows the CPU the task holds.
    let out = service.osmo(&["pool", "list"]);
    assert_eq!(out.code, 0, "{out:#?}");
    let row: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("default"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["default", "local", "ONLINE"], "{out:#?}");
    assert_eq!(row[4], "1", "one CPU in use: {out:#?}");

    let out = service.osmo(&["resource", "list"]);
    assert!(
        out.stdout.contains(&node) && out.stdout.contains("1/"),
        "{out:#?}"
    );
    let out = service.osmo(&["resource", "info", &node]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("Pools : default"), "{out:#?}");
    let out = service.osmo(&["resource", "info", "no-such-node"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no node `no-such-node`"), "{out:#?}");

    let out = service.osmo(&["profile", "set", "pool", "default"]);
    assert_eq!(out.code, 0, "{out:#?}");
    let out = service.osmo(&["profile", "set", "pool", "nowhere"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("there is no pool `nowhere`"),
        "{out:#?}"
    );
    let out = service.osmo(&["profile", "list"]);
    assert!(out.stdout.contains("Default pool : default"), "{out:#?}");

    let out = service.osmo(&["version"]);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        out.stdout.contains(&format!("Client  : osmo {version}"))
            && out
                .stdout
                .contains(&format!("Service : osmo {version} at {}", service.url)),
        "{out:#?}"
    );
    let out = service.osmo(&["workflow", "cancel", "sleeper-1"]);
    assert_eq!(out.code, 0, "{out:#?}");
}

/// The names `osmo workflow list ARGS` shows, in its order.
fn listed(service: &Service, args: &[&str]) -> Vec<String> {
    let mut all = vec!["workflow", "list", "-t", "json"];
    all.extend_from_slice(args);
    let out = service.osmo(&all);
    assert_eq!(out.code, 0, "{out:#?}");
    out.json()["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn submit_and_list_take_osmos_options() {
    let service = Service::start();
    let spec = service.spec(
        "env.yaml",
        "default-values: {a: 0, b: 0}\nworkflow:\n  name: env-{{a}}-{{b}}\n  tasks:\n  - name: t\n    image: ubuntu\n    command: [sh, -c, 'echo \"A=$A B=$B\"']\n    environment: {A: from-file}\n",
    );
    // Several values after one --set and one --set-env; the pool from the profile.
    let out = service.osmo(&["profile", "set", "pool", "default"]);
    assert_eq!(out.code, 0, "{out:#?}");
    let out = service.osmo(&[
        "workflow",
        "submit",
        &spec,
        "--set",
        "a=1",
        "b=2",
        "--set-env",
        "A=over",
        "B=x,y",
        "--priority",
        "low",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("env-1-2-1"), "{out:#?}");
    let doc = service.wait("env-1-2-1");
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}");
    let out = service.osmo(&["workflow", "logs", "env-1-2-1"]);
    assert!(out.stdout.contains("A=over B=x,y"), "{out:#?}");
    let out = service.osmo(&["workflow", "submit", &spec, "--set-env", "1BAD=x"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("not an environment variable name"),
        "{out:#?}"
    );
    let out = service.osmo(&["workflow", "submit", &spec, "--set", "a=2"]);
    assert_eq!(out.code, 0, "{out:#?}");

    let names = |args: &[&str]| listed(&service, args);
    assert_eq!(names(&[]), ["env-2-0-1", "env-1-2-1"]);
    assert_eq!(names(&["--order", "asc"]), ["env-1-2-1", "env-2-0-1"]);
    assert_eq!(names(&["--priority", "low"]), ["env-1-2-1"]);
    // Days in the test's time zone (UTC): today holds both, tomorrow neither.
    let today = jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::UTC)
        .date();
    let tomorrow = today.tomorrow().unwrap().to_string();
    let today = today.to_string();
    assert_eq!(names(&["--submitted-after", &today]).len(), 2);
    assert!(names(&["--submitted-after", &tomorrow]).is_empty());
    assert!(names(&["--submitted-before", &today]).is_empty());
    assert_eq!(names(&["--submitted-before", &tomorrow]).len(), 2);
    let out = service.osmo(&[
        "workflow",
        "list",
        "--submitted-after",
        &tomorrow,
        "--submitted-before",
        &today,
    ]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("later day"), "{out:#?}");
}

#[test]
fn an_earlier_workflow_is_submitted_again_by_its_id() {
    let service = Service::start();
    let spec = service.spec(
        "again.yaml",
        "default-values: {n: 1}\nworkflow:\n  name: again\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'echo run {{n}}']}\n",
    );
    let out = service.osmo(&["workflow", "submit", &spec, "--set", "n=7"]);
    assert_eq!(out.code, 0, "{out:#?}");
    service.wait("again-1");
    let out = service.osmo(&["workflow", "submit", "again-1", "--set", "n=8"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("is a workflow ID"), "{out:#?}");
    let out = service.osmo(&["workflow", "submit", "again-1"]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("again-2"), "{out:#?}");
    assert_eq!(service.wait("again-2")["status"], "COMPLETED");
    let logs = service.osmo(&["workflow", "logs", "again-2"]);
    assert!(
        logs.stdout.contains("run 7"),
        "the values it was rendered with: {logs:#?}"
    );
    let out = service.osmo(&["workflow", "submit", "ghost-9"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("ghost-9"), "{out:#?}");
}

#[test]
fn labels_select_workflows_and_tags_are_added_and_removed() {
    let service = Service::start();
    let spec = service.spec(
        "labeled.yaml",
        "workflow:\n  name: labeled\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n",
    );
    for labels in [
        &["--label", "project=sim_a", "--label", "team=robotics"][..],
        &["--label", "project=hil_b"][..],
        &[][..],
    ] {
        let mut args = vec!["workflow", "submit", spec.as_str()];
        args.extend_from_slice(labels);
        let out = service.osmo(&args);
        assert_eq!(out.code, 0, "{out:#?}");
    }
    let out = service.osmo(&["workflow", "submit", &spec, "--label", "project=has space"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("not a valid non-empty Kubernetes label value"),
        "{out:#?}"
    );

    let names = |args: &[&str]| listed(&service, &[&["--order", "asc"], args].concat());
    assert_eq!(
        names(&["--label", "project=(sim_*|hil_*)"]),
        ["labeled-1", "labeled-2"]
    );
    assert_eq!(
        names(&["--label", "project=sim_*", "--label", "team=robotics"]),
        ["labeled-1"]
    );
    assert_eq!(names(&["--no-label", "project"]), ["labeled-3"]);
    let out = service.osmo(&["workflow", "list", "--label", "project=(a|b"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("without `)`"), "{out:#?}");

    let out = service.osmo(&[
        "workflow",
        "tag",
        "-w",
        "labeled-1",
        "labeled-3",
        "--add",
        "gold",
        "v2",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    let out = service.osmo(&["workflow", "tag", "-w", "labeled-3", "--remove", "v2"]);
    assert!(out.stdout.contains("its tags: gold."), "{out:#?}");
    assert_eq!(names(&["--tags", "gold"]), ["labeled-1", "labeled-3"]);
    assert_eq!(names(&["--tags", "gold", "v2"]), ["labeled-1"]);
    let out = service.osmo(&["workflow", "tag"]);
    assert!(
        out.stdout.contains("- gold") && out.stdout.contains("- v2"),
        "{out:#?}"
    );
    let out = service.osmo(&["workflow", "tag", "-w", "ghost-1", "--add", "x"]);
    assert_ne!(out.code, 0);

    let out = service.osmo(&["workflow", "query", "labeled-1"]);
    assert!(
        out.stdout
            .contains("Labels      : project=sim_a, team=robotics")
            && out.stdout.contains("Tags        : gold, v2"),
        "{out:#?}"
    );
}

#[test]
fn labels_of_the_file_are_kept_and_submit_labels_override_them() {
    let service = Service::start();
    let spec = service.spec(
        "filelabels.yaml",
        "workflow:\n  name: filelabels\n  labels:\n    project: sim_c\n    team: file\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n",
    );
    let out = service.osmo(&["workflow", "submit", &spec, "--label", "team=cli"]);
    assert_eq!(out.code, 0, "{out:#?}");
    let out = service.osmo(&["workflow", "query", "filelabels-1"]);
    assert!(
        out.stdout.contains("Labels      : project=sim_c, team=cli"),
        "{out:#?}"
    );
    assert_eq!(
        listed(&service, &["--label", "project=sim_c"]),
        ["filelabels-1"]
    );
    // Together over the limit: refused, nothing submitted.
    let many: Vec<String> = (0..15).map(|i| format!("k{i}=v")).collect();
    let mut args = vec!["workflow", "submit", spec.as_str()];
    for label in &many {
        args.extend(["--label", label.as_str()]);
    }
    let out = service.osmo(&args);
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(out.stderr.contains("at most 16 labels, not 17"), "{out:#?}");
    assert_eq!(listed(&service, &[]), ["filelabels-1"]);
}

#[test]
fn only_the_tags_the_admin_allows_may_be_set() {
    let service = Service::start_with("workflow_tags: [gold, v2]\n");
    let spec = service.spec(
        "tagged.yaml",
        "workflow:\n  name: tagged\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n",
    );
    assert_eq!(service.osmo(&["workflow", "submit", &spec]).code, 0);
    let out = service.osmo(&["workflow", "tag"]);
    assert!(
        out.stdout.contains("- gold") && out.stdout.contains("- v2"),
        "{out:#?}"
    );
    let out = service.osmo(&[
        "workflow", "tag", "-w", "tagged-1", "--add", "gold", "silver",
    ]);
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr
            .contains("users may set only the tags the admin allows: gold, v2"),
        "{out:#?}"
    );
    // Refused whole: not even the allowed one was set.
    assert!(listed(&service, &["--tags", "gold"]).is_empty());
    let out = service.osmo(&["workflow", "tag", "-w", "tagged-1", "--add", "gold"]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(listed(&service, &["--tags", "gold"]), ["tagged-1"]);
}

#[test]
fn spec_is_rendered_unless_the_template_is_asked_for() {
    let service = Service::start();
    let source = "default-values: {n: 2}\nworkflow:\n  name: templated\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'echo {{ n }}']}\n";
    let spec = service.spec("templated.yaml", source);
    assert_eq!(service.osmo(&["workflow", "submit", &spec]).code, 0);
    let rendered = service.osmo(&["workflow", "spec", "templated-1"]);
    assert!(rendered.stdout.contains("echo 2"), "{rendered:#?}");
    assert!(!rendered.stdout.contains("{{ n }}"), "{rendered:#?}");
    let template = service.osmo(&["workflow", "spec", "templated-1", "--template"]);
    assert_eq!(template.stdout, source, "{template:#?}");
}

/// `osmo workflow run examples/NAME` with its data dir in `dir`.
fn run_example(name: &str, dir: &std::path::Path, extra: &[&str]) -> Output {
    let example = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let data = dir.join("data");
    let mut args = vec![
        "workflow",
        "run",
        &example,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    osmo(&args)
}

#[test]
fn the_readme_example_runs_end_to_end() {
    // README's first command: `osmo workflow run examples/pipeline.yaml`. Its
    // workers reach the trainer by `{{host:trainer}}` in the workflow's network.
    let dir = tempfile::tempdir().unwrap();
    let out = run_example("pipeline.yaml", dir.path(), &[]);
    assert_eq!(out.code, 0, "{out:#?}");
    let text = &out.stdout;
    assert!(text.contains("worker 0 sent statistics"), "{text}");
    assert!(text.contains("test MSE"), "{text}");
    assert!(text.contains("COMPLETED in"), "{text}");
}

#[test]
fn the_data_example_publishes_trains_checkpoints_and_uploads() {
    // examples/data-pipeline.yaml with its store a directory (file://).
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let url = format!("storage_url=file://{}", store.display());
    let out = run_example("data-pipeline.yaml", dir.path(), &["--set", &url]);
    assert_eq!(out.code, 0, "{out:#?}");
    let id = "data-pipeline-1";
    let model = std::fs::read_to_string(store.join(format!("model/{id}/model.json"))).unwrap();
    assert!(model.contains("\"rows\": 5000"), "{model}");
    assert!(store.join(format!("dataset/{id}/train.csv")).exists());
    let checkpoint =
        std::fs::read_to_string(store.join(format!("checkpoints/{id}/latest.json"))).unwrap();
    assert!(
        checkpoint.contains("\"epoch\": 19"),
        "the last checkpoint: {checkpoint}"
    );
}
