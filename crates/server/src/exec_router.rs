//! `osmo workflow exec` and `port-forward`, on OSMO's paths and in OSMO's
//! two steps, so that its CLI and ours both work:
//!
//! 1. `POST /api/workflow/{id}/exec/task/{task}` (or `.../portforward/{task}`)
//!    checks that the caller may act on the workflow and that the task runs
//!    on the local backend, and answers with a one-time key and the
//!    "router" to present it to (this server: it is its own router).
//! 2. A WebSocket on `/api/router/exec/{id}/client/{key}` (or
//!    `/api/router/portforward/...`) is relayed, message for message, to the
//!    node agent's session server (`osmo_agent::entry_server`), which enters
//!    the task's sandbox or container.
//!
//! Port-forwarding has OSMO's control channel: the key of the `POST` opens
//! a control WebSocket on which the client announces one new key per TCP
//! connection; each opens a data WebSocket of its own.
//!
//! Keys are random, used once, and expire after [`KEY_LIFETIME`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite;

use super::api::{ApiError, ApiResult, AppState, flag, owned_by_caller, param, param_list, params};
use super::auth::Caller;
use super::manager::Request;
use crate::api_types::{ErrorResponse, RouterTicket};

/// How long a key waits for its WebSocket.
pub const KEY_LIFETIME: Duration = Duration::from_secs(60);
/// At most this many keys wait at once (a client that asks and never
/// connects cannot grow the table).
const MAX_WAITING: usize = 10_000;
/// How long a port-forward's data WebSocket waits for its key to be
/// announced on the control channel (the client sends one, then opens the other).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);
/// OSMO's default entry command.
const DEFAULT_ENTRY: &str = "/bin/bash";

/// The keys handed out and not yet used, and where the agent listens.
pub struct Sessions {
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Woken at each new key: a data WebSocket may arrive before its key,
    /// announced on the control channel, has been read there.
    added: tokio::sync::Notify,
    agent_socket: PathBuf,
    tls: bool,
}

struct Waiting {
    workflow: String,
    /// The attempt, as the agent finds it.
    attempt: Attempt,
    kind: Kind,
    expires: Instant,
}

/// A running attempt, by names.
#[derive(Clone)]
struct Attempt {
    workflow: String,
    group: String,
    task: String,
    retry: u32,
}

impl Attempt {
    /// The agent's query string for it, with `extra` pairs.
    fn query(&self, extra: &[(&str, &str)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("workflow", &self.workflow)
            .append_pair("group", &self.group)
            .append_pair("task", &self.task)
            .append_pair("retry", &self.retry.to_string());
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        q.finish()
    }
}

#[derive(Clone)]
enum Kind {
    Exec {
        entry: String,
        tty: bool,
    },
    /// The control channel of a port-forward: announces data keys.
    PortControl {
        port: u16,
    },
    PortData {
        port: u16,
    },
}

impl Sessions {
    pub fn new(agent_socket: PathBuf, tls: bool) -> Sessions {
        Sessions {
            waiting: Mutex::default(),
            added: tokio::sync::Notify::new(),
            agent_socket,
            tls,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, key: String, waiting: Waiting) -> Result<(), Refused> {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, w| w.expires > now);
        if map.len() >= MAX_WAITING {
            return Err(Refused::Full);
        }
        if map.contains_key(&key) {
            // A key announced by a client may not replace a waiting one (another's).
            return Err(Refused::Taken);
        }
        map.insert(key, waiting);
        drop(map);
        self.added.notify_waiters();
        Ok(())
    }

    /// As [`Sessions::take`], waiting up to `within` for the key to be added.
    async fn take_within(&self, workflow: &str, key: &str, within: Duration) -> Option<Waiting> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            // Registered before the look, so an insert in between is not missed.
            added.as_mut().enable();
            if let Some(w) = self.take(workflow, key) {
                return Some(w);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return None;
            }
        }
    }

    /// A new key for `kind` on `attempt`, waiting for its WebSocket.
    fn issue(&self, attempt: &Attempt, kind: Kind) -> ApiResult<String> {
        let key = new_key()?;
        self.insert(
            key.clone(),
            Waiting {
                workflow: attempt.workflow.clone(),
                attempt: attempt.clone(),
                kind,
                expires: Instant::now() + KEY_LIFETIME,
            },
        )?;
        Ok(key)
    }

    /// The key's session, once: None when unknown, expired or of another workflow.
    fn take(&self, workflow: &str, key: &str) -> Option<Waiting> {
        let mut map = self.lock();
        let w = map.remove(key)?;
        (w.workflow == workflow && w.expires > Instant::now()).then_some(w)
    }
}

