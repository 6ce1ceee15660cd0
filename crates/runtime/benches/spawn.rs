//! Attempts per second of `true` through `run_attempt` (namespaces, overlay
//! root, mounts, pivot, reaper) against a plain `std::process::Command`
//! spawn of `true`, on the same machine in the same run. Needs root.

use std::hint::black_box;
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use osmo_runtime::{AttemptSpec, StopHandle, Stream, Supervisor, run_attempt};

struct Quiet;

impl Supervisor for Quiet {
    fn log(&self, _: Stream, _: &str) {}
    fn setup_done(&self) -> bool {
        true
    }
    fn started(&self) {}
}

fn spec(dir: &std::path::Path) -> AttemptSpec {
    AttemptSpec {
        workflow_id: "bench-1".into(),
        group: "bench".into(),
        task: "true".into(),
        command: vec!["true".into()],
        output_dir: dir.join("output"),
        scratch_dir: dir.join("scratch"),
        ..AttemptSpec::default()
    }
}

fn spawn(c: &mut Criterion) {
    // The scratch directory is reused, so every attempt also clears the
    // previous one's overlay layers, as a caller would. On a disk file system
    // that cost depends on it (`discard` makes every rmdir slow), hence a
    // second variant with the scratch directory on a tmpfs.
    let disk = tempfile::tempdir().expect("temporary directory");
    let shm = tempfile::tempdir_in("/dev/shm").expect("temporary directory in /dev/shm");
    let on_disk = spec(disk.path());
    let on_tmpfs = spec(shm.path());
    for spec in [&on_disk, &on_tmpfs] {
        let outcome = run_attempt(spec, &Quiet, &StopHandle::new());
        assert_eq!(
            outcome.codes.iter().map(|c| c.code).collect::<Vec<_>>(),
            [0],
            "the sandbox does not work here (root needed): {outcome:?}"
        );
    }

    let mut group = c.benchmark_group("spawn-true");
    group.bench_function("run_attempt/scratch-on-disk", |b| {
        b.iter(|| black_box(run_attempt(&on_disk, &Quiet, &StopHandle::new())))
    });
    group.bench_function("run_attempt/scratch-on-tmpfs", |b| {
        b.iter(|| black_box(run_attempt(&on_tmpfs, &Quiet, &StopHandle::new())))
    });
    group.bench_function("std_command", |b| {
        b.iter(|| black_box(Command::new("true").status().expect("spawn true")))
    });
    group.finish();
}

criterion_group!(benches, spawn);
criterion_main!(benches);
