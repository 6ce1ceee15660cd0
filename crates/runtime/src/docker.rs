//! The Docker runtime (`runtime: docker` in a pool): each attempt runs in a
//! container from its task's image, through the Docker Engine API.
//!
//! The controller runs **beside** the container, here in the agent, and talks
//! to the daemon; it is not mounted into the container. The `osmo` binary is
//! linked against the host's glibc, and task images need not have one (the
//! busybox image does not), so it could not run inside; and from outside it
//! sees everything it needs: the daemon reports the exit code, the OOM kill,
//! and streams the output.
//!
//! An attempt:
//! 1. connects to the daemon (`DOCKER_HOST`, else `/var/run/docker.sock`),
//!    waiting up to [`CONNECT_GRACE`] for it; unreachable → 3001;
//! 2. finds the image, or pulls it; neither → 302 (ErrImagePull);
//! 3. creates the container: the task's command as entrypoint, its args as
//!    command, its environment (`OSMO_*`, `$(VAR)` expanded as in the
//!    sandbox), `docker-init` as PID 1 (so `kill -9 $$` ends the command with
//!    137), the memory limit (without swap) and CPUs, the output directory
//!    read-write and the input directories read-only at their host paths, the
//!    workflow's network (see [`crate::docker_network`]; with `network:
//!    host`, the host's); the task's files are copied into it before it starts;
//! 4. runs each preflight test in a short-lived container of the same make;
//! 5. waits at the group barrier, starts the container, relays its output
//!    line by line, waits for it; `OOMKilled` → 3004;
//! 6. removes every container it created, also when stopped (cancel,
//!    timeout) or failed. A removal the daemon could not do (it was gone) is
//!    retried by the next attempt that reaches it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::docker_network;
use crate::env::task_environment;
use crate::{AttemptSpec, Outcome, StopHandle, Stream, Supervisor, expand_env_refs};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, KillContainerOptions,
    RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use osmo_spec::codes::{CodeSource, ReportedCode, well_known};

/// How long an attempt waits for an unreachable daemon before it reports 3001.
pub const CONNECT_GRACE: Duration = Duration::from_secs(10);
/// Environment variable that overrides [`CONNECT_GRACE`] (whole seconds).
pub const CONNECT_GRACE_ENV: &str = "OSMO_DOCKER_CONNECT_GRACE";
/// How long the daemon may take to answer the first requests of an attempt.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a running attempt looks at its stop handle.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long a command stopped for a restart in place has between SIGTERM and SIGKILL.
const RESTART_GRACE: Duration = Duration::from_secs(5);
/// Label on every container the runtime creates (value: the attempt).
pub const LABEL: &str = "osmo.attempt";

/// Containers whose removal failed (the daemon was gone); the next attempt
/// that reaches the daemon removes them.
static LEFTOVERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs one attempt in a container (blocking) and returns every code it saw.
pub fn run_attempt(spec: &AttemptSpec, sup: &dyn Supervisor, stop: &StopHandle) -> Outcome {
    if stop.is_stopped() {
        return Outcome::default();
    }
    let mut run = Run {
        spec,
        image: &spec.image,
        cpu: spec.cpu,
        sup,
        stop,
        codes: Vec::new(),
        created: Vec::new(),
        network: None,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            run.push(
                well_known::BACKEND_ERROR,
                CodeSource::Service,
                format!("docker runtime: cannot start an event loop: {e}"),
            );
            return Outcome { codes: run.codes };
        }
    };
    rt.block_on(async {
        let docker = run.connect().await;
        if let Some(docker) = &docker {
            if let Err(end) = run.attempt(docker).await {
                run.end(end);
            }
            run.cleanup(docker).await;
        }
    });
    if stop.is_stopped() {
        // The codes of a stopped attempt mean nothing.
        return Outcome::default();
    }
    Outcome { codes: run.codes }
}

/// Why an attempt ended early.
enum End {
    /// Stopped from outside, or aborted at the barrier: no code.
    Stopped,
    /// A code to report.
    Code(u32, CodeSource, String),
}

impl End {
    /// A failed daemon call: unreachable or gone → 3001; an answer → `code`.
    fn from_docker(e: DockerError, what: &str, code: u32, source: CodeSource) -> End {
        match e {
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } => End::Code(
                code,
                source,
                format!("{what}: the Docker daemon answered {status_code}: {message}"),
            ),
            other => daemon_gone(what, &other),
        }
    }
}

