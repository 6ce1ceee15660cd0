//! The canonical form of a path, walked once by the kernel.
//!
//! `std::fs::canonicalize` (glibc's `realpath`) asks `readlink` of every
//! prefix of the path in turn, so it walks a path of n components n times:
//! every attempt resolves its scratch, output and data directories, deep
//! paths, and that was most of an attempt's system calls. Opening the path
//! (`O_PATH`: no access is needed) walks it once, symbolic links followed,
//! and the kernel names what it found in `/proc/self/fd`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The absolute path `path` resolves to, symbolic links followed; an error
/// when it does not exist. As `std::fs::canonicalize`, which it falls back
/// on where `/proc` cannot answer.
pub fn canonical(path: &Path) -> io::Result<PathBuf> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: open of a NUL-terminated path; the descriptor is ours.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor open just now and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        // Anything but a plain absolute path (no /proc, an object without
        // a name, one removed meanwhile): the slow way, which says why.
        Ok(found) if is_plain(&found) => Ok(found),
        _ => std::fs::canonicalize(path),
    }
}

fn is_plain(p: &Path) -> bool {
    p.is_absolute() && !p.as_os_str().as_bytes().ends_with(b" (deleted)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_as_the_standard_library_does() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("a").join("b");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("a/./b/..", dir.path().join("rel")).unwrap();
        for p in [
            dir.path().join("link"),
            dir.path().join("rel").join("b"),
            dir.path().join("a").join("..").join("a").join("b"),
            PathBuf::from("/"),
        ] {
            assert_eq!(
                canonical(&p).unwrap(),
                std::fs::canonicalize(&p).unwrap(),
                "{p:?}"
            );
        }
        let missing = dir.path().join("missing");
        assert_eq!(
            canonical(&missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        std::os::unix::fs::symlink("nowhere", dir.path().join("dangling")).unwrap();
        assert!(canonical(&dir.path().join("dangling")).is_err());
    }
}
