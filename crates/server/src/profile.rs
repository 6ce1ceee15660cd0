//! OSMO's profile and version endpoints, which OSMO's own CLI asks before it
//! submits (`GET /api/profile/settings` for the default pool) and for
//! `osmo version`. The default pool a user sets is kept while the server
//! runs; without one, the profile names the only pool, or `default`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiError, ApiResult, AppState};
use super::auth::Caller;

/// Default pools set with `osmo profile set pool NAME`, by user.
#[derive(Clone, Default)]
pub struct Profiles(Arc<Mutex<HashMap<String, String>>>);

impl Profiles {
    fn pool_of(&self, user: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .cloned()
    }
}

/// The caller's profile: `{profile: {username, pool, ...}, pools, roles}`.
pub async fn get_settings(
    State(app): State<AppState>,
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
) -> Json<Value> {
    let who = caller.user;
    let pools: Vec<&String> = app.config.pools.keys().collect();
    let pool = app.profiles.pool_of(&who).or_else(|| {
        if pools.len() == 1 {
            pools.first().map(|p| p.to_string())
        } else {
            app.config
                .pools
                .contains_key("default")
                .then(|| "default".to_string())
        }
    });
    Json(json!({
        "profile": {
            "username": who,
            "pool": pool,
            "email_notification": false,
            "slack_notification": false,
        },
        "pools": pools,
        "roles": ["osmo-user"],
    }))
}

#[derive(Deserialize)]
pub struct SettingsBody {
    #[serde(default)]
    pool: Option<String>,
    /// Notification settings are accepted and have no effect here.
    #[serde(default)]
    #[allow(dead_code)]
    email_notification: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    slack_notification: Option<bool>,
}

/// Sets the caller's default pool.
pub async fn set_settings(
    State(app): State<AppState>,
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
    Json(body): Json<SettingsBody>,
) -> ApiResult<Json<Value>> {
    if let Some(pool) = body.pool {
        if !app.config.pools.contains_key(&pool) {
            return Err(ApiError::bad_request(format!(
                "there is no pool `{pool}`; the pools are: {}",
                app.config
                    .pools
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        app.profiles
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(caller.user, pool);
    }
    Ok(Json(json!({})))
}

/// This service's version, in OSMO's shape (`major.minor.revision`).
pub async fn version() -> Json<Value> {
    let mut parts = env!("CARGO_PKG_VERSION").split('.');
    let mut next = || parts.next().unwrap_or("0").to_string();
    Json(json!({
        "major": next(),
        "minor": next(),
        "revision": next(),
        "hash": "",
    }))
}