/// Why a key was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// [`MAX_WAITING`] keys wait already.
    Full,
    /// This key waits already.
    Taken,
}

impl Refused {
    fn reason(self) -> &'static str {
        match self {
            Refused::Full => {
                "too many exec and port-forward sessions are waiting to be opened; try again soon"
            }
            Refused::Taken => "this key is already waiting: announce a new one",
        }
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> ApiError {
        ApiError::with_status(StatusCode::TOO_MANY_REQUESTS, r.reason())
    }
}

/// 32 hex digits from the kernel's random source.
fn new_key() -> ApiResult<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(ApiError::internal)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Where the client opens its WebSocket: this server, as the client reached it.
fn router_address(headers: &HeaderMap, tls: bool) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("{}://{host}", if tls { "wss" } else { "ws" })
}

/// The running attempt of `task`.
async fn running_attempt(app: &AppState, id: &str, task: &str) -> ApiResult<Attempt> {
    let (reply, answer) = oneshot::channel();
    let asked = Request::Query {
        id: id.to_string(),
        verbose: true,
        reply,
    };
    let doc = match app.requests.send(asked).await {
        Ok(()) => answer.await.ok().flatten(),
        Err(_) => None,
    };
    let Some(doc) = doc else {
        // Not running here: finished, or not known at all.
        let row = super::api::workflow_row(app, id).await?;
        return Err(ApiError::with_status(
            StatusCode::CONFLICT,
            format!("workflow {id} is {}: its tasks no longer run", row.status),
        ));
    };
    let pool = app.config.pools.get(&doc.pool);
    if pool.is_some_and(|p| p.backend != osmo_spec::config::BackendKind::Local) {
        return Err(ApiError::bad_request(format!(
            "workflow {id} runs in pool `{}` on Slurm: exec and port-forward reach tasks of \
             the local backend only",
            doc.pool
        )));
    }
    let (group, attempt) = doc
        .groups
        .iter()
        .flat_map(|g| g.tasks.iter().map(move |t| (g, t)))
        .filter(|(_, t)| t.name == task)
        .max_by_key(|(_, t)| t.retry_id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "workflow {id} has no task `{task}`; `osmo workflow query {id}` lists its tasks"
            ))
        })?;
    if attempt.status != "RUNNING" {
        return Err(ApiError::with_status(
            StatusCode::CONFLICT,
            format!(
                "task {task} of workflow {id} is {}: exec and port-forward need it RUNNING",
                attempt.status
            ),
        ));
    }
    Ok(Attempt {
        workflow: id.to_string(),
        group: group.name.clone(),
        task: task.to_string(),
        retry: attempt.retry_id,
    })
}

fn ticket(headers: &HeaderMap, sessions: &Sessions, key: String) -> RouterTicket {
    RouterTicket {
        router_address: router_address(headers, sessions.tls),
        cookie: format!("osmo_router_key={key}"),
        key,
    }
}

/// Start a command in a running task (OSMO's `workflow exec`): answers the
/// key for the WebSocket `/api/router/exec/{id}/client/{key}`.
#[utoipa::path(post, path = "/api/workflow/{id}/exec/task/{task}",
    params(("id" = String, Path), ("task" = String, Path),
           ("entry_command" = Option<String>, Query, description = "command line to run (default /bin/bash)"),
           ("tty" = Option<bool>, Query, description = "run it on a terminal (default true)")),
    responses((status = 200, body = RouterTicket), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse),
              (status = 403, body = ErrorResponse, description = "another user's workflow"),
              (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse, description = "the task is not running"),
              (status = 429, body = ErrorResponse)))]
pub(crate) async fn exec_start(
    State(app): State<AppState>,
    Path((id, task)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> ApiResult<Json<RouterTicket>> {
    let params = params(&raw)?;
    let entry = param(&params, "entry_command")
        .unwrap_or(DEFAULT_ENTRY)
        .to_string();
    if entry.trim().is_empty() {
        return Err(ApiError::bad_request("`entry_command` is empty"));
    }
    let tty = param(&params, "tty").is_none() || flag(&params, "tty")?;
    owned_by_caller(&app, &id, &caller, "exec into").await?;
    let attempt = running_attempt(&app, &id, &task).await?;
    let key = app.exec.issue(&attempt, Kind::Exec { entry, tty })?;
    Ok(Json(ticket(&headers, &app.exec, key)))
}

/// Forward TCP ports of a running task (OSMO's `workflow port-forward`):
/// one key per port, each for a control WebSocket on
/// `/api/router/portforward/{id}/client/{key}`.
#[utoipa::path(post, path = "/api/workflow/{id}/portforward/{task}",
    params(("id" = String, Path), ("task" = String, Path),
           ("task_ports" = Vec<u16>, Query, description = "ports in the task (repeated, or comma-separated)"),
           ("use_udp" = Option<bool>, Query, description = "UDP is not supported: true is refused")),
    responses((status = 200, body = Vec<RouterTicket>), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse),
              (status = 403, body = ErrorResponse, description = "another user's workflow"),
              (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse, description = "the task is not running"),
              (status = 429, body = ErrorResponse)))]
