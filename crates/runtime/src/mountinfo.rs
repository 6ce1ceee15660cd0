//! `/proc/self/mountinfo`, read by the controller before it forks (the child
//! must not allocate, so it gets a finished list of mounts to bind).

use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One line of mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// The path inside the file system that is mounted (field 4).
    pub root: String,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_options: String,
}

/// This process's mount table, read again only when it has changed.
///
/// Every attempt asks for it, and the kernel formats the whole table for each
/// read (a path walk per mount), so it is kept with an open descriptor of the
/// file ([`Watched`]). The sandboxes' own mounts are in their namespaces.
pub(crate) fn read() -> std::io::Result<Arc<Vec<MountEntry>>> {
    static CACHE: Mutex<Option<(Watched, Arc<Vec<MountEntry>>)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((table, entries)) = cache.as_mut()
        && !table.changed()?
    {
        return Ok(entries.clone());
    }
    let mut table = match cache.take() {
        Some((table, _)) => table,
        None => Watched::open()?,
    };
    let entries = Arc::new(table.read()?);
    *cache = Some((table, entries.clone()));
    Ok(entries)
}

/// This process's mount table, open: the kernel marks such a descriptor
/// (`POLLPRI`) at every mount or unmount in the namespace, so a poll that
/// returns at once says whether a copy read before is still true.
pub(crate) struct Watched {
    file: File,
}

impl Watched {
    pub(crate) fn open() -> std::io::Result<Watched> {
        Ok(Watched {
            file: File::open("/proc/self/mountinfo")?,
        })
    }

    /// Whether the mount table changed since the last poll or read.
    pub(crate) fn changed(&self) -> std::io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: poll of one live descriptor, no waiting.
        match unsafe { libc::poll(&mut pfd, 1, 0) } {
            n if n < 0 => Err(std::io::Error::last_os_error()),
            _ => Ok(pfd.revents & (libc::POLLPRI | libc::POLLERR) != 0),
        }
    }

    /// The whole table as it is now.
    pub(crate) fn read(&mut self) -> std::io::Result<Vec<MountEntry>> {
        // Poll once before reading, so a change during the read marks it again.
        self.changed()?;
        self.file.rewind()?;
        let mut text = String::new();
        self.file.read_to_string(&mut text)?;
        Ok(parse(&text))
    }
}

/// Whether a mount holds a namespace rather than files: an `nsfs` handle
/// (`ip netns`'s `/run/netns/NAME`, Docker's), or the directory `ip netns`
/// mounts on itself to hold them. No task has a use for one (and a task
/// running as root could enter another workflow's network through it), and
/// there is one per workflow network on the node: a sandbox that copied them
/// would cost more with every workflow that runs.
pub(crate) fn is_namespace_handle(e: &MountEntry) -> bool {
    e.fstype == "nsfs"
        || ["/run/netns", "/var/run/netns"]
            .iter()
            .any(|d| e.mount_point == Path::new(d))
}

