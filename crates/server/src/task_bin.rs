//! `osmo` inside containers. The binary is bound read-only into every task
//! (at its host path), but it is linked against the host's glibc: in an
//! image without it (Alpine, busybox) running it would fail with a bare
//! `not found`. Containers therefore find `osmo` first in a directory of the
//! data dir holding a small `sh` wrapper that says so plainly, and otherwise
//! runs the real binary.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A directory of the data dir holding only this binary, as `osmo`, for
/// tasks to find on their `PATH`: binding the binary's own directory would
/// show tasks whatever else lies there, and where that is `/tmp` it would
/// cover the task's own writable `/tmp` with the host's, read-only. A hard
/// link (a copy across file systems), made again at each server start.
pub fn exe_dir(data_dir: &Path, exe: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("task-exe");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let target = dir.join("osmo");
    let _ = std::fs::remove_file(&target);
    if std::fs::hard_link(exe, &target).is_err() {
        std::fs::copy(exe, &target)
            .with_context(|| format!("cannot copy {} to {}", exe.display(), target.display()))?;
    }
    Ok(dir)
}

/// Writes `DATA_DIR/task-bin/osmo` (once per server start) for `exe`;
/// returns the directory.
pub fn prepare(data_dir: &Path, exe: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("task-bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let script = wrapper(exe, interpreter(exe).as_deref());
    let path = dir.join("osmo");
    std::fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(dir)
}

fn wrapper(exe: &Path, interpreter: Option<&str>) -> String {
    let exe = exe.to_string_lossy().replace('\'', r"'\''");
    let check = match interpreter {
        Some(loader) => format!(
            "if [ ! -e '{loader}' ]; then\n  \
             echo \"osmo: this image has no glibc ({loader} is missing), which the osmo CLI needs; \
             use an image with glibc (e.g. ubuntu), or call the API at \\$OSMO_URL with curl\" >&2\n  \
             exit 127\nfi\n"
        ),
        None => String::new(),
    };
    format!(
        "#!/bin/sh\n# osmo inside a container: the service's own binary.\n{check}exec '{exe}' \"$@\"\n"
    )
}

/// The ELF interpreter (`PT_INTERP`) of a dynamically linked binary.
fn interpreter(exe: &Path) -> Option<String> {
    let elf = std::fs::read(exe).ok()?;
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    // 64-bit little-endian ELF only (the platforms osmo builds for).
    if elf.get(..4)? != b"\x7fELF" || elf.get(4)? != &2 || elf.get(5)? != &1 {
        return None;
    }
    let (phoff, phentsize, phnum) = (
        u64_at(0x20)? as usize,
        u16_at(0x36)? as usize,
        u16_at(0x38)?,
    );
    (0..phnum as usize).find_map(|i| {
        let ph = phoff + i * phentsize;
        (u32_at(ph)? == 3).then_some(())?;
        let (offset, size) = (u64_at(ph + 8)? as usize, u64_at(ph + 32)? as usize);
        let text = elf.get(offset..offset + size)?;
        Some(
            String::from_utf8_lossy(text)
                .trim_end_matches('\0')
                .to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_binary_has_an_interpreter_and_the_wrapper_checks_it() {
        let exe = std::env::current_exe().unwrap();
        let loader = interpreter(&exe).expect("a dynamically linked test binary");
        assert!(
            loader.starts_with('/') && loader.contains("ld-"),
            "{loader}"
        );
        let script = wrapper(&exe, Some(&loader));
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains(&format!("[ ! -e '{loader}' ]")), "{script}");
        assert!(script.trim_end().ends_with("\"$@\""), "{script}");
        assert!(interpreter(Path::new("/no/such/file")).is_none());
    }
}
