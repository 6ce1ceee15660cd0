//! OSMO's workflow configuration service, the part that is ours to serve:
//! the label policy (`labels_config`). `GET /api/configs/workflow` shows it;
//! an admin changes it with `PATCH /api/configs/workflow` (its fields
//! merged over the current ones, as a JSON merge patch), and it is kept in
//! the store, so it outlives restarts. Submits are judged against it; a
//! workflow's query shows what the labels break now.

use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use osmo_spec::labels::LabelsConfig;
use serde::Deserialize;

use super::api::{ApiError, ApiResult, AppState};
use super::auth::Caller;
use crate::api_types::{ErrorResponse, WorkflowConfigDoc};

/// The store's name for it.
const NAME: &str = "workflow";

/// The label policy now; read by every submit, changed by an admin.
#[derive(Clone, Default)]
pub struct WorkflowConfig {
    labels: Arc<RwLock<LabelsConfig>>,
    /// One change at a time, from its read to its store write.
    changing: Arc<tokio::sync::Mutex<()>>,
}

impl WorkflowConfig {
    /// As the store keeps it (the default when it never changed).
    pub async fn load(store: &osmo_store::Store) -> anyhow::Result<WorkflowConfig> {
        let labels = match store.service_config(NAME).await? {
            None => LabelsConfig::default(),
            Some(body) => {
                serde_json::from_str::<WorkflowConfigDoc>(&body)
                    .map_err(|e| anyhow::anyhow!("the stored workflow configuration: {e}"))?
                    .labels_config
            }
        };
        Ok(WorkflowConfig {
            labels: Arc::new(RwLock::new(labels)),
            changing: Default::default(),
        })
    }

    pub fn labels(&self) -> LabelsConfig {
        self.labels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// OSMO's workflow configuration (the label policy).
#[utoipa::path(get, path = "/api/configs/workflow",
    responses((status = 200, body = WorkflowConfigDoc), (status = 401, body = ErrorResponse)))]
pub(crate) async fn get_config(State(app): State<AppState>) -> Json<WorkflowConfigDoc> {
    Json(WorkflowConfigDoc {
        labels_config: app.workflow_config.labels(),
    })
}

/// `PATCH` body, as OSMO's CLI and tests send it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    /// `{"labels_config": {...}}`: the fields given replace the current ones
    /// (`null` resets one to its default).
    #[schema(value_type = Object)]
    pub configs_dict: serde_json::Map<String, serde_json::Value>,
    /// Why, kept with the change.
    #[serde(default)]
    pub description: Option<String>,
}

/// Change the workflow configuration (admins): its label policy.
#[utoipa::path(patch, path = "/api/configs/workflow", request_body = ConfigPatch,
    responses((status = 200, body = WorkflowConfigDoc), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse),
              (status = 403, body = ErrorResponse, description = "not an admin")))]
pub(crate) async fn patch_config(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult<Json<WorkflowConfigDoc>> {
    if !caller.admin {
        return Err(ApiError::with_status(
            StatusCode::FORBIDDEN,
            "only an admin may change the workflow configuration",
        ));
    }
    let patch: ConfigPatch = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"configs_dict\": {{\"labels_config\": {{...}}}}, \"description\": \"...\"}}: {e}"
        ))
    })?;
    if let Some(other) = patch.configs_dict.keys().find(|k| *k != "labels_config") {
        return Err(ApiError::bad_request(format!(
            "`{other}` cannot be changed here: this server's workflow configuration holds labels_config"
        )));
    }
    let _one_at_a_time = app.workflow_config.changing.lock().await;
    let mut labels =
        serde_json::to_value(app.workflow_config.labels()).map_err(ApiError::internal)?;
    if let Some(change) = patch.configs_dict.get("labels_config") {
        merge_patch(&mut labels, change);
    }
    let labels: LabelsConfig = serde_json::from_value(labels)
        .map_err(|e| ApiError::bad_request(format!("labels_config: {e}")))?;
    labels
        .check()
        .map_err(|e| ApiError::bad_request(format!("labels_config: {e}")))?;
    let doc = WorkflowConfigDoc {
        labels_config: labels.clone(),
    };
    let body = serde_json::to_string(&doc).map_err(ApiError::internal)?;
    // Durable first: a change the store lost must not have been applied.
    app.store
        .put_service_config(
            NAME,
            &body,
            patch.description.as_deref().unwrap_or(""),
            &caller.user,
            crate::now_ms() as i64,
        )
        .await
        .map_err(ApiError::internal)?;
    *app.workflow_config
        .labels
        .write()
        .unwrap_or_else(|e| e.into_inner()) = labels;
    Ok(Json(doc))
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(Default::default());
    }
    let fields = target.as_object_mut().expect("made an object above");
    for (key, value) in changes {
        if value.is_null() {
            fields.remove(key);
        } else {
            merge_patch(
                fields.entry(key.clone()).or_insert(serde_json::Value::Null),
                value,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_replaces_the_fields_it_names() {
        let mut config = json!({"policy": [{"key": "team"}], "pod_label_prefix": ""});
        merge_patch(&mut config, &json!({"pod_label_prefix": "example.com/"}));
        assert_eq!(
            config,
            json!({"policy": [{"key": "team"}], "pod_label_prefix": "example.com/"})
        );
        merge_patch(&mut config, &json!({"policy": null}));
        assert_eq!(config, json!({"pod_label_prefix": "example.com/"}));
    }
}
