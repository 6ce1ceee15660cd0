//! The administrators' label policy (OSMO's workflow configuration
//! `labels_config`), through `GET/PATCH /api/configs/workflow`, as NVIDIA
//! OSMO's `workflow_labels` scenario tests use it: off, warn and enforce
//! policies judge a submit's labels (the file's and the submit's), a refused
//! submit stores nothing, malformed labels are refused with OSMO's words, a
//! pod label prefix is checked with each key and never shown, and the policy
//! outlives a server restart.

mod common;

use common::{Server, local_pool};
use serde_json::{Value, json};

/// OSMO's scenario spec, trimmed: file labels, a `team` label from a value.
const SPEC: &str = r#"
workflow:
  name: "{{workflow_name}}"
  labels:
    policy-yaml: from-yaml
    {% if nested_team %}
    team:
      nested: value
    {% elif team_yaml %}
    team: "{{team_yaml}}"
    {% endif %}
  tasks:
  - name: labels
    image: ubuntu
    command: ["/bin/sh", "-c", "exit 0"]
default-values:
  workflow_name: labels
  team_yaml: ""
  nested_team: false
"#;

fn submit(server: &Server, name: &str, team: &str, query: &str) -> (u16, Value) {
    let mut vars = vec![format!("workflow_name={name}")];
    if !team.is_empty() {
        vars.push(format!("team_yaml={team}"));
    }
    let body = json!({"file": SPEC, "set_variables": vars}).to_string();
    let (status, text) = server.post(&format!("/api/pool/default/workflow?{query}"), body);
    (status, serde_json::from_str(&text).unwrap())
}

