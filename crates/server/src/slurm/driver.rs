//! The Slurm driver: submits jobs (sbatch), watches them (squeue), stops
//! them (scancel), and reports Slurm's verdict when `osmo exec` said nothing.

use super::*;

impl Driver {
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<(String, ToAgent)>) {
        self.adopt().await;
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some((pool, msg)) => self.handle(pool, msg).await,
                    None => return,
                },
                _ = tick.tick() => self.poll().await,
            }
        }
    }

    /// At start: take over the jobs an earlier server of ours left, and tell
    /// the manager what Slurm still has.
    async fn adopt(&mut self) {
        let mut attempts = Vec::new();
        // Until Slurm answers, its pools launch nothing: judging attempts lost
        // because slurmctld is briefly away would fail them for nothing.
        let mut tries = 0u32;
        let text = loop {
            match run_cmd("squeue", &squeue_args()).await {
                Ok(text) => break text,
                Err(e) => {
                    if tries.is_multiple_of(30) {
                        tracing::error!("cannot list Slurm jobs (retrying every second): {e:#}");
                    }
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        {
            let mut inner = self.shared.inner.lock().unwrap();
            for row in parse_squeue(&text) {
                if row.comment != self.shared.instance {
                    continue;
                }
                let Some(key) = parse_job_name(&row.name) else {
                    continue;
                };
                if matches!(verdict(&row.state, false), Verdict::Ended(..)) {
                    continue;
                }
                let started = row.state != "PENDING";
                let mut job = Job::new(key.clone(), String::new());
                job.job_id = Some(row.id);
                job.started = started;
                attempts.push((key.clone(), started.then_some(Phase::Initializing)));
                inner.jobs.insert(key.file_stem(), job);
            }
        }
        if !attempts.is_empty() {
            tracing::info!("found {} Slurm job(s) of an earlier server", attempts.len());
        }
        let _ = self.shared.events.send(LinkEvent::Ready {
            backend: BackendKind::Slurm,
            attempts,
        });
    }

    async fn handle(&mut self, pool: String, msg: ToAgent) {
        match msg {
            ToAgent::Launch(launch) => self.launch(pool, *launch).await,
            ToAgent::Release { key } => {
                if let Some(job) = self
                    .shared
                    .inner
                    .lock()
                    .unwrap()
                    .jobs
                    .get_mut(&key.file_stem())
                {
                    job.released = true;
                }
                self.shared.changed.notify_waiters();
            }
            ToAgent::Stop { key } => {
                let mut inner = self.shared.inner.lock().unwrap();
                if let Some(job) = inner.jobs.get_mut(&key.file_stem()) {
                    job.stopped = true;
                    if let Some(id) = job.job_id {
                        scancel(id);
                    }
                }
                drop(inner);
                self.shared.changed.notify_waiters();
            }
            ToAgent::Restart { key, reason } => {
                if let Some(job) = self
                    .shared
                    .inner
                    .lock()
                    .unwrap()
                    .jobs
                    .get_mut(&key.file_stem())
                {
                    // Back at the barrier until the engine releases it again.
                    job.released = false;
                    job.restarts += 1;
                    job.restart_reason = reason;
                }
                self.shared.changed.notify_waiters();
            }
            ToAgent::Ack { key } => {
                self.shared
                    .inner
                    .lock()
                    .unwrap()
                    .jobs
                    .remove(&key.file_stem());
                self.shared.changed.notify_waiters();
            }
            ToAgent::LogsAck { .. } | ToAgent::Shutdown => {}
        }
    }

    async fn nodes_of(&mut self, partition: Option<&str>) -> Vec<String> {
        let name = partition.unwrap_or("").to_string();
        if let Some(nodes) = self.partition_nodes.get(&name) {
            return nodes.clone();
        }
        let mut args = vec![
            "-h".to_string(),
            "-N".to_string(),
            "-o".to_string(),
            "%N".to_string(),
        ];
        if let Some(p) = partition {
            args.push(format!("--partition={p}"));
        }
        let nodes: Vec<String> = match run_cmd("sinfo", &args).await {
            Ok(text) => {
                let mut v: Vec<String> = text
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                v.sort();
                v.dedup();
                v
            }
            Err(e) => {
                tracing::warn!("cannot list the nodes of the Slurm partition: {e:#}");
                return Vec::new();
            }
        };
        self.partition_nodes.insert(name, nodes.clone());
        nodes
    }

    async fn launch(&mut self, pool: String, launch: Launch) {
        let stem = launch.key.file_stem();
        let options = self.pools.get(&pool).cloned().unwrap_or_default();
        let launch = Arc::new(launch);
        let bad = {
            let mut inner = self.shared.inner.lock().unwrap();
            if let Some(job) = inner.jobs.get_mut(&stem) {
                // Adopted from an earlier server: the job exists; give it its launch.
                job.launch = Some(launch);
                job.pool = pool;
                return;
            }
            let mut job = Job::new(launch.key.clone(), pool);
            job.launch = Some(launch.clone());
            inner.jobs.insert(stem.clone(), job);
            inner.bad_nodes.get(&launch.key.workflow_id).cloned()
        };
        let exclude = if bad.is_some() {
            let nodes = self.nodes_of(options.partition.as_deref()).await;
            exclusions(bad.as_ref(), &nodes)
        } else {
            Vec::new()
        };
        let mut args = sbatch_args(
            &launch,
            &options,
            &exclude,
            &self.out_dir,
            &self.exe,
            &self.server_url,
        );
        args.insert(1, format!("--comment={}", self.shared.instance));
        let shared = self.shared.clone();
        let submitters = self.submitters.clone();
        tokio::spawn(async move {
            let _permit = submitters.acquire().await;
            let result = tokio::process::Command::new("sbatch")
                .args(&args)
                .env(TOKEN_ENV, &shared.token)
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            let mut inner = shared.inner.lock().unwrap();
            let Some(job) = inner.jobs.get_mut(&stem) else {
                return;
            };
            let failure = match result {
                Ok(out) if out.status.success() => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    // --parsable prints `id` or `id;cluster`.
                    match text
                        .trim()
                        .split(';')
                        .next()
                        .and_then(|id| id.trim().parse::<u64>().ok())
                    {
                        Some(id) => {
                            job.job_id = Some(id);
                            if job.stopped {
                                scancel(id);
                            }
                            None
                        }
                        None => Some(format!("sbatch printed no job id: {}", text.trim())),
                    }
                }
                Ok(out) => Some(format!(
                    "sbatch failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Some(format!("cannot run sbatch: {e}")),
            };
            if let Some(detail) = failure {
                tracing::warn!("{stem}: {detail}");
                shared.report(job, well_known::START_ERROR, detail);
            }
        });
    }

    async fn poll(&mut self) {
        let watched = {
            let inner = self.shared.inner.lock().unwrap();
            inner
                .jobs
                .values()
                .any(|j| j.job_id.is_some() && !j.reported)
        };
        if !watched {
            return;
        }
        let text = match run_cmd("squeue", &squeue_args()).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!("cannot poll Slurm: {e:#}");
                return;
            }
        };
        let rows: HashMap<u64, JobRow> =
            parse_squeue(&text).into_iter().map(|r| (r.id, r)).collect();
        let mut inner = self.shared.inner.lock().unwrap();
        for job in inner.jobs.values_mut() {
            let Some(id) = job.job_id else { continue };
            if job.reported {
                continue;
            }
            let Some(row) = rows.get(&id) else {
                job.missing += 1;
                if job.missing >= MISSING_POLLS {
                    let detail = format!("Slurm job {id} is gone and osmo exec reported nothing");
                    self.shared.report(job, well_known::BACKEND_ERROR, detail);
                }
                continue;
            };
            job.missing = 0;
            if job.node.is_none() && !row.nodes.is_empty() && row.state == "RUNNING" {
                job.node = Some(row.nodes.clone());
            }
            match verdict(&row.state, job.started) {
                Verdict::Wait => {}
                Verdict::Requeued => {
                    scancel(id);
                    let detail = format!(
                        "Slurm requeued job {id} (preempted); a new attempt decides what follows"
                    );
                    self.shared.report(job, well_known::PREEMPTED, detail);
                }
                Verdict::Ended(code, what) => {
                    let detail = if job.stopped {
                        format!("Slurm job {id} stopped ({})", row.state)
                    } else {
                        format!("{what} (job {id}, {})", row.state)
                    };
                    self.shared.report(job, code, detail);
                }
            }
        }
    }
}
