//! The REST API, on OSMO's paths. Reads go to the store; changes go to the
//! manager. Every error is JSON (`ErrorResponse`) with a 4xx/5xx status, and
//! bad input changes nothing.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use osmo_spec::config::{AuthMode, ServiceConfig};
use osmo_store::Store;
use tokio::sync::{mpsc, oneshot};
use utoipa::OpenApi;

use super::auth::Caller;
use super::docs;
use super::docs::DocMeta;
use super::manager::{CancelError, Priority, Request, RestartError};
use super::persisted::Persisted;
use crate::api_types::*;

/// Largest request body accepted (a spec is limited well below this).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// Whether every problem is a `localpath` file still to be inlined by the client.
fn only_localpath(diagnostics: &osmo_spec::Diagnostics) -> bool {
    !diagnostics.0.is_empty()
        && diagnostics
            .0
            .iter()
            .all(|d| d.message.contains("`localpath` must be inlined"))
}

/// Renders running at once, server-wide: one per CPU, at least two.
static RENDERS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::sync::Semaphore::new(cpus.max(2))
});

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub requests: mpsc::Sender<Request>,
    pub config: Arc<ServiceConfig>,
    pub profiles: super::profile::Profiles,
    /// Keys of `exec` and `port-forward` sessions waiting for their WebSocket.
    pub exec: Arc<super::exec_router::Sessions>,
    /// Users' credentials.
    pub vault: super::credentials::Vault,
    /// Where attempts' outputs live (`RUNS/WF/TASK/RETRY/output`).
    pub runs_dir: std::path::PathBuf,
    /// The workflow configuration (label policy) now.
    pub workflow_config: super::workflow_config::WorkflowConfig,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/pool/{pool}/workflow", post(submit))
        .route("/api/workflow", get(list))
        .route("/api/workflow/{id}", get(query))
        .route("/api/workflow/{id}/cancel", post(cancel))
        .route("/api/workflow/{id}/tag", post(tag))
        .route("/api/tag", get(tags))
        .route("/api/workflow/{id}/logs", get(logs))
        .route("/api/workflow/{id}/error_logs", get(error_logs))
        .route("/api/workflow/{id}/spec", get(spec))
        .route("/api/workflow/{id}/events", get(events))
        .route("/api/workflow/{id}/restart", post(restart))
        .route(
            "/api/pool/{pool}/workflow/{id}/restart",
            post(restart_in_pool),
        )
        .route(
            "/api/workflow/{id}/exec/task/{task}",
            post(super::exec_router::exec_start),
        )
        .route(
            "/api/workflow/{id}/portforward/{task}",
            post(super::exec_router::port_forward_start),
        )
        .route(
            "/api/router/exec/{id}/client/{key}",
            get(super::exec_router::exec_socket),
        )
        .route(
            "/api/router/portforward/{id}/client/{key}",
            get(super::exec_router::port_forward_socket),
        )
        .route(
            "/api/router/version",
            get(super::exec_router::router_version),
        )
        .route("/api/credentials", get(super::credentials::list))
        .route(
            "/api/credentials/{name}",
            post(super::credentials::set).delete(super::credentials::delete),
        )
        .route(
            "/api/configs/workflow",
            get(super::workflow_config::get_config).patch(super::workflow_config::patch_config),
        )
        .route("/api/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/task", get(tasks))
        .route(
            "/api/profile/settings",
            get(super::profile::get_settings).post(super::profile::set_settings),
        )
        .route("/api/version", get(super::profile::version))
        .route("/api/pool", get(super::pools::pools))
        .route("/api/pool_quota", get(super::pools::pools))
        .route("/api/resources", get(super::pools::resources))
        .route("/api/resources/{node}", get(super::pools::resource))
        .route("/api/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "osmo", description = "OSMO workflow service"),
    paths(submit, list, query, cancel, tag, tags, restart, logs, spec, events, health,
        super::exec_router::exec_start, super::exec_router::port_forward_start,
        super::workflow_config::get_config, super::workflow_config::patch_config,
        super::credentials::set, super::credentials::list, super::credentials::delete),
    components(schemas(
        SubmitRequest,
        SubmitResponse,
        ErrorResponse,
        WorkflowDoc,
        GroupDoc,
        TaskDoc,
        RunDoc,
        WorkflowListDoc,
        WorkflowSummaryDoc,
        CancelResponse,
        TagsDoc,
        RouterTicket,
        WorkflowConfigDoc,
        super::credentials::CredentialRequest,
        super::credentials::GenericCredential,
        super::credentials::CredentialSummary,
        super::credentials::CredentialList,
        super::workflow_config::ConfigPatch
    )),
    modifiers(&RateLimited)
)]
struct ApiDoc;

/// Every operation but the health check may answer 429 (`rate_limit`).
struct RateLimited;

impl utoipa::Modify for RateLimited {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
        let response = ResponseBuilder::new()
            .description("Too many requests from this client; `Retry-After` says when to retry")
            .header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::Integer),
                    )
                    .description(Some("seconds"))
                    .build(),
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorResponse")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/api/health" {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .insert("429".to_string(), response.clone().into());
            }
        }
    }
}

/// An API error: status + JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorResponse,
}

