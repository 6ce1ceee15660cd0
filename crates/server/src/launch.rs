//! Turns an engine `Launch` into what the agent runs: the task with its
//! reserved tokens substituted, its attempt's output directory, the outputs
//! of its upstream tasks as inputs, the pool's preflight tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use osmo_engine::{AttemptId, TaskKey, WorkflowState};
use osmo_spec::config::{PoolConfig, ServiceConfig};
use osmo_spec::model::{Input, Workflow};

use crate::proto::{AttemptKey, Launch};
use crate::scheduler::Footprint;

/// The unprivileged user and group tasks run as: `nobody`/`nogroup`.
const NOBODY: u32 = 65534;

pub struct LaunchBuilder {
    runs: PathBuf,
    /// The server's data directory, hidden from tasks.
    data_dir: PathBuf,
    _config: Arc<ServiceConfig>,
    /// Where tasks reach this server (`OSMO_URL` in their environment), so
    /// that the `osmo` CLI works inside them.
    task_url: Option<String>,
    /// A directory holding only this `osmo` binary (`task_bin::exe_dir`),
    /// added to a task's default `PATH`.
    osmo_dir: Option<String>,
    /// Where containers find `osmo` first: a wrapper that explains an image
    /// without glibc (see `task_bin`).
    container_bin: Option<String>,
    /// With `auth: tokens`, what mints each workflow's task token (`OSMO_TOKEN`).
    task_tokens: Option<crate::auth::TaskTokens>,
}

impl LaunchBuilder {
    pub fn new(
        data_dir: PathBuf,
        config: Arc<ServiceConfig>,
        task_url: Option<String>,
    ) -> LaunchBuilder {
        let exe = std::env::current_exe().ok().and_then(|exe| {
            let dir = crate::task_bin::exe_dir(&data_dir, &exe)
                .map_err(|e| tracing::warn!("no osmo binary for tasks: {e:#}"))
                .ok()?;
            Some(dir.join("osmo"))
        });
        let osmo_dir = exe
            .as_ref()
            .and_then(|exe| exe.parent().map(|d| d.to_string_lossy().into_owned()));
        let container_bin = exe.as_ref().and_then(|exe| {
            crate::task_bin::prepare(&data_dir, exe)
                .map_err(|e| tracing::warn!("no osmo wrapper for containers: {e:#}"))
                .ok()
                .map(|d| d.to_string_lossy().into_owned())
        });
        let task_tokens = (config.auth == osmo_spec::config::AuthMode::Tokens)
            .then(|| crate::auth::TaskTokens::load(&data_dir))
            .and_then(|t| t.map_err(|e| tracing::error!("no task tokens: {e:#}")).ok());
        LaunchBuilder {
            container_bin,
            task_tokens,
            runs: data_dir.join("runs"),
            data_dir,
            _config: config,
            task_url,
            osmo_dir,
        }
    }

    /// What a group holds while it runs: the sum over its tasks of their
    /// CPUs, GPUs and memory, a task that asks for no CPU counting as one (so
    /// an unsized workflow still runs no more tasks at once than the pool
    /// has CPUs).
    pub fn footprint(&self, workflow: &Workflow, group: usize) -> Footprint {
        let mut sum = Footprint::default();
        for t in &workflow.groups[group].tasks {
            let r = workflow.resources.get(&t.resource);
            let cpu = r.map_or(0.0, |r| r.cpu);
            sum.cpu += if cpu > 0.0 { cpu } else { 1.0 };
            sum.gpu += r.map_or(0, |r| r.gpu);
            sum.memory_bytes += r.and_then(|r| r.memory_bytes).unwrap_or(0);
        }
        sum
    }

    /// Where an attempt's `{{output}}` lives on the host.
    pub fn output_dir(&self, workflow_id: &str, task: &str, retry_id: u32) -> PathBuf {
        self.runs
            .join(workflow_id)
            .join(task)
            .join(retry_id.to_string())
            .join("output")
    }

