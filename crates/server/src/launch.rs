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

/// Where an attempt keeps its files on the host, below the data
/// directory's `runs/`.
pub struct AttemptDirs {
    /// Its `{{output}}`: `runs/WF/TASK.RETRY`.
    pub output: PathBuf,
    /// Where the inputs it downloads go, one directory each:
    /// `runs/WF/TASK.RETRY.input/N`.
    pub downloads: PathBuf,
}

impl AttemptDirs {
    /// The directories of attempt `retry_id` of `task`. One new directory
    /// per attempt, in its workflow's: on a file system such as ext4, each
    /// new directory allocates a block, and `runs/WF/TASK/RETRY/output` made
    /// three per task. An attempt made by an earlier version keeps that
    /// layout (`output` and `input` in `runs/WF/TASK/RETRY`); the two cannot
    /// be confused, a task's name having no `.`.
    pub fn of(runs: &Path, workflow_id: &str, task: &str, retry_id: u32) -> AttemptDirs {
        let earlier = runs.join(workflow_id).join(task).join(retry_id.to_string());
        if earlier.is_dir() {
            return AttemptDirs {
                output: earlier.join("output"),
                downloads: earlier.join("input"),
            };
        }
        AttemptDirs::laid_out_now(runs, workflow_id, task, retry_id)
    }

    /// The directories of an attempt no earlier version made.
    fn laid_out_now(runs: &Path, workflow_id: &str, task: &str, retry_id: u32) -> AttemptDirs {
        let workflow = runs.join(workflow_id);
        let stem = format!("{task}.{retry_id}");
        AttemptDirs {
            downloads: workflow.join(format!("{stem}.input")),
            output: workflow.join(stem),
        }
    }
}

/// Workflows known to have no attempt laid out by an earlier version: their
/// directory in `runs/` was not there when this server first launched one
/// of their attempts. Their launches skip [`AttemptDirs::of`]'s look for an
/// earlier layout (a path lookup in a directory of thousands of tasks, twice
/// an attempt: set up ahead, then launched).
#[derive(Default)]
struct FreshWorkflows(std::sync::Mutex<std::collections::HashSet<String>>);

impl FreshWorkflows {
    /// More workflows than run at once: past it the record starts again
    /// (and a workflow's launches look again, for nothing).
    const MAX: usize = 65_536;

    fn dirs(&self, runs: &Path, workflow_id: &str, task: &str, retry_id: u32) -> AttemptDirs {
        let mut fresh = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !fresh.contains(workflow_id) {
            if runs.join(workflow_id).exists() {
                drop(fresh);
                return AttemptDirs::of(runs, workflow_id, task, retry_id);
            }
            if fresh.len() >= Self::MAX {
                fresh.clear();
            }
            fresh.insert(workflow_id.to_string());
        }
        AttemptDirs::laid_out_now(runs, workflow_id, task, retry_id)
    }
}

pub struct LaunchBuilder {
    runs: PathBuf,
    fresh: FreshWorkflows,
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
    /// Users' credentials: a task's `credentials:` and its data URLs' keys.
    vault: crate::credentials::Vault,
}

impl LaunchBuilder {
    pub fn new(
        data_dir: PathBuf,
        config: Arc<ServiceConfig>,
        task_url: Option<String>,
        vault: crate::credentials::Vault,
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
            vault,
            container_bin,
            task_tokens,
            runs: data_dir.join("runs"),
            fresh: FreshWorkflows::default(),
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
        self.fresh
            .dirs(&self.runs, workflow_id, task, retry_id)
            .output
    }

