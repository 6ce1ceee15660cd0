//! A network per workflow (SEMANTICS §6) for tasks on the host sandbox: a
//! network namespace the workflow's tasks share, so that each workflow has
//! its ports to itself, and an address per task on its loopback
//! (`127.1.x.y`), which `{{host:TASK}}` names through `/etc/hosts` and
//! through a small DNS responder the agent serves inside it: a task that
//! listens on its own address does not meet its siblings either (one that
//! listens on all addresses does, as in a pod). `OSMO_URL` reaches the
//! server through a forwarder the agent keeps there. A veth pair to the
//! host with NAT gives the tasks the outside world; workflows cannot reach
//! each other's.
//!
//! Made with `ip` (iproute2) and `iptables`, kept idle for the next
//! workflow when one's last attempt here ends, removed when the agent
//! exits. Where they cannot be made (no root, no `ip`), tasks run on the
//! host's network, as before, and their log says so.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmo_runtime::TaskNetwork;

use crate::hosts::HostsFile;

/// Addresses of the veth pairs: a /30 per workflow out of this /10.
const POOL_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
const POOL_MASK: &str = "100.64.0.0/10";
/// The resolver tasks are told about, on their loopback.
const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
/// Networks kept ready for the next workflows: made again only when more
/// run at once than before.
const IDLE_MAX: usize = 16;
/// How often a network's threads look whether it is being removed.
const WAKE_EVERY: Duration = Duration::from_millis(500);

/// The networks of the workflows that run here. A network whose workflow
/// has no attempt left here is kept idle and given to the next workflow
/// (its names reset): making one costs two `ip` runs, taking one nothing.
#[derive(Default)]
pub struct Networks {
    state: Mutex<State>,
    /// The NAT and isolation rules are in place.
    iptables_done: AtomicBool,
}

#[derive(Default)]
struct State {
    assigned: HashMap<String, Arc<WorkflowNet>>,
    /// With the workflow that used each last (it gets it back if it can).
    idle: Vec<(Arc<WorkflowNet>, String)>,
}

pub struct WorkflowNet {
    name: String,
    slot: u32,
    dir: PathBuf,
    /// The names and their `/etc/hosts`; None until the network is made.
    hosts: Arc<Mutex<Option<HostsFile>>>,
    /// Attempts using it (changed under `Networks::state`).
    users: Mutex<usize>,
    stop: Arc<AtomicBool>,
}

impl Networks {
    /// The network of `workflow` for one more attempt of it (an idle one, or
    /// a new one), with `names` resolvable in it; Err says why there is none.
    pub fn join(
        &self,
        workflow: &str,
        names: &[String],
        server_port: Option<u16>,
        state_dir: &Path,
    ) -> Result<(Arc<WorkflowNet>, TaskNetwork), String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let net = match state.assigned.get(workflow) {
            Some(net) => net.clone(),
            None => {
                let again = state.idle.iter().position(|(_, last)| last == workflow);
                let net = match again.or_else(|| state.idle.len().checked_sub(1)) {
                    Some(i) => {
                        let (net, last) = state.idle.remove(i);
                        if last != workflow {
                            net.reset_names()?;
                        }
                        net
                    }
                    None => {
                        // Free of this agent's networks and of every address
                        // the host has (other agents', leftovers).
                        let taken = host_slots();
                        let used: Vec<u32> = state
                            .assigned
                            .values()
                            .chain(state.idle.iter().map(|(n, _)| n))
                            .map(|n| n.slot)
                            .collect();
                        let slot = (0..(1u32 << 20))
                            .find(|s| !taken.contains(s) && !used.contains(s))
                            .ok_or("no network addresses left")?;
                        let net = Arc::new(WorkflowNet::create(slot, state_dir, server_port)?);
                        if !self.iptables_done.swap(true, Ordering::SeqCst) {
                            egress_rules();
                        }
                        net
                    }
                };
                state.assigned.insert(workflow.to_string(), net.clone());
                net
            }
        };
        net.add_names(names)?;
        *net.users.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let spec = TaskNetwork {
            netns: PathBuf::from(format!("/run/netns/{}", net.name)),
            hosts: net.hosts_path(),
            resolv: net.dir.join("resolv.conf"),
        };
        Ok((net, spec))
    }

    /// Removes the networks an agent of `state_dir` left behind when it was
    /// killed: each has its directory under `net/`, made before the network
    /// and removed after it. Left, they would stay on the host for good (a
    /// new agent takes free addresses, so other names), each a network
    /// namespace, a veth pair and a mount every sandbox copies.
    pub fn remove_leftovers(state_dir: &Path) {
        let Ok(entries) = std::fs::read_dir(state_dir.join("net")) else {
            return;
        };
        let mut commands = String::new();
        let mut dirs = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hash) = name.strip_prefix("osmo-") else {
                continue;
            };
            if hash.len() != 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            commands.push_str(&format!("netns del {name}\nlink del osmoh{hash}\n"));
            dirs.push(entry.path());
        }
        if commands.is_empty() {
            return;
        }
        // Forced: one already gone (a host rebooted since) stops nothing.
        if let Err(e) = run_batch(&[], &commands, true) {
            eprintln!("osmo agent: cannot remove the networks of a killed agent: {e}");
            return;
        }
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Removes every network (the agent is exiting).
    pub fn remove_all(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let assigned: Vec<Arc<WorkflowNet>> = state.assigned.drain().map(|(_, n)| n).collect();
        for net in assigned.iter().chain(
            state
                .idle
                .drain(..)
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
                .iter(),
        ) {
            net.remove();
        }
    }

    /// An attempt of `net`'s workflow ended: with its workflow's last here,
    /// the network goes idle, for the next workflow (or this one again).
    pub fn leave(&self, workflow: &str, net: &Arc<WorkflowNet>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let left = {
            let mut users = net.users.lock().unwrap_or_else(|e| e.into_inner());
            *users = users.saturating_sub(1);
            *users
        };
        if left > 0
            || !state
                .assigned
                .get(workflow)
                .is_some_and(|n| Arc::ptr_eq(n, net))
        {
            return;
        }
        state.assigned.remove(workflow);
        state.idle.push((net.clone(), workflow.to_string()));
        if state.idle.len() > IDLE_MAX {
            let (oldest, _) = state.idle.remove(0);
            drop(state);
            oldest.remove();
        }
    }
}

