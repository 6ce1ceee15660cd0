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
