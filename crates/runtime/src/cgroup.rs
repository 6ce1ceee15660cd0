//! A per-attempt memory cgroup: the limit, the out-of-memory verdict, removal.
//!
//! The cgroup is created below the controller's own memory cgroup (so the
//! limits the host puts on the controller keep applying to its tasks). cgroup
//! v1 (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`,
//! `memory.oom_control`) is preferred, as on the reference machine (hybrid
//! mode); v2 (`memory.max`, `memory.swap.max`, `memory.events`) is used when
//! it is the memory controller's hierarchy and the controller is enabled for
//! our children. The sandbox's preflight tests and command join it (each
//! writes `0` to the `cgroup.procs` file the controller opened before it
//! executes); the init stays out, as its memory is the spawner's.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::mountinfo::{self, MountEntry};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

#[derive(Debug)]
pub(crate) struct MemoryCgroup {
    pub dir: PathBuf,
    pub version: Version,
    /// `cgroup.procs`, opened for writing; the child writes `0` to it.
    pub procs: File,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl MemoryCgroup {
    /// Creates the cgroup and sets the limit. The error says why no cgroup
    /// could be used (the caller falls back to `RLIMIT_AS`).
    pub fn create(limit: u64, label: &str) -> Result<MemoryCgroup, String> {
        let mounts = mountinfo::read().map_err(|e| format!("cannot read mountinfo: {e}"))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let (base, version) = locate(&mounts, &own)
            .ok_or_else(|| "no cgroup memory controller is mounted".to_string())?;
        let name = format!(
            "osmo-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            sanitize(label)
        );
        let dir = base.join(name);
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cg = match Self::configure(&dir, version, limit) {
            Ok(procs) => MemoryCgroup {
                dir,
                version,
                procs,
            },
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                return Err(e);
            }
        };
        Ok(cg)
    }

    fn configure(dir: &Path, version: Version, limit: u64) -> Result<File, String> {
        let write = |file: &str, value: &str| {
            fs::write(dir.join(file), value)
                .map_err(|e| format!("cannot write {value} to {}: {e}", dir.join(file).display()))
        };
        match version {
            Version::V1 => {
                write("memory.limit_in_bytes", &limit.to_string())?;
                // Without swap accounting the file is missing: fine, the limit holds.
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write("memory.memsw.limit_in_bytes", &limit.to_string())?;
                }
            }
            Version::V2 => {
                if !dir.join("memory.max").exists() {
                    return Err(format!(
                        "the memory controller is not enabled below {} (cgroup.subtree_control)",
                        dir.parent().unwrap_or(dir).display()
                    ));
                }
                write("memory.max", &limit.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    write("memory.swap.max", "0")?;
                }
            }
        }
        OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| format!("cannot open {}: {e}", dir.join("cgroup.procs").display()))
    }

    pub fn procs_fd(&self) -> i32 {
        self.procs.as_raw_fd()
    }

    /// Whether the kernel's OOM killer acted in this cgroup. `killed_by_sigkill`
    /// is the fallback evidence on kernels without an `oom_kill` counter.
    pub fn oom_killed(&self, killed_by_sigkill: bool) -> bool {
        let (file, key) = match self.version {
            Version::V1 => ("memory.oom_control", "oom_kill"),
            Version::V2 => ("memory.events", "oom_kill"),
        };
        if let Ok(text) = fs::read_to_string(self.dir.join(file))
            && let Some(n) = counter(&text, key)
        {
            return n > 0;
        }
        if self.version == Version::V1
            && let Ok(text) = fs::read_to_string(self.dir.join("memory.failcnt"))
        {
            return killed_by_sigkill && text.trim().parse::<u64>().unwrap_or(0) > 0;
        }
        false
    }

    /// Removes the cgroup once its processes are gone. A cgroup whose last
    /// task is still being torn down answers EBUSY for a moment; retry a little.
    pub fn remove(self) -> Result<(), String> {
        let MemoryCgroup { dir, procs, .. } = self;
        drop(procs);
        let mut last = None;
        for _ in 0..200 {
            match fs::remove_dir(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        Err(format!(
            "cannot remove cgroup {}: {}",
            dir.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }
}

fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The directory of our own memory cgroup and its version.
fn locate(mounts: &[MountEntry], proc_self_cgroup: &str) -> Option<(PathBuf, Version)> {
    let mut v2_path = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if id == "0" && controllers.is_empty() {
            v2_path = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            let mount = mounts.iter().find(|m| {
                m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory")
            })?;
            return Some((join_cgroup(mount, path), Version::V1));
        }
    }
    let path = v2_path?;
    let mount = mounts.iter().find(|m| m.fstype == "cgroup2")?;
    let dir = join_cgroup(mount, &path);
    let controllers = fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    controllers
        .split_whitespace()
        .any(|c| c == "memory")
        .then_some((dir, Version::V2))
}

/// The cgroup `path` (relative to the hierarchy's root) on `mount`, which may
/// show only a part of the hierarchy (its mountinfo root).
fn join_cgroup(mount: &MountEntry, path: &str) -> PathBuf {
    let rel = Path::new(path)
        .strip_prefix(&mount.root)
        .unwrap_or_else(|_| Path::new(path).strip_prefix("/").unwrap_or(Path::new(path)));
    mount.mount_point.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v1_memory_cgroup() {
        let mounts = mountinfo::parse(
            "28 27 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             29 27 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        );
        let own = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(
            locate(&mounts, own),
            Some((
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"),
                Version::V1
            ))
        );
    }

    #[test]
    fn honours_the_mount_root() {
        let mounts = mountinfo::parse("28 27 0:23 /outer /cg rw - cgroup cgroup rw,memory\n");
        assert_eq!(
            locate(&mounts, "4:memory:/outer/inner\n"),
            Some((PathBuf::from("/cg/inner"), Version::V1))
        );
    }

    #[test]
    fn reads_counters() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(text, "oom_kill"), Some(2));
        assert_eq!(counter(text, "missing"), None);
    }
}