impl ApiError {
    pub(super) fn with_status(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError::new(status, error)
    }

    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorResponse {
                error: error.into(),
                ..ErrorResponse::default()
            },
        }
    }

    pub(super) fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }

    pub(super) fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error)
    }

    pub(super) fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("server error: {error}"),
        )
    }

    pub(super) fn unknown_workflow(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("workflow {id} is not known; `osmo workflow list` shows the workflows"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.body;
        body.message = body.error.clone();
        body.error_code = match self.status {
            StatusCode::NOT_FOUND => "NOTFOUND",
            s if s.is_server_error() => "SERVER",
            _ if !body.diagnostics.is_empty() => "SUBMISSION",
            _ => "USER",
        }
        .to_string();
        (self.status, Json(body)).into_response()
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

/// Query parameters as pairs; repeated keys (`statuses=A&statuses=B`) are kept.
pub(super) fn params(raw: &Option<String>) -> ApiResult<Vec<(String, String)>> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("cannot read the query string: {e}")))
}

pub(super) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Every value of a repeatable parameter, each whole (it may hold commas).
fn whole_values(params: &[(String, String)], key: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Values of a repeatable parameter; each may also be a comma-separated list.
pub(super) fn param_list(params: &[(String, String)], key: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

pub(super) fn flag(params: &[(String, String)], key: &str) -> ApiResult<bool> {
    match param(params, key).map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "`{key}` must be true or false, not `{other}`"
        ))),
    }
}

/// A non-negative integer no larger than `max`: the OpenAPI document calls
/// the `u32` parameters int32 and the `u64` ones int64, so what those cannot
/// hold is refused, not wrapped or widened.
fn bounded(params: &[(String, String)], key: &str, max: i64) -> ApiResult<Option<u64>> {
    param(params, key)
        .map(|v| match v.parse::<i64>() {
            Ok(n) if (0..=max).contains(&n) => Ok(n as u64),
            _ => Err(ApiError::bad_request(format!(
                "`{key}` must be an integer from 0 to {max}, not `{v}`"
            ))),
        })
        .transpose()
}

/// A parameter documented as int32 (a `u32` in the schema).
fn number32(params: &[(String, String)], key: &str) -> ApiResult<Option<u32>> {
    Ok(bounded(params, key, i32::MAX as i64)?.map(|n| n as u32))
}

/// A parameter documented as int64 (a `u64` in the schema).
fn number64(params: &[(String, String)], key: &str) -> ApiResult<Option<u64>> {
    bounded(params, key, i64::MAX)
}

/// A UTC time as OSMO's CLI sends it (`2023-05-03T00:00:00`, no zone), a
/// date (`2023-05-03`, its midnight), or with a zone (`…Z`, `…+02:00`): ms
/// since the epoch.
fn utc_time(params: &[(String, String)], key: &str) -> ApiResult<Option<i64>> {
    let Some(text) = param(params, key) else {
        return Ok(None);
    };
    let parsed = text
        .parse::<jiff::Timestamp>()
        .or_else(|_| {
            text.parse::<jiff::civil::DateTime>()
                .and_then(|t| t.to_zoned(jiff::tz::TimeZone::UTC))
                .map(|z| z.timestamp())
        })
        .or_else(|_| {
            text.parse::<jiff::civil::Date>()
                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC))
                .map(|z| z.timestamp())
        });
    match parsed {
        Ok(t) => Ok(Some(t.as_millisecond())),
        Err(_) => Err(ApiError::bad_request(format!(
            "`{key}` must be a UTC time like 2023-05-03T00:00:00 or a date like 2023-05-03, not `{text}`"
        ))),
    }
}

fn key_values(items: &[String], flag: &str) -> ApiResult<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(ApiError::bad_request(format!(
                "`{item}` in {flag} must look like key=value"
            ))),
        })
        .collect()
}

/// Submit a workflow to a pool.
#[utoipa::path(post, path = "/api/pool/{pool}/workflow", request_body = SubmitRequest,
    params(("pool" = String, Path), ("dry_run" = Option<bool>, Query), ("validation_only" = Option<bool>, Query),
           ("priority" = Option<String>, Query, description = "HIGH, NORMAL (default) or LOW"),
           ("env_vars" = Option<Vec<String>>, Query, description = "NAME=VALUE set in every task's environment, over the file's"),
           ("workflow_id" = Option<String>, Query, description = "submit this earlier workflow's file again, as it was rendered (no body needed)"),
           ("label" = Option<Vec<String>>, Query, description = "KEY=VALUE labels of the workflow (Kubernetes label syntax, at most 16)")),
    responses((status = 200, body = SubmitResponse), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse, description = "auth: tokens and no known token"),
              (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse)))]
