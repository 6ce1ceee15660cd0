//! Results kept on disk until the server acknowledges them.
//!
//! One append-only journal per agent: a result is a line (`{"keep": …}`)
//! written before it is sent and made durable with one `fdatasync` while it
//! travels (the server acts on an exit only once its own commit holds it, so
//! the agent's copy matters only until then: after a crash of the server, or
//! of the machine before the server's commit); an acknowledgement is
//! a line (`{"forget": …}`) that needs no sync (lost, it only makes the agent
//! send a result the server already has, which the server ignores). The
//! journal is rewritten with just the pending results when the agent starts
//! and when forgotten lines outnumber them, so its size follows the results
//! in flight, not the agent's history. A file per result cost a new inode, a
//! rename and two syncs per attempt.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use osmo_proto::{AttemptKey, FromAgent};
use serde::{Deserialize, Serialize};

const JOURNAL: &str = "journal";
/// Forgotten lines the journal may hold before it is rewritten (and at
/// least as many as the pending results).
const COMPACT_AFTER: usize = 1024;

pub(crate) struct ResultStore {
    dir: PathBuf,
    state: Mutex<Journal>,
}

struct Journal {
    file: File,
    /// Attempt file stem → its unacknowledged result.
    pending: HashMap<String, FromAgent>,
    /// Lines in the file that no longer matter.
    stale: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Keep(FromAgent),
    Forget(String),
}

