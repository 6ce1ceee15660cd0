//! `osmo workflow exec ID TASK [--entry COMMAND]`: a command inside a running
//! task's sandbox or container, as OSMO's: `POST
//! /api/workflow/{id}/exec/task/{task}` for a key, then a WebSocket to the
//! router it names. On a terminal the command gets one (raw mode here,
//! resizes followed); otherwise its output is printed as it comes and this
//! command's stdin is its stdin. Exits with the command's exit code.

use std::io::{IsTerminal, Read, Write};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use osmo_server::api_types::RouterTicket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::ServiceArgs;
use crate::Outcome;
use crate::client::typed;

/// OSMO's prefix of a terminal resize message.
const RESIZE_PREFIX: &[u8] = b"\x00RESIZE:";

/// `osmo workflow exec` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Run a command inside a running task: in its sandbox (its files, /tmp, \
        output, network and processes, as its user) or its container. With a terminal on \
        both ends the command gets a terminal too (a shell works as over ssh); otherwise \
        its output is printed and stdin is passed on. Exits with the command's exit code. \
        Tasks of the local backend only.",
    after_help = "Examples:\n  osmo workflow exec wf-1 train\n  osmo workflow exec wf-1 train --entry 'ls -l {{output}}'\n  echo hi | osmo workflow exec wf-1 train --entry 'cat > /tmp/note'"
)]
pub struct ExecArgs {
    /// The workflow ID.
    #[arg(value_name = "ID")]
    pub workflow_id: String,
    /// The running task to enter.
    #[arg(value_name = "TASK")]
    pub task: String,
    /// The command line to run (a shell reads it).
    #[arg(long = "entry", value_name = "COMMAND", default_value = "/bin/bash")]
    pub entry: String,
    /// Seconds to wait for the connection.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub service: ServiceArgs,
}

pub fn run(args: ExecArgs) -> anyhow::Result<Outcome> {
    let client = args.service.client()?;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let answer = client.post_query(
        &[
            "api",
            "workflow",
            &args.workflow_id,
            "exec",
            "task",
            &args.task,
        ],
        &[
            ("entry_command", args.entry.clone()),
            ("tty", tty.to_string()),
        ],
    )?;
    let ticket: RouterTicket = typed(&answer, "router ticket")?;
    let request = client.websocket_request(
        &ticket.router_address,
        &[
            "api",
            "router",
            "exec",
            &args.workflow_id,
            "client",
            &ticket.key,
        ],
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(session(
        request,
        tty,
        std::time::Duration::from_secs(args.connect_timeout),
    ))?;
    // The stdin reader may still wait for input no one needs.
    runtime.shutdown_background();
    Ok(Outcome::Code(code))
}

/// The terminal's size now: `{"Rows": r, "Cols": c}` (0 × 0 without one).
fn terminal_size(tty: bool) -> Vec<u8> {
    let (rows, cols) = if tty {
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ into a live winsize.
        if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut size) } == 0 {
            (size.ws_row, size.ws_col)
        } else {
            (0, 0)
        }
    } else {
        (0, 0)
    };
    serde_json::json!({"Rows": rows, "Cols": cols})
        .to_string()
        .into_bytes()
}

/// The terminal in raw mode while it lives; restored after.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter(tty: bool) -> RawMode {
        use nix::sys::termios;
        if !tty {
            return RawMode(None);
        }
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSADRAIN,
                saved,
            );
        }
    }
}

async fn session(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    tty: bool,
    timeout: std::time::Duration,
) -> anyhow::Result<u8> {
    let (mut ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| anyhow::anyhow!("no connection to the task within {} s", timeout.as_secs()))?
        .context("cannot open the exec session")?;
    ws.send(Message::Binary(terminal_size(tty).into())).await?;

    // stdin on a thread of its own (a blocking read); an empty message is its end.
    let (input_tx, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 8192];
        loop {
            let n = stdin.read(&mut buf).unwrap_or(0);
            if input_tx.blocking_send(buf[..n].to_vec()).is_err() || n == 0 {
                return;
            }
        }
    });
    let mut resized =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let _raw = RawMode::enter(tty);
    let mut stdout = std::io::stdout();
    let mut input_open = true;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    stdout.write_all(&bytes)?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Text(text))) => {
                    stdout.write_all(text.as_bytes())?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Close(frame))) => {
                    drop(_raw);
                    // The answer to the server's close frame: it waits for it.
                    let _ = ws.close(None).await;
                    return ended(frame);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    drop(_raw);
                    anyhow::bail!("the exec session broke off: {e}");
                }
                None => {
                    drop(_raw);
                    anyhow::bail!("the exec session ended without the command's exit code");
                }
            },
            bytes = input.recv(), if input_open => {
                let bytes = bytes.unwrap_or_default();
                input_open = !bytes.is_empty();
                ws.send(Message::Binary(bytes.into())).await?;
            },
            _ = resized.recv() => {
                let mut msg = RESIZE_PREFIX.to_vec();
                msg.extend(terminal_size(tty));
                ws.send(Message::Binary(msg.into())).await?;
            },
        }
    }
}

/// The command's exit code from the close frame (`exit CODE`), or why the
/// session could not run.
fn ended(
    frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> anyhow::Result<u8> {
    let Some(frame) = frame else {
        anyhow::bail!("the exec session ended without the command's exit code");
    };
    if let Some(code) = frame.reason.as_str().strip_prefix("exit ") {
        return code
            .trim()
            .parse::<i64>()
            .map(|c| c.clamp(0, 255) as u8)
            .with_context(|| format!("the session ended with `{}`", frame.reason));
    }
    if frame.code == CloseCode::Normal {
        anyhow::bail!("the exec session ended: {}", frame.reason);
    }
    anyhow::bail!("cannot run the command in the task: {}", frame.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    #[test]
    fn the_exit_code_comes_from_the_close_frame() {
        let frame = |code, reason: &str| {
            Some(CloseFrame {
                code,
                reason: reason.to_string().into(),
            })
        };
        assert_eq!(ended(frame(CloseCode::Normal, "exit 3")).unwrap(), 3);
        assert_eq!(ended(frame(CloseCode::Normal, "exit 0")).unwrap(), 0);
        let err = ended(frame(CloseCode::Error, "attempt x is not running")).unwrap_err();
        assert!(
            err.to_string().contains("attempt x is not running"),
            "{err}"
        );
        assert!(ended(None).is_err());
    }
}