async fn submit(
    State(app): State<AppState>,
    Path(pool): Path<String>,
    RawQuery(raw): RawQuery,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SubmitResponse>> {
    let params = params(&raw)?;
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("cannot read the request body: {}", e.body_text()),
        )
    })?;
    let request: SubmitRequest = match param(&params, "workflow_id") {
        // OSMO's resubmit of an earlier workflow by its ID (no body): its file
        // as it was rendered, so it runs as it ran.
        Some(id) => {
            let row = workflow_row(&app, id).await?;
            SubmitRequest {
                file: row.spec_rendered,
                file_name: Some(format!("{id}.yaml")),
                ..SubmitRequest::default()
            }
        }
        None => serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body is not a submit request ({e}); expected JSON {{\"file\": \"<workflow yaml>\", \"set_variables\": [\"k=v\"], \"set_string_variables\": []}}, or `workflow_id` to submit an earlier workflow's file again"
            ))
        })?,
    };
    let pool_config = app.config.pools.get(&pool).cloned().ok_or_else(|| {
        let known: Vec<&str> = app.config.pools.keys().map(String::as_str).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("pool `{pool}` is not known; pools: {}", known.join(", ")),
        )
    })?;
    let priority = match param(&params, "priority") {
        None => Priority::Normal,
        Some(p) => Priority::parse(p).ok_or_else(|| {
            ApiError::bad_request(format!("priority `{p}` is not HIGH, NORMAL or LOW"))
        })?,
    };
    let dry_run = flag(&params, "dry_run")?;
    let validation_only = flag(&params, "validation_only")?;
    // Each value whole (a value may hold commas), `NAME=VALUE` with a name a shell takes.
    let env_vars = whole_values(&params, "env_vars");
    let env_vars = key_values(&env_vars, "env_vars")?;
    let labels = whole_values(&params, "label");
    let labels = super::labels::parse_labels(&labels).map_err(ApiError::bad_request)?;
    if let Some((name, _)) = env_vars.iter().find(|(name, _)| {
        !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }) {
        return Err(ApiError::bad_request(format!(
            "`{name}` in env_vars is not an environment variable name (letters, digits and _, not starting with a digit)"
        )));
    }
    let values = osmo_spec::Values {
        set: key_values(&request.set_variables, "set_variables")?,
        set_string: key_values(&request.set_string_variables, "set_string_variables")?,
    };
    let file_name = request
        .file_name
        .clone()
        .unwrap_or_else(|| "workflow.yaml".to_string());
    let templated = request.uploaded_templated_spec.clone();
    let source = request.file;
    // Rendering runs in a child process with memory and time limits, off the I/O threads, and
    // only so many at once: each may use up to its memory limit, so many concurrent submits of a
    // template bomb must not add up to the machine's memory.
    let render_slot = RENDERS.acquire().await.map_err(ApiError::internal)?;
    let checked = tokio::task::spawn_blocking(move || {
        let rendered =
            crate::render_guard::render(&source, &file_name, &values).map_err(|d| (d, None))?;
        match osmo_spec::load_rendered(&source, &rendered, &file_name, Some(&pool_config)) {
            Ok(workflow) => Ok((workflow, source, rendered)),
            Err(d) => Err((d, Some(rendered))),
        }
    })
    .await
    .map_err(ApiError::internal)?;
    // Given back before the store: held through the commit, it made submits
    // wait for each other's commits two at a time.
    drop(render_slot);
    let (mut workflow, source, rendered) = match checked {
        Ok(ok) => ok,
        // OSMO's CLI asks for a dry run to get the rendered file before it
        // inlines `localpath` files: give it back, saying what is left to do.
        Err((diagnostics, Some(rendered))) if dry_run && only_localpath(&diagnostics) => {
            return Ok(Json(SubmitResponse {
                name: String::new(),
                overview: String::new(),
                spec: Some(rendered),
                warnings: diagnostics.0.iter().map(|d| d.to_string()).collect(),
                logs: None,
            }));
        }
        Err((diagnostics, _)) => {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                body: ErrorResponse {
                    error: format!("the workflow spec is not valid:\n{diagnostics}"),
                    diagnostics: diagnostics.0.iter().map(|d| d.to_string()).collect(),
                    ..ErrorResponse::default()
                },
            });
        }
    };
    // `--set-env` of OSMO's CLI: set in every task's environment, over the file's.
    for (name, value) in &env_vars {
        for task in workflow.groups.iter_mut().flat_map(|g| g.tasks.iter_mut()) {
            task.environment.insert(name.clone(), value.clone());
        }
    }
    // The file's `labels:`, with the submit's `--label`s over them (as OSMO).
    let mut labels = labels;
    for (key, value) in &workflow.labels {
        labels.entry(key.clone()).or_insert_with(|| value.clone());
    }
    if labels.len() > osmo_spec::labels::MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "{} (the file's labels and the submit's together)",
            osmo_spec::labels::count_error(labels.len())
        )));
    }
    resolve_other_workflows(&app, &caller, &mut workflow).await?;
    // A task's credentials must be the submitter's: said now, not when it starts.
    for task in workflow.groups.iter().flat_map(|g| &g.tasks) {
        if let Some(name) = task
            .credentials
            .keys()
            .find(|name| app.vault.get(&caller.user, name).is_none())
        {
            return Err(ApiError::bad_request(format!(
                "task `{}` asks for credential `{name}`, which {} has not set (`osmo credential set {name} ...`)",
                task.name, caller.user
            )));
        }
    }
    // The administrators' label policy: warnings, or a refusal before anything is stored.
    let warnings = app
        .workflow_config
        .labels()
        .judge(&labels)
        .map_err(ApiError::bad_request)?;
    if dry_run || validation_only {
        return Ok(Json(SubmitResponse {
            name: workflow.name.clone(),
            overview: String::new(),
            spec: dry_run.then_some(rendered),
            warnings,
            logs: validation_only.then(|| "Workflow validation succeeded.".to_string()),
        }));
    }
    let (reply, answer) = oneshot::channel();
    let request = Request::Submit(crate::manager::Submit {
        pool,
        priority,
        submitted_by: caller.user.clone(),
        workflow: Box::new(workflow),
        source: templated.unwrap_or(source),
        rendered,
        labels,
        reply,
    });
    app.requests
        .send(request)
        .await
        .map_err(ApiError::internal)?;
    let id = answer
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(SubmitResponse {
        overview: format!("/api/workflow/{id}"),
        name: id,
        spec: None,
        warnings,
        logs: None,
    }))
}

