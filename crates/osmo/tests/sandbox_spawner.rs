//! The agent's sandbox spawner: the inits it forks are the agent's children,
//! a spawner that dies costs no task, and it does not outlive its agent.

mod common;

use std::time::Duration;

use common::*;

const WAITS_FOR_GO: &str = r#"
workflow:
  name: waits
  tasks:
  - name: long
    image: ubuntu
    command: [sh, -c, 'while [ ! -e {{output}}/go ]; do sleep 0.02; done; echo done']
"#;

const QUICK: &str = r#"
workflow:
  name: quick
  tasks:
  - name: a
    image: ubuntu
    command: ["true"]
  - name: b
    image: ubuntu
    command: [sh, -c, 'echo from b']
"#;

/// Submits [`WAITS_FOR_GO`] and waits for its task to run: its id, and the agent's pid.
fn run_until_go(server: &Server) -> (String, i32) {
    let id = server.submit(WAITS_FOR_GO);
    wait_for(Duration::from_secs(20), "the task to run", || {
        (task(&server.workflow(&id), "long", 0)["status"] == "RUNNING").then_some(())
    });
    (id, server.agent_pid().expect("the agent wrote its pid"))
}

#[test]
fn the_spawner_forks_inits_as_the_agents_children_and_its_death_costs_no_task() {
    let server = Server::start(local_pool());
    let (id, agent) = run_until_go(&server);
    let spawners = children_named(agent, "osmo-spawner");
    assert_eq!(spawners.len(), 1, "one spawner: {:?}", children(agent));
    assert_eq!(
        children_named(agent, "osmo-init").len(),
        1,
        "the init is the agent's child (forked by the spawner as a sibling): {:?}",
        children(agent)
    );

    // The spawner dies: the running task goes on, and later sandboxes are forked directly.
    // SAFETY: signalling a process of this test's server.
    unsafe { libc::kill(spawners[0], libc::SIGKILL) };
    wait_for(Duration::from_secs(10), "the spawner to be gone", || {
        children_named(agent, "osmo-spawner")
            .is_empty()
            .then_some(())
    });
    let quick = server.submit(QUICK);
    let doc = server.wait_finished(&quick, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    let output = server.output_dir(&id, "long", 0);
    std::fs::write(output.join("go"), "").unwrap();
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    assert_eq!(server.agent_pid(), Some(agent), "the same agent throughout");
}

/// Whether two processes share their memory (`kcmp(2)`, `KCMP_VM`).
fn same_memory(a: i32, b: i32) -> bool {
    const KCMP_VM: libc::c_long = 1;
    // SAFETY: kcmp compares two processes' kernel objects; it changes nothing.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_VM, 0, 0) };
    assert!(r >= 0, "kcmp: {}", std::io::Error::last_os_error());
    r == 0
}

/// The threads of `pid`.
fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn inits_share_the_spawners_memory_which_keeps_their_plans_while_they_run() {
    let server = Server::start(local_pool());
    let (id, agent) = run_until_go(&server);
    let spawner = children_named(agent, "osmo-spawner");
    let init = children_named(agent, "osmo-init");
    assert_eq!((spawner.len(), init.len()), (1, 1), "{:?}", children(agent));
    assert!(
        same_memory(spawner[0], init[0]),
        "the init shares the spawner's memory: nothing of it is copied"
    );
    assert!(!same_memory(agent, init[0]));

    // Other sandboxes come and go while the first one's init runs on: each
    // plan is freed after its own init only, and the threads that forked
    // them serve again (one per init alive at a time, not one per init).
    for _ in 0..8 {
        let quick = server.submit(QUICK);
        let doc = server.wait_finished(&quick, Duration::from_secs(30));
        assert_eq!(
            doc["status"],
            "COMPLETED",
            "{doc:#}
{}",
            server.log()
        );
    }
    let spawner_threads = threads(spawner[0]);
    // Its own, jemalloc's (a background thread per arena in use), and a
    // worker per init alive at once: 3 here (the long task's, a quick
    // task's and the next one's, set up ahead), one more when an init's end
    // and the next request cross. One worker per init would be 17.
    assert!(
        spawner_threads <= 9,
        "17 sandboxes, at most 3 at a time, took {spawner_threads} threads"
    );
    // The first init still has its plan: it sees the go, and its command ends well.
    std::fs::write(server.output_dir(&id, "long", 0).join("go"), "").unwrap();
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    let (status, logs) = server.get(&format!("/api/workflow/{id}/logs"));
    assert_eq!(status, 200, "{logs}");
    assert!(logs.contains("[stdout] done"), "{logs}");
}

#[test]
fn an_out_of_memory_kill_in_one_sandbox_spares_the_others() {
    // The inits share the spawner's memory, and the kernel's OOM killer
    // kills every process that shares its victim's memory: were an init in
    // its task's memory cgroup, a task filling its memory with files (which
    // no process's size shows, so the init looks the largest) would take
    // every sandbox of the node with it.
    let server = Server::start(local_pool());
    let (id, _agent) = run_until_go(&server);
    let filler = server.submit(
        r#"
workflow:
  name: filler
  resources:
    default: {memory: 64Mi}
  tasks:
  - name: shm
    image: ubuntu
    command: [dd, if=/dev/zero, of=/dev/shm/fill, bs=1M, count=256]
"#,
    );
    let doc = server.wait_finished(&filler, Duration::from_secs(30));
    let other = server.workflow(&id);
    assert_eq!(
        task(&other, "long", 0)["status"],
        "RUNNING",
        "the other sandbox lives on: {other:#}\n{}",
        server.log()
    );
    assert_eq!(
        task(&doc, "shm", 0)["exit_code"],
        3004,
        "the command was the victim, not its init: {doc:#}"
    );
    std::fs::write(server.output_dir(&id, "long", 0).join("go"), "").unwrap();
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(
        task(&doc, "long", 0)["status"],
        "COMPLETED",
        "the other sandbox lives on: {doc:#}\n{}",
        server.log()
    );
}

#[test]
fn the_spawner_ends_with_its_agent() {
    let server = Server::start(local_pool());
    let id = server.submit(QUICK);
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    let agent = server.agent_pid().expect("the agent wrote its pid");
    let spawner = children_named(agent, "osmo-spawner");
    assert_eq!(spawner.len(), 1, "one spawner: {:?}", children(agent));
    // SAFETY: signalling a process of this test's server.
    unsafe { libc::kill(agent, libc::SIGKILL) };
    wait_for(Duration::from_secs(10), "the spawner to end", || {
        (!alive(spawner[0])).then_some(())
    });
    // The next agent runs the next workflow. (It also removes the killed one's
    // network, which a test that ended here left on the host.)
    let id = server.submit(QUICK);
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    let successor = server.agent_pid().expect("the next agent wrote its pid");
    assert_ne!(successor, agent, "a new agent ran it");
}

/// The mount points of `pid`'s mount namespace that hold namespaces (as
/// `ip netns` makes them).
fn namespace_handles(pid: i32) -> Vec<String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.starts_with("nsfs ") || point == "/run/netns").then(|| point.to_string())
        })
        .collect()
}