/// The /30 blocks of the pool the host's interfaces use now (`getifaddrs`,
/// no process to start).
fn host_slots() -> Vec<u32> {
    let mut slots = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below; entries are read as the
    // libc documents them (an AF_INET address is a sockaddr_in).
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return slots;
        }
        let mut at = list;
        while !at.is_null() {
            let addr = (*at).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                let a = u32::from_be(sin.sin_addr.s_addr);
                if a & 0xffc0_0000 == POOL_BASE {
                    slots.push((a - POOL_BASE) / 4);
                }
            }
            at = (*at).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    slots
}

/// `ip [options] -batch -` with `commands` on its standard input; `force`
/// goes on past a failing command.
fn run_batch(options: &[&str], commands: &str, force: bool) -> Result<(), String> {
    let mut args: Vec<&str> = options.to_vec();
    if force {
        args.push("-force");
    }
    args.extend(["-batch", "-"]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(commands.as_bytes())
            .map_err(|e| format!("cannot talk to ip: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ip failed: {e}"))?;
    if !out.status.success() && !force {
        return Err(format!(
            "ip {}: {}",
            commands.lines().next().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// NAT for the tasks' traffic out; none between workflows. Best effort: a
/// host without iptables still isolates workflows, without the outside.
fn egress_rules() {
    let rules: [&[&str]; 4] = [
        &[
            "-t",
            "nat",
            "POSTROUTING",
            "-s",
            POOL_MASK,
            "!",
            "-d",
            POOL_MASK,
            "-j",
            "MASQUERADE",
        ],
        &[
            "FORWARD",
            "-d",
            POOL_MASK,
            "-m",
            "state",
            "--state",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ],
        &["FORWARD", "-s", POOL_MASK, "-j", "ACCEPT"],
        // First of all: nothing from one workflow to another.
        &["FORWARD", "-s", POOL_MASK, "-d", POOL_MASK, "-j", "DROP"],
    ];
    for rule in rules {
        let (table, rest): (&[&str], &[&str]) = if rule[0] == "-t" {
            (&rule[..2], &rule[2..])
        } else {
            (&[], rule)
        };
        let check: Vec<&str> = table
            .iter()
            .copied()
            .chain(["-C"])
            .chain(rest.iter().copied())
            .collect();
        if run("iptables", &check).is_ok() {
            continue;
        }
        let insert: Vec<&str> = table
            .iter()
            .copied()
            .chain(["-I"])
            .chain(rest.iter().copied())
            .collect();
        if let Err(e) = run("iptables", &insert) {
            eprintln!("osmo agent: tasks may not reach outside their workflow: {e}");
        }
    }
}

impl WorkflowNet {
    fn create(
        slot: u32,
        state_dir: &Path,
        server_port: Option<u16>,
    ) -> Result<WorkflowNet, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the agent is not root".into());
        }
        // Unique per agent (its state dir) and slot: servers share hosts.
        let hash = fnv(&format!("{}\0{slot}", state_dir.display()));
        let name = format!("osmo-{hash:08x}");
        let host_if = format!("osmoh{hash:08x}");
        if Path::new("/run/netns").join(&name).exists() {
            // A leftover of an agent of this state dir that was killed.
            let _ = run_batch(
                &[],
                &format!("netns del {name}\nlink del {host_if}\n"),
                true,
            );
        }
        // Its directory first: it is the record by which a next agent of
        // this state dir removes the network if this one is killed.
        let dir = state_dir.join("net").join(&name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // The way out: a veth pair, the host's end routed and NATed. Two
        // `ip -batch` runs: process starts are most of the cost.
        let base = POOL_BASE + slot * 4;
        let host_ip = Ipv4Addr::from(base + 1);
        let task_ip = Ipv4Addr::from(base + 2);
        run_batch(
            &[],
            &format!(
                "netns add {name}\n\
                 link add {host_if} type veth peer name eth0 netns {name}\n\
                 addr add {host_ip}/30 dev {host_if}\n\
                 link set {host_if} up\n"
            ),
            false,
        )
        .inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        let net = WorkflowNet {
            name: name.clone(),
            slot,
            dir,
            hosts: Arc::new(Mutex::new(None)),
            users: Mutex::new(0),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let made = (|| {
            run_batch(
                &["-n", &name],
                &format!(
                    "link set lo up\n\
                     addr add {task_ip}/30 dev eth0\n\
                     link set eth0 up\n\
                     route add default via {host_ip}\n"
                ),
                false,
            )?;
            std::fs::write(
                net.dir.join("resolv.conf"),
                format!("nameserver {RESOLVER}\noptions ndots:0\n"),
            )
            .map_err(|e| e.to_string())?;
            net.reset_names()?;
            net.serve(server_port)
        })();
        if let Err(e) = made {
            net.remove();
            return Err(e);
        }
        Ok(net)
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    fn lock_hosts(&self) -> std::sync::MutexGuard<'_, Option<HostsFile>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new `/etc/hosts` with no names (for a new network, or another workflow).
    fn reset_names(&self) -> Result<(), String> {
        let path = self.hosts_path();
        let fresh = HostsFile::create(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        *self.lock_hosts() = Some(fresh);
        Ok(())
    }

    fn add_names(&self, names: &[String]) -> Result<(), String> {
        match self.lock_hosts().as_mut() {
            Some(hosts) => hosts.add(names.iter().map(String::as_str)),
            None => Err("the network's names are not set up".into()),
        }
    }

    /// Sockets inside the namespace (made by a thread that enters it):
    /// the resolver, and a forwarder to the server's port on loopback.
    fn serve(&self, server_port: Option<u16>) -> Result<(), String> {
        let (udp, tcp) = in_netns(&self.name, move || {
            let udp = UdpSocket::bind((RESOLVER, 53))?;
            let tcp = match server_port {
                Some(port) => Some(TcpListener::bind((Ipv4Addr::LOCALHOST, port))?),
                None => None,
            };
            Ok((udp, tcp))
        })?;
        udp.set_read_timeout(Some(WAKE_EVERY))
            .map_err(|e| e.to_string())?;
        let stop = self.stop.clone();
        let hosts = self.hosts.clone();
        std::thread::spawn(move || resolve(udp, &hosts, &stop));
        if let (Some(listener), Some(port)) = (tcp, server_port) {
            let stop = self.stop.clone();
            accept_timeout(&listener, WAKE_EVERY)?;
            std::thread::spawn(move || forward(listener, port, &stop));
        }
        Ok(())
    }

    fn remove(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let host_if = self.name.replace("osmo-", "osmoh");
        let _ = run_batch(
            &[],
            &format!("netns del {}\nlink del {host_if}\n", self.name),
            true,
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread inside network namespace `name` (sockets it makes
/// stay there).
fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || -> Result<T, String> {
        let ns: OwnedFd = std::fs::File::open(&path)
            .map_err(|e| format!("cannot open {path}: {e}"))?
            .into();
        // SAFETY: setns on this thread only, with an open namespace descriptor.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot enter {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        f().map_err(|e| format!("in {path}: {e}"))
    })
    .join()
    .map_err(|_| "the network thread panicked".to_string())?
}

/// The workflow's resolver: its tasks' names are their loopback addresses;
/// other names go to the host's resolver, answered back as they come.
fn resolve(socket: UdpSocket, hosts: &Mutex<Option<HostsFile>>, stop: &AtomicBool) {
    let upstream = upstream_resolver();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let query = &buf[..n];
        let answer = match dns::question(query) {
            Some((name, qtype)) => match address_of(hosts, &name) {
                Some(ip) => Some(dns::answer(query, qtype, ip)),
                None => upstream.and_then(|up| relay(query, up)),
            },
            None => None,
        };
        if let Some(reply) = answer {
            let _ = socket.send_to(&reply, from);
        }
    }
}

/// The address the workflow's network gave the task `name`.
fn address_of(hosts: &Mutex<Option<HostsFile>>, name: &str) -> Option<Ipv4Addr> {
    let hosts = hosts.lock().unwrap_or_else(|e| e.into_inner());
    hosts.as_ref()?.address(name)
}

/// The first `nameserver` of the host's `/etc/resolv.conf`.
fn upstream_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    let ip = text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == "nameserver").then(|| parts.next())?
    })?;
    Some(SocketAddr::new(ip.parse().ok()?, 53))
}

fn relay(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    socket.send_to(query, upstream).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Connections to the server's port inside the namespace, carried to the
/// server on the host's loopback.
fn forward(listener: TcpListener, port: u16, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        // An error is the wake-up timeout (to look at `stop`), or a
        // connection that went away before it was taken.
        if let Ok((inside, _)) = listener.accept() {
            // Not the listener's wake-up timeout: a quiet stream (logs
            // followed) may wait as long as it likes.
            let _ = inside.set_read_timeout(None);
            std::thread::spawn(move || {
                if let Ok(outside) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                    osmo_runtime::relay::pipe(inside, outside);
                }
            });
        }
    }
}

/// `accept` gives up after `every` (Linux honours `SO_RCVTIMEO` there).
fn accept_timeout(listener: &TcpListener, every: Duration) -> Result<(), String> {
    let tv = libc::timeval {
        tv_sec: every.as_secs() as libc::time_t,
        tv_usec: every.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a valid descriptor and a timeval of the right size.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!(
            "cannot set a timeout on the forwarder: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// FNV-1a of a workflow ID: short, stable interface names.
fn fnv(text: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// Just enough DNS (RFC 1035) to answer `A` questions about task names.
mod dns {
    use std::net::Ipv4Addr;

    /// The first question's name and type.
    pub fn question(packet: &[u8]) -> Option<(String, u16)> {
        if packet.len() < 12 || u16::from_be_bytes([packet[4], packet[5]]) == 0 {
            return None;
        }
        let mut labels = Vec::new();
        let mut i = 12;
        loop {
            let len = *packet.get(i)? as usize;
            i += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                return None; // compression is not used in questions
            }
            labels.push(String::from_utf8_lossy(packet.get(i..i + len)?).into_owned());
            i += len;
        }
        let qtype = u16::from_be_bytes([*packet.get(i)?, *packet.get(i + 1)?]);
        Some((labels.join("."), qtype))
    }

    /// A reply to `query`: `ip` for type A, no data for other types.
    pub fn answer(query: &[u8], qtype: u16, ip: Ipv4Addr) -> Vec<u8> {
        let mut end = 12;
        while end < query.len() && query[end] != 0 {
            end += 1 + query[end] as usize;
        }
        let question_end = (end + 5).min(query.len());
        let mut reply = Vec::with_capacity(question_end + 16);
        reply.extend_from_slice(&query[..2]); // the query's id
        reply.push(0x84 | (query[2] & 0x01)); // response, authoritative, RD as asked
        reply.push(0x80); // recursion available, no error
        reply.extend_from_slice(&[0, 1, 0, u8::from(qtype == 1), 0, 0, 0, 0]);
        reply.extend_from_slice(&query[12..question_end]);
        if qtype == 1 {
            // A pointer to the question's name (offset 12); A, IN, TTL 5 s, 4 bytes.
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
            reply.extend_from_slice(&ip.octets());
        }
        reply
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn query(name: &str, qtype: u16) -> Vec<u8> {
            let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in name.split('.') {
                q.push(label.len() as u8);
                q.extend_from_slice(label.as_bytes());
            }
            q.push(0);
            q.extend_from_slice(&qtype.to_be_bytes());
            q.extend_from_slice(&[0, 1]);
            q
        }

        #[test]
        fn a_questions_get_the_address() {
            let q = query("server", 1);
            assert_eq!(question(&q), Some(("server".to_string(), 1)));
            let r = answer(&q, 1, Ipv4Addr::new(127, 1, 0, 2));
            assert_eq!(&r[..2], &[0x12, 0x34], "same id");
            assert_eq!(r[2] & 0x80, 0x80, "a response");
            assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
            assert_eq!(&r[r.len() - 4..], &[127, 1, 0, 2]);
            let aaaa = answer(&query("server", 28), 28, Ipv4Addr::LOCALHOST);
            assert_eq!(u16::from_be_bytes([aaaa[6], aaaa[7]]), 0, "no AAAA");
            assert_eq!(question(&[0; 5]), None);
        }
    }
}