/// Inputs from another workflow's task (`task: wf-3:train`): that task must
/// have completed in a workflow the caller may read; its output is then read
/// as a `file://` URL (copied into the input when the task starts).
async fn resolve_other_workflows(
    app: &AppState,
    caller: &Caller,
    workflow: &mut osmo_spec::model::Workflow,
) -> ApiResult<()> {
    use osmo_spec::model::{Input, OTHER_WORKFLOW_TASK};
    for task in workflow.groups.iter_mut().flat_map(|g| g.tasks.iter_mut()) {
        for input in task.inputs.iter_mut() {
            let Input::Url { url, .. } = input else {
                continue;
            };
            let Some((other, name)) = url
                .strip_prefix(OTHER_WORKFLOW_TASK)
                .and_then(|rest| rest.split_once('/'))
                .map(|(w, t)| (w.to_string(), t.to_string()))
            else {
                continue;
            };
            let refuse = |why: String| {
                ApiError::bad_request(format!(
                    "task `{}` takes input `{other}:{name}`, but {why}",
                    task.name
                ))
            };
            let Some(row) = app
                .store
                .get_workflow(&other)
                .await
                .map_err(ApiError::internal)?
            else {
                return Err(refuse(format!("workflow {other} is not known")));
            };
            if !caller.may_act_on(&row.submitted_by) {
                return Err(refuse(format!(
                    "workflow {other} belongs to {}",
                    row.submitted_by
                )));
            }
            // The state every other answer shows: a task the workflow's
            // query calls COMPLETED is one whose output can be read here.
            let doc = current_doc(app, &other, false).await?;
            let Some(done) = doc
                .groups
                .iter()
                .flat_map(|g| &g.tasks)
                .find(|t| t.name == name)
            else {
                return Err(refuse(format!("workflow {other} has no task `{name}`")));
            };
            if done.status != "COMPLETED" {
                return Err(refuse(format!(
                    "its task `{name}` is {}: only a COMPLETED task's output can be read",
                    done.status
                )));
            }
            let dir =
                crate::launch::AttemptDirs::of(&app.runs_dir, &other, &name, done.retry_id).output;
            *url = format!("file://{}", dir.display());
        }
    }
    Ok(())
}

/// List workflows, newest first.
#[utoipa::path(get, path = "/api/workflow",
    params(("name" = Option<String>, Query), ("statuses" = Option<Vec<String>>, Query),
           ("pools" = Option<Vec<String>>, Query), ("users" = Option<Vec<String>>, Query),
           ("all_users" = Option<bool>, Query, description = "every user's, also with auth: tokens"),
           ("priority" = Option<Vec<String>>, Query, description = "HIGH, NORMAL or LOW"),
           ("limit" = Option<u32>, Query, minimum = 0, maximum = 1000, description = "default 20"),
           ("offset" = Option<u64>, Query),
           ("submitted_after" = Option<String>, Query, description = "UTC time (2023-05-03T00:00:00) or date: submitted at or after it"),
           ("submitted_before" = Option<String>, Query, description = "UTC time or date: submitted before it"),
           ("label" = Option<Vec<String>>, Query, description = "KEY=SELECTOR: a label matching literal characters, * and (a|b) alternatives; repeat to require all"),
           ("no_label" = Option<Vec<String>>, Query, description = "a label key the workflow must not have"),
           ("tags" = Option<Vec<String>>, Query, description = "tags the workflow must have (all)")),
    responses((status = 200, body = WorkflowListDoc), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)))]
async fn list(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<WorkflowListDoc>> {
    let params = params(&raw)?;
    let limit: Option<u32> = number32(&params, "limit")?;
    if limit.is_some_and(|l| l > 1000) {
        return Err(ApiError::bad_request("`limit` may be at most 1000"));
    }
    let filter = osmo_store::ListFilter {
        name: param(&params, "name").map(str::to_string),
        statuses: param_list(&params, "statuses")
            .into_iter()
            .map(|s| s.to_ascii_uppercase())
            .collect(),
        pools: param_list(&params, "pools"),
        submitted_by: listed_users(&params, &caller, app.config.auth)?,
        priorities: param_list(&params, "priority")
            .into_iter()
            .map(|s| s.to_ascii_uppercase())
            .collect(),
        limit: Some(limit.unwrap_or(20)),
        offset: number64(&params, "offset")?.unwrap_or(0),
        submitted_after: utc_time(&params, "submitted_after")?,
        submitted_before: utc_time(&params, "submitted_before")?,
        labels: whole_values(&params, "label")
            .iter()
            .map(|s| super::labels::parse_selector(s))
            .collect::<Result<_, _>>()
            .map_err(ApiError::bad_request)?,
        no_labels: param_list(&params, "no_label"),
        tags: param_list(&params, "tags"),
    };
    // The stored rows lag the live state by the commit on its way: a
    // workflow the query showed finished is listed as finished.
    synced(&app).await;
    let rows = app
        .store
        .list_workflows(&filter)
        .await
        .map_err(ApiError::internal)?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut extra = app
        .store
        .labels_and_tags(&ids)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(WorkflowListDoc {
        workflows: rows
            .iter()
            .map(|row| {
                let mut doc = docs::summary_doc(row);
                if let Some(lt) = extra.remove(&row.id) {
                    (doc.labels, doc.tags) = (lt.labels, lt.tags);
                }
                doc
            })
            .collect(),
    }))
}

