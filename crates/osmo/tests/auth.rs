//! `auth: tokens`: every API call needs a token; workflows belong to their
//! submitter; tokens are made on the server's machine and stored hashed;
//! `osmo` inside a task acts with its workflow's token; the CLI logs in.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{OSMO, Server, local_pool, wait_for};
use serde_json::Value;

const AUTH_POOL: &str = "auth: tokens\npools:\n  default:\n    backend: local\n";

fn token(server: &Server, user: &str, role: &str) -> String {
    let out = Command::new(OSMO)
        .args([
            "token",
            "create",
            "--user",
            user,
            "--role",
            role,
            "--data-dir",
        ])
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let url = format!("{}{path}", server.url);
    let mut request = match method {
        "GET" => client.get(url),
        "PATCH" => client.patch(url).header("content-type", "application/json"),
        _ => client.post(url).header("content-type", "application/json"),
    };
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.body(b);
    }
    let r = request.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

fn submit(server: &Server, token: &str, spec: &str) -> String {
    let body = serde_json::json!({ "file": spec }).to_string();
    let (status, reply) = call(
        server,
        "POST",
        "/api/pool/default/workflow",
        Some(token),
        Some(body),
    );
    assert_eq!(status, 200, "{reply}");
    reply["name"].as_str().unwrap().to_string()
}

fn names(list: &Value) -> Vec<String> {
    list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tokens_decide_who_may_do_what() {
    let server = Server::start(AUTH_POOL);
    let alice = token(&server, "alice", "user");
    let bob = token(&server, "bob", "user");
    let admin = token(&server, "root", "admin");

    // Without a token: only what anyone may see.
    let (status, body) = call(&server, "GET", "/api/workflow", None, None);
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("osmo login"),
        "{body}"
    );
    let (status, _) = call(&server, "GET", "/api/workflow", Some("osmo_forged"), None);
    assert_eq!(status, 401);
    assert_eq!(call(&server, "GET", "/api/health", None, None).0, 200);

    // Alice's task runs `osmo` against the service with its workflow's token.
    let id = submit(
        &server,
        &alice,
        "workflow:\n  name: mine\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'osmo workflow query $OSMO_WORKFLOW_ID > {{output}}/q && until [ -e {{output}}/go ]; do sleep 0.02; done']}\n",
    );
    let output = server.output_dir(&id, "t", 0);
    let query = wait_for(Duration::from_secs(30), "the task's own query", || {
        std::fs::read_to_string(output.join("q"))
            .ok()
            .filter(|q| !q.is_empty())
    });
    assert!(query.contains(&id), "{query}");

    let (_, doc) = call(
        &server,
        "GET",
        &format!("/api/workflow/{id}"),
        Some(&bob),
        None,
    );
    assert_eq!(doc["submitted_by"], "alice", "{doc}");
    // Bob sees only his own by default, everyone's when he asks.
    let (_, list) = call(&server, "GET", "/api/workflow", Some(&bob), None);
    assert!(names(&list).is_empty(), "{list}");
    let (_, list) = call(
        &server,
        "GET",
        "/api/workflow?all_users=true",
        Some(&bob),
        None,
    );
    assert_eq!(names(&list), vec![id.clone()]);
    let (_, list) = call(&server, "GET", "/api/workflow", Some(&alice), None);
    assert_eq!(names(&list), vec![id.clone()]);

    // Bob may not cancel it; an admin may.
    let cancel = format!("/api/workflow/{id}/cancel");
    let (status, body) = call(&server, "POST", &cancel, Some(&bob), Some("{}".into()));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("belongs to alice"),
        "{body}"
    );
    let (status, body) = call(&server, "POST", &cancel, Some(&admin), Some("{}".into()));
    assert_eq!(status, 200, "{body}");
    let doc = wait_for(Duration::from_secs(30), "the cancel", || {
        let (_, doc) = call(
            &server,
            "GET",
            &format!("/api/workflow/{id}"),
            Some(&alice),
            None,
        );
        (doc["status"] != "RUNNING" && doc["status"] != "PENDING").then_some(doc)
    });
    assert_eq!(doc["status"], "FAILED_CANCELED", "{doc:#}");

    // Another user's task cannot be entered; only an admin changes the label policy.
    let (status, body) = call(
        &server,
        "POST",
        &format!("/api/workflow/{id}/exec/task/t"),
        Some(&bob),
        None,
    );
    assert_eq!(status, 403, "{body}");
    let policy = r#"{"configs_dict": {"labels_config": {"pod_label_prefix": "example.com/"}}}"#;
    let (status, body) = call(
        &server,
        "PATCH",
        "/api/configs/workflow",
        Some(&alice),
        Some(policy.into()),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(
        &server,
        "PATCH",
        "/api/configs/workflow",
        Some(&admin),
        Some(policy.into()),
    );
    assert_eq!(status, 200, "{body}");

    // Only hashes are stored.
    let db = std::fs::read(server.data_dir().join("osmo.db")).unwrap();
    let text = String::from_utf8_lossy(&db);
    for t in [&alice, &bob, &admin] {
        assert!(!text.contains(t.as_str()), "a token is stored as is");
    }
}