pub(crate) async fn port_forward_start(
    State(app): State<AppState>,
    Path((id, task)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<RouterTicket>>> {
    let params = params(&raw)?;
    if flag(&params, "use_udp")? {
        return Err(ApiError::bad_request(
            "UDP port-forwarding is not supported by this server; forward TCP ports",
        ));
    }
    let ports = param_list(&params, "task_ports")
        .iter()
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(ApiError::bad_request(format!(
                "`task_ports`: `{p}` is not a port (1-65535)"
            ))),
        })
        .collect::<ApiResult<Vec<u16>>>()?;
    if ports.is_empty() {
        return Err(ApiError::bad_request("`task_ports` names no port"));
    }
    if ports.len() > 1024 {
        return Err(ApiError::bad_request("at most 1024 ports at once"));
    }
    owned_by_caller(&app, &id, &caller, "port-forward from").await?;
    let attempt = running_attempt(&app, &id, &task).await?;
    let mut tickets = Vec::with_capacity(ports.len());
    for port in ports {
        let key = app.exec.issue(&attempt, Kind::PortControl { port })?;
        tickets.push(ticket(&headers, &app.exec, key));
    }
    Ok(Json(tickets))
}

/// OSMO's router version: its CLI asks it (for cookies) before each connection.
pub(crate) async fn router_version() -> Json<serde_json::Value> {
    Json(serde_json::json!({"version": env!("CARGO_PKG_VERSION")}))
}

/// A plain request where a WebSocket is expected: a JSON 400, the key kept.
fn not_a_websocket(e: WebSocketUpgradeRejection) -> Response {
    ApiError::bad_request(format!("a WebSocket is expected here ({e})")).into_response()
}

fn unknown_key() -> Response {
    ApiError::not_found("unknown or expired key: ask for a new one (POST …/exec or …/portforward)")
        .into_response()
}

/// The exec WebSocket: relayed to the agent's session.
pub(crate) async fn exec_socket(
    State(app): State<AppState>,
    Path((id, key)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return not_a_websocket(e),
    };
    let Some(waiting) = app.exec.take(&id, &key) else {
        return unknown_key();
    };
    let Kind::Exec { entry, tty } = waiting.kind else {
        return unknown_key();
    };
    let query = waiting
        .attempt
        .query(&[("entry", &entry), ("tty", if tty { "1" } else { "0" })]);
    let socket = app.exec.agent_socket.clone();
    upgrade.on_upgrade(move |client| relay_to_agent(client, socket, format!("/exec?{query}")))
}

/// A port-forward WebSocket: a control channel (the `POST`'s key) or one
/// connection's data (a key announced on a control channel).
pub(crate) async fn port_forward_socket(
    State(app): State<AppState>,
    Path((id, key)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return not_a_websocket(e),
    };
    let Some(waiting) = app.exec.take_within(&id, &key, ANNOUNCE_WAIT).await else {
        return unknown_key();
    };
    match waiting.kind {
        Kind::PortControl { port } => {
            let sessions = app.exec.clone();
            upgrade.on_upgrade(move |client| control(client, sessions, id, waiting.attempt, port))
        }
        Kind::PortData { port } => {
            let query = waiting.attempt.query(&[("port", &port.to_string())]);
            let socket = app.exec.agent_socket.clone();
            upgrade.on_upgrade(move |client| {
                relay_to_agent(client, socket, format!("/portforward?{query}"))
            })
        }
        Kind::Exec { .. } => unknown_key(),
    }
}

/// A port-forward's control channel: each message `{"key": K, ...}`
/// announces the key of one new connection's data WebSocket.
async fn control(
    mut client: WebSocket,
    sessions: Arc<Sessions>,
    workflow: String,
    attempt: Attempt,
    port: u16,
) {
    while let Some(Ok(msg)) = client.next().await {
        let bytes = match &msg {
            ws::Message::Binary(b) => b.to_vec(),
            ws::Message::Text(t) => t.as_bytes().to_vec(),
            ws::Message::Close(_) => break,
            _ => continue,
        };
        let key = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("key")?.as_str().map(str::to_string))
            .filter(|k| !k.is_empty() && k.len() <= 200);
        let Some(key) = key else {
            let _ = client
                .send(close(1003, "a control message is {\"key\": \"...\"}"))
                .await;
            return;
        };
        let waiting = Waiting {
            workflow: workflow.clone(),
            attempt: attempt.clone(),
            kind: Kind::PortData { port },
            expires: Instant::now() + KEY_LIFETIME,
        };
        if let Err(refused) = sessions.insert(key, waiting) {
            let _ = client.send(close(1013, refused.reason())).await;
            return;
        }
    }
}

