//! Requests meant to cost the server: each is refused at a cost bounded by
//! its size, and what it took is given back.

mod common;

use std::time::Duration;

use common::*;

/// A 600-byte spec whose aliases expand to a billion values.
fn alias_bomb() -> String {
    let mut bomb =
        String::from("workflow:\n  name: bomb\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            format!("b{}", i - 1)
        };
        bomb += &format!(
            "  b{i}: &b{i} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        );
    }
    bomb
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[test]
fn concurrent_alias_bombs_are_refused_and_their_memory_given_back() {
    let server = Server::start(local_pool());
    let pid = server.pid().unwrap();
    let idle = rss_mib(pid);
    let body = serde_json::json!({ "file": alias_bomb() }).to_string();
    // A debug build takes a while to count two million values, many at once.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let post = || {
        let r = client
            .post(format!("{}/api/pool/default/workflow", server.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let posts: Vec<_> = (0..8).map(|_| s.spawn(post)).collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for (status, text) in &answers {
        assert_eq!(*status, 400, "{text}");
        let error: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("aliases are expanded"),
            "{text}"
        );
    }
    assert_eq!(server.workflow_count(), 0, "nothing was stored");
    // The allocator purges freed pages in the background: the server's
    // resident size comes back near where it started.
    let limit = idle + 64;
    wait_for(
        Duration::from_secs(20),
        &format!("RSS under {limit} MiB"),
        || (rss_mib(pid) < limit).then_some(()),
    );
}

#[test]
fn query_values_the_schema_does_not_allow_are_refused() {
    let server = Server::start(local_pool());
    let id = server.submit(
        "workflow:\n  name: q\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n",
    );
    server.wait_finished(&id, Duration::from_secs(30));
    // Each found by schemathesis (scripts/api-fuzz): accepted before.
    for path in [
        "/api/workflow?offset=9223372036854775808".to_string(),
        "/api/workflow?limit=2147483648".to_string(),
        "/api/workflow?all_users=-266&users=a".to_string(),
        format!("/api/workflow/{id}?verbose="),
        format!("/api/workflow/{id}/events?retry_id=2147483648"),
        format!("/api/workflow/{id}/logs?last_n_lines=2147483648"),
        format!("/api/workflow/{id}/spec?rendered=9041&use_template=true"),
    ] {
        let (status, body) = server.get(&path);
        assert_eq!(status, 400, "{path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].is_string(), "{path}: {body}");
    }
    // The largest values the schema allows are fine.
    for path in [
        "/api/workflow?offset=9223372036854775807".to_string(),
        format!("/api/workflow/{id}/logs?retry_id=2147483647&last_n_lines=2147483647"),
    ] {
        assert_eq!(server.get(&path).0, 200, "{path}");
    }
}

#[test]
fn a_client_over_its_rate_gets_429_with_retry_after() {
    let server = Server::start(
        "pools:\n  default:\n    backend: local\nrate_limit:\n  requests_per_second: 1\n  burst: 3\n",
    );
    // Server::start already spent one request on /api/health, which is not counted.
    let statuses: Vec<u16> = (0..5).map(|_| server.get("/api/workflow").0).collect();
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    let client = reqwest::blocking::Client::new();
    let r = client
        .get(format!("{}/api/workflow", server.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = r.json().unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many requests"),
        "{body}"
    );
    assert_eq!(server.get("/api/health").0, 200, "health is never limited");
}

#[test]
fn a_bad_rate_limit_is_a_precise_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "pools:\n  default:\n    backend: local\nrate_limit:\n  requests_per_second: fast\n  burst: 0\n",
    )
    .unwrap();
    let out = std::process::Command::new(OSMO)
        .args(["server", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("config.yaml:5:24")
            && stderr.contains("`requests_per_second` of `rate_limit`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("config.yaml:6:10")
            && stderr.contains("`burst` of `rate_limit` must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn a_short_template_that_expands_past_the_pool_task_limit_is_refused() {
    let server = Server::start(local_pool());
    // 131 bytes that render to 100,000 tasks.
    let spec = "workflow:\n  name: many\n  tasks:\n{% for i in range(100000) %}\n  - {name: t{{i}}, image: ubuntu, command: [\"true\"]}\n{% endfor %}\n";
    let body = serde_json::json!({ "file": spec }).to_string();
    // Rendering and reading 100,000 tasks takes a debug build seconds (5 on
    // an idle 2-core machine): a client that waits longer than the shared
    // one, so that a busy machine does not fail what this test is about.
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .post(format!("{}/api/pool/default/workflow", server.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("max_tasks_per_workflow") || text.contains("MiB"),
        "refused for its size: {text}"
    );
    assert_eq!(server.workflow_count(), 0, "nothing was stored");
}