/// Whose workflows a list shows: `users=`, else everyone's with
/// `all_users=true`, else (with `auth: tokens`) the caller's own, as OSMO's
/// `workflow list` does; without auth, everyone's.
fn listed_users(
    params: &[(String, String)],
    caller: &Caller,
    auth: AuthMode,
) -> ApiResult<Vec<String>> {
    let users = param_list(params, "users");
    // Read first: a bad value is refused even where it would not matter.
    let all_users = flag(params, "all_users")?;
    if !users.is_empty() || all_users || auth == AuthMode::None {
        return Ok(users);
    }
    Ok(vec![caller.user.clone()])
}

/// OSMO's task list (`osmo task list`): the current attempt of each task of
/// the running and pending workflows whose ID contains `workflow_id`, or of
/// the finished workflow with that exact ID. Filters: `statuses`, `users` / `all_users` (as the
/// workflow list), `pools`, `nodes`; `order` ASC or DESC by start time;
/// `limit`/`offset`. `summary=true` sums what they asked per user, pool and
/// priority; `aggregate_by_workflow=true` per workflow.
async fn tasks(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let params = params(&raw)?;
    let limit: usize = number32(&params, "limit")?.unwrap_or(20) as usize;
    let offset: usize = number64(&params, "offset")?.unwrap_or(0) as usize;
    let workflow_id = param(&params, "workflow_id").map(str::to_string);
    let (reply, answer) = oneshot::channel();
    let live = match app
        .requests
        .send(Request::TaskRows { id: None, reply })
        .await
    {
        Ok(()) => answer.await.ok().flatten().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut rows: Vec<serde_json::Value> = live
        .into_iter()
        .filter(|r| {
            workflow_id
                .as_deref()
                .is_none_or(|w| r["workflow_id"].as_str().is_some_and(|id| id.contains(w)))
        })
        .collect();
    if rows.is_empty()
        && let Some(id) = &workflow_id
    {
        rows = finished_task_rows(&app, id).await?;
    }
    let statuses: Vec<String> = param_list(&params, "statuses")
        .into_iter()
        .map(|s| s.to_ascii_uppercase())
        .collect();
    let users = listed_users(&params, &caller, app.config.auth)?;
    let pools = param_list(&params, "pools");
    let nodes = param_list(&params, "nodes");
    let keep = |row: &serde_json::Value, key: &str, wanted: &[String]| {
        wanted.is_empty() || wanted.iter().any(|w| row[key] == w.as_str())
    };
    rows.retain(|r| {
        keep(r, "status", &statuses)
            && keep(r, "user", &users)
            && keep(r, "pool", &pools)
            && keep(r, "node", &nodes)
    });
    let descending = param(&params, "order").is_some_and(|o| o.eq_ignore_ascii_case("DESC"));
    rows.sort_by(|a, b| {
        let key = |r: &serde_json::Value| r["start_time"].as_str().unwrap_or("").to_string();
        let order = key(a).cmp(&key(b));
        if descending { order.reverse() } else { order }
    });
    let by_workflow = flag(&params, "aggregate_by_workflow")?;
    if flag(&params, "summary")? || by_workflow {
        let keys: &[&str] = if by_workflow {
            &["user", "workflow_id", "pool", "priority"]
        } else {
            &["user", "pool", "priority"]
        };
        let mut sums: Vec<serde_json::Value> = Vec::new();
        for row in &rows {
            let found = sums
                .iter_mut()
                .find(|s| keys.iter().all(|k| s[*k] == row[*k]));
            let entry = match found {
                Some(entry) => entry,
                None => {
                    let mut entry =
                        serde_json::json!({"cpu": 0.0, "gpu": 0, "memory": 0.0, "storage": 0.0});
                    for k in keys {
                        entry[*k] = row[*k].clone();
                    }
                    sums.push(entry);
                    sums.last_mut().expect("just pushed")
                }
            };
            for k in ["cpu", "memory", "storage"] {
                entry[k] =
                    (entry[k].as_f64().unwrap_or(0.0) + row[k].as_f64().unwrap_or(0.0)).into();
            }
            entry["gpu"] =
                (entry["gpu"].as_u64().unwrap_or(0) + row["gpu"].as_u64().unwrap_or(0)).into();
        }
        return Ok(Json(serde_json::json!({ "summaries": sums })));
    }
    let more = rows.len() > offset + limit;
    let page: Vec<serde_json::Value> = rows.into_iter().skip(offset).take(limit).collect();
    Ok(Json(
        serde_json::json!({ "tasks": page, "more_entries": more }),
    ))
}

/// Prometheus' scrape: counters, histograms and the core's live gauges.
async fn metrics(State(app): State<AppState>) -> Response {
    let (reply, answer) = oneshot::channel();
    let live = match app.requests.send(Request::Live { reply }).await {
        Ok(()) => answer.await.unwrap_or_default(),
        Err(_) => Default::default(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::global().render(&live),
    )
        .into_response()
}

/// A workflow's stored row; 404 when there is none.
pub(super) async fn workflow_row(app: &AppState, id: &str) -> ApiResult<osmo_store::WorkflowRow> {
    app.store
        .get_workflow(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::unknown_workflow(id))
}

/// A workflow as it stands now: a running workflow's live state is the
/// manager's (its store row may lag a commit behind); a finished one's
/// final state is stored.
async fn current_doc(app: &AppState, id: &str, verbose: bool) -> ApiResult<WorkflowDoc> {
    let (reply, answer) = oneshot::channel();
    let asked = Request::Query {
        id: id.to_string(),
        verbose,
        reply,
    };
    if app.requests.send(asked).await.is_ok()
        && let Ok(Some(doc)) = answer.await
    {
        return Ok(doc);
    }
    let (row, stored) = load(app, id).await?;
    Ok(docs::workflow_doc(
        &DocMeta::of(&row),
        &stored.engine,
        verbose,
    ))
}

/// The task rows of one finished workflow, by its exact id. One whose end's
/// commit has not landed yet is still held by the manager, and its store row
/// is older than what the workflow query already showed: it is answered
/// from the manager, as the workflow query is.
async fn finished_task_rows(app: &AppState, id: &str) -> ApiResult<Vec<serde_json::Value>> {
    let (reply, answer) = oneshot::channel();
    let asked = Request::TaskRows {
        id: Some(id.to_string()),
        reply,
    };
    if app.requests.send(asked).await.is_ok()
        && let Ok(Some(rows)) = answer.await
    {
        return Ok(rows);
    }
    let Some(row) = app
        .store
        .get_workflow(id)
        .await
        .map_err(ApiError::internal)?
    else {
        return Ok(Vec::new());
    };
    let doc = Persisted::from_json(row.state.clone()).map_err(ApiError::internal)?;
    Ok(docs::task_rows(&DocMeta::of(&row), &doc.engine))
}

/// Waits until what the manager has taken so far (log lines, events) is in
/// the store: a reader who saw a task end in the live state then finds all
/// that led to it there.
async fn synced(app: &AppState) {
    let (reply, synced) = oneshot::channel();
    if app.requests.send(Request::Synced { reply }).await.is_ok() {
        let _ = synced.await;
    }
}

async fn load(app: &AppState, id: &str) -> ApiResult<(osmo_store::WorkflowRow, Persisted)> {
    let row = workflow_row(app, id).await?;
    let doc = Persisted::from_json(row.state.clone()).map_err(ApiError::internal)?;
    Ok((row, doc))
}

/// One workflow: the latest attempt of each task, or every attempt with `verbose`.
#[utoipa::path(get, path = "/api/workflow/{id}",
    params(("id" = String, Path), ("verbose" = Option<bool>, Query)),
    responses((status = 200, body = WorkflowDoc), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn query(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<WorkflowDoc>> {
    let verbose = flag(&params(&raw)?, "verbose")?;
    let mut doc = current_doc(&app, &id, verbose).await?;
    if let Some(lt) = app
        .store
        .labels_and_tags(std::slice::from_ref(&id))
        .await
        .map_err(ApiError::internal)?
        .remove(&id)
    {
        (doc.labels, doc.tags) = (lt.labels, lt.tags);
    }
    doc.warnings = app.workflow_config.labels().warnings(&doc.labels);
    Ok(Json(doc))
}

/// Add and remove a workflow's tags (removed first), as OSMO's `workflow tag`.
#[utoipa::path(post, path = "/api/workflow/{id}/tag",
    params(("id" = String, Path), ("add" = Option<Vec<String>>, Query), ("remove" = Option<Vec<String>>, Query)),
    responses((status = 200, body = TagsDoc), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse),
              (status = 403, body = ErrorResponse, description = "another user's workflow"),
              (status = 404, body = ErrorResponse)))]
async fn tag(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<TagsDoc>> {
    let params = params(&raw)?;
    let (add, remove) = (param_list(&params, "add"), param_list(&params, "remove"));
    if let Some(bad) = add.iter().find(|t| !super::labels::is_name(t)) {
        return Err(ApiError::bad_request(format!(
            "tag `{bad}` may hold {}",
            osmo_spec::labels::TAG_SYNTAX
        )));
    }
    if let Some(allowed) = &app.config.workflow_tags
        && let Some(bad) = add.iter().find(|t| !allowed.contains(t))
    {
        return Err(ApiError::bad_request(if allowed.is_empty() {
            format!(
                "tag `{bad}` cannot be set: the admin has set no workflow tags (`workflow_tags` of the server's configuration)"
            )
        } else {
            format!(
                "tag `{bad}` cannot be set: users may set only the tags the admin allows: {}",
                allowed.join(", ")
            )
        }));
    }
    let row = app
        .store
        .get_workflow(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::unknown_workflow(&id))?;
    if !caller.may_act_on(&row.submitted_by) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{id} is {}'s workflow; only they or an admin may tag it",
                row.submitted_by
            ),
        ));
    }
    let tags = app
        .store
        .change_tags(&id, &add, &remove)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(TagsDoc { tags }))
}