fn close(code: u16, reason: &str) -> ws::Message {
    ws::Message::Close(Some(ws::CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Relays every message between the client and the agent's session at
/// `path`, until either ends; the agent's close frame (`exit CODE`, or why
/// the session could not start) reaches the client.
async fn relay_to_agent(mut client: WebSocket, socket: PathBuf, path: String) {
    let agent = match tokio::net::UnixStream::connect(&socket).await {
        Ok(stream) => tokio_tungstenite::client_async(format!("ws://agent{path}"), stream)
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("the node agent does not answer: {e}")),
    };
    let mut agent = match agent {
        Ok(agent) => agent,
        Err(why) => {
            close_client(&mut client, close(1011, &why)).await;
            return;
        }
    };
    loop {
        tokio::select! {
            msg = client.next() => match msg.and_then(Result::ok).map(to_agent) {
                Some(Some(tungstenite::Message::Close(frame))) => {
                    let _ = agent.close(frame).await;
                    return;
                }
                Some(Some(msg)) => {
                    if agent.send(msg).await.is_err() {
                        return;
                    }
                }
                // A ping or pong (a client's keep-alive) is no end of the session.
                Some(None) => {}
                None => {
                    let _ = agent.close(None).await;
                    return;
                }
            },
            msg = agent.next() => match msg {
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    let frame = frame.map(|f| ws::CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    // Sends the agent the answer to its close frame.
                    let _ = agent.close(None).await;
                    close_client(&mut client, ws::Message::Close(frame)).await;
                    return;
                }
                Some(Ok(msg)) => {
                    if let Some(msg) = to_client(msg)
                        && client.send(msg).await.is_err()
                    {
                        return;
                    }
                }
                _ => {
                    close_client(&mut client, close(1011, "the node agent went away")).await;
                    return;
                }
            },
        }
    }
}

/// Sends the client `frame` (a close frame) and reads what it still sends
/// until its answer, a few seconds at most. A socket closed with bytes
/// unread in it (the end of the client's stdin, sent late, say) is reset,
/// and a reset discards on the client's side what it has not read yet: the
/// command's last output and the close frame with its exit code.
async fn close_client(client: &mut WebSocket, frame: ws::Message) {
    if client.send(frame).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = client.next().await {
            if matches!(msg, ws::Message::Close(_)) {
                return;
            }
        }
    })
    .await;
}

fn to_agent(msg: ws::Message) -> Option<tungstenite::Message> {
    Some(match msg {
        ws::Message::Binary(b) => tungstenite::Message::Binary(b),
        ws::Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
        ws::Message::Close(frame) => {
            tungstenite::Message::Close(frame.map(|f| tungstenite::protocol::CloseFrame {
                code: f.code.into(),
                reason: f.reason.as_str().into(),
            }))
        }
        // Pings are answered on each hop by its own library.
        ws::Message::Ping(_) | ws::Message::Pong(_) => return None,
    })
}

fn to_client(msg: tungstenite::Message) -> Option<ws::Message> {
    Some(match msg {
        tungstenite::Message::Binary(b) => ws::Message::Binary(b),
        tungstenite::Message::Text(t) => ws::Message::Text(t.as_str().into()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(workflow: &str) -> Waiting {
        Waiting {
            workflow: workflow.into(),
            attempt: Attempt {
                workflow: workflow.into(),
                group: "g".into(),
                task: "t".into(),
                retry: 0,
            },
            kind: Kind::PortData { port: 80 },
            expires: Instant::now() + KEY_LIFETIME,
        }
    }

    #[test]
    fn a_key_is_taken_once_by_its_own_workflow_and_never_replaced() {
        let sessions = Sessions::new("/nonexistent".into(), false);
        sessions.insert("k".into(), waiting("wf-1")).unwrap();
        // Another client announcing the same key does not replace it.
        assert_eq!(
            sessions.insert("k".into(), waiting("wf-2")).unwrap_err(),
            Refused::Taken
        );
        assert!(
            sessions.take("wf-2", "k").is_none(),
            "not another workflow's"
        );
        sessions.insert("k".into(), waiting("wf-1")).unwrap();
        assert!(sessions.take("wf-1", "k").is_some());
        assert!(sessions.take("wf-1", "k").is_none(), "once");
    }
}
