//! The HTTP side of the Slurm backend: what `osmo exec` inside each job calls
//! (its launch, phases, logs, the barrier, restarts, its exit).

use super::*;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/exec/{stem}", get(fetch_launch))
        .route("/api/exec/{stem}/phase", post(phase))
        .route("/api/exec/{stem}/logs", post(logs))
        .route("/api/exec/{stem}/release", get(release))
        .route("/api/exec/{stem}/hosts", get(hosts))
        .route("/api/exec/{stem}/control", get(control))
        .route("/api/exec/{stem}/run-stopped", post(run_stopped))
        .route("/api/exec/{stem}/exited", post(exited))
        .with_state(shared)
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let given = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // In constant time: how much of a guess matched must not show in how
    // long the answer took.
    let (a, b) = (given.as_bytes(), shared.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "osmo exec: bad or missing token").into_response()
}

async fn fetch_launch(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    Query(query): Query<FetchQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let mut inner = shared.inner.lock().unwrap();
    let Some(job) = inner.jobs.get_mut(&stem) else {
        return (StatusCode::NOT_FOUND, "no such attempt").into_response();
    };
    if job.reported || job.stopped {
        return (StatusCode::GONE, "this attempt is over").into_response();
    }
    if query.restart > 0 || job.started {
        // Slurm requeued the job: this attempt was preempted; the engine decides what follows.
        if let Some(id) = job.job_id {
            scancel(id);
        }
        let detail = format!("Slurm requeued job {} (preempted)", job.job_id.unwrap_or(0));
        shared.report(job, well_known::PREEMPTED, detail);
        return (StatusCode::GONE, "this attempt was preempted").into_response();
    }
    let Some(launch) = job.launch.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "the server lost this attempt's launch",
        )
            .into_response();
    };
    job.started = true;
    if let Some(node) = query.node.filter(|n| !n.is_empty()) {
        job.node = Some(node);
        // Siblings waiting in `/hosts` learn where this one runs.
        shared.changed.notify_waiters();
    }
    shared.emit(FromAgent::Phase {
        key: job.key.clone(),
        phase: Phase::Initializing,
        node: job.node.clone(),
        gpus: query.gpus.as_deref().map(parse_gpus),
    });
    Json(&*launch).into_response()
}

async fn phase(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<PhaseBody>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    report_for(&shared, &stem, |job| FromAgent::Phase {
        key: job.key.clone(),
        phase: body.phase,
        node: job.node.clone(),
        gpus: None,
    })
}

/// Emits what `osmo exec` reported of a job still running: 200 (also for a
/// job already over, whose reports no longer matter), 404 for no such job.
fn report_for(shared: &Shared, stem: &str, msg: impl FnOnce(&Job) -> FromAgent) -> Response {
    let inner = shared.inner.lock().unwrap();
    match inner.jobs.get(stem) {
        Some(job) if !job.reported => {
            shared.emit(msg(job));
            StatusCode::OK.into_response()
        }
        Some(_) => StatusCode::OK.into_response(),
        None => (StatusCode::NOT_FOUND, "no such attempt").into_response(),
    }
}

async fn logs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(lines): Json<Vec<LogLine>>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    if !lines.is_empty() {
        shared.emit(FromAgent::Logs { lines, batch: None });
    }
    StatusCode::OK.into_response()
}

async fn release(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    Query(query): Query<ReleaseQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let go = long_poll(&shared, query.wait_ms, |inner| {
        match inner.jobs.get(&stem) {
            None => Some(false),
            Some(job) if job.stopped || job.reported => Some(false),
            Some(job) if job.released => Some(true),
            Some(_) => None,
        }
    })
    .await;
    Json(ReleaseReply { go }).into_response()
}