impl ResultStore {
    pub fn open(dir: PathBuf) -> anyhow::Result<ResultStore> {
        std::fs::create_dir_all(&dir)?;
        let mut pending = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(dir.join(JOURNAL)) {
            // A torn last line (a crash mid-write) was never acted on: skipped.
            for entry in text.lines().filter_map(|l| serde_json::from_str(l).ok()) {
                match entry {
                    Entry::Keep(msg) => {
                        if let Some(stem) = stem(&msg) {
                            pending.insert(stem, msg);
                        }
                    }
                    Entry::Forget(stem) => {
                        pending.remove(&stem);
                    }
                }
            }
        }
        // Results an older agent kept as one file each.
        let legacy = legacy_files(&dir);
        for path in &legacy {
            let msg = std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<FromAgent>(&b).ok());
            if let Some((stem, msg)) = msg.and_then(|m| Some((stem(&m)?, m))) {
                pending.insert(stem, msg);
            }
        }
        let file = rewrite(&dir, &pending)?;
        for path in legacy {
            let _ = std::fs::remove_file(path);
        }
        Ok(ResultStore {
            dir,
            state: Mutex::new(Journal {
                file,
                pending,
                stale: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the result to the journal before it is sent (a crash of the
    /// agent loses nothing written); [`Unsynced::sync`] makes it durable.
    pub fn keep(&self, msg: &FromAgent) -> std::io::Result<Unsynced> {
        let Some(stem) = stem(msg) else {
            return Ok(Unsynced(None));
        };
        let mut line = serde_json::to_vec(&Entry::Keep(msg.clone()))?;
        line.push(b'\n');
        let mut journal = self.lock();
        journal.file.write_all(&line)?;
        journal.pending.insert(stem, msg.clone());
        Ok(Unsynced(Some(journal.file.try_clone()?)))
    }

    pub fn has(&self, key: &AttemptKey) -> bool {
        self.lock().pending.contains_key(&key.file_stem())
    }

    pub fn forget(&self, key: &AttemptKey) {
        let stem = key.file_stem();
        let mut journal = self.lock();
        if journal.pending.remove(&stem).is_none() {
            return;
        }
        let Ok(mut line) = serde_json::to_vec(&Entry::Forget(stem)) else {
            return;
        };
        line.push(b'\n');
        let _ = journal.file.write_all(&line);
        journal.stale += 2;
        if journal.stale > COMPACT_AFTER.max(journal.pending.len()) {
            match rewrite(&self.dir, &journal.pending) {
                Ok(file) => {
                    journal.file = file;
                    journal.stale = 0;
                }
                Err(e) => eprintln!("osmo agent: cannot rewrite the results journal: {e}"),
            }
        }
    }

    /// Every result not yet acknowledged.
    pub fn pending(&self) -> Vec<FromAgent> {
        self.lock().pending.values().cloned().collect()
    }
}

/// A result written to the journal and not yet made durable.
#[must_use = "a result is durable only once synced"]
pub(crate) struct Unsynced(Option<File>);

impl Unsynced {
    /// Waits until the journal holds the result on disk. Called without the
    /// journal's lock: attempts that end together share the sync's wait.
    pub fn sync(self) -> std::io::Result<()> {
        self.0.map_or(Ok(()), |file| file.sync_data())
    }
}

fn stem(msg: &FromAgent) -> Option<String> {
    match msg {
        FromAgent::Exited { key, .. } => Some(key.file_stem()),
        _ => None,
    }
}

fn legacy_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect()
}

/// A journal holding just `pending`, in place of the old one (written,
/// synced, renamed, the directory synced), opened for appending.
fn rewrite(dir: &Path, pending: &HashMap<String, FromAgent>) -> std::io::Result<File> {
    let path = dir.join(JOURNAL);
    let tmp = dir.join("journal.new");
    {
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        for msg in pending.values() {
            serde_json::to_writer(&mut out, &Entry::Keep(msg.clone()))?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use osmo_engine::{AttemptId, TaskKey};
    use osmo_spec::codes::{CodeSource, ReportedCode};

    fn exited(task: u32, code: u32) -> FromAgent {
        FromAgent::Exited {
            key: AttemptKey {
                workflow_id: "wf-1".into(),
                attempt: AttemptId {
                    task: TaskKey { group: 0, task },
                    retry_id: 0,
                },
            },
            codes: vec![ReportedCode {
                code,
                source: CodeSource::User,
                detail: None,
            }],
        }
    }

    fn key(msg: &FromAgent) -> AttemptKey {
        match msg {
            FromAgent::Exited { key, .. } => key.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn pending_results_survive_a_restart_and_acknowledged_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultStore::open(dir.path().into()).unwrap();
        let (a, b) = (exited(1, 0), exited(2, 3));
        store.keep(&a).unwrap().sync().unwrap();
        store.keep(&b).unwrap().sync().unwrap();
        store.forget(&key(&a));
        assert!(store.has(&key(&b)) && !store.has(&key(&a)));
        drop(store);

        let again = ResultStore::open(dir.path().into()).unwrap();
        let pending = again.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            serde_json::to_value(&pending[0]).unwrap(),
            serde_json::to_value(&b).unwrap()
        );
    }

    #[test]
    fn the_journal_stays_small_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultStore::open(dir.path().into()).unwrap();
        for i in 0..5_000 {
            let msg = exited(i, 0);
            store.keep(&msg).unwrap().sync().unwrap();
            store.forget(&key(&msg));
        }
        store.keep(&exited(9_999, 1)).unwrap().sync().unwrap();
        let journal = dir.path().join(JOURNAL);
        let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert!(
            lines <= COMPACT_AFTER + 2,
            "{lines} lines for one pending result"
        );
        drop(store);

        let mut file = OpenOptions::new().append(true).open(&journal).unwrap();
        file.write_all(br#"{"keep":{"Exi"#).unwrap();
        let again = ResultStore::open(dir.path().into()).unwrap();
        assert_eq!(again.pending().len(), 1);
    }

    #[test]
    fn results_an_older_agent_kept_as_files_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let old = exited(7, 0);
        let stem = key(&old).file_stem();
        std::fs::write(
            dir.path().join(format!("{stem}.json")),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let store = ResultStore::open(dir.path().into()).unwrap();
        assert!(store.has(&key(&old)));
        assert!(!dir.path().join(format!("{stem}.json")).exists());
    }
}
