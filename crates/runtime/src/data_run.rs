//! Around one attempt: its URL inputs downloaded first (a failure is 2010
//! and the command never runs), its checkpoints uploaded while the command
//! runs and once as it ends, its outputs uploaded after it whatever its exit
//! code (a failure is 2012), and its credentials' secrets kept out of every
//! log line. Runtimes stay unaware of all of it.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use osmo_spec::codes::{CodeSource, ReportedCode, well_known};

use crate::data::{self, Checkpoint, Transfer};
use crate::enter::Entry;
use crate::{AttemptSpec, Outcome, Runtime, StopHandle, Stream, Supervisor};

/// Secrets shorter than this are not masked (a "1" would blank every digit).
const MIN_SECRET: usize = 4;

/// Runs `spec` on `runtime` with its data moved in and out.
pub fn run_with_data(
    runtime: &dyn Runtime,
    spec: &AttemptSpec,
    sup: &dyn Supervisor,
    stop: &StopHandle,
) -> Outcome {
    let with = DataSupervisor {
        inner: sup,
        secrets: spec
            .secrets
            .iter()
            .filter(|s| s.len() >= MIN_SECRET)
            .cloned()
            .collect(),
        spec,
        stop,
        checkpointing: Mutex::new(()),
        done: (Mutex::new(false), Condvar::new()),
    };
    for t in &spec.downloads {
        if stop.is_stopped() {
            return Outcome::default();
        }
        if let Err(e) = data::download(t, &|l| with.osmo(l)) {
            let detail = format!("download of {} failed: {e}", t.url);
            with.osmo(&detail);
            return Outcome {
                codes: vec![ReportedCode {
                    code: well_known::DOWNLOAD,
                    source: CodeSource::Runtime,
                    detail: Some(with.mask(&detail)),
                }],
            };
        }
    }
    let mut outcome = std::thread::scope(|s| {
        if !spec.checkpoints.is_empty() {
            s.spawn(|| with.checkpoint_periodically());
        }
        let outcome = runtime.run_attempt(spec, &with, stop);
        *with.done.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        with.done.1.notify_all();
        outcome
    });
    let ran = outcome.codes.iter().any(|c| c.source == CodeSource::User);
    if ran && !stop.is_stopped() {
        for t in &spec.uploads {
            if let Err(e) = data::upload(t, &|l| with.osmo(l)) {
                let detail = with.mask(&format!("upload to {} failed: {e}", t.url));
                with.osmo(&detail);
                outcome.codes.push(ReportedCode {
                    code: well_known::UPLOAD,
                    source: CodeSource::Runtime,
                    detail: Some(detail),
                });
            }
        }
    }
    for code in &mut outcome.codes {
        code.detail = code.detail.as_deref().map(|d| with.mask(d));
    }
    outcome
}

struct DataSupervisor<'a> {
    inner: &'a dyn Supervisor,
    secrets: Vec<String>,
    spec: &'a AttemptSpec,
    stop: &'a StopHandle,
    /// One checkpoint at a time (the periodic one and the last one).
    checkpointing: Mutex<()>,
    /// Set when the attempt ended: the periodic checkpoints stop.
    done: (Mutex<bool>, Condvar),
}

impl DataSupervisor<'_> {
    fn mask(&self, line: &str) -> String {
        let mut line = line.to_string();
        for secret in &self.secrets {
            if line.contains(secret.as_str()) {
                line = line.replace(secret.as_str(), "****");
            }
        }
        line
    }

    fn osmo(&self, line: &str) {
        self.log(Stream::Osmo, line);
    }

    /// Each checkpoint every its own period, until the attempt ends.
    fn checkpoint_periodically(&self) {
        let mut next: Vec<Instant> = self
            .spec
            .checkpoints
            .iter()
            .map(|c| Instant::now() + c.every)
            .collect();
        loop {
            let wake = *next.iter().min().expect("at least one checkpoint");
            let done = self.done.0.lock().unwrap_or_else(|e| e.into_inner());
            let (done, _) = self
                .done
                .1
                .wait_timeout_while(done, wake.saturating_duration_since(Instant::now()), |d| {
                    !*d
                })
                .unwrap_or_else(|e| e.into_inner());
            if *done {
                return;
            }
            drop(done);
            let now = Instant::now();
            for (c, at) in self.spec.checkpoints.iter().zip(next.iter_mut()) {
                if *at <= now {
                    self.checkpoint(c);
                    *at = now + c.every;
                }
            }
        }
    }

    /// Uploads one checkpoint from where the task sees its path.
    fn checkpoint(&self, c: &Checkpoint) {
        let _one = self.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(dir) = self.source(&c.path) else {
            return;
        };
        let t = Transfer {
            url: c.url.clone(),
            regex: c.regex.clone(),
            dir,
            credential: c.credential.clone(),
        };
        if let Err(e) = data::upload(&t, &|l| self.osmo(&format!("checkpoint: {l}"))) {
            // A checkpoint that fails is retried at the next one; the attempt goes on.
            self.osmo(&format!("checkpoint of {} failed: {e}", c.path.display()));
        }
    }

    /// The host path of a path in the task: under its output directory as
    /// it is, elsewhere through its sandbox's root while it stands.
    fn source(&self, path: &std::path::Path) -> Option<PathBuf> {
        if path.starts_with(&self.spec.output_dir) {
            return Some(path.to_path_buf());
        }
        match self.stop.entry() {
            Some(Entry::Sandbox(s)) => Some(
                PathBuf::from(format!("/proc/{}/root", s.init))
                    .join(path.strip_prefix("/").unwrap_or(path)),
            ),
            Some(Entry::Container(_)) => {
                self.osmo(&format!(
                    "checkpoint of {}: in a container only paths under {{{{output}}}} are checkpointed",
                    path.display()
                ));
                None
            }
            None => None,
        }
    }
}

impl Supervisor for DataSupervisor<'_> {
    fn log(&self, stream: Stream, line: &str) {
        if self.secrets.iter().any(|s| line.contains(s.as_str())) {
            self.inner.log(stream, &self.mask(line));
        } else {
            self.inner.log(stream, line);
        }
    }

    fn setup_done(&self) -> bool {
        self.inner.setup_done()
    }

    fn started(&self) {
        self.inner.started()
    }

    fn run_ended(&self) {
        for c in &self.spec.checkpoints {
            self.checkpoint(c);
        }
        self.inner.run_ended()
    }

    fn run_stopped(&self, codes: &[ReportedCode]) {
        self.inner.run_stopped(codes)
    }
}
