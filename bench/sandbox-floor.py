#!/usr/bin/env python3
"""What the kernel alone charges for a sandbox shaped like the host sandbox's, with
no osmo around it, against `seq N | xargs -P<cpus> -n1 true` in the same command:

    python3 bench/sandbox-floor.py              # 2,000 tasks, 3 rounds
    python3 bench/sandbox-floor.py --n 5000 --rounds 5

Each task is `/usr/bin/true` run by `crates/runtime/examples/sandbox_floor.rs`
(built here in release), P at once, in a child with a new mount and PID namespace:

  namespace  the namespaces only (the prototype issue 9 cites);
  overlay    the host sandbox's root: an overlay of / with its writable layer on a
             tmpfs, the host's other file systems bound in read-only (the same
             ones the host sandbox binds), a new /proc, a private /dev/shm,
             pivot_root and the old root detached;
  template   the same root made once for each of the P slots, in a mount
             namespace of its own that each task copies (osmo's kept roots);
  warm       that root with one init per slot that stays and runs task after
             task (a fresh /dev/shm each, whatever a task left killed): what
             reusing a sandbox's namespaces for the next attempt costs at least;
  readonly   a read-only recursive bind of / as the root instead (no overlay);
  runtime    osmo's runtime itself: run_attempt on P threads through the sandbox
             spawner, as the node agent runs attempts (output directory, hidden
             directories, `nobody`), without the agent, the server or a network.

All but `runtime` have no logs, IPC, files, network, cgroup or user change: a floor
for the host sandbox, not a model of an attempt. Prints tasks per second, the ratio to xargs and the
machine's busy CPU time per task (all processes and the kernel's threads, from
/proc/stat), the rounds alternating. Needs root.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def busy_cpu_seconds():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def submounts(skip):
    """The host's mount points the host sandbox binds into each task's root: the
    topmost ones other than /, outside `skip`, without namespace handles."""
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            point = left.split(" ")[4].encode().decode("unicode_escape")
            fstype = right.split(" ")[0]
            if fstype == "nsfs" or point in ("/", "/run/netns", "/var/run/netns"):
                continue
            if any(point == s or point.startswith(s.rstrip("/") + "/") for s in skip):
                continue
            points.add(point)
    top = []
    for p in sorted(points):
        if not any(p == t or p.startswith(t + "/") for t in top):
            top.append(p)
    return top


def timed(cmd):
    t0, c0 = time.perf_counter(), busy_cpu_seconds()
    subprocess.run(cmd, shell=isinstance(cmd, str), check=True)
    return time.perf_counter() - t0, busy_cpu_seconds() - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (mount namespaces)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "osmo-runtime",
                    "--example", "sandbox_floor"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target/release/examples/sandbox_floor")
    cpus = os.cpu_count()
    modes = ["namespace", "overlay", "template", "warm", "readonly", "runtime"]
    with tempfile.TemporaryDirectory(prefix="osmo-floor-", dir="/var/tmp") as scratch:
        mounts = submounts(["/proc", "/tmp", scratch])
        print(f"machine: {cpus} CPUs; {args.n} tasks, {cpus} at once; host file systems bound "
              f"in by overlay: {' '.join(mounts) or 'none'}")
        results = {m: [] for m in ["xargs"] + modes}
        for _ in range(args.rounds):
            results["xargs"].append(timed(f"seq {args.n} | xargs -P{cpus} -n1 true"))
            for mode in modes:
                results[mode].append(timed([exe, mode, str(args.n), str(cpus), scratch] + mounts))
    base = statistics.mean(args.n / t for t, _ in results["xargs"])
    print(f"{'':10} {'tasks/s':>8} {'ratio':>6} {'CPU ms/task':>12}")
    for name, runs in results.items():
        rate = statistics.mean(args.n / t for t, _ in runs)
        cpu = statistics.mean(c * 1000 / args.n for _, c in runs)
        print(f"{name:10} {rate:8.0f} {rate / base:6.2f} {cpu:12.2f}")


if __name__ == "__main__":
    main()