/// Where the tasks of the attempt's group run, once each has fetched its
/// launch (and so told its node); what is known so far after the wait.
async fn hosts(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    Query(query): Query<ReleaseQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let known = |inner: &Inner| {
        let job = inner.jobs.get(&stem)?;
        let group = (&job.key.workflow_id, job.key.attempt.task.group);
        let mut reply = osmo_proto::exec::HostsReply {
            complete: true,
            ..Default::default()
        };
        let siblings = inner.jobs.values().filter(|j| {
            (&j.key.workflow_id, j.key.attempt.task.group) == group && !j.reported && !j.stopped
        });
        for sibling in siblings {
            match (&sibling.launch, &sibling.node) {
                (Some(launch), Some(node)) => {
                    reply.hosts.insert(launch.task.clone(), node.clone());
                }
                _ => reply.complete = false,
            }
        }
        Some(reply)
    };
    let complete = long_poll(&shared, query.wait_ms, |inner| {
        known(inner).filter(|r| r.complete)
    })
    .await;
    match complete.or_else(|| known(&shared.inner.lock().unwrap())) {
        Some(reply) => Json(reply).into_response(),
        None => (StatusCode::NOT_FOUND, "no such attempt").into_response(),
    }
}

/// Waits until `check` finds an answer in the jobs' state (checked again at
/// every change), or `wait_ms` (default 20 s, at most 30 s) ran out: None.
async fn long_poll<T>(
    shared: &Shared,
    wait_ms: Option<u64>,
    mut check: impl FnMut(&Inner) -> Option<T>,
) -> Option<T> {
    let wait = Duration::from_millis(wait_ms.unwrap_or(20_000).min(30_000));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(answer) = check(&shared.inner.lock().unwrap()) {
            return Some(answer);
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return None;
        }
    }
}

/// Long-polls for a restart in place of the job's command (or its end).
async fn control(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    Query(query): Query<ControlQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let now = |inner: &Inner| match inner.jobs.get(&stem) {
        None => ControlReply {
            restarts: query.seen,
            reason: String::new(),
            over: true,
        },
        Some(job) => ControlReply {
            restarts: job.restarts,
            reason: job.restart_reason.clone(),
            over: job.stopped || job.reported,
        },
    };
    let news = long_poll(&shared, query.wait_ms, |inner| {
        let reply = now(inner);
        (reply.over || reply.restarts > query.seen).then_some(reply)
    })
    .await;
    let reply = news.unwrap_or_else(|| now(&shared.inner.lock().unwrap()));
    Json(reply).into_response()
}

/// `osmo exec` stopped a run of the command for a restart in place.
async fn run_stopped(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<ExitedBody>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    report_for(&shared, &stem, |job| FromAgent::RunStopped {
        key: job.key.clone(),
        codes: body.codes,
    })
}

async fn exited(
    State(shared): State<Arc<Shared>>,
    UrlPath(stem): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<ExitedBody>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let Some(key) = parse_stem(&stem) else {
        return (StatusCode::BAD_REQUEST, "not an attempt").into_response();
    };
    {
        let mut inner = shared.inner.lock().unwrap();
        let Inner { jobs, bad_nodes } = &mut *inner;
        // Unknown after a server restart: the manager decides whether it still matters.
        let job = jobs
            .entry(stem.clone())
            .or_insert_with(|| Job::new(key.clone(), String::new()));
        if job.reported && job.codes.is_none() {
            // Slurm's verdict (e.g. preempted) came first and stands.
            return StatusCode::OK.into_response();
        }
        if body
            .codes
            .iter()
            .any(|c| c.code == well_known::PREFLIGHT || c.source == CodeSource::Preflight)
            && let Some(node) = &job.node
        {
            bad_nodes
                .entry(key.workflow_id.clone())
                .or_default()
                .insert(node.clone());
        }
        job.reported = true;
        job.codes = Some(body.codes.clone());
        // Sent again on each retry until the manager acknowledges (it ignores repeats).
        shared.emit(FromAgent::Exited {
            key: key.clone(),
            codes: body.codes,
        });
    }
    shared.changed.notify_waiters();
    let deadline = tokio::time::Instant::now() + ACK_WAIT;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if !shared.inner.lock().unwrap().jobs.contains_key(&stem) {
            return StatusCode::OK.into_response();
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not yet recorded; send it again",
            )
                .into_response();
        }
    }
}

/// `SLURM_JOB_GPUS` (`0,2`) as indices; what does not parse is left out.
fn parse_gpus(text: &str) -> Vec<u32> {
    text.split(',')
        .filter_map(|g| g.trim().parse().ok())
        .collect()
}
