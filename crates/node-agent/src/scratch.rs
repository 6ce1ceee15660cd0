//! Attempts' scratch directories (their sandbox's writable layer), reused:
//! one an attempt left untouched is readied for the next instead of removed
//! and made again, since making and removing inodes is most of an attempt's
//! file-system cost on a busy disk.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Readied directories kept at most (more attempts than this at once make new ones).
const IDLE_MAX: usize = 64;

pub(crate) struct ScratchPool {
    dir: PathBuf,
    idle: Mutex<Vec<PathBuf>>,
    seq: AtomicU64,
}

impl ScratchPool {
    /// The pool in `dir`. What an earlier agent left there (its attempts are
    /// gone) is removed by a thread of its own.
    pub fn new(dir: PathBuf) -> ScratchPool {
        let ours = format!("{}-", std::process::id());
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let leftovers: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with(&ours))
                .map(|e| e.path())
                .collect();
            if !leftovers.is_empty() {
                std::thread::spawn(move || {
                    for path in leftovers {
                        let _ = std::fs::remove_dir_all(path);
                    }
                });
            }
        }
        ScratchPool {
            dir,
            idle: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A directory for one attempt: a readied one (the last given back:
    /// the sandbox spawner may still keep its root, for 2 s after it was
    /// made), or a new name.
    pub fn take(&self) -> PathBuf {
        self.lock().pop().unwrap_or_else(|| {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            self.dir.join(format!("{}-{n}", std::process::id()))
        })
    }

    /// The attempt that used `path` has ended: readied for the next, or removed.
    pub fn give_back(&self, path: PathBuf) {
        if self.lock().len() < IDLE_MAX && osmo_runtime::recycle_scratch(&path) {
            self.lock().push(path);
        } else {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
