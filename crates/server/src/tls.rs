//! Optional TLS for the REST API (`--tls-cert`, `--tls-key`): rustls with
//! the ring provider, through axum-server (which does each handshake on its
//! own task, so a slow client holds up no one).

use std::path::Path;

use anyhow::Context;

/// The server's rustls configuration from a PEM certificate chain and key;
/// a file that is missing or holds no certificate or key is an error that
/// names it.
pub async fn config(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    // One process-wide provider; a second install (tests, `workflow run`) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &Path, what: &str| {
        std::fs::read(path)
            .with_context(|| format!("cannot read the TLS {what} {}", path.display()))
    };
    let (cert_pem, key_pem) = (read(cert, "certificate")?, read(key, "key")?);
    if !String::from_utf8_lossy(&cert_pem).contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!("{} holds no PEM certificate", cert.display());
    }
    if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
        anyhow::bail!("{} holds no PEM private key", key.display());
    }
    axum_server::tls_rustls::RustlsConfig::from_pem(cert_pem, key_pem)
        .await
        .with_context(|| {
            format!(
                "cannot use the TLS certificate {} with the key {}",
                cert.display(),
                key.display()
            )
        })
}
