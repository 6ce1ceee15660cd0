//! The service configuration file → [`ServiceConfig`], checked like a
//! workflow file: unknown keys, bad values, bad code lists and overlaps are
//! all reported with their places.

use std::collections::BTreeMap;

use crate::check;
use crate::config::{
    BackendKind, NodeCapacity, PoolConfig, PreflightTest, RuntimeKind, ServiceConfig,
};
use crate::de::{Checked, Scalar};
use crate::error::Diagnostics;
use crate::raw::{RawConfig, RawPool};
use crate::report::Report;
use crate::{read_yaml, render};

/// Reads the service configuration file `source` (named `file` in messages).
pub fn load_config(source: &str, file: &str) -> Result<ServiceConfig, Diagnostics> {
    render::check_size(source, file)?;
    let (raw, root, mut report) = read_yaml::<RawConfig>(source, source, file)?;
    let mut pools = BTreeMap::new();
    match raw.as_ref().map(|r| &r.pools) {
        Some(None) => report.error(
            root,
            "missing `pools`; the configuration needs at least one pool",
            None,
        ),
        Some(Some(Checked {
            value: Some(entries),
            mark,
        })) => {
            if entries.0.is_empty() {
                report.error(
                    *mark,
                    "`pools` is empty; the configuration needs at least one pool",
                    None,
                );
            }
            for (key, value) in &entries.0 {
                let name = check::name(key, "pool name", &mut report);
                let pool = value
                    .value
                    .as_ref()
                    .map(|raw| pool(raw, &key.text, &mut report));
                if let (Some(name), Some(pool)) = (name, pool) {
                    pools.insert(name, pool);
                }
            }
        }
        _ => {}
    }
    let mut auth = crate::config::AuthMode::None;
    if let Some(s) = raw.as_ref().and_then(|r| r.auth.as_ref()) {
        match s.text.as_str() {
            "none" => {}
            "tokens" => auth = crate::config::AuthMode::Tokens,
            _ => report.error(
                s.mark,
                "unknown `auth`; expected `none` or `tokens`",
                Some(s.text.clone()),
            ),
        }
    }
    let mut rate_limit = crate::config::RateLimit::default();
    if let Some(raw) = raw
        .as_ref()
        .and_then(|r| r.rate_limit.as_ref())
        .and_then(|c| c.value.as_ref())
    {
        if let Some(n) = raw
            .requests_per_second
            .as_ref()
            .and_then(|s| check::count(s, "`requests_per_second` of `rate_limit`", &mut report))
        {
            rate_limit.requests_per_second = n;
            // A burst follows the rate unless it is given.
            rate_limit.burst = n.saturating_mul(2);
        }
        if let Some(s) = &raw.burst
            && let Some(n) = check::count(s, "`burst` of `rate_limit`", &mut report)
        {
            if n == 0 {
                report.error(
                    s.mark,
                    "`burst` of `rate_limit` must be at least 1",
                    Some(s.text.clone()),
                );
            } else {
                rate_limit.burst = n;
            }
        }
    }
    let mut workflow_tags = None;
    if let Some(list) = raw.as_ref().and_then(|r| r.workflow_tags.as_ref()) {
        for tag in list.value.iter().flatten() {
            if tag.is_scalar() && !crate::labels::is_name(&tag.text) {
                report.error(
                    tag.mark,
                    format!("a workflow tag holds {}", crate::labels::TAG_SYNTAX),
                    Some(tag.text.clone()),
                );
            }
        }
        workflow_tags = check::strings(list, "`workflow_tags`", &mut report);
    }
    report.finish()?;
    Ok(ServiceConfig {
        pools,
        auth,
        rate_limit,
        workflow_tags,
    })
}

