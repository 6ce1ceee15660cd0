//! OSMO's pool and resource endpoints: `GET /api/pool` and `/api/pool_quota`
//! (`osmo pool list`), `GET /api/resources` and `/api/resources/{node}`
//! (`osmo resource list` and `info`), with what the scheduler hands out now.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::api::{ApiError, ApiResult, AppState};
use super::core::PoolUsage;
use osmo_spec::config::{BackendKind, PoolConfig};

/// `pools=` values of a query string (none: every pool).
fn wanted_pools(raw: Option<&str>) -> ApiResult<Vec<String>> {
    Ok(
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("cannot read the query string: {e}")))?
            .into_iter()
            .filter(|(k, _)| k == "pools")
            .map(|(_, v)| v)
            .collect(),
    )
}

/// What each pool's scheduler holds now.
async fn usage(app: &AppState) -> Vec<PoolUsage> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    match app
        .requests
        .send(super::manager::Request::Usage { reply })
        .await
    {
        Ok(()) => answer.await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
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
    let wanted = wanted_pools(raw.as_deref())?;
    let usage = usage(&app).await;
    let mut pools = serde_json::Map::new();
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
        let description = format!(
            "{} backend",
            serde_json::to_value(pool.backend)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        );
        pools.insert(
            name.clone(),
            json!({"name": name, "description": description, "status": "ONLINE"}),
        );
        node_sets.push(json!({
            "pools": [{
                "name": name,
                "description": format!("{} backend", backend.as_str().unwrap_or("?")),
                "status": "ONLINE",
                "backend": backend,
                "resource_usage": gpus.usage(),
                "cpu": {"used": cpu_used, "capacity": cpu_cap, "waiting_groups": waiting},
                "memory": {"used_bytes": u.map_or(0, |u| u.memory_used_bytes)},
                // Ours, beside OSMO's: what a task of this pool gets when its file says nothing.
                "runtime": pool.runtime,
                "max_retry_per_task": pool.max_retry_per_task,
                "default_exit_actions": pool.default_exit_actions,
                "preflight": pool.preflight,
            }]
        }));
    }
    Ok(Json(json!({
        "pools": pools,
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

/// One node of a pool in OSMO's resource shape: capacities as
/// `allocatable_fields`, what admitted groups hold as `usage_fields` (CPUs
/// and GPUs counted, memory and storage in bytes).
fn node_resource(name: &str, pool: &PoolConfig, usage: Option<&PoolUsage>) -> Value {
    let node = match pool.backend {
        BackendKind::Local => crate::proto::hostname(),
        BackendKind::Slurm => format!(
            "slurm:{}",
            pool.options
                .get("partition")
                .and_then(Value::as_str)
                .unwrap_or("default")
        ),
    };
    let platforms: Vec<String> = if pool.platforms.is_empty() {
        vec!["default".to_string()]
    } else {
        pool.platforms.clone()
    };
    // What a task on this node may do, per platform (`osmo resource info`).
    let task_config = json!({
        "host_network": true,
        "privileged": false,
        "default_mounts": [],
        "allowed_mounts": pool.allowed_mounts,
    });
    let config_fields: serde_json::Map<String, Value> = platforms
        .iter()
        .map(|p| (p.clone(), task_config.clone()))
        .collect();
    let cpu = usage
        .map(|u| u.cpu_capacity)
        .filter(|c| *c < 1e11)
        .or(pool.node.cpu)
        .unwrap_or(0.0);
    let mut allocatable = json!({
        "cpu": cpu,
        "gpu": pool.node.gpu.unwrap_or(0),
    });
    if let Some(bytes) = pool.node.memory_bytes {
        allocatable["memory"] = json!(bytes);
    }
    if let Some(bytes) = pool.node.storage_bytes {
        allocatable["storage"] = json!(bytes);
    }
    let mut exposed = json!({
        "node": node,
        "pool/platform": platforms.iter().map(|p| format!("{name}/{p}")).collect::<Vec<_>>(),
    });
    for key in ["cpu", "gpu", "memory", "storage"] {
        if let Some(v) = allocatable.get(key) {
            exposed[key] = v.clone();
        }
    }
    json!({
        "hostname": node,
        "resource_type": "SHARED",
        "exposed_fields": exposed,
        "pool_platform_labels": {name: platforms},
        "config_fields": {name: config_fields},
        "allocatable_fields": allocatable,
        "usage_fields": {
            "cpu": usage.map_or(0.0, |u| u.cpu_used),
            "gpu": usage.map_or(0, |u| u.gpu_used),
            "memory": usage.map_or(0, |u| u.memory_used_bytes),
            "storage": 0,
        },
    })
}

/// OSMO's `GET /api/resources` (`osmo resource list`): the nodes of the
/// pools asked for (`pools=`, or every pool), with their capacity and use.
pub async fn resources(
    State(app): State<AppState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> ApiResult<Json<Value>> {
    let wanted = wanted_pools(raw.as_deref())?;
    for name in &wanted {
        if !app.config.pools.contains_key(name) {
            return Err(ApiError::not_found(format!(
                "pool {name} is not known; `osmo pool list` shows the pools"
            )));
        }
    }
    let usage = usage(&app).await;
    let resources: Vec<Value> = app
        .config
        .pools
        .iter()
        .filter(|(name, _)| wanted.is_empty() || wanted.contains(name))
        .map(|(name, pool)| node_resource(name, pool, usage.iter().find(|u| &u.pool == name)))
        .collect();
    Ok(Json(json!({ "resources": resources })))
}

/// OSMO's `GET /api/resources/{node}` (`osmo resource info`).
pub async fn resource(
    State(app): State<AppState>,
    Path(node): Path<String>,
) -> ApiResult<Json<Value>> {
    let usage = usage(&app).await;
    let resources: Vec<Value> = app
        .config
        .pools
        .iter()
        .map(|(name, pool)| node_resource(name, pool, usage.iter().find(|u| &u.pool == name)))
        .filter(|r| r["hostname"] == node.as_str())
        .collect();
    Ok(Json(json!({ "resources": resources })))
}
