//! Every spec of the shared conformance cases (`../shared/conformance/cases`,
//! when this checkout has it): valid ones load, invalid ones fail and the
//! error mentions every expected text.

use std::path::PathBuf;

use osmo_spec::{PoolConfig, Values, load};

fn cases_dir() -> Option<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("OSMO_CONFORMANCE_CASES").map(PathBuf::from),
        Some(manifest.join("../../shared/conformance/cases")),
        Some(manifest.join("../../../shared/conformance/cases")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_dir())
}

/// `--set k=v` pairs from a case's `submit_args`.
fn values(case: &serde_norway::Value) -> Values {
    let mut values = Values::default();
    let args: Vec<String> = case["submit_args"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for pair in args.windows(2) {
        if let Some((k, v)) = pair[1].split_once('=') {
            match pair[0].as_str() {
                "--set" => values.set.push((k.into(), v.into())),
                "--set-string" => values.set_string.push((k.into(), v.into())),
                _ => {}
            }
        }
    }
    values
}

#[test]
fn conformance_specs() {
    let Some(dir) = cases_dir() else {
        eprintln!("no conformance cases in this checkout; skipped");
        return;
    };
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let case: serde_norway::Value =
            serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let spec = case["spec"].as_str().expect("a spec");
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let result = load(
            spec,
            "workflow.yaml",
            &values(&case),
            Some(&PoolConfig::default()),
        );
        match case["expect"]["submit_error"].as_sequence() {
            Some(needles) => {
                let err = result.expect_err(&name).to_string();
                for needle in needles {
                    let needle = match needle {
                        serde_norway::Value::String(s) => s.clone(),
                        other => serde_norway::to_string(other).unwrap().trim().to_string(),
                    };
                    assert!(
                        err.contains(&needle),
                        "{name}: error lacks {needle:?}:\n{err}"
                    );
                }
                println!("{name}:\n{err}\n");
            }
            None => {
                let workflow = result.unwrap_or_else(|e| panic!("{name} should load:\n{e}"));
                assert!(!workflow.groups.is_empty(), "{name}");
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 20,
        "only {checked} cases found in {}",
        dir.display()
    );
}
