//! `osmo workflow port-forward ID TASK --port LOCAL[:TASK]`: local TCP ports
//! forwarded to ports of a running task, as OSMO's: `POST
//! /api/workflow/{id}/portforward/{task}` for one key per port, a control
//! WebSocket per port, and per accepted connection a new key announced on
//! it and a data WebSocket of its own. Runs until interrupted.

use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use osmo_server::api_types::RouterTicket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::ServiceArgs;
use crate::Outcome;
use crate::client::{Client, typed};

/// `osmo workflow port-forward` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Forward local TCP ports to ports of a running task (a notebook, a \
        TensorBoard, a debugger), until interrupted. Each connection to a local port is a \
        new connection to the task's port, made inside the task's network. Tasks of the \
        local backend only; TCP only.",
    after_help = "Examples:\n  osmo workflow port-forward wf-1 train --port 6006\n  osmo workflow port-forward wf-1 train --port 8000:80\n  osmo workflow port-forward wf-1 sim --port 9000-9002:7000-7002,9100"
)]
pub struct PortForwardArgs {
    /// The workflow ID.
    #[arg(value_name = "ID")]
    pub workflow_id: String,
    /// The running task whose ports to forward.
    #[arg(value_name = "TASK")]
    pub task: String,
    /// LOCAL[:TASK] ports, or ranges and lists (`8000-8010:9000-9010,8015`); one
    /// number forwards that port to the same port of the task.
    #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
    pub port: PortPairs,
    /// The local address to listen on.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// UDP instead of TCP (OSMO's flag): this service forwards TCP only, and says so.
    #[arg(long)]
    pub udp: bool,
    /// Seconds to wait for each connection to the service.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// (local, task) port pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPairs(pub Vec<(u16, u16)>);

/// `8000`, `8000:80`, `8000-8002:9000-9002`, and comma-separated lists of those.
fn parse_ports(text: &str) -> Result<PortPairs, String> {
    let mut pairs = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (local, task) = part.split_once(':').unwrap_or((part, part));
        let local = port_range(local)?;
        let task = port_range(task)?;
        if local.len() != task.len() {
            return Err(format!(
                "`{part}`: {} local ports for {} ports of the task",
                local.len(),
                task.len()
            ));
        }
        pairs.extend(local.into_iter().zip(task));
    }
    if pairs.len() > 1024 {
        return Err("at most 1024 ports at once".into());
    }
    Ok(PortPairs(pairs))
}

fn port_range(text: &str) -> Result<Vec<u16>, String> {
    let port = |s: &str| match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{s}` is not a port (1-65535)")),
    };
    match text.split_once('-') {
        None => Ok(vec![port(text)?]),
        Some((first, last)) => {
            let (first, last) = (port(first)?, port(last)?);
            if first > last {
                return Err(format!("`{text}`: the range ends before it starts"));
            }
            Ok((first..=last).collect())
        }
    }
}

pub fn run(args: PortForwardArgs) -> anyhow::Result<Outcome> {
    let client = args.service.client()?;
    let task_ports: Vec<String> = args.port.0.iter().map(|(_, t)| t.to_string()).collect();
    let answer = client.post_query(
        &[
            "api",
            "workflow",
            &args.workflow_id,
            "portforward",
            &args.task,
        ],
        &[
            ("task_ports", task_ports.join(",")),
            ("use_udp", args.udp.to_string()),
        ],
    )?;
    let tickets: Vec<RouterTicket> = typed(&answer, "list of router tickets")?;
    if tickets.len() != args.port.0.len() {
        anyhow::bail!(
            "asked for {} ports, the service answered {} keys",
            args.port.0.len(),
            tickets.len()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut forwards = tokio::task::JoinSet::new();
        for ((local, task), ticket) in args.port.0.iter().copied().zip(tickets) {
            let listener = TcpListener::bind((args.host.as_str(), local))
                .await
                .with_context(|| format!("cannot listen on {}:{local}", args.host))?;
            println!(
                "Forwarding {}:{local} to port {task} of {}/{}",
                args.host, args.workflow_id, args.task
            );
            forwards.spawn(forward(
                client.clone(),
                args.workflow_id.clone(),
                ticket,
                listener,
                Duration::from_secs(args.connect_timeout),
            ));
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok(Outcome::Success),
            ended = forwards.join_next() => match ended {
                Some(Ok(Err(e))) => Err(e),
                _ => Ok(Outcome::Failure),
            },
        }
    })
}

/// One port: its control channel, and a data channel per accepted connection.
async fn forward(
    client: Client,
    workflow: String,
    ticket: RouterTicket,
    listener: TcpListener,
    timeout: Duration,
) -> anyhow::Result<()> {
    let path = |key: &str| {
        client.websocket_request(
            &ticket.router_address,
            &["api", "router", "portforward", &workflow, "client", key],
        )
    };
    let (control, _) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async(path(&ticket.key)?),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "no connection to the service within {} s",
            timeout.as_secs()
        )
    })?
    .context("cannot open the port-forward's control channel")?;
    let (mut announce, mut control_closed) = control.split();
    loop {
        let (conn, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            // The service ended the forward (it restarted, say).
            _ = control_closed.next() => anyhow::bail!("the service closed the port-forward"),
        };
        let key = connection_key()?;
        announce
            .send(Message::Text(
                serde_json::json!({"key": key, "cookie": ""})
                    .to_string()
                    .into(),
            ))
            .await
            .context("the port-forward's control channel closed")?;
        let request = path(&key)?;
        tokio::spawn(async move {
            if let Err(e) = connection(conn, request, timeout).await {
                eprintln!("port-forward: {e:#}");
            }
        });
    }
}

fn connection_key() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "PORTFORWARD-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// One local connection relayed over its data WebSocket.
async fn connection(
    mut conn: TcpStream,
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (mut ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {} s", timeout.as_secs()))?
        .context("cannot open a port-forward connection")?;
    let (mut read, mut write) = conn.split();
    let mut buf = vec![0u8; 64 * 1024];
    let mut local_open = true;
    loop {
        tokio::select! {
            n = read.read(&mut buf), if local_open => match n {
                Ok(0) | Err(_) => {
                    // Half-close: the task still answers.
                    local_open = false;
                    ws.send(Message::Binary(Vec::new().into())).await?;
                }
                Ok(n) => ws.send(Message::Binary(buf[..n].to_vec().into())).await?,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => write.write_all(&bytes).await?,
                Some(Ok(Message::Close(frame))) => {
                    // The answer to the server's close frame: it waits for it.
                    let _ = ws.close(None).await;
                    match frame {
                        Some(frame)
                            if frame.code != tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal =>
                        {
                            anyhow::bail!("{}", frame.reason);
                        }
                        _ => return Ok(()),
                    }
                }
                None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_single_pairs_ranges_and_lists() {
        assert_eq!(parse_ports("8000").unwrap().0, vec![(8000, 8000)]);
        assert_eq!(parse_ports("8000:80").unwrap().0, vec![(8000, 80)]);
        assert_eq!(
            parse_ports("9000-9002:7000-7002,9100").unwrap().0,
            vec![(9000, 7000), (9001, 7001), (9002, 7002), (9100, 9100)]
        );
        assert!(
            parse_ports("9000-9002:7000")
                .unwrap_err()
                .contains("3 local ports")
        );
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("70000").is_err());
        assert!(
            parse_ports("9002-9000")
                .unwrap_err()
                .contains("ends before")
        );
    }
}