    pub fn build(
        &self,
        engine: &WorkflowState,
        pool: &PoolConfig,
        key: AttemptKey,
        user: &str,
        host_of: &dyn Fn(&str) -> String,
        make_output: bool,
    ) -> anyhow::Result<Launch> {
        let workflow = engine.workflow();
        let AttemptId {
            task: TaskKey { group, task },
            retry_id,
        } = key.attempt;
        let group = &workflow.groups[group as usize];
        let spec = &group.tasks[task as usize];
        let dirs = self
            .fresh
            .dirs(&self.runs, engine.id(), &spec.name, retry_id);
        let output = dirs.output;
        if make_output {
            std::fs::create_dir_all(&output).with_context(|| {
                format!("cannot create the output directory {}", output.display())
            })?;
        }
        let mut inputs = Vec::new();
        let mut input_dirs = Vec::new();
        let mut tool_dirs = Vec::new();
        let mut downloads = Vec::new();
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
                Input::Url { url, regex } => {
                    // Downloaded here by the runtime before the command (`run_with_data`).
                    let dir = dirs.downloads.join(i.to_string());
                    std::fs::create_dir_all(&dir)?;
                    inputs.push((url.clone(), path_text(&dir)));
                    // Its URL once the task's tokens are substituted (below).
                    downloads.push((i, regex.clone(), dir.clone()));
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
        let downloads: Vec<osmo_runtime::data::Transfer> = downloads
            .into_iter()
            .filter_map(|(i, regex, dir)| match &task.inputs[i] {
                Input::Url { url, .. } => Some(osmo_runtime::data::Transfer {
                    credential: self.vault.data_for(user, url),
                    url: url.clone(),
                    regex,
                    dir,
                }),
                Input::Task { .. } => None,
            })
            .collect();
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
            tool_dirs.push(PathBuf::from(dir));
            let mut path = format!("{}:{dir}", osmo_runtime::env::DEFAULT_PATH);
            if pool.runtime == osmo_spec::config::RuntimeKind::Docker
                && let Some(bin) = &self.container_bin
            {
                tool_dirs.push(PathBuf::from(bin));
                path = format!("{}:{bin}", osmo_runtime::env::DEFAULT_PATH);
            }
            task.environment.entry("PATH".into()).or_insert(path);
        }
        let (mut secrets, uploads, checkpoints) =
            self.data_and_credentials(&mut task, user, &output)?;
        secrets.extend(
            downloads
                .iter()
                .filter_map(|t| t.credential.as_ref())
                .map(|c| c.access_key.clone()),
        );
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
            tool_dirs,
            volume_mounts,
            preflight: pool.preflight.clone(),
            memory_limit_bytes,
            cpu,
            image: task.image,
            runtime: pool.runtime,
            barrier: waits_at_barrier(group),
            gpu,
            gpus: Vec::new(),
            gang: 1,
            hidden_paths,
            // `nobody` unless the pool lets tasks be root.
            run_as: (!pool.run_as_root).then_some((NOBODY, NOBODY)),
            network: (pool.backend == osmo_spec::config::BackendKind::Local
                && crate::agent_link::gives_networks(pool))
            .then_some(group_hosts),
            downloads,
            uploads,
            checkpoints,
            secrets,
        })
    }

    /// The task's `credentials:` put in its environment or files, its
    /// outputs and checkpoints with the keys of their URLs, and every secret
    /// given, to be masked in its logs.
    #[allow(clippy::type_complexity)]
    fn data_and_credentials(
        &self,
        task: &mut osmo_spec::model::Task,
        user: &str,
        output: &Path,
    ) -> anyhow::Result<(
        Vec<String>,
        Vec<osmo_runtime::data::Transfer>,
        Vec<osmo_runtime::data::Checkpoint>,
    )> {
        let mut secrets = Vec::new();
        for (name, target) in &task.credentials {
            let credential = self.vault.get(user, name).with_context(|| {
                format!(
                    "credential `{name}` is not set for {user} (`osmo credential set {name} ...`)"
                )
            })?;
            secrets.extend(credential.payload.values().cloned());
            match target {
                // `NAME: {ENV: key}`: each variable holds one of its values.
                serde_json::Value::Object(map) => {
                    for (env, key) in map {
                        let key = key.as_str().unwrap_or_default();
                        let value = credential.payload.get(key).with_context(|| {
                            format!("credential `{name}` has no `{key}` (for ${env})")
                        })?;
                        task.environment.insert(env.clone(), value.clone());
                    }
                }
                // `NAME: /path`: a file per key in that directory.
                serde_json::Value::String(dir) => {
                    for (key, value) in &credential.payload {
                        task.files.push(osmo_spec::model::File {
                            path: format!("{}/{key}", dir.trim_end_matches('/')),
                            contents: value.clone(),
                            base64: false,
                        });
                    }
                }
                other => anyhow::bail!("credential `{name}`: `{other}` is not a path or a map"),
            }
        }
        let with_key = |url: &str| self.vault.data_for(user, url);
        let uploads = task
            .outputs
            .iter()
            .map(|o| osmo_runtime::data::Transfer {
                url: o.url.clone(),
                regex: o.regex.clone(),
                dir: output.to_path_buf(),
                credential: with_key(&o.url),
            })
            .collect::<Vec<_>>();
        let checkpoints = task
            .checkpoint
            .iter()
            .map(|c| osmo_runtime::data::Checkpoint {
                path: PathBuf::from(&c.path),
                url: c.url.clone(),
                regex: c.regex.clone(),
                every: c
                    .frequency
                    .as_deref()
                    .and_then(|f| osmo_spec::units::parse_duration(f).ok())
                    .unwrap_or(std::time::Duration::from_secs(600)),
                credential: with_key(&c.url),
            })
            .collect::<Vec<_>>();
        for c in uploads
            .iter()
            .filter_map(|t| t.credential.as_ref())
            .chain(checkpoints.iter().filter_map(|c| c.credential.as_ref()))
        {
            secrets.push(c.access_key.clone());
        }
        Ok((secrets, uploads, checkpoints))
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

/// A group's tasks wait at its barrier for a release (a group of one has
/// no one to wait for).
pub(crate) fn waits_at_barrier(group: &osmo_spec::model::Group) -> bool {
    group.barrier && group.tasks.len() > 1
}

#[cfg(test)]
mod tests {
    use super::{AttemptDirs, FreshWorkflows};

    #[test]
    fn an_attempt_gets_one_directory_and_one_made_earlier_keeps_its_layout() {
        let runs = tempfile::tempdir().unwrap();
        let runs = runs.path();
        let dirs = AttemptDirs::of(runs, "wf-1", "train", 2);
        assert_eq!(dirs.output, runs.join("wf-1/train.2"));
        assert_eq!(dirs.downloads, runs.join("wf-1/train.2.input"));
        // A run of an earlier version made `runs/WF/TASK/RETRY/output`:
        // its attempts are found there, its other attempts take the new one.
        std::fs::create_dir_all(runs.join("wf-1/train/0/output")).unwrap();
        let earlier = AttemptDirs::of(runs, "wf-1", "train", 0);
        assert_eq!(earlier.output, runs.join("wf-1/train/0/output"));
        assert_eq!(earlier.downloads, runs.join("wf-1/train/0/input"));
        assert_eq!(
            AttemptDirs::of(runs, "wf-1", "train", 1).output,
            runs.join("wf-1/train.1")
        );
    }

    #[test]
    fn a_workflow_whose_directory_was_not_there_is_not_looked_in_again() {
        let runs = tempfile::tempdir().unwrap();
        let runs = runs.path();
        let fresh = FreshWorkflows::default();
        assert_eq!(
            fresh.dirs(runs, "new-1", "t", 0).output,
            runs.join("new-1/t.0")
        );
        // (Nothing an earlier version made can appear there later; were it
        // looked for, this one would be found.)
        std::fs::create_dir_all(runs.join("new-1/t/1/output")).unwrap();
        assert_eq!(
            fresh.dirs(runs, "new-1", "t", 1).output,
            runs.join("new-1/t.1")
        );
        // A workflow whose directory is there is looked in, attempt by attempt.
        std::fs::create_dir_all(runs.join("old-1/t/0/output")).unwrap();
        assert_eq!(
            fresh.dirs(runs, "old-1", "t", 0).output,
            runs.join("old-1/t/0/output")
        );
        assert_eq!(
            fresh.dirs(runs, "old-1", "t", 1).output,
            runs.join("old-1/t.1")
        );
    }
}
