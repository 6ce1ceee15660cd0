//! The agent's end of `osmo workflow exec` and `port-forward`: a WebSocket
//! server on a Unix socket in its state directory (only root, the server's
//! user, reaches it), one connection per session. The server checks who may
//! enter which task and relays the client's WebSocket messages here as they
//! are, so the messages are OSMO's:
//!
//! - `/exec?workflow=W&group=G&task=T&retry=R&entry=COMMAND&tty=1`: the first message is the
//!   terminal's size (`{"Rows": r, "Cols": c}`); then binary messages are
//!   the command's stdin (an empty one closes it) and `\0RESIZE:` + a size
//!   resizes its terminal. Its output comes back as binary messages, and the
//!   session ends with a close frame whose reason is `exit CODE`.
//! - `/portforward?workflow=…&port=N`: binary messages both ways are the
//!   bytes of one TCP connection to port N of the task.
//!
//! A session that cannot start ends with close code 1011 and the reason.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use osmo_runtime::enter::{ContainerEntry, Entry, SandboxEntry};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Shared;

/// OSMO's prefix of a resize message.
const RESIZE_PREFIX: &[u8] = b"\x00RESIZE:";
/// How long a port-forward waits for the task to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<UnixStream>;

pub fn socket_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("exec.sock")
}

/// Serves sessions until the agent exits.
pub(crate) fn listen(shared: Arc<Shared>) -> anyhow::Result<()> {
    let path = socket_path(&shared.state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(session(shared.clone(), stream));
        }
    });
    Ok(())
}

async fn session(shared: Arc<Shared>, stream: UnixStream) {
    let mut uri = None;
    // The callback's type is the library's.
    #[allow(clippy::result_large_err)]
    let capture = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
        uri = Some(req.uri().clone());
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, capture).await else {
        return;
    };
    let Some(uri) = uri else { return };
    let query: std::collections::HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let field = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
    let (workflow, group, task) = (field("workflow"), field("group"), field("task"));
    let retry: Option<u32> = field("retry").parse().ok();
    let stem = format!("{workflow}/{group}/{task} retry {}", field("retry"));
    let entry = shared
        .lock_attempts()
        .iter()
        .find(|(key, handle)| {
            key.workflow_id == workflow
                && Some(key.attempt.retry_id) == retry
                && handle.group == group
                && handle.task == task
        })
        .map(|(_, handle)| handle.entry());
    let result = match entry {
        None => Err(format!("attempt {stem} does not run on this node")),
        Some(None) => Err(format!(
            "attempt {stem} is not running: its set-up is not done, or it ended"
        )),
        Some(Some(entry)) => match uri.path() {
            "/exec" => {
                let command = query.get("entry").cloned().unwrap_or_default();
                let tty = query.get("tty").is_none_or(|t| t != "0");
                exec(&mut ws, &entry, &command, tty).await
            }
            "/portforward" => match query.get("port").and_then(|p| p.parse::<u16>().ok()) {
                Some(port) => port_forward(&mut ws, &entry, port).await,
                None => Err("port-forward needs a port (1-65535)".into()),
            },
            other => Err(format!("no such session kind: {other}")),
        },
    };
    let frame = match result {
        Ok(reason) => CloseFrame {
            code: CloseCode::Normal,
            reason: reason.into(),
        },
        Err(why) => CloseFrame {
            code: CloseCode::Error,
            reason: truncate(&why).into(),
        },
    };
    if ws.close(Some(frame)).await.is_ok() {
        // Until the server's answer, a few seconds at most: a socket closed
        // with bytes unread in it (the client's stdin ending late, say) is
        // reset, and the server would lose the close frame with the exit code.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// A close frame's reason holds at most 123 bytes.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(123);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A terminal size message: `{"Rows": r, "Cols": c}`.
fn parse_size(bytes: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let rows = v.get("Rows")?.as_u64()?;
    let cols = v.get("Cols")?.as_u64()?;
    Some((
        rows.min(u16::MAX as u64) as u16,
        cols.min(u16::MAX as u64) as u16,
    ))
}

/// What the client sent, as the command sees it.
enum Input {
    Data(Vec<u8>),
    Resize(u16, u16),
    Eof,
    Gone,
}

fn input(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Option<Input> {
    match msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Some(Input::Gone),
        Some(Ok(Message::Binary(b))) => Some(classify(b.to_vec())),
        Some(Ok(Message::Text(t))) => Some(classify(t.as_bytes().to_vec())),
        Some(Ok(_)) => None,
    }
}

fn classify(bytes: Vec<u8>) -> Input {
    if bytes.is_empty() {
        return Input::Eof;
    }
    match bytes.strip_prefix(RESIZE_PREFIX).and_then(parse_size) {
        Some((rows, cols)) => Input::Resize(rows, cols),
        None => Input::Data(bytes),
    }
}

/// The first message: the terminal's size (0 × 0 without a terminal).
async fn first_size(ws: &mut Ws) -> Result<(u16, u16), String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(parse_size(&b).unwrap_or((0, 0))),
            Some(Ok(Message::Text(t))) => return Ok(parse_size(t.as_bytes()).unwrap_or((0, 0))),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            _ => return Err("the client left before sending its terminal size".into()),
        }
    }
}

