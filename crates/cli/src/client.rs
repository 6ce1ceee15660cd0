//! A small blocking client for the service's REST API.
//!
//! It never hangs: connecting gives up after [`CONNECT_TIMEOUT`], a request
//! after [`REQUEST_TIMEOUT`]. Every 4xx/5xx answer becomes an [`ApiError`]
//! carrying the service's [`ErrorResponse`]; an unreachable service says
//! where it looked and how to start one.

use std::time::Duration;

use anyhow::Context;
use reqwest::Url;
use reqwest::blocking::{RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use osmo_server::api_types::{ErrorResponse, SubmitRequest};

/// Where the CLI looks for the service unless `--url` or `OSMO_URL` say otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";
/// How long to wait for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a whole answer (logs can be long).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The service refused a request: its HTTP status and JSON error.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorResponse,
}

impl std::error::Error for ApiError {}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status >= 500 {
            write!(f, "the service failed (HTTP {}): ", self.status)?;
        }
        f.write_str(self.body.error.trim_end())?;
        // The spec errors are usually in `error` already, caret and all.
        for d in &self.body.diagnostics {
            if !self.body.error.contains(d.as_str()) {
                write!(f, "\n{d}")?;
            }
        }
        Ok(())
    }
}

/// Query of `GET /api/workflow`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub name: Option<String>,
    pub statuses: Vec<String>,
    pub pools: Vec<String>,
    /// Submitted by any of these users.
    pub users: Vec<String>,
    /// Every user's (a server with `auth: tokens` shows the caller's own by default).
    pub all_users: bool,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
    /// Of any of these priorities.
    pub priorities: Vec<String>,
    /// Submitted at or after / before these UTC times (`2023-05-03T00:00:00`).
    pub submitted_after: Option<String>,
    pub submitted_before: Option<String>,
    /// `KEY=SELECTOR` label selectors (all must match), label keys that must be absent, tags.
    pub labels: Vec<String>,
    pub no_labels: Vec<String>,
    pub tags: Vec<String>,
}

/// Query of `POST /api/pool/{pool}/workflow`.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    pub priority: Option<String>,
    pub dry_run: bool,
    pub validation_only: bool,
    /// `NAME=VALUE` for every task's environment.
    pub env_vars: Vec<String>,
    /// `KEY=VALUE` labels of the workflow.
    pub labels: Vec<String>,
}

/// Query of `GET /api/workflow/{id}/logs`.
#[derive(Debug, Clone, Default)]
pub struct LogsFilter {
    pub task: Option<String>,
    pub retry_id: Option<u32>,
    pub last_n_lines: Option<u32>,
    /// Only what the tasks wrote to stderr.
    pub errors_only: bool,
}

/// A client for one service.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    http: reqwest::blocking::Client,
    user: Option<String>,
    /// Shown as `Authorization: Bearer` (servers with `auth: tokens`).
    token: Option<String>,
}

impl Client {
    /// A client for the service at `url` (e.g. `http://127.0.0.1:8000`),
    /// showing `OSMO_TOKEN` when it is set.
    pub fn new(url: &str) -> anyhow::Result<Client> {
        let token = std::env::var("OSMO_TOKEN").ok().filter(|t| !t.is_empty());
        Client::with_token(url, token)
    }

    /// A client that shows `token` (None: no token).
    pub fn with_token(url: &str, token: Option<String>) -> anyhow::Result<Client> {
        let base = Url::parse(url.trim()).with_context(|| {
            format!("`{url}` is not a URL; give the service address as --url http://HOST:PORT or OSMO_URL")
        })?;
        match base.scheme() {
            // https: verified against the system's certificates, or SSL_CERT_FILE's.
            "http" | "https" => {}
            other => anyhow::bail!(
                "`{url}` uses `{other}:`; give the service address as http://HOST:PORT or https://HOST:PORT"
            ),
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            anyhow::bail!("`{url}` has no host; give the service address as http://HOST:PORT");
        }
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("osmo-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        // Who submits and cancels: OSMO_USER, USER, or the account's login name.
        let user = ["OSMO_USER", "USER"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            });
        Ok(Client {
            base,
            http,
            user,
            token,
        })
    }

    /// Act as `user` (shown as `x-osmo-user`, as OSMO's dev login does).
    pub fn set_user(&mut self, user: &str) {
        self.user = Some(user.to_string());
    }

