//! The host directories a sandbox hides (`AttemptSpec::hidden_paths`: the
//! data directory, `/root`, `/home`, a pool's own), resolved.
//!
//! Resolving one is a walk of its path and a look at each directory above
//! it (for [`closed_ancestor`]): about five system calls a path, three
//! paths an attempt. The same few paths come in every attempt, so each is
//! resolved again only when it leads to another directory than before
//! (one `stat`: a path removed, made again or turned into a link elsewhere
//! is seen at once) or when its resolution is older than [`MAX_AGE`] (a
//! directory above it opened or closed to others, a directory renamed).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::realpath;

/// The longest a resolution is used without being made again: as long as
/// a kept root shows the host's files as they were (`kept_root::MAX_AGE`).
const MAX_AGE: Duration = crate::kept_root::MAX_AGE;

/// More paths than any agent hides: past it the record starts again.
const MAX_PATHS: usize = 256;

/// A path as last resolved.
struct Resolved {
    at: Instant,
    /// The directory the path led to (device, inode).
    id: (u64, u64),
    dir: PathBuf,
}

/// By path, and whether the task is root (which changes the resolution).
static RESOLVED: Mutex<Option<HashMap<(PathBuf, bool), Resolved>>> = Mutex::new(None);

/// The directories to mount an empty tmpfs on, outermost only (one below
/// another is hidden with it, and could not be mounted on in it), in the
/// order to mount them. A path that is not a directory is left out.
pub(crate) fn outermost(paths: &[PathBuf], run_as: Option<(u32, u32)>) -> Vec<PathBuf> {
    let not_root = run_as.is_some_and(|(uid, _)| uid != 0);
    let mut hidden: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| resolve(p, not_root, Instant::now()))
        // `/tmp` is the task's own already: nothing of the host's is under it.
        .filter(|p| p.parent().is_some() && !p.starts_with("/tmp"))
        .collect();
    hidden.sort_by_key(|p| p.components().count());
    let mut outermost: Vec<PathBuf> = Vec::new();
    for p in hidden {
        if !outermost.iter().any(|o| p.starts_with(o)) {
            outermost.push(p);
        }
    }
    outermost
}

/// The directory to hide for `path`: its canonical form, or for a task
/// that is not root the closed directory above it. A task that is not root
/// could not pass that directory anyway: hiding it instead makes the paths
/// bound in below it (its output in the data directory) reachable.
fn resolve(path: &Path, not_root: bool, now: Instant) -> Option<PathBuf> {
    let meta = fs::metadata(path).ok().filter(fs::Metadata::is_dir)?;
    let id = (meta.dev(), meta.ino());
    let key = (path.to_path_buf(), not_root);
    let mut resolved = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    let resolved = resolved.get_or_insert_with(HashMap::new);
    if let Some(r) = resolved.get(&key)
        && r.id == id
        && now.saturating_duration_since(r.at) < MAX_AGE
    {
        return Some(r.dir.clone());
    }
    let canonical = realpath::canonical(path).ok()?;
    let dir = if not_root {
        closed_ancestor(&canonical).unwrap_or(canonical)
    } else {
        canonical
    };
    if resolved.len() >= MAX_PATHS {
        resolved.clear();
    }
    resolved.insert(
        key,
        Resolved {
            at: now,
            id,
            dir: dir.clone(),
        },
    );
    Some(dir)
}

/// The topmost directory above `path` (not `/`) that others may not search
/// (no `o+x`), if any.
pub(crate) fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .filter(|a| a.parent().is_some())
        .filter(|a| fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .last()
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_resolved_again_when_it_leads_elsewhere_or_its_resolution_is_old() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let link = dir.path().join("secrets");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let canonical = |p: &Path| fs::canonicalize(p).unwrap();
        let t0 = Instant::now();
        assert_eq!(resolve(&link, false, t0), Some(canonical(&a)));
        // The link now leads elsewhere: seen at once.
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&b, &link).unwrap();
        assert_eq!(resolve(&link, false, t0), Some(canonical(&b)));
        // Gone, or not a directory: nothing to hide.
        fs::remove_file(&link).unwrap();
        assert_eq!(resolve(&link, false, t0), None);
        fs::write(&link, "").unwrap();
        assert_eq!(resolve(&link, false, t0), None);
        // For a task that is not root, the closed directory above: a
        // directory closed since is seen once the resolution is old.
        let inner = b.join("data");
        fs::create_dir(&inner).unwrap();
        assert_eq!(resolve(&inner, true, t0), Some(canonical(&inner)));
        fs::set_permissions(&b, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            resolve(&inner, true, t0 + MAX_AGE / 2),
            Some(canonical(&inner))
        );
        assert_eq!(resolve(&inner, true, t0 + MAX_AGE), Some(canonical(&b)));
        // A root task hides the path itself.
        assert_eq!(resolve(&inner, false, t0), Some(canonical(&inner)));
    }

    #[test]
    fn only_the_outermost_are_hidden_and_never_tmp() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let outer = dir.path().join("outer");
        fs::create_dir_all(outer.join("inner")).unwrap();
        let got = outermost(
            &[
                outer.join("inner"),
                outer.clone(),
                "/tmp".into(),
                "/".into(),
            ],
            None,
        );
        assert_eq!(got, vec![fs::canonicalize(&outer).unwrap()]);
    }
}
