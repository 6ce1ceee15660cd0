//! Results kept on disk until the server acknowledges them.

use std::path::PathBuf;

use osmo_proto::{AttemptKey, FromAgent};

pub(crate) struct ResultStore {
    dir: PathBuf,
}

impl ResultStore {
    pub fn open(dir: PathBuf) -> anyhow::Result<ResultStore> {
        std::fs::create_dir_all(&dir)?;
        Ok(ResultStore { dir })
    }

    fn path(&self, key: &AttemptKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.file_stem()))
    }

    /// Writes the result durably (write, fsync, rename) before it is sent.
    pub fn keep(&self, msg: &FromAgent) -> std::io::Result<()> {
        let FromAgent::Exited { key, .. } = msg else {
            return Ok(());
        };
        let path = self.path(key);
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&file, msg)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    pub fn has(&self, key: &AttemptKey) -> bool {
        self.path(key).exists()
    }

    pub fn forget(&self, key: &AttemptKey) {
        let _ = std::fs::remove_file(self.path(key));
    }

    /// Every result not yet acknowledged.
    pub fn pending(&self) -> Vec<FromAgent> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect()
    }
}