#[test]
fn sandboxes_copy_no_network_namespace_handles_of_the_host() {
    let server = Server::start(local_pool());
    let (id, agent) = run_until_go(&server);
    // The workflow's network, made after the spawner started: a handle on the host.
    let host = namespace_handles(agent);
    let spawner = children_named(agent, "osmo-spawner");
    let init = children_named(agent, "osmo-init");
    let seen: Vec<(i32, Vec<String>)> = spawner
        .iter()
        .chain(&init)
        .map(|&pid| (pid, namespace_handles(pid)))
        .collect();
    let output = server.output_dir(&id, "long", 0);
    std::fs::write(output.join("go"), "").unwrap();
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    if !host.iter().any(|p| p.starts_with("/run/netns/osmo-")) {
        eprintln!("skipped: no workflow network here (not root, or no `ip`): {host:?}");
        return;
    }
    assert_eq!(spawner.len(), 1, "{:?}", children(agent));
    assert_eq!(init.len(), 1, "{:?}", children(agent));
    for (pid, handles) in seen {
        assert_eq!(handles, Vec::<String>::new(), "in {pid}");
    }
}

/// `mount(2)` for the test's own set-up; panics with the error.
fn mount(source: &str, target: &std::path::Path, fstype: &str, flags: libc::c_ulong) {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (source, target, fstype) = (c(source), c(target.to_str().unwrap()), c(fstype));
    // SAFETY: NUL-terminated strings that live across the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    assert_eq!(
        r,
        0,
        "mount {target:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// Detaches its mounts, last first, however the test ends.
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let c = std::ffi::CString::new(target.to_str().unwrap()).unwrap();
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn a_namespace_handle_the_host_mounts_later_is_kept_out_of_the_next_sandbox() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting needs root");
        return;
    }
    // A shared mount of the host (as `/` is under systemd), below which a
    // handle appears after the spawner has copied the host's table: it
    // propagates into the spawner's namespace, and each sandbox binds the
    // mount (with what is below it) into its root.
    let shared = tempfile::tempdir_in("/var/tmp").unwrap();
    mount("osmo-test", shared.path(), "tmpfs", 0);
    let mut mounted = Unmount(vec![shared.path().to_path_buf()]);
    mount("", shared.path(), "", libc::MS_SHARED);
    let server = Server::start(local_pool());
    let agent = wait_for(Duration::from_secs(20), "the agent", || server.agent_pid());
    wait_for(Duration::from_secs(20), "the spawner", || {
        (!children_named(agent, "osmo-spawner").is_empty()).then_some(())
    });
    let handle = shared.path().join("net");
    std::fs::write(&handle, "").unwrap();
    mount("/proc/self/ns/net", &handle, "", libc::MS_BIND);
    mounted.0.push(handle.clone());

    let (id, agent) = run_until_go(&server);
    let init = children_named(agent, "osmo-init");
    let seen: Vec<Vec<String>> = init.iter().map(|&pid| namespace_handles(pid)).collect();
    let sees_shared = init.iter().all(|&pid| {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .contains(shared.path().to_str().unwrap())
    });
    std::fs::write(server.output_dir(&id, "long", 0).join("go"), "").unwrap();
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    drop(mounted);
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    assert_eq!(init.len(), 1, "{:?}", children(agent));
    assert!(
        sees_shared,
        "the sandbox shows the host's mount at {shared:?}"
    );
    assert_eq!(
        seen,
        [Vec::<String>::new()],
        "the handle below it is not there"
    );
}

#[test]
fn the_command_starts_with_no_signal_ignored_or_blocked() {
    // The spawner's runtime ignores SIGPIPE, and its workers block every
    // signal: the inits it forks reset what it changed, and only that.
    let server = Server::start(local_pool());
    let id = server.submit(
        r#"
workflow:
  name: signals
  tasks:
  - name: t
    image: ubuntu
    command: [cp, /proc/self/status, "{{output}}/status"]
"#,
    );
    let doc = server.wait_finished(&id, Duration::from_secs(30));
    assert_eq!(doc["status"], "COMPLETED", "{doc:#}\n{}", server.log());
    let status = std::fs::read_to_string(server.output_dir(&id, "t", 0).join("status")).unwrap();
    for field in ["SigIgn:", "SigBlk:"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        assert_eq!(
            line.split_whitespace().nth(1),
            Some("0000000000000000"),
            "{line}"
        );
    }
    assert!(
        children_named(server.agent_pid().unwrap(), "osmo-spawner").len() == 1,
        "the task came through the spawner"
    );
}
