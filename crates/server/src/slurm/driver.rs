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
        let mut found = Vec::new();
        for row in parse_squeue(&text) {
            if row.comment != self.shared.instance
                || matches!(verdict(&row.state, false), Verdict::Ended(..))
            {
                continue;
            }
            if row.name.starts_with(GANG_PREFIX) {
                // A group's job: its batch script names its attempts.
                let args = ["write", "batch_script", &row.id.to_string(), "-"].map(String::from);
                match run_cmd("scontrol", &args).await {
                    Ok(script) => found.extend(
                        gang_attempts(&script)
                            .into_iter()
                            .map(|key| (key, row.clone(), true)),
                    ),
                    Err(e) => tracing::warn!("cannot read Slurm job {}'s script: {e:#}", row.id),
                }
            } else if let Some(key) = parse_job_name(&row.name) {
                found.push((key, row, false));
            }
        }
        {
            let mut inner = self.shared.inner.lock().unwrap();
            for (key, row, gang) in found {
                let started = row.state != "PENDING";
                let mut job = Job::new(key.clone(), String::new());
                job.job_id = Some(row.id);
                job.started = started;
                job.gang = gang;
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
                let mut cancel = None;
                if let Some(job) = inner.jobs.get_mut(&key.file_stem()) {
                    job.stopped = true;
                    cancel = job.job_id.map(|id| (id, job.gang));
                }
                if let Some((id, gang)) = cancel {
                    // A task of a group's job stops alone (`osmo exec` hears it
                    // on `/control`); the job goes when none of it runs.
                    let others_run = gang
                        && inner
                            .jobs
                            .values()
                            .any(|j| j.job_id == Some(id) && !j.stopped && !j.reported);
                    if !others_run {
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
            // Never sent to Slurm (a job waits in Slurm's queue instead).
            ToAgent::Prepare(_)
            | ToAgent::Start { .. }
            | ToAgent::LogsAck { .. }
            | ToAgent::Shutdown => {}
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
        let launch = Arc::new(launch);
        {
            let mut inner = self.shared.inner.lock().unwrap();
            if let Some(job) = inner.jobs.get_mut(&stem) {
                // Adopted from an earlier server: the job exists; give it its launch.
                job.launch = Some(launch);
                job.pool = pool;
                return;
            }
            let mut job = Job::new(launch.key.clone(), pool.clone());
            job.launch = Some(launch.clone());
            inner.jobs.insert(stem, job);
        }
        if launch.gang <= 1 {
            self.submit(&pool, vec![launch]).await;
            return;
        }
        // A group's tasks are allocated together: one job once all are here.
        let group = (
            launch.key.workflow_id.clone(),
            launch.key.attempt.task.group,
        );
        let waiting = self.gangs.entry(group.clone()).or_default();
        waiting.push(launch.clone());
        if waiting.len() >= launch.gang as usize {
            let launches = self.gangs.remove(&group).unwrap_or_default();
            self.submit(&pool, launches).await;
        }
    }

    /// One `sbatch` for `launches`: a job of its own for one, a job with a
    /// step per task for a group (gang allocation).
    async fn submit(&mut self, pool: &str, launches: Vec<Arc<Launch>>) {
        let Some(first) = launches.first() else {
            return;
        };
        let options = self.pools.get(pool).cloned().unwrap_or_default();
        let bad = self
            .shared
            .inner
            .lock()
            .unwrap()
            .bad_nodes
            .get(&first.key.workflow_id)
            .cloned();
        let exclude = if bad.is_some() {
            let nodes = self.nodes_of(options.partition.as_deref()).await;
            exclusions(bad.as_ref(), &nodes)
        } else {
            Vec::new()
        };
        let mut args = if launches.len() == 1 {
            sbatch_args(
                first,
                &options,
                &exclude,
                &self.out_dir,
                &self.exe,
                &self.server_url,
            )
        } else {
            gang_sbatch_args(
                &launches,
                &options,
                &exclude,
                &self.out_dir,
                &self.exe,
                &self.server_url,
            )
        };
        args.insert(1, format!("--comment={}", self.shared.instance));
        let stems: Vec<String> = launches.iter().map(|l| l.key.file_stem()).collect();
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
            let submitted = match result {
                Ok(out) if out.status.success() => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    // --parsable prints `id` or `id;cluster`.
                    text.trim()
                        .split(';')
                        .next()
                        .and_then(|id| id.trim().parse::<u64>().ok())
                        .ok_or_else(|| format!("sbatch printed no job id: {}", text.trim()))
                }
                Ok(out) => Err(format!(
                    "sbatch failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Err(format!("cannot run sbatch: {e}")),
            };
            let mut inner = shared.inner.lock().unwrap();
            let mut all_stopped = true;
            for stem in &stems {
                let Some(job) = inner.jobs.get_mut(stem) else {
                    continue;
                };
                match &submitted {
                    Ok(id) => {
                        job.job_id = Some(*id);
                        job.gang = stems.len() > 1;
                        all_stopped &= job.stopped;
                    }
                    Err(detail) => {
                        tracing::warn!("{stem}: {detail}");
                        shared.report(job, well_known::START_ERROR, detail.clone());
                    }
                }
            }
            if let Ok(id) = submitted
                && all_stopped
            {
                scancel(id);
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
