//! A network per workflow on the host sandbox (SEMANTICS §6): two copies of
//! a workflow whose two servers listen on one port, each on its own address,
//! run at once; each client finds its own servers by `{{host:TASK}}`
//! (through `/etc/hosts` and through the DNS resolver the node agent serves),
//! `osmo` inside a task reaches the service, and the outside world is
//! reachable through NAT.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{Server, alive, task, wait_for};

const SPEC: &str = r#"
workflow:
  name: pair
  groups:
  - name: g
    tasks:
    - name: server
      image: ubuntu
      command: [python3, /opt/server.py]
      files: &server_py
      - path: /opt/server.py
        contents: |
          import os, socket
          s = socket.socket()
          s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
          # Its own address: a sibling listens on the same port on its own.
          me = os.environ["OSMO_TASK_NAME"]
          s.bind((socket.gethostbyname(me), 18080))
          s.listen()
          c, _ = s.accept()
          c.recv(100)
          c.sendall(("pong from " + me + "@" + os.environ["OSMO_WORKFLOW_ID"] + "\n").encode())
          c.close()
    - name: twin
      image: ubuntu
      command: [python3, /opt/server.py]
      files: *server_py
    - name: client
      image: ubuntu
      lead: true
      command: [python3, /opt/client.py, "{{host:server}}", "{{output}}", "OUTSIDE", "{{host:twin}}"]
      files:
      - path: /opt/client.py
        contents: |
          import socket, struct, sys, time, subprocess
          name, out, outside = sys.argv[1], sys.argv[2], sys.argv[3]
          # The resolver of /etc/resolv.conf, asked directly (as nslookup does).
          ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
          q = struct.pack(">HHHHHH", 7, 0x100, 1, 0, 0, 0)
          q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
          u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
          u.settimeout(5)
          u.sendto(q, (ns, 53))
          reply = u.recv(512)
          dns = socket.inet_ntoa(reply[-4:])
          hosts = socket.gethostbyname(name)
          def ping(host):
              for _ in range(200):
                  try:
                      c = socket.create_connection((host, 18080), timeout=5)
                      break
                  except OSError:
                      time.sleep(0.05)
              c.sendall(b"ping\n")
              return c.makefile().readline().strip()
          pong = ping(name) + " " + ping(sys.argv[4])
          query = subprocess.run(["osmo", "workflow", "query", sys.argv[0] and __import__("os").environ["OSMO_WORKFLOW_ID"]], capture_output=True, text=True).stdout
          ok_query = "Status" in query
          reached = "-"
          if outside != "-":
              host, port = outside.split(":")
              o = socket.create_connection((host, int(port)), timeout=5)
              o.sendall(b"out\n")
              reached = "yes"
          open(out + "/result", "w").write(f"{dns} {hosts} {pong} query={ok_query} outside={reached}\n")
"#;

/// A non-loopback IPv4 address of this machine, if it has one.
fn host_address() -> Option<String> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
}

#[test]
fn two_workflows_listen_on_one_port_and_find_their_own_server() {
    let server = Server::start(common::local_pool());
    // The outside world: a port on this machine's own address, not loopback.
    let outside = host_address().map(|ip| {
        let listener = std::net::TcpListener::bind((ip.as_str(), 0)).unwrap();
        let at = format!("{ip}:{}", listener.local_addr().unwrap().port());
        let heard = std::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..2 {
                let (c, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(c).read_line(&mut line).unwrap();
                got.push(line);
            }
            got
        });
        (at, heard)
    });
    let spec = SPEC.replace(
        "OUTSIDE",
        outside.as_ref().map_or("-", |(at, _)| at.as_str()),
    );
    let ids: Vec<String> = (0..2).map(|_| server.submit(&spec)).collect();
    for id in &ids {
        let doc = server.wait_finished(id, Duration::from_secs(60));
        let (_, logs) = server.get(&format!("/api/workflow/{id}/logs"));
        assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{logs}");
        for name in ["server", "twin"] {
            assert_eq!(task(&doc, name, 0)["status"], "COMPLETED", "{doc:#}");
        }
        let result =
            std::fs::read_to_string(server.output_dir(id, "client", 0).join("result")).unwrap();
        let want_outside = if outside.is_some() { "yes" } else { "-" };
        assert_eq!(
            result.trim(),
            format!(
                "127.1.0.1 127.1.0.1 pong from server@{id} pong from twin@{id} query=True outside={want_outside}"
            ),
            "{logs}"
        );
    }
    if let Some((_, heard)) = outside {
        let got = heard.join().unwrap();
        assert_eq!(got, ["out\n", "out\n"]);
    }
    let _ = std::io::stdout().flush();
}

const ONE_TASK: &str = r#"
workflow:
  name: one
  tasks:
  - name: t
    image: ubuntu
    command: ["true"]
"#;

/// The workflow networks an agent has made: the `osmo-*` network
/// namespaces its state dir records.
fn recorded_networks(server: &Server) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(server.data_dir().join("agent/net")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("osmo-"))
        .collect()
}

#[test]
fn a_killed_agents_networks_are_removed_by_the_agent_that_follows_it() {
    let server = Server::start(common::local_pool());
    let id = server.submit(ONE_TASK);
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    // Kept idle for the next workflow: on the host while the agent lives.
    let made = recorded_networks(&server);
    let on_host = |name: &String| std::path::Path::new("/run/netns").join(name).exists();
    if !made.iter().any(on_host) {
        eprintln!("skipped: no workflow network here (not root, or no `ip`): {made:?}");
        return;
    }
    let agent = server.agent_pid().expect("the agent wrote its pid");
    // SAFETY: signalling a process of this test's server.
    unsafe { libc::kill(agent, libc::SIGKILL) };
    wait_for(Duration::from_secs(10), "the agent to die", || {
        (!alive(agent)).then_some(())
    });
    // The server starts the next agent at once; it removes what the killed one left.
    wait_for(
        Duration::from_secs(20),
        "the killed agent's networks to go",
        || (!made.iter().any(on_host)).then_some(()),
    );
    let next = server.agent_pid().expect("a next agent");
    assert_ne!(next, agent);
    // And the next agent makes networks as before.
    let id = server.submit(ONE_TASK);
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    // (With the killed one's address free again, possibly under its name.)
    let now = recorded_networks(&server);
    assert!(now.iter().any(on_host), "{now:?}");
}