/// A device request for exactly the task's GPUs (served by the NVIDIA
/// container toolkit), when this node has them as devices; without device
/// nodes (GPUs a pool only declares) the environment names them, nothing more.
fn gpu_request(gpus: &[u32]) -> Option<Vec<DeviceRequest>> {
    let (present, _) = crate::gpu::node();
    if gpus.is_empty() || !gpus.iter().all(|g| present.contains(g)) {
        return None;
    }
    Some(vec![DeviceRequest {
        device_ids: Some(gpus.iter().map(u32::to_string).collect()),
        capabilities: Some(vec![vec!["gpu".to_string()]]),
        ..Default::default()
    }])
}

fn daemon_gone(what: &str, e: &dyn std::fmt::Display) -> End {
    End::Code(
        well_known::BACKEND_ERROR,
        CodeSource::Service,
        format!("{what}: the Docker daemon is unreachable: {e}"),
    )
}

struct Run<'a> {
    spec: &'a AttemptSpec,
    image: &'a str,
    cpu: Option<f64>,
    sup: &'a dyn Supervisor,
    stop: &'a StopHandle,
    codes: Vec<ReportedCode>,
    /// Containers to remove at the end.
    created: Vec<String>,
    /// The workflow's network the containers join; None: the host's.
    network: Option<String>,
}

