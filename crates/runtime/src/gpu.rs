//! A task's GPUs: which NVIDIA devices the node has, what a task given some
//! of them sees in its environment, and which ones the sandbox hides.
//!
//! A task sees exactly the devices it was given: `NVIDIA_VISIBLE_DEVICES`
//! names their indices on the node (what the NVIDIA container runtime
//! reads), `CUDA_VISIBLE_DEVICES` their UUIDs when the driver says them (so
//! CUDA picks the same GPUs whether or not the others are hidden and the
//! rest renumbered), else the indices. The host sandbox masks the other
//! `/dev/nvidiaN` nodes and their `/proc/driver/nvidia/gpus` entries, as
//! container runtimes mask paths: `/dev/null` over a node, an empty
//! read-only tmpfs over a directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Where the node's device nodes are.
pub const DEV: &str = "/dev";
/// Where the NVIDIA driver lists its GPUs.
pub const DRIVER_GPUS: &str = "/proc/driver/nvidia/gpus";

/// The GPU device indices of the node: `/dev/nvidia0`, `/dev/nvidia1`, …
/// (`nvidiactl`, `nvidia-uvm` and the other control nodes are not GPUs).
pub fn device_indices(dev: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(dev) else {
        return Vec::new();
    };
    let mut found: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            name.to_str()?.strip_prefix("nvidia")?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    found
}

/// This node's GPU indices and the driver's list of them, read once: they
/// do not change while the process runs, and every attempt asks.
pub fn node() -> &'static (Vec<u32>, Vec<DriverGpu>) {
    static NODE: std::sync::OnceLock<(Vec<u32>, Vec<DriverGpu>)> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        (
            device_indices(Path::new(DEV)),
            driver_gpus(Path::new(DRIVER_GPUS)),
        )
    })
}

/// One GPU as the driver describes it in `/proc/driver/nvidia/gpus/<bus>/information`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverGpu {
    /// Its entry, `/proc/driver/nvidia/gpus/<bus id>`.
    pub dir: PathBuf,
    /// `Device Minor`: N of `/dev/nvidiaN`.
    pub minor: u32,
    pub uuid: Option<String>,
}

/// The GPUs the driver lists under `gpus_dir` (`/proc/driver/nvidia/gpus`).
pub fn driver_gpus(gpus_dir: &Path) -> Vec<DriverGpu> {
    let Ok(entries) = fs::read_dir(gpus_dir) else {
        return Vec::new();
    };
    let mut found: Vec<DriverGpu> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let info = fs::read_to_string(e.path().join("information")).ok()?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            };
            Some(DriverGpu {
                dir: e.path(),
                minor: field("Device Minor")?.parse().ok()?,
                uuid: field("GPU UUID").filter(|u| !u.is_empty()),
            })
        })
        .collect();
    found.sort_by_key(|g| g.minor);
    found
}

/// The variables naming a task's GPUs. A task given none, on a node that
/// has some, is told so (`void`, empty), so CUDA finds no device.
pub fn visible_env(
    given: &[u32],
    node_has_gpus: bool,
    driver: &[DriverGpu],
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if given.is_empty() {
        if node_has_gpus {
            env.insert("NVIDIA_VISIBLE_DEVICES".into(), "void".into());
            env.insert("CUDA_VISIBLE_DEVICES".into(), String::new());
        }
        return env;
    }
    let indices = join(given.iter().map(u32::to_string));
    let uuids: Option<Vec<String>> = given
        .iter()
        .map(|i| driver.iter().find(|g| g.minor == *i)?.uuid.clone())
        .collect();
    env.insert("NVIDIA_VISIBLE_DEVICES".into(), indices.clone());
    env.insert(
        "CUDA_VISIBLE_DEVICES".into(),
        uuids.map_or(indices, |u| join(u.into_iter())),
    );
    env
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// What the sandbox masks so that a task sees only `given`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hidden {
    /// Device nodes (`/dev/nvidiaN`) of the other GPUs.
    pub nodes: Vec<PathBuf>,
    /// Their driver entries (`/proc/driver/nvidia/gpus/<bus>`).
    pub driver_dirs: Vec<PathBuf>,
}

/// `node`: the GPU indices of the node, whose nodes are in `dev`.
pub fn hidden(given: &[u32], node: &[u32], dev: &Path, driver: &[DriverGpu]) -> Hidden {
    Hidden {
        nodes: node
            .iter()
            .copied()
            .filter(|i| !given.contains(i))
            .map(|i| dev.join(format!("nvidia{i}")))
            .collect(),
        driver_dirs: driver
            .iter()
            .filter(|g| !given.contains(&g.minor))
            .map(|g| g.dir.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_node(gpus: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        fs::create_dir(&dev).unwrap();
        for name in ["nvidiactl", "nvidia-uvm", "nvidia-modeset", "null"] {
            fs::write(dev.join(name), "").unwrap();
        }
        for i in 0..gpus {
            fs::write(dev.join(format!("nvidia{i}")), "").unwrap();
            let bus = dir.path().join(format!("gpus/0000:0{i}:00.0"));
            fs::create_dir_all(&bus).unwrap();
            fs::write(
                bus.join("information"),
                format!("Model: \t\t Fake GPU\nGPU UUID: \t GPU-{i}aaa\nDevice Minor: \t {i}\n"),
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn finds_the_gpu_nodes_not_the_control_nodes() {
        let node = fake_node(3);
        assert_eq!(device_indices(&node.path().join("dev")), vec![0, 1, 2]);
        assert!(device_indices(Path::new("/no/such/dir")).is_empty());
    }

    #[test]
    fn a_task_sees_its_own_devices_by_uuid_and_index() {
        let node = fake_node(4);
        let driver = driver_gpus(&node.path().join("gpus"));
        assert_eq!(driver.len(), 4);
        let env = visible_env(&[1, 3], true, &driver);
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "1,3");
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "GPU-1aaa,GPU-3aaa");
        // Without the driver's list (fake devices): indices.
        assert_eq!(visible_env(&[2], true, &[])["CUDA_VISIBLE_DEVICES"], "2");
        let none = visible_env(&[], true, &driver);
        assert_eq!(none["NVIDIA_VISIBLE_DEVICES"], "void");
        assert_eq!(none["CUDA_VISIBLE_DEVICES"], "");
        assert!(visible_env(&[], false, &[]).is_empty());
    }

    #[test]
    fn the_other_gpus_are_hidden() {
        let node = fake_node(4);
        let driver = driver_gpus(&node.path().join("gpus"));
        let dev = node.path().join("dev");
        let h = hidden(&[2], &device_indices(&dev), &dev, &driver);
        let names: Vec<String> = h
            .nodes
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["nvidia0", "nvidia1", "nvidia3"]);
        assert_eq!(h.driver_dirs.len(), 3);
        assert!(!h.driver_dirs.iter().any(|d| d.ends_with("0000:02:00.0")));
    }
}