pub(crate) fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    if left.len() < 6 || right.len() < 3 {
        return None;
    }
    Some(MountEntry {
        root: unescape(left[3]),
        mount_point: PathBuf::from(unescape(left[4])),
        fstype: right[0].to_string(),
        super_options: right[2].to_string(),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// [`submounts`] of this process's mount table ([`read`]), remembered
/// while the table is the same: every attempt asks, with one of a few
/// `skip` lists (its scratch directory's), and the answer is a sort and a
/// comparison of every mount against every other.
pub(crate) fn host_submounts(skip: &[&Path]) -> std::io::Result<Arc<Vec<PathBuf>>> {
    type Memo = (Arc<Vec<MountEntry>>, Vec<(Vec<PathBuf>, Arc<Vec<PathBuf>>)>);
    /// Skip lists remembered at most (the agent keeps a few scratch directories).
    const MAX_MEMO: usize = 64;
    static MEMO: Mutex<Option<Memo>> = Mutex::new(None);
    let entries = read()?;
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    let (table, answers) = match memo.as_mut() {
        Some(m) if Arc::ptr_eq(&m.0, &entries) => m,
        _ => memo.insert((entries.clone(), Vec::new())),
    };
    if let Some((_, answer)) = answers
        .iter()
        .find(|(k, _)| k.iter().map(PathBuf::as_path).eq(skip.iter().copied()))
    {
        return Ok(answer.clone());
    }
    let answer = Arc::new(submounts(table, skip));
    if answers.len() >= MAX_MEMO {
        answers.clear();
    }
    answers.push((
        skip.iter().map(|p| p.to_path_buf()).collect(),
        answer.clone(),
    ));
    Ok(answer)
}

/// The host mounts that the overlay root does not show (an overlay's lower
/// layer is one file system, without what is mounted on it): every mount
/// point other than `/`, except those under `skip` and the namespace handles
/// ([`is_namespace_handle`]), reduced to the topmost ones (a recursive bind
/// brings the ones below along).
pub(crate) fn submounts(entries: &[MountEntry], skip: &[&Path]) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = entries
        .iter()
        .filter(|e| !is_namespace_handle(e))
        .map(|e| e.mount_point.clone())
        .filter(|p| p.is_absolute() && p != Path::new("/"))
        .filter(|p| !skip.iter().any(|s| p.starts_with(s)))
        .collect();
    points.sort();
    points.dedup();
    let mut top: Vec<PathBuf> = Vec::new();
    for p in points {
        if !top.iter().any(|t| p.starts_with(t)) {
            top.push(p);
        }
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:5 / /dev rw - devtmpfs devtmpfs rw
24 23 0:20 / /dev/shm rw - tmpfs tmpfs rw
25 22 0:21 / /proc rw - proc proc rw
26 25 0:30 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw
27 22 0:22 / /sys rw - sysfs sysfs rw
28 27 0:23 / /sys/fs/cgroup/memory rw shared:5 - cgroup cgroup rw,memory
29 22 0:24 / /tmp rw - tmpfs tmpfs rw
30 29 0:25 / /tmp/sub rw - tmpfs tmpfs rw
31 22 0:26 /data /my\\040data rw - ext4 /dev/vdb rw
32 22 0:27 / /scratch/a rw - tmpfs tmpfs rw
33 22 254:0 /run/netns /run/netns rw shared:1 - ext4 /dev/vda rw
34 33 0:4 net:[4026532275] /run/netns/osmo-1 rw shared:1 - nsfs nsfs rw
35 22 0:4 net:[4026532276] /run/docker/netns/c0ffee rw - nsfs nsfs rw
";

    #[test]
    fn the_kept_table_is_read_again_after_a_mount() {
        let before = read().unwrap();
        assert!(
            Arc::ptr_eq(&before, &read().unwrap()),
            "unchanged: the same copy"
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                ptr::null(),
            )
        };
        assert_eq!(r, 0, "mount: {}", std::io::Error::last_os_error());
        let during = read().unwrap();
        // SAFETY: as above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let canonical = dir.path().canonicalize().unwrap();
        assert!(during.iter().any(|e| e.mount_point == canonical));
        assert!(!read().unwrap().iter().any(|e| e.mount_point == canonical));
    }

    #[test]
    fn parses_fields_and_escapes() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 14);
        assert_eq!(entries[6].fstype, "cgroup");
        assert_eq!(entries[6].super_options, "rw,memory");
        assert_eq!(entries[9].mount_point, PathBuf::from("/my data"));
        assert_eq!(entries[9].root, "/data");
    }

    #[test]
    fn host_submounts_are_remembered_per_skip_list_while_the_table_is_the_same() {
        let skip_a = [Path::new("/proc"), Path::new("/tmp")];
        let skip_b = [Path::new("/proc")];
        // Another test in this process may mount meanwhile (which rightly
        // forgets the answers): a round counts only if the table read before
        // it is still the one after it.
        for _ in 0..100 {
            let before = read().unwrap();
            let a = host_submounts(&skip_a).unwrap();
            let b = host_submounts(&skip_b).unwrap();
            let again = host_submounts(&skip_a).unwrap();
            if !Arc::ptr_eq(&before, &read().unwrap()) {
                continue;
            }
            // The same answer as working it out again, for each skip list.
            assert_eq!(*a, submounts(&before, &skip_a));
            assert_eq!(*b, submounts(&before, &skip_b));
            assert!(Arc::ptr_eq(&a, &again), "remembered, not worked out again");
            return;
        }
        panic!("the mount table changed during each of 100 rounds");
    }

    #[test]
    fn submounts_are_the_topmost_outside_the_skipped_trees_and_the_namespace_handles() {
        let entries = parse(SAMPLE);
        let got = submounts(
            &entries,
            &[Path::new("/proc"), Path::new("/tmp"), Path::new("/scratch")],
        );
        let want: Vec<PathBuf> = ["/dev", "/my data", "/sys"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
        let handles: Vec<&Path> = entries
            .iter()
            .filter(|e| is_namespace_handle(e))
            .map(|e| e.mount_point.as_path())
            .collect();
        assert_eq!(
            handles,
            [
                "/run/netns",
                "/run/netns/osmo-1",
                "/run/docker/netns/c0ffee"
            ]
            .map(Path::new)
        );
    }
}