impl Run<'_> {
    fn osmo(&self, line: &str) {
        self.sup.log(Stream::Osmo, line);
    }

    fn push(&mut self, code: u32, source: CodeSource, detail: String) {
        self.osmo(&detail);
        self.codes.push(ReportedCode {
            code,
            source,
            detail: Some(detail),
        });
    }

    fn end(&mut self, end: End) {
        if let End::Code(code, source, detail) = end
            && !self.stop.is_stopped()
        {
            self.push(code, source, detail);
        }
    }

    /// Connects and negotiates the API version, waiting a while for a daemon
    /// that is down (it may be restarting). None: gave up (3001 recorded) or stopped.
    async fn connect(&mut self) -> Option<Docker> {
        let grace = std::env::var(CONNECT_GRACE_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(CONNECT_GRACE, Duration::from_secs);
        let host =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let deadline = Instant::now() + grace;
        let mut said = false;
        loop {
            // A missing socket, a refused connection, no answer: all worth waiting for.
            let err = match Docker::connect_with_defaults() {
                Ok(d) => match d.with_timeout(PING_TIMEOUT).negotiate_version().await {
                    Ok(d) => match d.ping().await {
                        Ok(_) => {
                            // Waits and log streams last as long as the task.
                            let d = d.with_timeout(Duration::from_secs(10 * 365 * 86400));
                            remove_leftovers(&d).await;
                            return Some(d);
                        }
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if self.stop.is_stopped() {
                return None;
            }
            if Instant::now() >= deadline {
                self.end(daemon_gone(
                    &format!("connect to {host} (waited {}s)", grace.as_secs()),
                    &err,
                ));
                return None;
            }
            if !said {
                self.osmo(&format!(
                    "waiting up to {}s for the Docker daemon at {host}: {err}",
                    grace.as_secs()
                ));
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn attempt(&mut self, docker: &Docker) -> Result<(), End> {
        // Made here, as the host sandbox makes it, before it is bound (the
        // server leaves it to the runtime on this host).
        std::fs::create_dir_all(&self.spec.output_dir).map_err(|e| {
            End::Code(
                well_known::INIT_FAILURE,
                CodeSource::Init,
                format!(
                    "cannot create the output directory {}: {e}",
                    self.spec.output_dir.display()
                ),
            )
        })?;
        self.ensure_image(docker).await?;
        let mut env = task_environment(self.spec);
        if self.spec.container_network {
            self.join_network(docker, &mut env).await?;
        }
        let argv = |words: &[String]| -> Vec<String> {
            words.iter().map(|a| expand_env_refs(a, &env)).collect()
        };
        let files = files_tar(self.spec)
            .map_err(|c| End::Code(c.code, c.source, c.detail.unwrap_or_default()))?;
        let command = argv(&self.spec.command);
        let args = argv(&self.spec.args);
        let main = self
            .create(docker, "main", &env, Some(command), Some(args), &files)
            .await?;

        for test in crate::policy::preflight_tests(self.spec, |m| self.osmo(m)) {
            self.preflight(docker, test, &env, &argv(&test.command), &files)
                .await?;
        }

        // Each pass is one run of the command; a restart in place stops the
        // container and starts the same one again (its file system kept).
        let code = loop {
            if !self.pass_barrier() {
                return Err(End::Stopped);
            }
            let (code, restart) = self
                .start_and_wait(docker, &main, Stream::Stdout, "")
                .await?;
            let Some(reason) = restart else { break code };
            self.osmo(&format!(
                "command stopped for a restart in place ({reason}): exit code {code}; \
                 it runs again in this container after the barrier"
            ));
            self.sup.run_stopped(&[ReportedCode {
                code,
                source: CodeSource::User,
                detail: None,
            }]);
        };
        // The container stands (stopped): the last checkpoint of its output now.
        self.sup.run_ended();
        let detail = if code > 128 && code < 160 {
            format!("command killed by signal {} (exit code {code})", code - 128)
        } else {
            format!("command exited with code {code}")
        };
        self.osmo(&detail);
        self.codes.push(ReportedCode {
            code,
            source: CodeSource::User,
            detail: (code > 128 && code < 160).then(|| format!("killed by signal {}", code - 128)),
        });
        let inspect = docker.inspect_container(&main, None).await.map_err(|e| {
            End::from_docker(
                e,
                "inspect the container",
                well_known::BACKEND_ERROR,
                CodeSource::Service,
            )
        })?;
        if inspect.state.and_then(|s| s.oom_killed).unwrap_or(false) {
            let detail = format!(
                "memory limit of {} bytes exceeded: the container was killed by the kernel's OOM killer",
                self.spec.memory_limit_bytes.unwrap_or_default()
            );
            self.push(well_known::EVICTED, CodeSource::Service, detail);
        }
        Ok(())
    }

    /// Waits at the barrier, again while a restart in place comes in
    /// meanwhile. False: aborted, the command must not start.
    fn pass_barrier(&self) -> bool {
        loop {
            let go = !self.stop.is_stopped() && self.sup.setup_done() && !self.stop.is_stopped();
            if !go {
                return false;
            }
            match self.stop.take_restart() {
                Some(reason) => self.osmo(&format!(
                    "restart in place ({reason}) before the command started: \
                     waiting at the barrier again"
                )),
                None => return true,
            }
        }
    }

    /// The image is there, or is pulled; otherwise 302.
    async fn ensure_image(&mut self, docker: &Docker) -> Result<(), End> {
        match docker.inspect_image(self.image).await {
            Ok(_) => return Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                return Err(End::from_docker(
                    e,
                    &format!("inspect image {}", self.image),
                    well_known::ERR_IMAGE_PULL,
                    CodeSource::Init,
                ));
            }
        }
        self.osmo(&format!("image {} is not here; pulling it", self.image));
        let options = CreateImageOptions {
            from_image: Some(self.image.to_string()),
            ..Default::default()
        };
        let mut pull = docker.create_image(Some(options), None, None);
        let mut failure = None;
        loop {
            let next = tokio::select! {
                n = pull.next() => n,
                () = stopped(self.stop) => return Err(End::Stopped),
            };
            match next {
                None => break,
                Some(Ok(_)) => {}
                Some(Err(DockerError::DockerResponseServerError { message, .. }))
                | Some(Err(DockerError::DockerStreamError { error: message })) => {
                    failure = Some(message);
                    break;
                }
                Some(Err(e)) => {
                    return Err(daemon_gone(&format!("pull image {}", self.image), &e));
                }
            }
        }
        if failure.is_none() && docker.inspect_image(self.image).await.is_ok() {
            return Ok(());
        }
        Err(End::Code(
            well_known::ERR_IMAGE_PULL,
            CodeSource::Init,
            format!(
                "image {} cannot be pulled: {}",
                self.image,
                failure.unwrap_or_else(|| "the pull ended without the image".into())
            ),
        ))
    }

    fn container_name(&self, role: &str) -> String {
        let raw = format!(
            "osmo-{}-{}-{}-{}-{role}",
            self.spec.workflow_id, self.spec.group, self.spec.task, self.spec.retry_id
        );
        container_name(&raw)
    }

    /// Creates a container of this attempt (not started) and copies the files in.
    async fn create(
        &mut self,
        docker: &Docker,
        role: &str,
        env: &std::collections::BTreeMap<String, String>,
        command: Option<Vec<String>>,
        args: Option<Vec<String>>,
        files: &Option<Vec<u8>>,
    ) -> Result<String, End> {
        let name = self.container_name(role);
        let mut binds = vec![format!("{0}:{0}:rw", self.spec.output_dir.display())];
        binds.extend(
            (self.spec.input_dirs.iter())
                .chain(&self.spec.tool_dirs)
                .map(|d| format!("{0}:{0}:ro", d.display())),
        );
        // `volumeMounts`, allowed by the pool at submit: host path → path inside.
        binds.extend(
            self.spec
                .volume_mounts
                .iter()
                .map(|(src, dst)| format!("{}:{}:rw", src.display(), dst.display())),
        );
        let memory = self.spec.memory_limit_bytes.map(|m| m as i64);
        let host_cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let nano_cpus = self
            .cpu
            .filter(|c| *c > 0.0)
            .map(|c| (c.min(host_cpus) * 1e9) as i64);
        let labels = HashMap::from([
            (LABEL.to_string(), self.container_name("")),
            ("osmo.workflow".to_string(), self.spec.workflow_id.clone()),
            ("osmo.task".to_string(), self.spec.task.clone()),
            ("osmo.retry".to_string(), self.spec.retry_id.to_string()),
            ("osmo.role".to_string(), role.to_string()),
        ]);
        let body = ContainerCreateBody {
            image: Some(self.image.to_string()),
            entrypoint: command.filter(|c| !c.is_empty()),
            cmd: args.filter(|a| !a.is_empty()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            tty: Some(false),
            host_config: Some(HostConfig {
                init: Some(true),
                memory,
                memory_swap: memory,
                nano_cpus,
                binds: Some(binds),
                network_mode: Some(self.network.clone().unwrap_or_else(|| "host".into())),
                auto_remove: Some(false),
                device_requests: gpu_request(&self.spec.gpus),
                ..Default::default()
            }),
            networking_config: self
                .network
                .as_deref()
                .map(|n| docker_network::endpoint(n, &self.spec.task)),
            ..Default::default()
        };
        let options = || CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let mut created = docker.create_container(Some(options()), body.clone()).await;
        match &created {
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                // A container of this name is left from an earlier run of this attempt.
                remove(docker, &name).await;
                created = docker.create_container(Some(options()), body).await;
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if self.network.is_some() && message.contains("network") => {
                // The last sibling removed the network as this attempt joined it.
                let made_again = docker_network::ensure(docker, &self.spec.workflow_id).await;
                created = match made_again {
                    Ok(_) => docker.create_container(Some(options()), body).await,
                    Err(e) => Err(e),
                };
            }
            _ => {}
        }
        let id = created
            .map_err(|e| {
                End::from_docker(
                    e,
                    &format!("create the {role} container"),
                    well_known::START_ERROR,
                    CodeSource::Service,
                )
            })?
            .id;
        self.created.push(id.clone());
        if let Some(tar) = files {
            let options = UploadToContainerOptions {
                path: "/".into(),
                ..Default::default()
            };
            docker
                .upload_to_container(&id, Some(options), bollard::body_full(tar.clone().into()))
                .await
                .map_err(|e| {
                    End::from_docker(
                        e,
                        "write the task's files",
                        well_known::INIT_FILES,
                        CodeSource::Init,
                    )
                })?;
        }
        Ok(id)
    }

    async fn preflight(
        &mut self,
        docker: &Docker,
        test: &osmo_spec::config::PreflightTest,
        env: &std::collections::BTreeMap<String, String>,
        argv: &[String],
        files: &Option<Vec<u8>>,
    ) -> Result<(), End> {
        let role = format!("preflight-{}", test.name);
        let id = self
            .create(
                docker,
                &role,
                env,
                Some(argv.to_vec()),
                Some(Vec::new()),
                files,
            )
            .await?;
        self.osmo(&format!("preflight {}: running", test.name));
        let prefix = format!("[preflight {}] ", test.name);
        let (code, _) = self
            .start_and_wait(docker, &id, Stream::Osmo, &prefix)
            .await?;
        remove(docker, &id).await;
        self.created.retain(|c| c != &id);
        if code == 0 {
            self.osmo(&format!("preflight {} passed", test.name));
            return Ok(());
        }
        let how = match code {
            127 => format!("command not found (exit {code})"),
            c if c > 128 && c < 160 => format!("killed by signal {}", c - 128),
            c => format!("exit {c}"),
        };
        Err(End::Code(
            well_known::PREFLIGHT,
            CodeSource::Preflight,
            format!("preflight {} failed: {how}", test.name),
        ))
    }

    /// Starts a created container, relays its output, and returns its exit code.
    async fn start_and_wait(
        &self,
        docker: &Docker,
        id: &str,
        stream: Stream,
        prefix: &str,
    ) -> Result<(u32, Option<String>), End> {
        // Attached before the start, so no output is missed, the last partial line included.
        let attach = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut output = docker
            .attach_container(id, Some(attach))
            .await
            .map_err(|e| {
                End::from_docker(
                    e,
                    "attach to the container",
                    well_known::START_ERROR,
                    CodeSource::Service,
                )
            })?
            .output;
        docker.start_container(id, None).await.map_err(|e| {
            End::from_docker(
                e,
                "start the container",
                well_known::START_ERROR,
                CodeSource::Service,
            )
        })?;
        if stream == Stream::Stdout {
            self.sup.started();
            // `docker exec` needs a running container: from now until it ends.
            self.stop.set_entry(Some(crate::enter::Entry::Container(
                crate::enter::ContainerEntry {
                    id: id.to_string(),
                    network: self.network.clone(),
                },
            )));
        }
        let logs = async {
            let mut out = LineSplitter::default();
            let mut err = LineSplitter::default();
            let (to_out, to_err) = if stream == Stream::Osmo {
                (Stream::Osmo, Stream::Osmo)
            } else {
                (Stream::Stdout, Stream::Stderr)
            };
            let emit = |s: Stream, line: &str| self.sup.log(s, &format!("{prefix}{line}"));
            while let Some(Ok(chunk)) = output.next().await {
                match chunk {
                    LogOutput::StdErr { message } => err.push(&message, |l| emit(to_err, l)),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        out.push(&message, |l| emit(to_out, l))
                    }
                    LogOutput::StdIn { .. } => {}
                }
            }
            out.finish(|l| emit(to_out, l));
            err.finish(|l| emit(to_err, l));
        };
        let wait = async {
            let options = WaitContainerOptions {
                condition: "not-running".into(),
            };
            docker.wait_container(id, Some(options)).next().await
        };
        let both = async { tokio::join!(wait, logs) };
        tokio::pin!(both);
        // Only the task's own container restarts in place, not a preflight test's.
        let mut restart: Option<String> = None;
        let restartable = stream == Stream::Stdout;
        let (waited, ()) = loop {
            tokio::select! {
                both = &mut both => break both,
                () = stopped(self.stop) => return Err(End::Stopped),
                reason = restart_requested(self.stop), if restartable && restart.is_none() => {
                    self.osmo(&format!(
                        "restarting in place ({reason}): stopping the container \
                         (SIGTERM, SIGKILL after {} s)",
                        RESTART_GRACE.as_secs()
                    ));
                    let options = StopContainerOptions {
                        t: Some(RESTART_GRACE.as_secs() as i32),
                        ..Default::default()
                    };
                    // The wait above then sees it exit; an error means it is already down.
                    let _ = docker.stop_container(id, Some(options)).await;
                    restart = Some(reason);
                }
            }
        };
        match waited {
            Some(Ok(r)) => Ok((r.status_code.clamp(0, i64::from(u32::MAX)) as u32, restart)),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => {
                Ok((code.clamp(0, i64::from(u32::MAX)) as u32, restart))
            }
            Some(Err(e)) => Err(End::from_docker(
                e,
                "wait for the container",
                well_known::BACKEND_ERROR,
                CodeSource::Service,
            )),
            None => Err(daemon_gone(
                "wait for the container",
                &"the connection closed without an exit status",
            )),
        }
    }

    /// Kills and removes every container of the attempt.
    /// Makes the workflow's network if missing; `OSMO_URL` then names the
    /// service as the container reaches it.
    async fn join_network(
        &mut self,
        docker: &Docker,
        env: &mut std::collections::BTreeMap<String, String>,
    ) -> Result<(), End> {
        let gateway = docker_network::ensure(docker, &self.spec.workflow_id)
            .await
            .map_err(|e| {
                End::from_docker(
                    e,
                    "make the workflow's network",
                    well_known::BACKEND_ERROR,
                    CodeSource::Service,
                )
            })?;
        self.network = Some(docker_network::name(&self.spec.workflow_id));
        if let (Some(gateway), Some(url)) = (gateway, env.get("OSMO_URL")) {
            match docker_network::url_inside(url, gateway) {
                Ok(inside) => {
                    env.insert("OSMO_URL".into(), inside);
                }
                Err(e) => self.osmo(&format!(
                    "osmo in the container cannot reach the service: {e}"
                )),
            }
        }
        Ok(())
    }

    async fn cleanup(&mut self, docker: &Docker) {
        self.stop.set_entry(None);
        for id in std::mem::take(&mut self.created) {
            let _ = docker
                .kill_container(
                    &id,
                    Some(KillContainerOptions {
                        signal: "SIGKILL".into(),
                    }),
                )
                .await;
            if !remove(docker, &id).await {
                LEFTOVERS.lock().unwrap().push(id);
            }
        }
        if self.network.take().is_some() {
            docker_network::release(docker, &self.spec.workflow_id).await;
        }
    }
}

/// Resolves with the reason of a restart in place once one is asked for.
async fn restart_requested(stop: &StopHandle) -> String {
    loop {
        if let Some(reason) = stop.take_restart() {
            return reason;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// Resolves once the stop handle is set.
async fn stopped(stop: &StopHandle) {
    while !stop.is_stopped() {
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// Force-removes a container and its anonymous volumes; true when it is gone.
async fn remove(docker: &Docker, id: &str) -> bool {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => true,
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => true,
        Err(_) => false,
    }
}

/// Removes the containers earlier attempts could not, once the daemon is back.
async fn remove_leftovers(docker: &Docker) {
    let pending = std::mem::take(&mut *LEFTOVERS.lock().unwrap());
    for id in pending {
        if !remove(docker, &id).await {
            LEFTOVERS.lock().unwrap().push(id);
        }
    }
    docker_network::remove_leftovers(docker).await;
}

/// A name Docker accepts: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, other characters as `_`.
pub(crate) fn container_name(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert(0, 'x');
    }
    out.truncate(200);
    out
}

/// The task's files as a tar to extract at `/` (None when it has none).
fn files_tar(spec: &AttemptSpec) -> Result<Option<Vec<u8>>, ReportedCode> {
    if spec.files.is_empty() {
        return Ok(None);
    }
    let mut builder = tar::Builder::new(Vec::new());
    for f in &spec.files {
        let data = crate::file_contents(f)?;
        let path = f.path.trim_start_matches('/');
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, data.as_slice())
            .map_err(|e| ReportedCode {
                code: well_known::INIT_FILES,
                source: CodeSource::Init,
                detail: Some(format!("cannot write file {}: {e}", f.path)),
            })?;
    }
    builder.into_inner().map(Some).map_err(|e| ReportedCode {
        code: well_known::INIT_FILES,
        source: CodeSource::Init,
        detail: Some(format!("cannot pack the task's files: {e}")),
    })
}

/// Cuts a byte stream into lines (without the newline).
#[derive(Default)]
struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(&str)) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            emit(&String::from_utf8_lossy(&self.buf[start..start + pos]));
            start += pos + 1;
        }
        self.buf.drain(..start);
    }

    fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.buf.is_empty() {
            emit(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.push(b"a\nb", |l| got.push(l.to_string()));
        s.push(b"c\n\nd", |l| got.push(l.to_string()));
        s.finish(|l| got.push(l.to_string()));
        assert_eq!(got, ["a", "bc", "", "d"]);
    }

    #[test]
    fn container_names_are_docker_safe() {
        assert_eq!(container_name("osmo-wf-1-g-t-0"), "osmo-wf-1-g-t-0");
        assert_eq!(container_name("osmo-a b/c"), "osmo-a_b_c");
        assert_eq!(container_name("_x"), "x_x");
    }

    #[test]
    fn files_become_a_tar_at_their_paths() {
        let spec = AttemptSpec {
            files: vec![osmo_spec::model::File {
                path: "/tmp/run.sh".into(),
                contents: "echo hi".into(),
                base64: false,
            }],
            ..Default::default()
        };
        let tar = files_tar(&spec).unwrap().unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.size())
            })
            .collect();
        assert_eq!(entries, [("tmp/run.sh".to_string(), 7)]);
        assert!(files_tar(&AttemptSpec::default()).unwrap().is_none());
    }
}
