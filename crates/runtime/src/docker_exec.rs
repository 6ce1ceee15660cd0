//! Entering a running container (`osmo workflow exec`, `port-forward` with
//! `runtime: docker`): `docker exec` through the Engine API, and a TCP
//! connection to the container's address in its workflow's network.

use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWrite;

use crate::enter::ContainerEntry;

/// A command running in a container, attached.
pub struct ContainerSession {
    /// Resizes its terminal and reads its exit code.
    pub control: ExecControl,
    /// Its output (stdout and stderr; one stream with a TTY).
    pub output: Pin<Box<dyn Stream<Item = Result<Vec<u8>, String>> + Send>>,
    /// Its stdin.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

pub struct ExecControl {
    docker: Docker,
    exec: String,
}

async fn docker() -> Result<Docker, String> {
    let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
    docker
        .with_timeout(Duration::from_secs(10 * 365 * 86400))
        .negotiate_version()
        .await
        .map_err(|e| format!("the Docker daemon does not answer: {e}"))
}

/// Runs `argv` in the container as its command runs (user, environment),
/// from `/`, with a terminal of `size` (rows, columns) when `tty`.
pub async fn exec(
    entry: &ContainerEntry,
    argv: &[String],
    tty: bool,
    size: Option<(u16, u16)>,
) -> Result<ContainerSession, String> {
    let docker = docker().await?;
    let created = docker
        .create_exec(
            &entry.id,
            CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(tty),
                cmd: Some(argv.to_vec()),
                working_dir: Some("/".to_string()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot exec in the container: {e}"))?;
    let started = docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| format!("cannot start the command in the container: {e}"))?;
    let StartExecResults::Attached { output, input } = started else {
        return Err("the Docker daemon did not attach to the command".into());
    };
    let session = ContainerSession {
        control: ExecControl {
            docker,
            exec: created.id,
        },
        output: Box::pin(output.map(|item| match item {
            Ok(LogOutput::StdOut { message })
            | Ok(LogOutput::StdErr { message })
            | Ok(LogOutput::Console { message })
            | Ok(LogOutput::StdIn { message }) => Ok(message.to_vec()),
            Err(e) => Err(e.to_string()),
        })),
        input,
    };
    if let Some((rows, cols)) = size.filter(|_| tty) {
        session.control.resize(rows, cols).await;
    }
    Ok(session)
}

impl ExecControl {
    /// Best effort: a terminal that cannot be resized still works.
    pub async fn resize(&self, rows: u16, cols: u16) {
        if rows > 0 && cols > 0 {
            let _ = self
                .docker
                .resize_exec(
                    &self.exec,
                    ResizeExecOptions {
                        height: rows,
                        width: cols,
                    },
                )
                .await;
        }
    }

    /// The command's exit code, once its output ended.
    pub async fn exit_code(&self) -> Option<i64> {
        self.docker
            .inspect_exec(&self.exec)
            .await
            .ok()
            .and_then(|i| i.exit_code)
    }
}

/// A TCP connection to `port` of the container: its address in the
/// workflow's network, or the host's loopback when it uses the host's.
pub async fn connect(
    entry: &ContainerEntry,
    port: u16,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, String> {
    let ip = match &entry.network {
        None => "127.0.0.1".to_string(),
        Some(network) => {
            let docker = docker().await?;
            let inspect = docker
                .inspect_container(&entry.id, None)
                .await
                .map_err(|e| format!("cannot inspect the container: {e}"))?;
            inspect
                .network_settings
                .and_then(|s| s.networks)
                .and_then(|mut n| n.remove(network))
                .and_then(|n| n.ip_address)
                .filter(|ip| !ip.is_empty())
                .ok_or_else(|| format!("the container has no address in network {network}"))?
        }
    };
    let addr = format!("{ip}:{port}");
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!(
            "cannot connect to port {port} of the task ({addr}): {e}"
        )),
        Err(_) => Err(format!(
            "connecting to port {port} of the task ({addr}) timed out"
        )),
    }
}
