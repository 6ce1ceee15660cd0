//! One data transfer as a task's would run it, timed: `cargo run --release -p
//! osmo-runtime --example transfer -- upload|download URL DIR`, with the
//! store's keys in `OSMO_S3_KEY_ID`, `OSMO_S3_SECRET` and its address in
//! `OSMO_S3_URL` (bench/data-transfer.sh uses it). Prints the bytes per second.

use std::time::Instant;

use osmo_runtime::data::{DataCredential, Transfer, download, upload};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [direction, url, dir] = &args[..] else {
        eprintln!("usage: transfer upload|download URL DIR");
        std::process::exit(2);
    };
    let env = |k: &str| std::env::var(k).ok();
    let credential = env("OSMO_S3_KEY_ID").map(|id| DataCredential {
        access_key_id: id,
        access_key: env("OSMO_S3_SECRET").unwrap_or_default(),
        region: Some("us-east-1".into()),
        override_url: env("OSMO_S3_URL"),
        addressing_style: None,
    });
    let t = Transfer {
        url: url.clone(),
        regex: None,
        dir: dir.into(),
        credential,
    };
    let started = Instant::now();
    let quiet = |_: &str| {};
    let moved = match direction.as_str() {
        "upload" => upload(&t, &quiet),
        _ => download(&t, &quiet),
    }
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1);
    });
    println!(
        "{:.0}",
        moved.bytes as f64 / started.elapsed().as_secs_f64()
    );
}