fn set_policy(server: &Server, labels_config: Value) -> Value {
    let body = json!({"configs_dict": {"labels_config": labels_config}, "description": "test"});
    let r = reqwest::blocking::Client::new()
        .patch(format!("{}/api/configs/workflow", server.url))
        .json(&body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let doc: Value = r.json().unwrap();
    assert_eq!(status, 200, "{doc}");
    doc
}

fn team_policy(mode: &str) -> Value {
    json!({"policy": [{"key": "team", "allow_list": ["team_a", "team_b"], "enforcement": mode}]})
}

#[test]
fn off_warn_and_enforce_policies_judge_a_submits_labels() {
    let server = Server::start(local_pool());
    assert_eq!(
        server.get_json("/api/configs/workflow")["labels_config"],
        json!({"policy": [], "pod_label_prefix": ""})
    );

    set_policy(&server, team_policy("off"));
    let (status, r) = submit(&server, "off", "team_x", "validation_only=true");
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["logs"], "Workflow validation succeeded.");
    assert_eq!(r["warnings"], json!([]));

    let applied = set_policy(&server, team_policy("warn"));
    assert_eq!(applied["labels_config"]["policy"][0]["enforcement"], "warn");
    let (_, missing) = submit(&server, "warn", "", "validation_only=true");
    assert!(
        missing["warnings"][0]
            .as_str()
            .unwrap()
            .contains("missing label 'team'"),
        "{missing}"
    );
    let (_, unlisted) = submit(&server, "warn", "team_x", "validation_only=true");
    assert!(
        unlisted["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
    let (_, allowed) = submit(&server, "warn", "team_a", "validation_only=true");
    assert_eq!(allowed["warnings"], json!([]));

    set_policy(&server, team_policy("enforce"));
    let before = server.workflow_count();
    for (team, words) in [
        ("", "missing required label 'team'"),
        ("team_x", "not allowed"),
    ] {
        // A real submit, not only a validation: refused, and nothing stored.
        let (status, r) = submit(&server, "enforce", team, "");
        assert_eq!(status, 400, "{r}");
        assert!(r["message"].as_str().unwrap().contains(words), "{r}");
    }
    assert_eq!(
        server.workflow_count(),
        before,
        "a refused submit stores nothing"
    );
    // The submit's own label counts as the file's does.
    let (status, r) = submit(&server, "enforce", "", "label=team%3Dteam_b");
    assert_eq!(status, 200, "{r}");
    let id = r["name"].as_str().unwrap().to_string();
    let doc = server.get_json(&format!("/api/workflow/{id}"));
    assert_eq!(
        doc["labels"],
        json!({"policy-yaml": "from-yaml", "team": "team_b"})
    );
    assert!(doc.get("warnings").is_none(), "{doc}");

    // A workflow's query shows what its labels break in the policy of now.
    set_policy(
        &server,
        json!({"policy": [{"key": "team", "allow_list": ["team_a"], "enforcement": "warn"}]}),
    );
    let doc = server.get_json(&format!("/api/workflow/{id}"));
    assert!(
        doc["warnings"][0].as_str().unwrap().contains("not allowed"),
        "{doc}"
    );

    // The policy is kept in the store: the same after a restart.
    let mut server = server;
    server.kill();
    server.spawn();
    assert_eq!(
        server.get_json("/api/configs/workflow")["labels_config"]["policy"][0]["allow_list"],
        json!(["team_a"])
    );
}

#[test]
fn malformed_labels_and_policies_are_refused_in_osmos_words() {
    let server = Server::start(local_pool());
    let body = json!({"file": SPEC, "set_variables": ["nested_team=true"]}).to_string();
    let (status, text) = server.post("/api/pool/default/workflow?validation_only=true", body);
    assert_eq!(status, 400);
    assert!(text.contains("must be strings"), "{text}");
    for (label, words) in [
        (
            "bad/key/nested%3Dvalue",
            "is not a valid Kubernetes label key",
        ),
        ("team%3D", "is not a valid non-empty Kubernetes label value"),
    ] {
        let (status, r) = submit(
            &server,
            "bad",
            "",
            &format!("validation_only=true&label={label}"),
        );
        assert_eq!(status, 400, "{r}");
        assert!(r["message"].as_str().unwrap().contains(words), "{r}");
    }

    // A policy that cannot hold is refused whole; the old one stays.
    let patch = |labels_config: Value| {
        reqwest::blocking::Client::new()
            .patch(format!("{}/api/configs/workflow", server.url))
            .json(&json!({"configs_dict": {"labels_config": labels_config}}))
            .send()
            .unwrap()
    };
    for bad in [
        json!({"policy": [{"key": "bad key"}]}),
        json!({"policy": [{"key": "team", "enforcement": "sometimes"}]}),
        json!({"policy": [{"key": "team"}, {"key": "team"}]}),
        json!({"policy": [{"key": "team", "allow_list": ["not ok"]}]}),
        json!({"colour": "blue"}),
    ] {
        let r = patch(bad.clone());
        assert_eq!(r.status().as_u16(), 400, "{bad}");
        let body: Value = r.json().unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("labels_config"),
            "{body}"
        );
    }
    let r = reqwest::blocking::Client::new()
        .patch(format!("{}/api/configs/workflow", server.url))
        .json(&json!({"configs_dict": {"max_num_tasks": 3}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        server.get_json("/api/configs/workflow")["labels_config"]["policy"],
        json!([])
    );
}

#[test]
fn a_pod_label_prefix_is_checked_with_each_key_and_never_shown() {
    let server = Server::start(local_pool());
    set_policy(&server, json!({"pod_label_prefix": "example.com/"}));
    let (status, r) = submit(
        &server,
        "bare",
        "",
        "validation_only=true&label=experiment%3Dalpha",
    );
    assert_eq!(status, 200, "{r}");
    let (status, r) = submit(
        &server,
        "slash",
        "",
        "validation_only=true&label=team.example.com%2Frole%3Dlead",
    );
    assert_eq!(status, 400, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("example.com/team.example.com/role"),
        "{r}"
    );
    let (status, r) = submit(&server, "kept", "", "label=experiment%3Dprefixed");
    assert_eq!(status, 200, "{r}");
    let id = r["name"].as_str().unwrap();
    assert_eq!(
        server.get_json(&format!("/api/workflow/{id}"))["labels"],
        json!({"policy-yaml": "from-yaml", "experiment": "prefixed"})
    );
    // Fields not named are kept; `null` resets one.
    set_policy(&server, team_policy("warn"));
    let doc = set_policy(&server, json!({"pod_label_prefix": null}));
    assert_eq!(doc["labels_config"]["pod_label_prefix"], "");
    assert_eq!(doc["labels_config"]["policy"][0]["key"], "team");
}