    /// The service's address as given, without a trailing `/`.
    pub fn url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `POST /api/pool/{pool}/workflow?workflow_id=ID`: an earlier workflow's
    /// file, as it was rendered, submitted again; the answer as received.
    pub fn resubmit(&self, pool: &str, id: &str, options: &SubmitOptions) -> anyhow::Result<Value> {
        let mut url = self.endpoint(&["api", "pool", pool, "workflow"]);
        let mut query: Vec<(&str, String)> = vec![("workflow_id", id.to_string())];
        if let Some(p) = &options.priority {
            query.push(("priority", p.clone()));
        }
        query.extend(options.env_vars.iter().map(|e| ("env_vars", e.clone())));
        query.extend(options.labels.iter().map(|l| ("label", l.clone())));
        set_query(&mut url, &query);
        self.json(self.http.post(url.clone()), &url)
    }

    /// `POST /api/pool/{pool}/workflow`; the answer as received (a `SubmitResponse`).
    pub fn submit(
        &self,
        pool: &str,
        request: &SubmitRequest,
        options: &SubmitOptions,
    ) -> anyhow::Result<Value> {
        let mut url = self.endpoint(&["api", "pool", pool, "workflow"]);
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &options.priority {
            query.push(("priority", p.clone()));
        }
        if options.dry_run {
            query.push(("dry_run", "true".into()));
        }
        if options.validation_only {
            query.push(("validation_only", "true".into()));
        }
        query.extend(options.env_vars.iter().map(|e| ("env_vars", e.clone())));
        query.extend(options.labels.iter().map(|l| ("label", l.clone())));
        set_query(&mut url, &query);
        self.json(self.http.post(url.clone()).json(request), &url)
    }

    /// `GET /api/workflow/{id}?verbose=`; the document as received (a `WorkflowDoc`).
    pub fn workflow(&self, id: &str, verbose: bool) -> anyhow::Result<Value> {
        let mut url = self.endpoint(&["api", "workflow", id]);
        set_query(&mut url, &[("verbose", verbose.to_string())]);
        self.json(self.http.get(url.clone()), &url)
    }

    /// `GET /api/workflow`; the answer as received (a `WorkflowListDoc`).
    pub fn list(&self, filter: &ListFilter) -> anyhow::Result<Value> {
        let mut url = self.endpoint(&["api", "workflow"]);
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(name) = &filter.name {
            query.push(("name", name.clone()));
        }
        query.extend(filter.statuses.iter().map(|s| ("statuses", s.clone())));
        query.extend(filter.pools.iter().map(|p| ("pools", p.clone())));
        query.extend(filter.users.iter().map(|u| ("users", u.clone())));
        if filter.all_users {
            query.push(("all_users", "true".to_string()));
        }
        if let Some(limit) = filter.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(offset) = filter.offset {
            query.push(("offset", offset.to_string()));
        }
        query.extend(filter.priorities.iter().map(|p| ("priority", p.clone())));
        if let Some(t) = &filter.submitted_after {
            query.push(("submitted_after", t.clone()));
        }
        if let Some(t) = &filter.submitted_before {
            query.push(("submitted_before", t.clone()));
        }
        query.extend(filter.labels.iter().map(|l| ("label", l.clone())));
        query.extend(filter.no_labels.iter().map(|l| ("no_label", l.clone())));
        query.extend(filter.tags.iter().map(|t| ("tags", t.clone())));
        set_query(&mut url, &query);
        self.json(self.http.get(url.clone()), &url)
    }

    /// `POST /api/workflow/{id}/cancel?message=`; the answer as received (a `CancelResponse`).
    pub fn cancel(&self, id: &str, message: Option<&str>) -> anyhow::Result<Value> {
        let mut url = self.endpoint(&["api", "workflow", id, "cancel"]);
        if let Some(m) = message {
            set_query(&mut url, &[("message", m.to_string())]);
        }
        self.json(self.http.post(url.clone()), &url)
    }

    /// `POST /api/workflow/{id}/restart?pool=`: the new workflow's `{name, overview}`.
    pub fn restart(&self, id: &str, pool: Option<&str>) -> anyhow::Result<Value> {
        let mut url = self.endpoint(&["api", "workflow", id, "restart"]);
        if let Some(pool) = pool {
            set_query(&mut url, &[("pool", pool.to_string())]);
        }
        self.json(self.http.post(url.clone()), &url)
    }

    /// `GET /api/workflow/{id}/logs`: plain text, one line per log line.
    pub fn logs(&self, id: &str, filter: &LogsFilter) -> anyhow::Result<String> {
        let url = self.logs_url(id, filter);
        self.text(self.http.get(url.clone()), &url)
    }

