//! OSMO's profile and version endpoints, which OSMO's own CLI asks before it
//! submits (`GET /api/profile/settings` for the default pool) and for
//! `osmo version`. The default pool a user sets is kept while the server
//! runs; without one, the profile names the only pool, or `default`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiError, ApiResult, AppState, user};

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
pub async fn get_settings(State(app): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let who = user(&headers);
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
    headers: HeaderMap,
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
            .insert(user(&headers), pool);
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

/// OSMO's `GET /api/pool` and `/api/pool_quota` (`osmo pool list`): one node
/// set per pool. OSMO counts GPUs; so do these fields: the quota is what the
/// scheduler hands out (`gpu_capacity`, else the node's GPUs), the total the
/// node's GPUs, used what admitted groups hold. The CPUs, and the groups
/// waiting for resources, are under `cpu`; memory held under `memory`.
pub async fn pools(
    State(app): State<AppState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> ApiResult<Json<Value>> {
    let wanted: Vec<String> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("cannot read the query string: {e}")))?
            .into_iter()
            .filter(|(k, _)| k == "pools")
            .map(|(_, v)| v)
            .collect();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let usage = match app
        .requests
        .send(super::manager::Request::Usage { reply })
        .await
    {
        Ok(()) => answer.await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut node_sets = Vec::new();
    let (mut cpu_used_sum, mut cpu_cap_sum) = (0.0, 0.0);
    let mut sum = GpuCounts::default();
    for (name, pool) in &app.config.pools {
        if !wanted.is_empty() && !wanted.contains(name) {
            continue;
        }
        let u = usage.iter().find(|u| &u.pool == name);
        let (cpu_used, cpu_cap, waiting) = u.map_or((0.0, 0.0, 0), |u| {
            (u.cpu_used, u.cpu_capacity, u.waiting_groups)
        });
        cpu_used_sum += cpu_used;
        cpu_cap_sum += cpu_cap;
        let total = u64::from(pool.node.gpu.unwrap_or(0));
        let gpus = GpuCounts {
            used: u.map_or(0, |u| u64::from(u.gpu_used)),
            quota: u.and_then(|u| u.gpu_capacity).map_or(total, u64::from),
            total,
        };
        sum.add(&gpus);
        let backend = serde_json::to_value(pool.backend).unwrap_or(Value::Null);
        node_sets.push(json!({
            "pools": [{
                "name": name,
                "description": format!("{} backend", backend.as_str().unwrap_or("?")),
                "status": "ONLINE",
                "backend": backend,
                "resource_usage": gpus.usage(),
                "cpu": {"used": cpu_used, "capacity": cpu_cap, "waiting_groups": waiting},
                "memory": {"used_bytes": u.map_or(0, |u| u.memory_used_bytes)},
            }]
        }));
    }
    Ok(Json(json!({
        "node_sets": node_sets,
        "resource_sum": sum.usage(),
        "cpu_sum": {"used": cpu_used_sum, "capacity": cpu_cap_sum},
    })))
}

/// GPUs of a pool (or of all), in OSMO's `resource_usage` shape.
#[derive(Default)]
struct GpuCounts {
    used: u64,
    quota: u64,
    total: u64,
}

impl GpuCounts {
    fn add(&mut self, other: &GpuCounts) {
        self.used += other.used;
        self.quota += other.quota;
        self.total += other.total;
    }

    fn usage(&self) -> Value {
        json!({
            "quota_used": self.used,
            "quota_limit": self.quota,
            "quota_free": self.quota.saturating_sub(self.used),
            "total_usage": self.used,
            "total_capacity": self.total,
            "total_free": self.total.saturating_sub(self.used),
        })
    }
}
