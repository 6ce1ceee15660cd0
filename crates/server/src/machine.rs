//! What this machine offers, for local pools that do not say how big their
//! node is: a task asking for more is then refused at submit instead of
//! waiting forever.

use osmo_spec::config::{BackendKind, ServiceConfig};

/// Fills each local pool's unset node size from this machine.
pub fn size_local_pools(config: &mut ServiceConfig) {
    for pool in config.pools.values_mut() {
        if pool.backend != BackendKind::Local {
            continue;
        }
        let node = &mut pool.node;
        node.cpu = node.cpu.or_else(cpus);
        node.memory_bytes = node.memory_bytes.or_else(memory_bytes);
        node.gpu = node.gpu.or_else(|| Some(gpus()));
        node.storage_bytes = node.storage_bytes.or_else(storage_bytes);
    }
}

fn cpus() -> Option<f64> {
    std::thread::available_parallelism()
        .ok()
        .map(|n| n.get() as f64)
}

/// MemTotal of /proc/meminfo.
fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// NVIDIA devices (`/dev/nvidia0`, …); none means no GPU to hand out.
fn gpus() -> u32 {
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("nvidia")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count() as u32
}

/// Size of the file system tasks write to (the current directory's).
fn storage_bytes() -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(".").ok()?;
    Some(stat.blocks() as u64 * stat.fragment_size() as u64)
}
