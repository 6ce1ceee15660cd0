//! The JSON documents of the REST API, shared by the server (which writes
//! them) and the CLI (which reads them). Field names follow OSMO's API.

use serde::{Deserialize, Serialize};

/// Body of `POST /api/pool/{pool}/workflow` (OSMO's `TemplateSpec`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The workflow file, as written (before Jinja rendering).
    pub file: String,
    /// `--set k=v` values, each `k=v`.
    #[serde(default)]
    pub set_variables: Vec<String>,
    /// `--set-string k=v` values, each `k=v`.
    #[serde(default)]
    pub set_string_variables: Vec<String>,
    /// File name used in error messages (default `workflow.yaml`).
    #[serde(default)]
    pub file_name: Option<String>,
    /// OSMO's CLI sends the file as the user wrote it here when `file` is
    /// its rendered form (with `localpath` files inlined); kept as the
    /// workflow's source.
    #[serde(default)]
    pub uploaded_templated_spec: Option<String>,
}

/// Answer to a submit.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubmitResponse {
    /// The workflow ID `<name>-<N>`; for `dry_run`/`validation_only`, the workflow's name.
    pub name: String,
    /// Where to look: `GET` this path for the workflow.
    pub overview: String,
    /// Set for `dry_run`: the rendered spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// For `validation_only`: `Workflow validation succeeded.`, as OSMO answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
}

/// Every 4xx/5xx answer. `message` and `error_code` are OSMO's (its CLI
/// shows `message`); `error` says the same, `diagnostics` lists spec problems.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    pub error: String,
    /// For spec errors: one entry per problem, `file:line:column: message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<String>,
    /// OSMO's field: the same text as `error`.
    #[serde(default)]
    pub message: String,
    /// OSMO's error kinds: `USER`, `SUBMISSION` (a spec refused), `NOTFOUND`, `SERVER`.
    #[serde(default)]
    pub error_code: String,
}

/// One attempt of a task in `GET /api/workflow/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskDoc {
    pub name: String,
    pub retry_id: u32,
    pub status: String,
    pub exit_code: Option<u32>,
    pub lead: bool,
    pub failure_message: Option<String>,
    /// Every code the attempt produced: `{code, source, detail}`.
    #[serde(default)]
    pub exit_codes: Vec<serde_json::Value>,
    /// Which rule decided: `{origin: task|pool|default, action, range}`.
    #[serde(default)]
    pub exit_rule: Option<serde_json::Value>,
    pub node_name: Option<String>,
    /// The GPU devices the attempt was given, as indices on its node.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// RFC 3339 times.
    pub scheduling_time: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    /// Every run of the command in this attempt, oldest first: more than one
    /// when it was restarted in place (SEMANTICS §4).
    #[serde(default)]
    pub runs: Vec<RunDoc>,
}

/// One run of an attempt's command.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunDoc {
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    /// The command's own exit code, when known.
    pub exit_code: Option<u32>,
    /// Why it was stopped (`restarted: lead TASK rescheduled`); null when it ended by itself.
    pub stopped_because: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupDoc {
    pub name: String,
    pub status: String,
    pub failure_message: Option<String>,
    pub remaining_upstream_groups: Vec<String>,
    pub downstream_groups: Vec<String>,
    /// Latest attempt of each task, or every attempt with `verbose=true`.
    pub tasks: Vec<TaskDoc>,
}

/// `GET /api/workflow/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowDoc {
    pub name: String,
    pub status: String,
    pub pool: String,
    pub priority: String,
    pub submitted_by: String,
    pub submit_time: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    /// Seconds from start (or submit) to end (or now).
    pub duration: Option<f64>,
    pub exec_timeout: Option<f64>,
    pub queue_timeout: Option<f64>,
    pub canceled_by: Option<String>,
    pub cancel_message: Option<String>,
    /// Where the workflow's document is (`/api/workflow/<id>`), as OSMO's `overview`.
    #[serde(default)]
    pub overview: String,
    /// Labels set at submit (`--label`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// What its labels break in the label policy of now (OSMO's `warnings`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Tags (`workflow tag`).
    #[serde(default)]
    pub tags: Vec<String>,
    pub groups: Vec<GroupDoc>,
}

/// One row of `GET /api/workflow`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowSummaryDoc {
    pub name: String,
    pub status: String,
    pub pool: String,
    pub priority: String,
    pub submitted_by: String,
    /// OSMO's name for `submitted_by`.
    #[serde(default)]
    pub user: String,
    /// Where the workflow's document is (`/api/workflow/<id>`).
    #[serde(default)]
    pub overview: String,
    pub submit_time: Option<String>,
    pub end_time: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `GET /api/workflow`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowListDoc {
    pub workflows: Vec<WorkflowSummaryDoc>,
}

/// `POST /api/workflow/{id}/tag` and `GET /api/tag`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TagsDoc {
    pub tags: Vec<String>,
}

/// `POST /api/workflow/{id}/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CancelResponse {
    pub name: String,
    pub status: String,
}

/// Where and with what to open an exec or port-forward WebSocket (OSMO's
/// router ticket): `{router_address}/api/router/…/client/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouterTicket {
    /// `ws://HOST:PORT` (or `wss://`): this server, as the client reached it.
    pub router_address: String,
    /// One-time key, valid for a minute.
    pub key: String,
    /// Sent back as the `Cookie` header by OSMO's CLI; not needed here.
    pub cookie: String,
}

/// OSMO's workflow configuration, as far as this server has it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowConfigDoc {
    /// The label policy: `{policy: [{key, allow_list, enforcement: off|warn|enforce,
    /// assert_message}], pod_label_prefix}`.
    #[schema(value_type = Object)]
    pub labels_config: osmo_spec::labels::LabelsConfig,
}