fn pool(raw: &RawPool, name: &str, report: &mut Report) -> PoolConfig {
    let what = |field: &str| format!("`{field}` of pool `{name}`");
    let mut pool = PoolConfig::default();
    if let Some(s) = &raw.backend {
        match s.text.as_str() {
            "local" => pool.backend = BackendKind::Local,
            "slurm" => pool.backend = BackendKind::Slurm,
            _ => report.error(
                s.mark,
                format!("unknown backend for pool `{name}`; expected `local` or `slurm`"),
                Some(s.text.clone()),
            ),
        }
    }
    if let Some(s) = &raw.runtime {
        match s.text.as_str() {
            "sandbox" => pool.runtime = RuntimeKind::Sandbox,
            "docker" => pool.runtime = RuntimeKind::Docker,
            _ => report.error(
                s.mark,
                format!("unknown runtime for pool `{name}`; expected `sandbox` or `docker`"),
                Some(s.text.clone()),
            ),
        }
    }
    if let Some(n) = raw
        .max_retry_per_task
        .as_ref()
        .and_then(|s| check::count(s, &what("max_retry_per_task"), report))
    {
        pool.max_retry_per_task = n;
    }
    if let Some(s) = &raw.max_tasks_per_workflow
        && let Some(n) = check::count(s, &what("max_tasks_per_workflow"), report)
    {
        if n == 0 {
            report.error(
                s.mark,
                format!("{} must be at least 1", what("max_tasks_per_workflow")),
                Some(s.text.clone()),
            );
        } else {
            pool.max_tasks_per_workflow = n;
        }
    }
    if let Some(actions) = &raw.default_exit_actions {
        pool.default_exit_actions = check::exit_actions(actions, report);
    }
    let mut names: Vec<(String, Scalar)> = Vec::new();
    for item in raw
        .preflight
        .as_ref()
        .and_then(|p| p.value.as_deref())
        .unwrap_or_default()
    {
        let Some(test) = &item.value else { continue };
        let Some(name_scalar) = &test.name else {
            report.error(
                item.mark,
                format!("a preflight test of pool `{name}` is missing `name`"),
                None,
            );
            continue;
        };
        let Some(test_name) = check::text(name_scalar, "a preflight test's `name`", report) else {
            continue;
        };
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == test_name) {
            report.error(
                name_scalar.mark,
                format!(
                    "preflight test `{test_name}` is defined twice in pool `{name}` (first at line {}, column {})",
                    first.mark.line, first.mark.column
                ),
                None,
            );
            continue;
        }
        names.push((test_name.clone(), name_scalar.clone()));
        let command = match &test.command {
            None => {
                report.error(
                    item.mark,
                    format!("preflight test `{test_name}` is missing `command` (a list)"),
                    None,
                );
                None
            }
            Some(list) => match check::strings(list, "a preflight `command`", report) {
                Some(c) if c.is_empty() => {
                    report.error(
                        list.mark,
                        format!("`command` of preflight test `{test_name}` is empty"),
                        None,
                    );
                    None
                }
                other => other,
            },
        };
        let first_attempt_only = check::opt_flag(
            test.first_attempt_only.as_ref(),
            "`first_attempt_only`",
            false,
            report,
        );
        if let Some(command) = command {
            pool.preflight.push(PreflightTest {
                name: test_name,
                command,
                first_attempt_only,
            });
        }
    }
    if let Some(node) = raw.node.as_ref().and_then(|n| n.value.as_ref()) {
        pool.node = NodeCapacity {
            cpu: node
                .cpu
                .as_ref()
                .and_then(|s| check::cpu(s, &what("node.cpu"), report)),
            gpu: node
                .gpu
                .as_ref()
                .and_then(|s| check::count(s, &what("node.gpu"), report)),
            memory_bytes: node
                .memory
                .as_ref()
                .and_then(|s| check::quantity(s, &what("node.memory"), report)),
            storage_bytes: node
                .storage
                .as_ref()
                .and_then(|s| check::quantity(s, &what("node.storage"), report)),
        };
    }
    pool.cpu_capacity = raw
        .cpu_capacity
        .as_ref()
        .and_then(|s| check::cpu(s, &what("cpu_capacity"), report));
    if let Some(s) = &raw.network {
        match s.text.as_str() {
            "workflow" => pool.network = crate::config::NetworkMode::Workflow,
            "host" => pool.network = crate::config::NetworkMode::Host,
            _ => report.error(
                s.mark,
                format!("unknown network for pool `{name}`; expected `workflow` or `host`"),
                Some(s.text.clone()),
            ),
        }
    }
    if let Some(s) = &raw.run_as_root {
        pool.run_as_root = check::flag(s, &what("run_as_root"), report).unwrap_or(false);
    }
    pool.gpu_capacity = raw
        .gpu_capacity
        .as_ref()
        .and_then(|s| check::count(s, &what("gpu_capacity"), report));
    pool.default_exec_timeout = raw
        .default_exec_timeout
        .as_ref()
        .and_then(|s| check::duration(s, &what("default_exec_timeout"), report));
    pool.default_queue_timeout = raw
        .default_queue_timeout
        .as_ref()
        .and_then(|s| check::duration(s, &what("default_queue_timeout"), report));
    if let Some(list) = &raw.platforms {
        pool.platforms = check::strings(list, &what("platforms"), report).unwrap_or_default();
    }
    for (raw_list, key, target) in [
        (
            &raw.allowed_mounts,
            "allowed_mounts",
            &mut pool.allowed_mounts,
        ),
        (&raw.hidden_paths, "hidden_paths", &mut pool.hidden_paths),
    ] {
        let Some(list) = raw_list else { continue };
        let paths = check::strings(list, &what(key), report).unwrap_or_default();
        let marks = list.value.iter().flatten().map(|s| s.mark);
        for (path, mark) in paths.iter().zip(marks) {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                report.error(
                    mark,
                    format!("`{path}` in `{key}` must be an absolute host path without `..`"),
                    Some(path.clone()),
                );
            }
        }
        *target = paths;
    }
    if let Some(options) = raw.options.as_ref().and_then(|o| o.value.as_ref()) {
        for (key, value) in &options.0 {
            if let Some(v) = &value.value {
                pool.options.insert(key.text.clone(), v.clone());
            }
        }
    }
    for (key, value) in [
        ("partition", &raw.partition),
        ("account", &raw.account),
        ("qos", &raw.qos),
    ] {
        if let Some(text) = check::opt_text(value.as_ref(), &what(key), report) {
            pool.options
                .insert(key.to_string(), serde_json::Value::String(text));
        }
    }
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_runner_config() {
        let config = load_config(
            "pools:\n  default:\n    backend: local\n    max_retry_per_task: 2\n    default_exit_actions: {COMPLETE: \"7\"}\n    preflight:\n    - {name: nccl-bandwidth, command: [sh, -c, \"exit 1\"], first_attempt_only: true}\n",
            "config.yaml",
        )
        .unwrap();
        let pool = &config.pools["default"];
        assert_eq!(pool.max_retry_per_task, 2);
        assert_eq!(pool.default_exit_actions.rules[0].codes.text, "7");
        assert!(pool.preflight[0].first_attempt_only);
        assert_eq!(pool.runtime, RuntimeKind::Sandbox);
    }
}