/// `osmo` with its own config home and nothing from the environment that
/// would stand in for a login (address, token, user).
fn cli_at_home(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(OSMO)
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("OSMO_URL")
        .env_remove("OSMO_TOKEN")
        .env_remove("OSMO_USER")
        .output()
        .unwrap()
}

#[test]
fn the_cli_logs_in_with_a_token() {
    let server = Server::start(AUTH_POOL);
    let alice = token(&server, "alice", "user");
    let home = tempfile::tempdir().unwrap();
    let osmo = |args: &[&str]| cli_at_home(home.path(), args);
    let refused = osmo(&["login", &server.url, "--token", "osmo_wrong"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not known to this server"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let ok = osmo(&["login", &server.url, "--token", &alice]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let kept = home.path().join("osmo/osmo-rs.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the login file is private");

    let spec = home.path().join("wf.yaml");
    std::fs::write(
        &spec,
        "workflow:\n  name: cli\n  tasks:\n  - {name: t, image: ubuntu, command: ['true']}\n",
    )
    .unwrap();
    // No --url: the login's address and token.
    let submitted = osmo(&["workflow", "submit", spec.to_str().unwrap()]);
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let listed = osmo(&["workflow", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("cli-1"));
    let others = osmo(&["workflow", "list", "--user", "bob"]);
    assert!(others.status.success());
    assert!(!String::from_utf8_lossy(&others.stdout).contains("cli-1"));
    let all = osmo(&["workflow", "list", "--all-users"]);
    assert!(String::from_utf8_lossy(&all.stdout).contains("cli-1"));

    assert!(osmo(&["logout"]).status.success());
    let after = osmo(&["workflow", "list", "--url", &server.url]);
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("wants a token"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
}

#[test]
fn a_server_without_auth_keeps_to_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(OSMO)
        .args(["server", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without authentication"), "{err}");
    assert!(err.contains("--insecure"), "{err}");
}

#[test]
fn the_cli_logs_in_as_a_dev_user_on_a_server_without_tokens() {
    // OSMO's `osmo login URL --method dev --username NAME`: no token, the name is shown.
    let server = Server::start(local_pool());
    let home = tempfile::tempdir().unwrap();
    let osmo = |args: &[&str]| cli_at_home(home.path(), args);
    let missing = osmo(&["login", &server.url, "--method", "token"]);
    assert!(!missing.status.success(), "token without --token");
    let ok = osmo(&[
        "login",
        &server.url,
        "--method",
        "dev",
        "--username",
        "carol",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let spec = home.path().join("wf.yaml");
    std::fs::write(
        &spec,
        "workflow:\n  name: dev\n  tasks:\n  - {name: t, image: ubuntu, command: ['true']}\n",
    )
    .unwrap();
    let submitted = osmo(&["workflow", "submit", spec.to_str().unwrap()]);
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let doc = server.get_json("/api/workflow/dev-1");
    assert_eq!(doc["submitted_by"], "carol", "{doc:#}");
}
