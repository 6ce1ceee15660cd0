//! `osmo server --tls-cert --tls-key`: the API over HTTPS, and the CLI
//! trusting the server's own certificate authority through SSL_CERT_FILE.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{OSMO, wait_for};

/// A certificate authority and a certificate it signed for localhost and
/// 127.0.0.1, written as ca.pem, cert.pem and key.pem in `dir`.
fn make_certificates(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn osmo(dir: &Path, url: &str, ca: Option<&Path>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(OSMO);
    cmd.args(args)
        .env("OSMO_URL", url)
        .env("XDG_CONFIG_HOME", dir.join("cli"))
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_api_is_served_over_https_and_the_cli_trusts_the_given_authority() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    std::fs::write(
        d.join("config.yaml"),
        "pools:\n  default:\n    backend: local\n",
    )
    .unwrap();
    std::fs::write(
        d.join("wf.yaml"),
        "workflow:\n  name: secure\n  tasks:\n  - {name: t, image: ubuntu, command: [sh, -c, 'echo over tls']}\n",
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(d.join("server.log")).unwrap();
    let _server = Killed(
        Command::new(OSMO)
            .args(["server", "--config"])
            .arg(d.join("config.yaml"))
            .arg("--data-dir")
            .arg(d.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--tls-cert"])
            .arg(d.join("cert.pem"))
            .arg("--tls-key")
            .arg(d.join("key.pem"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(d.join("ca.pem")).unwrap()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    wait_for(Duration::from_secs(20), "the server over https", || {
        client
            .get(format!("{url}/api/health"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
    });
    // Plain HTTP on the TLS port gets no answer from the API.
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/health"))
        .send();
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plain http must not be served"
    );

    let wf = d.join("wf.yaml");
    let wf = wf.to_str().unwrap();
    let (ok, out) = osmo(d, &url, None, &["workflow", "submit", wf]);
    assert!(!ok, "an unknown authority must be refused: {out}");
    assert!(
        out.contains("cannot verify the osmo service") && out.contains("SSL_CERT_FILE"),
        "{out}"
    );

    let ca_file = d.join("ca.pem");
    let (ok, out) = osmo(d, &url, Some(&ca_file), &["workflow", "submit", wf]);
    assert!(ok, "{out}");
    let (ok, out) = osmo(
        d,
        &url.replace("127.0.0.1", "localhost"),
        Some(&ca_file),
        &["workflow", "query", "secure-1"],
    );
    assert!(ok && out.contains("secure-1"), "{out}");
    wait_for(Duration::from_secs(30), "the workflow over https", || {
        let doc: serde_json::Value = client
            .get(format!("{url}/api/workflow/secure-1"))
            .send()
            .ok()?
            .json()
            .ok()?;
        (doc["status"] == "COMPLETED").then_some(())
    });
    let logs = client
        .get(format!("{url}/api/workflow/secure-1/logs"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(logs.contains("over tls"), "{logs}");
}

#[test]
fn a_key_that_is_not_a_key_stops_the_server_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    std::fs::write(d.join("junk.pem"), "not a key\n").unwrap();
    let out = Command::new(OSMO)
        .args(["server", "--data-dir"])
        .arg(d.join("data"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(d.join("cert.pem"))
        .arg("--tls-key")
        .arg(d.join("junk.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("junk.pem") && stderr.contains("no PEM private key"),
        "{stderr}"
    );
    assert!(!d.join("data").exists(), "nothing was started: {stderr}");
}