    /// `GET /api/workflow/{id}/logs?follow=true`: copies the lines to `out`
    /// as the service streams them, until the workflow has finished.
    pub fn follow_logs(
        &self,
        id: &str,
        filter: &LogsFilter,
        out: &mut dyn std::io::Write,
    ) -> anyhow::Result<()> {
        let mut url = self.logs_url(id, filter);
        url.query_pairs_mut().append_pair("follow", "true");
        // A running workflow's logs may take days: no overall deadline.
        let request = self
            .http
            .get(url.clone())
            .timeout(Duration::from_secs(365 * 24 * 3600));
        let mut response = self.send(request, &url)?;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = std::io::Read::read(&mut response, &mut buf)
                .with_context(|| format!("the log stream of {id} broke"))?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
    }

    fn logs_url(&self, id: &str, filter: &LogsFilter) -> Url {
        let mut url = self.endpoint(&["api", "workflow", id, "logs"]);
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(task) = &filter.task {
            query.push(("task_name", task.clone()));
        }
        if let Some(r) = filter.retry_id {
            query.push(("retry_id", r.to_string()));
        }
        if let Some(n) = filter.last_n_lines {
            query.push(("last_n_lines", n.to_string()));
        }
        if filter.errors_only {
            query.push(("stream", "stderr".to_string()));
        }
        set_query(&mut url, &query);
        url
    }

    /// `GET /api/workflow/{id}/spec?rendered=`: the workflow file, rendered or as submitted.
    pub fn spec(&self, id: &str, rendered: bool) -> anyhow::Result<String> {
        let mut url = self.endpoint(&["api", "workflow", id, "spec"]);
        if rendered {
            set_query(&mut url, &[("rendered", "true".into())]);
        }
        self.text(self.http.get(url.clone()), &url)
    }

    /// `GET /api/workflow/{id}/events`: the workflow's history, one line per event.
    pub fn events(
        &self,
        id: &str,
        task: Option<&str>,
        retry_id: Option<u32>,
    ) -> anyhow::Result<String> {
        let mut url = self.endpoint(&["api", "workflow", id, "events"]);
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(task) = task {
            query.push(("task_name", task.to_string()));
        }
        if let Some(r) = retry_id {
            query.push(("retry_id", r.to_string()));
        }
        set_query(&mut url, &query);
        self.text(self.http.get(url.clone()), &url)
    }

    /// `GET /api/health`: Ok once the service accepts work.
    /// `GET /{segments…}?query`: the JSON answer as received (pools,
    /// resources, tasks, profile, version).
    pub fn get_json(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<Value> {
        let mut url = self.endpoint(segments);
        if !query.is_empty() {
            set_query(&mut url, query);
        }
        self.json(self.http.get(url.clone()), &url)
    }

    /// `POST /{segments…}?query` without a body: the JSON answer as received.
    pub fn post_query(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<Value> {
        let mut url = self.endpoint(segments);
        set_query(&mut url, query);
        self.json(self.http.post(url.clone()), &url)
    }

    /// `POST /{segments…}` with a JSON body: the JSON answer as received.
    pub fn post_json(&self, segments: &[&str], body: &Value) -> anyhow::Result<Value> {
        let url = self.endpoint(segments);
        self.json(self.http.post(url.clone()).json(body), &url)
    }

    /// The handshake of a WebSocket on `router` (`ws://HOST:PORT`, from a
    /// router ticket) at `segments`, showing who asks as every request does.
    pub fn websocket_request(
        &self,
        router: &str,
        segments: &[&str],
    ) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut url = Url::parse(router)
            .with_context(|| format!("the service named a router that is not a URL: {router}"))?;
        url.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("the service named a router without a path: {router}"))?
            .pop_if_empty()
            .extend(segments);
        let mut request = url.as_str().into_client_request()?;
        let headers = request.headers_mut();
        if let Some(user) = &self.user {
            headers.insert("x-osmo-user", user.parse()?);
        }
        if let Some(token) = &self.token {
            headers.insert("authorization", format!("Bearer {token}").parse()?);
        }
        Ok(request)
    }

    /// `DELETE /{segments…}`: the JSON answer as received.
    pub fn delete(&self, segments: &[&str]) -> anyhow::Result<Value> {
        let url = self.endpoint(segments);
        self.json(self.http.delete(url.clone()), &url)
    }

