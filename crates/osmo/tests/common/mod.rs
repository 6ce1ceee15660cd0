//! Harness for the server tests: a real `osmo server` process with its own
//! data dir, config and port, talked to over HTTP.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const OSMO: &str = env!("CARGO_BIN_EXE_osmo");

pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub port: u16,
    child: Option<Child>,
    client: reqwest::blocking::Client,
    /// The binary it runs (`OSMO` unless a test gives another).
    pub exe: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns Some or `limit` passes (then panics with `what`).
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl Server {
    pub fn start(config: &str) -> Server {
        Server::start_in(config, tempfile::tempdir().unwrap())
    }

    /// A server whose config, log and data dir are in `dir`.
    pub fn start_in(config: &str, dir: tempfile::TempDir) -> Server {
        Server::start_with(config, dir, std::path::Path::new(OSMO))
    }

    fn start_with(config: &str, dir: tempfile::TempDir, exe: &std::path::Path) -> Server {
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let port = free_port();
        let mut server = Server {
            dir,
            url: format!("http://127.0.0.1:{port}"),
            port,
            child: None,
            exe: exe.to_path_buf(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                // A fresh connection per request: no race with a server closing an idle one.
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        };
        server.spawn();
        server
    }

    /// A server run from `exe` (a copy of the binary elsewhere).
    pub fn start_from(config: &str, exe: &std::path::Path) -> Server {
        Server::start_with(config, tempfile::tempdir().unwrap(), exe)
    }

    /// The server process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts (or restarts) the server process on the same data dir and port.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(&self.exe)
            .args(["server", "--config"])
            .arg(self.dir.path().join("config.yaml"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("{}/api/health", self.url);
        wait_for(Duration::from_secs(20), "the server to be healthy", || {
            self.client
                .get(&url)
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
    }

    /// Kills the server process only (SIGKILL): its agent, in its own session, lives on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Stops the server as the conformance runner does (SIGTERM).
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::SIGTERM,
            )
            .unwrap();
            child.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn post(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// Submits a spec to pool `default`; returns the workflow ID.
    pub fn submit(&self, spec: &str) -> String {
        let body = serde_json::json!({"file": spec}).to_string();
        let (status, text) = self.post("/api/pool/default/workflow", body);
        assert_eq!(status, 200, "submit failed: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn workflow(&self, id: &str) -> Value {
        self.get_json(&format!("/api/workflow/{id}?verbose=true"))
    }

    /// Waits until the workflow is finished; returns its verbose document.
    pub fn wait_finished(&self, id: &str, limit: Duration) -> Value {
        wait_for(limit, &format!("{id} to finish"), || {
            let doc = self.workflow(id);
            let status = doc["status"].as_str().unwrap().to_string();
            (status != "PENDING" && status != "RUNNING").then_some(doc)
        })
    }

    /// Takes the store's write lock while `id` still runs (its tasks must
    /// take a moment: checked), then waits until the live state shows it
    /// finished: its end is not in the store until the lock is released.
    pub fn finished_but_not_stored(&self, id: &str) -> (StoreLock, Value) {
        let lock = StoreLock::take(&self.data_dir().join("osmo.db"));
        let status = self.workflow(id)["status"].clone();
        assert!(
            status == "PENDING" || status == "RUNNING",
            "the lock came before the workflow's end: {status}"
        );
        (lock, self.wait_finished(id, Duration::from_secs(60)))
    }

    pub fn workflow_count(&self) -> usize {
        self.get_json("/api/workflow?limit=1000")["workflows"]
            .as_array()
            .unwrap()
            .len()
    }

    /// Where the service keeps the output of `task`'s attempt `retry_id`:
    /// `runs/WF/TASK.RETRY` (one new directory per attempt).
    pub fn output_dir(&self, id: &str, task: &str, retry_id: u32) -> PathBuf {
        self.data_dir()
            .join("runs")
            .join(id)
            .join(format!("{task}.{retry_id}"))
    }

    pub fn agent_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join("agent").join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The live processes whose parent is `parent`, as (pid, name).
pub fn children(parent: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (name) state ppid ...": the name may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) && alive(pid) {
            found.push((pid, stat[open + 1..close].to_string()));
        }
    }
    found
}

/// The live processes whose parent is `parent` and whose name is `name`.
pub fn children_named(parent: i32, name: &str) -> Vec<i32> {
    children(parent)
        .into_iter()
        .filter(|(_, n)| n == name)
        .map(|(pid, _)| pid)
        .collect()
}

pub fn task<'a>(doc: &'a Value, name: &str, retry_id: u64) -> &'a Value {
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["tasks"].as_array().unwrap())
        .find(|t| t["name"] == name && t["retry_id"] == retry_id)
        .unwrap_or_else(|| panic!("no attempt {name} retry {retry_id} in {doc:#}"))
}

pub fn local_pool() -> &'static str {
    "pools:\n  default:\n    backend: local\n"
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// Another connection holding the store's write lock, so no commit of the
/// service lands, until `release`.
pub struct StoreLock {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl StoreLock {
    pub fn take(db: &std::path::Path) -> StoreLock {
        let url = format!("sqlite://{}", db.display());
        let (taken_tx, taken) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                taken_tx.send(()).unwrap();
                let _ = tokio::task::spawn_blocking(move || release_rx.recv())
                    .await
                    .unwrap();
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            });
        });
        taken.recv().expect("the store's write lock taken");
        StoreLock { release, holder }
    }

    pub fn release(self) {
        self.release.send(()).unwrap();
        self.holder.join().unwrap();
    }
}

/// Sends a request from another thread; its answer (status, body) comes on
/// the receiver.
pub fn in_background(
    request: reqwest::blocking::RequestBuilder,
) -> std::sync::mpsc::Receiver<(u16, String)> {
    let (answered, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let response = request.send().unwrap();
        let _ = answered.send((response.status().as_u16(), response.text().unwrap()));
    });
    answer
}
