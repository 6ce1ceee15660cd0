#!/usr/bin/env python3
"""One workflow of N trivial tasks (`true`, sandbox on, local backend) against
`seq N | xargs -P<cpus> -n1 true`, run in the same command.

    python3 bench/large-workflow.py                      # sizes 100, 1000, 10000
    python3 bench/large-workflow.py --sizes 100,2000 --osmo target/release/osmo

For each size it prints the time from submit to the workflow's end, the tasks
per second, the xargs baseline measured just before, their ratio (target: at
least 0.6) and the cost per task relative to the smallest size (target: at
most 1.5 at 10,000), then the machine's busy CPU time per task, osmo's and
xargs's (all processes and the kernel's threads: on a VM whose speed varies,
a steadier figure for comparing two builds). The server runs with its embedded SQLite store in a
temporary directory under /var/tmp (OSMO_BENCH_DIR=DIR puts it in DIR, a
tmpfs say, to see what the disk costs); it is stopped at the end. Needs root
(the sandbox).
On an ext4 without a journal (this VM's), every new inode skips those freed in
the last 60-300 s: a run right after another's data directory was removed pays
for it (docs/performance.md, stop 16).
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

# The server's data directory lives outside /tmp, as its default (./osmo-data)
# does: a task's /tmp is private, so a data directory below /tmp makes every
# attempt build its output's path inside the task's /tmp as mount points.
DATA_PARENT = os.environ.get("OSMO_BENCH_DIR", "/var/tmp")

SPEC = """workflow:
  name: wide
  tasks:
  {% for i in range(n) %}
  - name: t{{ i }}
    image: ubuntu
    command: ["true"]
  {% endfor %}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


class Server:
    def __init__(self, osmo, workdir, pool_extra=""):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = os.path.join(workdir, "config.yaml")
        with open(config, "w") as f:
            f.write("pools:\n  default:\n    backend: local\n" + pool_extra)
        self.log = open(os.path.join(workdir, "server.log"), "w")
        self.proc = subprocess.Popen(
            [osmo, "server", "--config", config, "--data-dir", os.path.join(workdir, "data"),
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                get(self.url + "/api/health")
                return
            except Exception:
                time.sleep(0.05)
        raise SystemExit("the server did not come up; see " + self.log.name)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def finished(doc):
    return doc["status"] not in ("PENDING", "RUNNING")


def wait_for(server, wf, timeout):
    """Polls the cheap listing (not the workflow document) until `wf` ends,
    at intervals of 1% of the time so far (10 ms to 200 ms), on one kept-alive
    connection: the end is seen within 1% of the run, and the polling itself
    (the client's CPU and the server's) stays a small part of what is
    measured."""
    start = time.time()
    deadline = start + timeout
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    path = f"/api/workflow?name={wf.rsplit('-', 1)[0]}&limit=1000"
    try:
        while time.time() < deadline:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise SystemExit(f"GET {path}: {response.status} {body[:500]!r}")
            rows = json.loads(body)["workflows"]
            row = next((r for r in rows if r["name"] == wf), None)
            if row and finished(row):
                return row["status"]
            time.sleep(min(0.2, max(0.01, (time.time() - start) / 100)))
    finally:
        conn.close()
    raise SystemExit(f"{wf} did not finish within {timeout} s")


def busy_cpu_seconds():
    """CPU time spent by the whole machine, not idle (all processes, the
    kernel's own threads, interrupts), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_osmo(server, n, timeout):
    """Seconds from submit to end, the status, and the machine's busy CPU
    seconds meanwhile (a steadier figure than the time on a noisy VM)."""
    t0 = time.perf_counter()
    c0 = busy_cpu_seconds()
    wf = post(server.url + "/api/pool/default/workflow",
              {"file": SPEC, "set_variables": [f"n={n}"]})["name"]
    status = wait_for(server, wf, timeout)
    return time.perf_counter() - t0, status, busy_cpu_seconds() - c0


def why_failed(server, n):
    """The first failed task of the last workflow, as the service explains it."""
    rows = get(f"{server.url}/api/workflow?name=wide&limit=1")["workflows"]
    doc = get(f"{server.url}/api/workflow/{rows[0]['name']}?verbose=true")
    for group in doc["groups"]:
        for task in group["tasks"]:
            if task["status"] != "COMPLETED":
                return json.dumps(task)[:2000]
    return doc.get("failure_message") or "no task failed"


def run_xargs(n, cpus):
    t0 = time.perf_counter()
    c0 = busy_cpu_seconds()
    subprocess.run(f"seq {n} | xargs -P{cpus} -n1 true", shell=True, check=True)
    return time.perf_counter() - t0, busy_cpu_seconds() - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--osmo", default="target/release/osmo")
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    osmo = os.path.abspath(args.osmo)
    cpus = os.cpu_count() or 1
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {cpus} CPUs; osmo {osmo}")
    print(f"{'tasks':>7} {'osmo s':>8} {'tasks/s':>9} {'xargs s':>8} {'xargs/s':>9} "
          f"{'ratio':>6} {'per-task vs first':>18} {'CPU ms/task':>12} {'xargs':>6}")
    with tempfile.TemporaryDirectory(prefix="osmo-bench-", dir=DATA_PARENT) as work:
        server = Server(osmo, work, f"    max_tasks_per_workflow: {max(sizes)}\n")
        first_cost = None
        try:
            for n in sizes:
                base, base_cpu = run_xargs(n, cpus)
                took, status, cpu = run_osmo(server, n, args.timeout)
                if status != "COMPLETED":
                    raise SystemExit(f"the workflow of {n} tasks ended {status}: "
                                     f"{why_failed(server, n)}")
                cost = took / n
                first_cost = first_cost or cost
                print(f"{n:>7} {took:>8.2f} {n / took:>9.0f} {base:>8.2f} {n / base:>9.0f} "
                      f"{base / took:>6.2f} {cost / first_cost:>17.2f}x "
                      f"{1000 * cpu / n:>12.2f} {1000 * base_cpu / n:>6.2f}", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