    pub fn health(&self) -> anyhow::Result<()> {
        let url = self.endpoint(&["api", "health"]);
        self.send(self.http.get(url.clone()), &url).map(|_| ())
    }

    /// The base URL with `segments` appended, each percent-encoded.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.path_segments_mut()
            .expect("checked in Client::new: http URLs have paths")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn send(&self, request: RequestBuilder, url: &Url) -> anyhow::Result<Response> {
        let request = match &self.user {
            Some(user) => request.header("x-osmo-user", user),
            None => request,
        };
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().map_err(|e| self.unreachable(e, url))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().unwrap_or_default();
        let body = serde_json::from_str::<ErrorResponse>(&text).unwrap_or_else(|_| ErrorResponse {
            error: format!(
                "the service answered HTTP {} to {} {}",
                status,
                url.path(),
                shorten(text.trim(), 300)
            ),
            ..ErrorResponse::default()
        });
        Err(ApiError {
            status: status.as_u16(),
            body,
        }
        .into())
    }

    fn json(&self, request: RequestBuilder, url: &Url) -> anyhow::Result<Value> {
        let text = self.text(request, url)?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "the service at {} answered {} with something that is not JSON ({}); is --url an osmo service?",
                self.url(),
                url.path(),
                shorten(text.trim(), 120)
            )
        })
    }

    fn text(&self, request: RequestBuilder, url: &Url) -> anyhow::Result<String> {
        let response = self.send(request, url)?;
        response.text().with_context(|| {
            format!(
                "cannot read the answer to {} from {}",
                url.path(),
                self.url()
            )
        })
    }

    fn unreachable(&self, e: reqwest::Error, url: &Url) -> anyhow::Error {
        let reason = if e.is_timeout() {
            if e.is_connect() {
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs())
            } else {
                format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
            }
        } else {
            innermost(&e)
        };
        if reason.contains("certificate") {
            return anyhow::anyhow!(
                "cannot verify the osmo service at {}: {reason}; if its certificate comes from \
                 an authority of its own, point SSL_CERT_FILE at that authority's PEM file",
                self.url()
            );
        }
        if e.is_connect() || e.is_timeout() {
            anyhow::anyhow!(
                "cannot reach the osmo service at {}: {reason}; start one with `osmo server`, \
                 or point --url / OSMO_URL at it",
                self.url()
            )
        } else {
            anyhow::anyhow!("request {} to {} failed: {reason}", url.path(), self.url())
        }
    }
}

/// Reads a typed document out of an answer.
pub fn typed<T: DeserializeOwned>(value: &Value, what: &str) -> anyhow::Result<T> {
    serde_json::from_value(value.clone()).with_context(|| {
        format!("the service's answer is not a {what}; is the service the same osmo version?")
    })
}

fn set_query(url: &mut Url, pairs: &[(&str, String)]) {
    if pairs.is_empty() {
        return;
    }
    let mut q = url.query_pairs_mut();
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
}

/// The deepest cause's text, e.g. `Connection refused (os error 111)`.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_encoded_and_keep_a_base_path() {
        let c = Client::new("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            c.endpoint(&["api", "workflow", "a b/c"]).as_str(),
            "http://127.0.0.1:8000/api/workflow/a%20b%2Fc"
        );
        let c = Client::new("http://host:1/prefix/").unwrap();
        assert_eq!(
            c.endpoint(&["api", "health"]).as_str(),
            "http://host:1/prefix/api/health"
        );
        assert_eq!(c.url(), "http://host:1/prefix");
    }

    #[test]
    fn bad_urls_are_refused_with_a_hint() {
        for bad in ["nonsense", "ftp://x", "mailto:a@b"] {
            let e = Client::new(bad).unwrap_err().to_string();
            assert!(e.contains("http://HOST:PORT"), "{bad}: {e}");
        }
        assert!(Client::new("https://x").is_ok(), "https is spoken");
    }

    #[test]
    fn api_errors_show_diagnostics_once() {
        let e = ApiError {
            status: 400,
            body: ErrorResponse {
                error: "the workflow spec is not valid:\nwf.yaml:1:1: bad".into(),
                diagnostics: vec!["wf.yaml:1:1: bad".into(), "wf.yaml:2:1: worse".into()],
                ..ErrorResponse::default()
            },
        };
        assert_eq!(
            e.to_string(),
            "the workflow spec is not valid:\nwf.yaml:1:1: bad\nwf.yaml:2:1: worse"
        );
    }
}
