//! A proptest fuzzer for `render` + `load` + `load_config`: random bytes and
//! mutated real specs must never panic. Short by default (CI);
//! `OSMO_FUZZ_CASES=1000000 cargo test -p osmo-spec --release --test fuzz`
//! runs a long campaign. The libFuzzer target is `fuzz/fuzz_targets/load.rs`.

use osmo_spec::{Values, load, load_config, render};
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const SEEDS: &[&str] = &[
    "workflow:\n  name: w\n  tasks:\n  - name: t\n    image: ubuntu\n    command: [sh, -c, 'exit 16']\n    exitActions: {COMPLETE: 0,1-10,16,20}\n",
    "workflow:\n  name: g\n  groups:\n  - name: my_group\n    tasks:\n    - {name: a, lead: true, image: u, command: [x], files: [{path: /tmp/r, contents: '{{output}}'}]}\n    - {name: b, image: u, command: [x], inputs: [{task: a}]}\n",
    "default-values: {n: 2}\nworkflow:\n  name: j\n  tasks:\n  {% for i in range(n) %}\n  - {name: t{{ i }}, image: u, command: [x]}\n  {% endfor %}\n",
    "pools:\n  default:\n    backend: local\n    default_exit_actions: {COMPLETE: '7'}\n    preflight: [{name: p, command: [sh], first_attempt_only: true}]\n",
];

fn cases() -> u32 {
    std::env::var("OSMO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// A seed with a few bytes replaced, inserted or removed.
fn mutated() -> impl Strategy<Value = String> {
    (
        0..SEEDS.len(),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 0..8),
    )
        .prop_map(|(seed, edits)| {
            let mut bytes = SEEDS[seed].as_bytes().to_vec();
            for (at, op, byte) in edits {
                let i = at.index(bytes.len() + 1);
                match op {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

fn exercise(text: &str) {
    let values = Values {
        set: vec![("n".into(), "3".into())],
        set_string: vec![],
    };
    let _ = render(text, "fuzz.yaml", &values);
    let _ = load(text, "fuzz.yaml", &values, None);
    let _ = load_config(text, "fuzz.yaml");
}

#[test]
fn fuzz_load() {
    let total = cases();
    let strategy = prop_oneof![
        mutated(),
        prop::collection::vec(any::<u8>(), 0..1024)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let mut runner = TestRunner::new(Config {
        cases: total,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = AtomicU64::new(0);
    runner
        .run(&strategy, |text| {
            ran.fetch_add(1, Ordering::Relaxed);
            exercise(&text);
            Ok(())
        })
        .unwrap();
    let ran = ran.into_inner();
    eprintln!("fuzz_load: {ran} inputs, no panic");
    assert!(ran >= u64::from(total));
}
