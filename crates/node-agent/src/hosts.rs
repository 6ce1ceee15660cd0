//! A workflow network's names: the address each task name got, kept in
//! memory for the resolver and written as the `/etc/hosts` its tasks see.
//!
//! A name costs O(1) whatever the workflow's size: it is looked up in a map
//! and its line is appended to the file (a workflow of 10,000 single-task
//! groups rewrote a 10,000-line file per attempt before). Tasks bind the
//! file, so a task that runs sees the names added after it started.
//!
//! Appends never show a reader half a line: a write that stays within one
//! page is seen whole or not at all (the page is filled before the file's
//! size grows), so a line that would cross a page boundary is preceded by
//! a comment that pads the page out, in a write of its own.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

const PAGE: u64 = 4096;
const HEADER: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n";

pub(crate) struct HostsFile {
    path: PathBuf,
    file: File,
    /// Bytes written so far (the file's size: only this writes it).
    len: u64,
    /// Lower-cased name → its address.
    names: HashMap<String, Ipv4Addr>,
}

impl HostsFile {
    /// A new file at `path` holding only localhost (an old one is replaced
    /// whole, by a rename, so tasks that bound it keep theirs).
    pub fn create(path: &Path) -> std::io::Result<HostsFile> {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, HEADER)?;
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(HostsFile {
            path: path.to_path_buf(),
            file,
            len: HEADER.len() as u64,
            names: HashMap::new(),
        })
    }

    /// The address `name` (any case, a trailing dot allowed) was given.
    pub fn address(&self, name: &str) -> Option<Ipv4Addr> {
        self.names
            .get(&name.trim_end_matches('.').to_ascii_lowercase())
            .copied()
    }

    /// Gives each name not known yet the next address and appends its line.
    pub fn add<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
        for name in names {
            let key = name.to_ascii_lowercase();
            if self.names.contains_key(&key) {
                continue;
            }
            let ip = task_address(self.names.len())
                .ok_or("a workflow network has room for 65,535 task names")?;
            self.append(&format!("{ip} {name}\n"))
                .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
            self.names.insert(key, ip);
        }
        Ok(())
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64;
        let room = PAGE - self.len % PAGE;
        if len > room && len <= PAGE {
            // "#…\n": a comment to the page's end (one byte left: a newline).
            let pad = match room {
                1 => "\n".to_string(),
                _ => format!("#{}\n", " ".repeat(room as usize - 2)),
            };
            self.file.write_all(pad.as_bytes())?;
            self.len += pad.len() as u64;
        }
        self.file.write_all(line.as_bytes())?;
        self.len += len;
        Ok(())
    }
}

/// The address of the `index`th name a workflow's network learned: one of
/// its loopback's (all of 127/8 is local there), `127.1.0.1` onwards.
pub(crate) fn task_address(index: usize) -> Option<Ipv4Addr> {
    let n = u16::try_from(index + 1).ok()?;
    let [hi, lo] = n.to_be_bytes();
    Some(Ipv4Addr::new(127, 1, hi, lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_addresses_in_order_and_lines_never_cross_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let mut hosts = HostsFile::create(&path).unwrap();
        let names: Vec<String> = (0..600)
            .map(|i| format!("task-with-a-long-name-{i}"))
            .collect();
        hosts.add(names.iter().map(String::as_str)).unwrap();
        hosts.add(["task-with-a-long-name-3", "SERVER"]).unwrap();
        assert_eq!(hosts.address("task-with-a-long-name-0"), task_address(0));
        assert_eq!(hosts.address("server."), Some(Ipv4Addr::new(127, 1, 2, 89)));
        assert_eq!(hosts.address("serv"), None);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(HEADER));
        let mut offset = 0u64;
        for line in text.split_inclusive('\n') {
            let end = offset + line.len() as u64;
            assert_eq!(
                offset / PAGE,
                (end - 1) / PAGE,
                "line crosses a page: {line:?}"
            );
            offset = end;
        }
        let entries: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("localhost"))
            .collect();
        assert_eq!(entries.len(), 601, "each name once");
        assert_eq!(entries[300], "127.1.1.45 task-with-a-long-name-300");
        assert_eq!(task_address(65_535), None);
    }

    #[test]
    fn a_new_file_forgets_the_old_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let mut hosts = HostsFile::create(&path).unwrap();
        hosts.add(["a"]).unwrap();
        let hosts = HostsFile::create(&path).unwrap();
        assert_eq!(hosts.address("a"), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), HEADER);
    }
}