    pub fn build(
        &self,
        engine: &WorkflowState,
        pool: &PoolConfig,
        key: AttemptKey,
        host_of: &dyn Fn(&str) -> String,
    ) -> anyhow::Result<Launch> {
        let workflow = engine.workflow();
        let AttemptId {
            task: TaskKey { group, task },
            retry_id,
        } = key.attempt;
        let group = &workflow.groups[group as usize];
        let spec = &group.tasks[task as usize];
        let output = self.output_dir(engine.id(), &spec.name, retry_id);
        std::fs::create_dir_all(&output)
            .with_context(|| format!("cannot create the output directory {}", output.display()))?;
        let mut inputs = Vec::new();
        let mut input_dirs = Vec::new();
        for (i, input) in spec.inputs.iter().enumerate() {
            match input {
                Input::Task { task: upstream, .. } => {
                    let (g, t) = workflow
                        .find_task(upstream)
                        .with_context(|| format!("input task {upstream} is not in the workflow"))?;
                    let key = TaskKey {
                        group: g as u32,
                        task: t as u32,
                    };
                    // Completed in the run this one restarts: its outputs are there.
                    let dir = match engine.inherited(key) {
                        Some((earlier, retry_id)) => self.output_dir(earlier, upstream, retry_id),
                        None => {
                            self.output_dir(engine.id(), upstream, engine.current(key).retry_id)
                        }
                    };
                    inputs.push((upstream.clone(), path_text(&dir)));
                    input_dirs.push(dir);
                }
                Input::Url { url, .. } => {
                    // URL inputs are not fetched by the local backend yet: an empty directory stands in.
                    let dir = output
                        .parent()
                        .expect("output has a parent")
                        .join("input")
                        .join(i.to_string());
                    std::fs::create_dir_all(&dir)?;
                    inputs.push((url.clone(), path_text(&dir)));
                    input_dirs.push(dir);
                }
            }
        }
        let group_hosts: Vec<String> = group.tasks.iter().map(|t| host_of(&t.name)).collect();
        let tokens = osmo_spec::Tokens {
            output: path_text(&output),
            inputs,
            workflow_id: engine.id().to_string(),
            hosts: group
                .tasks
                .iter()
                .map(|t| (t.name.clone(), host_of(&t.name)))
                .collect(),
            uuid: format!("{}-{}-{}", engine.id(), spec.name, retry_id),
        };
        let mut task = spec.substituted(&tokens);
        // `osmo` inside the task talks to the service that launched it (as in OSMO).
        if let Some(url) = &self.task_url {
            task.environment
                .entry("OSMO_URL".into())
                .or_insert_with(|| url.clone());
        }
        if let Some(tokens) = &self.task_tokens {
            // Acts as the workflow's submitter (see `auth`).
            task.environment
                .insert("OSMO_TOKEN".into(), tokens.token(engine.id()));
        }
        if let Some(dir) = &self.osmo_dir {
            // A directory of the data dir with only the binary, read-only at its
            // path (the data dir itself is hidden from tasks).
            input_dirs.push(PathBuf::from(dir));
            let mut path = format!("{}:{dir}", osmo_runtime::env::DEFAULT_PATH);
            if pool.runtime == osmo_spec::config::RuntimeKind::Docker
                && let Some(bin) = &self.container_bin
            {
                input_dirs.push(PathBuf::from(bin));
                path = format!("{}:{bin}", osmo_runtime::env::DEFAULT_PATH);
            }
            task.environment.entry("PATH".into()).or_insert(path);
        }
        let resource = workflow.resources.get(&task.resource);
        let memory_limit_bytes = resource.and_then(|r| r.memory_bytes);
        let cpu = resource.map(|r| r.cpu);
        let gpu = resource.map_or(0, |r| r.gpu);
        // Validated at submit (syntax, and allowed by the pool); checked again
        // here as the file system resolves them, so that a symbolic link
        // under an allowed path cannot lead elsewhere.
        let volume_mounts = task
            .volume_mounts
            .iter()
            .filter_map(|m| osmo_spec::model::parse_volume_mount(m))
            .map(|(src, dst)| Ok((allowed_source(&src, pool)?, PathBuf::from(dst))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut hidden_paths = vec![
            self.data_dir.clone(),
            PathBuf::from("/root"),
            PathBuf::from("/home"),
        ];
        hidden_paths.extend(pool.hidden_paths.iter().map(PathBuf::from));
        Ok(Launch {
            key,
            group: group.name.clone(),
            task: task.name,
            command: task.command,
            args: task.args,
            environment: task.environment,
            files: task.files,
            output_dir: output,
            input_dirs,
            volume_mounts,
            preflight: pool.preflight.clone(),
            memory_limit_bytes,
            cpu,
            image: task.image,
            runtime: pool.runtime,
            barrier: group.barrier && group.tasks.len() > 1,
            gpu,
            gpus: Vec::new(),
            gang: 1,
            hidden_paths,
            // `nobody` unless the pool lets tasks be root.
            run_as: (!pool.run_as_root).then_some((NOBODY, NOBODY)),
            network: (pool.backend == osmo_spec::config::BackendKind::Local
                && crate::agent_link::gives_networks(pool))
            .then_some(group_hosts),
        })
    }
}

/// A volume mount's host path as the file system resolves it, when that is
/// still one of the pool's `allowed_mounts` or below one.
fn allowed_source(src: &str, pool: &PoolConfig) -> anyhow::Result<PathBuf> {
    let real = std::fs::canonicalize(src)
        .with_context(|| format!("volume mount source {src} cannot be resolved"))?;
    let allowed = pool
        .allowed_mounts
        .iter()
        .any(|a| std::fs::canonicalize(a).is_ok_and(|a| real.starts_with(&a)));
    if !allowed {
        anyhow::bail!(
            "volume mount source {src} resolves to {}, which is not under the pool's allowed_mounts",
            real.display()
        );
    }
    Ok(real)
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