/// The tags users may set: the admin's `workflow_tags`, as OSMO; without
/// that list any tag may be set, and these are the tags in use.
#[utoipa::path(get, path = "/api/tag",
    responses((status = 200, body = TagsDoc), (status = 401, body = ErrorResponse)))]
async fn tags(State(app): State<AppState>) -> ApiResult<Json<TagsDoc>> {
    if let Some(allowed) = &app.config.workflow_tags {
        return Ok(Json(TagsDoc {
            tags: allowed.clone(),
        }));
    }
    let tags = app.store.tags_in_use().await.map_err(ApiError::internal)?;
    Ok(Json(TagsDoc { tags }))
}

/// Cancel a workflow: every unfinished group ends FAILED_CANCELED.
#[utoipa::path(post, path = "/api/workflow/{id}/cancel",
    params(("id" = String, Path), ("message" = Option<String>, Query)),
    responses((status = 200, body = CancelResponse), (status = 401, body = ErrorResponse),
              (status = 403, body = ErrorResponse, description = "another user's workflow"),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn cancel(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<CancelResponse>> {
    let params = params(&raw)?;
    owned_by_caller(&app, &id, &caller, "cancel").await?;
    let (reply, answer) = oneshot::channel();
    let request = Request::Cancel {
        id: id.clone(),
        by: caller.user,
        message: param(&params, "message").map(str::to_string),
        reply,
    };
    app.requests
        .send(request)
        .await
        .map_err(ApiError::internal)?;
    match answer.await.map_err(ApiError::internal)? {
        Ok(status) => Ok(Json(CancelResponse { name: id, status })),
        Err(e @ CancelError::Unknown(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ CancelError::Finished(..)) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Run a finished workflow that did not complete again, as a new workflow:
/// only its groups that did not complete run; the others keep their outputs.
#[utoipa::path(post, path = "/api/workflow/{id}/restart",
    params(("id" = String, Path), ("pool" = Option<String>, Query)),
    responses((status = 200, body = SubmitResponse), (status = 401, body = ErrorResponse),
              (status = 403, body = ErrorResponse, description = "another user's workflow"),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
              (status = 400, body = ErrorResponse)))]
async fn restart(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<SubmitResponse>> {
    let pool = param(&params(&raw)?, "pool").map(str::to_string);
    restart_as(&app, id, pool, caller).await
}

/// OSMO's path for a restart (`osmo workflow restart ID --pool P`).
async fn restart_in_pool(
    State(app): State<AppState>,
    Path((pool, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<SubmitResponse>> {
    restart_as(&app, id, Some(pool), caller).await
}

/// 403 unless `caller` may change workflow `id` (404 when there is none).
pub(super) async fn owned_by_caller(
    app: &AppState,
    id: &str,
    caller: &Caller,
    what: &str,
) -> ApiResult<()> {
    if caller.admin {
        return Ok(());
    }
    let row = workflow_row(app, id).await?;
    if caller.may_act_on(&row.submitted_by) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "workflow {id} belongs to {}; only they or an admin may {what} it",
            row.submitted_by
        ),
    ))
}

async fn restart_as(
    app: &AppState,
    id: String,
    pool: Option<String>,
    caller: Caller,
) -> ApiResult<Json<SubmitResponse>> {
    owned_by_caller(app, &id, &caller, "restart").await?;
    let (reply, answer) = oneshot::channel();
    let request = Request::Restart {
        id,
        pool,
        by: caller.user,
        reply,
    };
    app.requests
        .send(request)
        .await
        .map_err(ApiError::internal)?;
    match answer.await.map_err(ApiError::internal)? {
        Ok(new_id) => Ok(Json(SubmitResponse {
            overview: format!("/api/workflow/{new_id}"),
            name: new_id,
            spec: None,
            warnings: Vec::new(),
            logs: None,
        })),
        Err(e @ RestartError::Unknown(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ RestartError::NotRestartable(..)) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

/// Logs of a workflow's tasks: `YYYY/MM/DD HH:MM:SS [task retry-N][stream] line`.
#[utoipa::path(get, path = "/api/workflow/{id}/logs",
    params(("id" = String, Path), ("task_name" = Option<String>, Query), ("retry_id" = Option<u32>, Query),
           ("last_n_lines" = Option<u32>, Query), ("stream" = Option<String>, Query),
           ("follow" = Option<bool>, Query, description = "stream new lines until the workflow ends")),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn logs(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let params = params(&raw)?;
    let stream = param(&params, "stream").map(str::to_string);
    logs_of(&app, id, &params, stream.as_deref()).await
}

/// OSMO's `error_logs`: the stderr lines only (`osmo workflow logs --error`).
async fn error_logs(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let params = params(&raw)?;
    logs_of(&app, id, &params, Some("stderr")).await
}

async fn logs_of(
    app: &AppState,
    id: String,
    params: &[(String, String)],
    stream: Option<&str>,
) -> ApiResult<Response> {
    let retry_id: Option<u32> = number32(params, "retry_id")?;
    let last_n: Option<usize> = number32(params, "last_n_lines")?.map(|n| n as usize);
    let (_, doc) = load(app, &id).await?;
    synced(app).await;
    let task = param(params, "task_name");
    if let Some(task) = task
        && doc.engine.workflow().find_task(task).is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("workflow {id} has no task `{task}`"),
        ));
    }
    if flag(params, "follow")? {
        let body = follow_logs(
            app.store.clone(),
            id,
            task.map(str::to_string),
            retry_id,
            stream.map(str::to_string),
        );
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let lines = app
        .store
        .logs_of_stream(&id, task, retry_id, stream, last_n)
        .await
        .map_err(ApiError::internal)?;
    let text: String = lines.iter().map(log_line_text).collect();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// `2026/11/25 11:20:02 [task retry-0][stdout] text`, as OSMO prints logs.
fn log_line_text(l: &osmo_store::LogLine) -> String {
    let stamp = docs::rfc3339(Some(l.at_ms as u64)).unwrap_or_default();
    // 2026-11-25T11:20:02.123 → 2026/11/25 11:20:02
    let stamp = stamp
        .get(..19)
        .unwrap_or(&stamp)
        .replace('-', "/")
        .replace('T', " ");
    format!(
        "{stamp} [{} retry-{}][{}] {}\n",
        l.task, l.retry_id, l.stream, l.line
    )
}

/// How often a followed log looks for new lines, and how many it reads at once.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
const FOLLOW_PAGE: usize = 1000;

/// The logs so far, then each new line as it is stored, until the workflow
/// has finished and its last lines are out (`follow=true`, as OSMO's
/// `workflow logs` streams). Ends early when the client goes away.
fn follow_logs(
    store: Store,
    id: String,
    task: Option<String>,
    retry_id: Option<u32>,
    stream: Option<String>,
) -> axum::body::Body {
    let (tx, rx) = mpsc::channel::<Result<String, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        let mut after = 0;
        loop {
            // Whether it had finished before this read: then this read has
            // every line it will ever have.
            let finished = match store.get_workflow(&id).await {
                Ok(Some(row)) => row.finished_at.is_some(),
                _ => true,
            };
            let page = match store
                .logs_after(
                    &id,
                    task.as_deref(),
                    retry_id,
                    stream.as_deref(),
                    after,
                    FOLLOW_PAGE,
                )
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!("cannot follow the logs of {id}: {e}");
                    return;
                }
            };
            let full = page.len() == FOLLOW_PAGE;
            if let Some((seq, _)) = page.last() {
                after = *seq;
                let text: String = page.iter().map(|(_, l)| log_line_text(l)).collect();
                if tx.send(Ok(text)).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            if finished {
                return;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    axum::body::Body::from_stream(lines)
}

/// The workflow file as submitted (`rendered=true`: after Jinja rendering).
#[utoipa::path(get, path = "/api/workflow/{id}/spec",
    params(("id" = String, Path), ("rendered" = Option<bool>, Query), ("use_template" = Option<bool>, Query)),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn spec(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let params = params(&raw)?;
    // OSMO's CLI asks `use_template=false` for the rendered file, `true` for the template.
    // Both are read, so a bad value of either is refused.
    let asked_rendered = flag(&params, "rendered")?;
    let rendered = match param(&params, "use_template") {
        Some(_) => !flag(&params, "use_template")?,
        None => asked_rendered,
    };
    let row = app
        .store
        .get_workflow(&id)
        .await
        .map_err(ApiError::internal)?;
    let row = row.ok_or_else(|| ApiError::unknown_workflow(&id))?;
    let text = if rendered {
        row.spec_rendered
    } else {
        row.spec_source
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// The workflow's history, one line per event: what the backends reported
/// and what the engine decided about each exit, and why.
#[utoipa::path(get, path = "/api/workflow/{id}/events",
    params(("id" = String, Path), ("task_name" = Option<String>, Query), ("retry_id" = Option<u32>, Query)),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn events(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let params = params(&raw)?;
    let retry_id: Option<u32> = number32(&params, "retry_id")?;
    let task = param(&params, "task_name").map(str::to_string);
    synced(&app).await;
    let (row, doc) = load(&app, &id).await?;
    if let Some(task) = &task
        && doc.engine.workflow().find_task(task).is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("workflow {id} has no task `{task}`"),
        ));
    }
    let records = app.store.events(&id).await.map_err(ApiError::internal)?;
    // The decisions come from the latest state: the snapshot, with the events after it.
    let mut engine = doc.engine;
    let mut scratch = Vec::new();
    for r in records.iter().filter(|r| r.seq > row.snapshot_seq) {
        if let Ok(event) = serde_json::from_value(r.body.clone()) {
            engine.apply(&event, r.at as u64, &mut scratch);
            scratch.clear();
        }
    }
    let submitted = format!("by {} to pool {}", row.submitted_by, row.pool);
    let text = super::events::lines(&engine, &submitted, &records, task.as_deref(), retry_id);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// 200 once the service accepts work.
#[utoipa::path(get, path = "/api/health", responses((status = 200, description = "healthy")))]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "OK"}))
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Answers 413 from the Content-Length alone, before reading a byte of an
/// oversized body (the body limit above covers bodies of unknown length).
async fn refuse_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(n) if n > MAX_BODY as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is {n} bytes; the limit is {MAX_BODY} bytes"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this path does not take that method; GET /api/openapi.json lists them",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such API path; GET /api/openapi.json lists them",
    )
}
