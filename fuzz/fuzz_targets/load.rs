//! Any bytes through `render`, `load` and `load_config`: errors are fine,
//! panics, hangs and unbounded memory are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osmo_spec::{Values, load, load_config, render};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values = Values {
        set: vec![("n".into(), "3".into())],
        set_string: vec![("s".into(), "x".into())],
    };
    let _ = render(&text, "fuzz.yaml", &values);
    let _ = load(&text, "fuzz.yaml", &values, None);
    let _ = load_config(&text, "fuzz.yaml");
});
