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

/// The GPUs `nvidia-smi` lists, else the NVIDIA device nodes
/// (`/dev/nvidia0`, …); none means no GPU to hand out.
fn gpus() -> u32 {
    let listed = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count() as u32
        });
    listed.unwrap_or_else(|| {
        osmo_runtime::gpu::device_indices(std::path::Path::new(osmo_runtime::gpu::DEV)).len() as u32
    })
}

/// Size of the file system tasks write to (the current directory's).
fn storage_bytes() -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(".").ok()?;
    Some(stat.blocks() as u64 * stat.fragment_size() as u64)
}