async fn exec(ws: &mut Ws, entry: &Entry, command: &str, tty: bool) -> Result<String, String> {
    if command.trim().is_empty() {
        return Err("no command to run (--entry)".into());
    }
    let size = first_size(ws).await?;
    // OSMO's entry is a command line (`/bin/bash`, `ls -l /tmp`): a shell reads it.
    let argv = vec!["/bin/sh".to_string(), "-c".to_string(), command.to_string()];
    match entry {
        Entry::Sandbox(sandbox) => exec_in_sandbox(ws, sandbox, &argv, tty, size).await,
        Entry::Container(container) => exec_in_container(ws, container, &argv, tty, size).await,
    }
}

/// Reads and writes one descriptor (a pty's master, a pipe) without blocking the agent.
struct Fd(AsyncFd<OwnedFd>);

impl Fd {
    fn new(fd: OwnedFd) -> std::io::Result<Fd> {
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        // SAFETY: the descriptor is owned by the AsyncFd, open and unchanged while it lives.
        unsafe { AsyncFd::register(fd) }
            .map(Fd)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Some bytes, or None at the end (EOF, or EIO once a pty's other side closed).
    async fn read(&self) -> Option<Vec<u8>> {
        loop {
            let mut guard = self.0.readable().await.ok()?;
            let mut buf = vec![0u8; 16 * 1024];
            match guard.try_io(|fd| {
                // SAFETY: read(2) into a live buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Some(buf);
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// What can be read now, without waiting (the output left after an exit).
    fn read_now(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: read(2) into a live buffer, non-blocking.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    async fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| {
                // SAFETY: write(2) from a live buffer.
                let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Not inherited by the agent's other children (the command gets its copies as stdio).
fn cloexec(fd: &impl AsRawFd) {
    // SAFETY: fcntl on a live descriptor.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) {
    if rows == 0 || cols == 0 {
        return;
    }
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a live winsize.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
}

/// Output, stdin and the terminal of a command run in a host sandbox.
struct Streams {
    /// The pty's master, or the pipe of stdout and stderr.
    output: Fd,
    /// The pty's master again, or the pipe to stdin (None once closed).
    stdin: Option<Fd>,
    /// The pty's master, for resizes.
    terminal: Option<OwnedFd>,
}

fn sandbox_streams(
    cmd: &mut std::process::Command,
    tty: bool,
    size: (u16, u16),
) -> std::io::Result<Streams> {
    use std::process::Stdio;
    if tty {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        cloexec(&pty.master);
        cloexec(&pty.slave);
        set_size(&pty.master, size.0, size.1);
        cmd.stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        Ok(Streams {
            output: Fd::new(pty.master.try_clone()?)?,
            stdin: Some(Fd::new(pty.master.try_clone()?)?),
            terminal: Some(pty.master),
        })
    } else {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        let (out_r, out_w) = pipe().map_err(std::io::Error::from)?;
        let (in_r, in_w) = pipe().map_err(std::io::Error::from)?;
        cmd.stdin(Stdio::from(in_r))
            .stdout(Stdio::from(out_w.try_clone()?))
            .stderr(Stdio::from(out_w));
        Ok(Streams {
            output: Fd::new(out_r)?,
            stdin: Some(Fd::new(in_w)?),
            terminal: None,
        })
    }
}

async fn exec_in_sandbox(
    ws: &mut Ws,
    entry: &SandboxEntry,
    argv: &[String],
    tty: bool,
    size: (u16, u16),
) -> Result<String, String> {
    let mut cmd = entry
        .command(argv, tty)
        .map_err(|e| format!("cannot enter the task's sandbox: {e}"))?;
    if tty && !entry.env.iter().any(|(k, _)| k == "TERM") {
        // A terminal that says what it is, so shells and editors draw right.
        cmd.env("TERM", "xterm-256color");
    }
    let mut streams =
        sandbox_streams(&mut cmd, tty, size).map_err(|e| format!("cannot make a terminal: {e}"))?;
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {:?} in the task: {e}", argv[2]))?;
    // The command's ends are the child's alone now (the parent's copies went with `cmd`).
    let mut output_open = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            bytes = streams.output.read(), if output_open => match bytes {
                Some(bytes) => {
                    if ws.send(Message::Binary(bytes.into())).await.is_err() {
                        return Ok("client gone".into());
                    }
                }
                None => output_open = false,
            },
            msg = ws.next() => match input(msg) {
                Some(Input::Data(bytes)) => {
                    if let Some(stdin) = &streams.stdin {
                        let _ = stdin.write_all(&bytes).await;
                    }
                }
                Some(Input::Resize(rows, cols)) => {
                    if let Some(t) = &streams.terminal {
                        set_size(t, rows, cols);
                    }
                }
                Some(Input::Eof) => {
                    if tty {
                        // A terminal's end of input: ^D.
                        if let Some(stdin) = &streams.stdin {
                            let _ = stdin.write_all(b"\x04").await;
                        }
                    } else {
                        streams.stdin = None;
                    }
                }
                // The client left: the command goes too (kill on drop).
                Some(Input::Gone) => return Ok("client gone".into()),
                None => {}
            },
        }
    };
    let rest = streams.output.read_now();
    if !rest.is_empty() {
        let _ = ws.send(Message::Binary(rest.into())).await;
    }
    let code = status.ok().and_then(|s| s.code()).unwrap_or(255);
    Ok(format!("exit {code}"))
}

async fn exec_in_container(
    ws: &mut Ws,
    entry: &ContainerEntry,
    argv: &[String],
    tty: bool,
    size: (u16, u16),
) -> Result<String, String> {
    let mut session = osmo_runtime::docker_exec::exec(entry, argv, tty, Some(size)).await?;
    let mut stdin_open = true;
    loop {
        tokio::select! {
            out = session.output.next() => match out {
                Some(Ok(bytes)) => {
                    if ws.send(Message::Binary(bytes.into())).await.is_err() {
                        return Ok("client gone".into());
                    }
                }
                Some(Err(e)) => return Err(format!("the container's output broke off: {e}")),
                None => break,
            },
            msg = ws.next() => match input(msg) {
                Some(Input::Data(bytes)) if stdin_open => {
                    let _ = session.input.write_all(&bytes).await;
                }
                Some(Input::Resize(rows, cols)) => session.control.resize(rows, cols).await,
                Some(Input::Eof) if tty => {
                    let _ = session.input.write_all(b"\x04").await;
                }
                Some(Input::Eof) => {
                    stdin_open = false;
                    let _ = session.input.shutdown().await;
                }
                Some(Input::Gone) => return Ok("client gone".into()),
                _ => {}
            },
        }
    }
    let code = session.control.exit_code().await.unwrap_or(255);
    Ok(format!("exit {code}"))
}

async fn port_forward(ws: &mut Ws, entry: &Entry, port: u16) -> Result<String, String> {
    let mut stream = match entry {
        Entry::Sandbox(sandbox) => {
            let sandbox = sandbox.clone();
            let std_stream =
                tokio::task::spawn_blocking(move || sandbox.connect(port, CONNECT_TIMEOUT))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("cannot connect to port {port} of the task: {e}"))?;
            std_stream
                .set_nonblocking(true)
                .map_err(|e| e.to_string())?;
            tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())?
        }
        Entry::Container(container) => {
            osmo_runtime::docker_exec::connect(container, port, CONNECT_TIMEOUT).await?
        }
    };
    let (mut read, mut write) = stream.split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = read.read(&mut buf) => match n {
                Ok(0) | Err(_) => return Ok("the task closed the connection".into()),
                Ok(n) => {
                    if ws.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        return Ok("client gone".into());
                    }
                }
            },
            msg = ws.next() => match input(msg) {
                Some(Input::Data(bytes)) => {
                    let written = write.write_all(&bytes).await;
                    if written.is_err() {
                        return Ok("the task closed the connection".into());
                    }
                }
                Some(Input::Eof) => {
                    let _ = write.shutdown().await;
                }
                Some(Input::Gone) => return Ok("client gone".into()),
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_sizes_resizes_data_or_the_end_of_input() {
        assert_eq!(parse_size(br#"{"Rows": 40, "Cols": 120}"#), Some((40, 120)));
        assert_eq!(parse_size(b"not json"), None);
        assert!(matches!(
            classify(b"\x00RESIZE:{\"Rows\":10,\"Cols\":20}".to_vec()),
            Input::Resize(10, 20)
        ));
        assert!(matches!(classify(b"ls\n".to_vec()), Input::Data(d) if d == b"ls\n"));
        assert!(matches!(classify(Vec::new()), Input::Eof));
    }

    #[test]
    fn close_reasons_fit_a_frame() {
        let long = "é".repeat(100);
        let cut = truncate(&long);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(&cut));
    }
}
