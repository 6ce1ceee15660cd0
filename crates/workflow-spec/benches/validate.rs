//! `load()` of a generated 1,000-task workflow: 200 groups of 5 tasks, each
//! with exit actions, files, environment and an input from the previous
//! group's lead (a chain). Target: under 50 ms.

use criterion::{Criterion, criterion_group, criterion_main};
use osmo_spec::{Values, load};

pub fn spec(groups: usize, tasks_per_group: usize) -> String {
    let mut s = String::from(
        "version: 2\nworkflow:\n  name: bench\n  resources:\n    default: {cpu: 2, gpu: 0, memory: 4Gi, storage: 10Gi}\n  timeout: {exec_timeout: 2h, queue_timeout: 30m}\n  groups:\n",
    );
    for g in 0..groups {
        s.push_str(&format!(
            "  - name: group-{g}\n    ignoreNonleadStatus: false\n    tasks:\n"
        ));
        for t in 0..tasks_per_group {
            s.push_str(&format!(
                "    - name: task-{g}-{t}\n      image: ubuntu\n      command: [sh, -c, \"echo {g} {t} > {{{{output}}}}/out\"]\n      args: [--rank, {t}]\n"
            ));
            if t == 0 {
                s.push_str("      lead: true\n");
            }
            s.push_str("      environment: {RANK: \"1\", WORLD: 5}\n");
            s.push_str("      files:\n      - path: /tmp/run.sh\n        contents: |\n          echo hello\n          exit 16\n");
            s.push_str("      exitActions:\n        COMPLETE: 0,16\n        RESCHEDULE: 1001,3001-3006\n        FAIL: 1-10\n");
            if g > 0 {
                s.push_str(&format!("      inputs: [{{task: task-{}-0}}]\n", g - 1));
            }
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let source = spec(200, 5);
    let wf =
        load(&source, "bench.yaml", &Values::default(), None).expect("the bench spec is valid");
    assert_eq!(wf.task_count(), 1000);
    c.bench_function("load 1000 tasks (200 groups x 5)", |b| {
        b.iter(|| {
            load(
                std::hint::black_box(&source),
                "bench.yaml",
                &Values::default(),
                None,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
