#!/usr/bin/env python3
"""Service benchmarks, one command each, each printing its figures and the
baseline or target it is read against (docs/performance.md keeps the latest):

    python3 bench/service.py data        # 1,000 tasks writing {{output}}, read downstream
    python3 bench/service.py many        # 1,000 one-task workflows from 8 clients
    python3 bench/service.py retry       # failing exit -> replacement's command, group restart
    python3 bench/service.py footprint   # RSS with 100,000 queued tasks, a 10,000-task query,
                                         # submit-to-running on an idle server

Options: --osmo PATH (default target/release/osmo), --n N to change the main size.
Each runs its own server (embedded SQLite store, local backend, host sandbox) in
a temporary directory under /var/tmp (OSMO_BENCH_DIR=DIR puts it in DIR, a tmpfs
say, to see what the disk costs) and stops it at the end. Needs root (the sandbox).
On an ext4 without a journal (this VM's), every new inode skips those freed in
the last 60-300 s: a run right after another's data directory was removed pays
for it (docs/performance.md, stop 16).
"""

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
from datetime import datetime, timezone

# The server's data directory lives outside /tmp, as its default (./osmo-data)
# does: a task's /tmp is private, so a data directory below /tmp makes every
# attempt build its output's path inside the task's /tmp as mount points.
DATA_PARENT = os.environ.get("OSMO_BENCH_DIR", "/var/tmp")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each client thread keeps one connection to the server (HTTP/1.1 keep-alive),
# as a client library's session does (bench/load.py's clients too): a new
# connection per request cost this harness's clients more CPU than the
# server spent on the submits, on the same 2 CPUs (stop 18).
_kept = threading.local()


def request(method, url, body=None, timeout=600):
    """The JSON answer to one request on this thread's kept connection; an
    HTTPError for a status of 400 or more, as urllib raises."""
    return json.loads(request_bytes(method, url, body, timeout))


def request_bytes(method, url, body=None, timeout=600):
    """The answer's body to one request, as [`request`]'s, not parsed."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"content-type": "application/json"} if body is not None else {}
    conns = _kept.__dict__.setdefault("conns", {})
    while True:
        kept = conns.get(parts.netloc)
        conn = kept or http.client.HTTPConnection(parts.netloc, timeout=timeout)
        conns[parts.netloc] = conn
        conn.timeout = timeout
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            del conns[parts.netloc]
            # Only a kept connection the server has closed meanwhile is tried
            # again, on a new one; a new connection's failure is the answer
            # (a submit is never sent twice over connections that worked).
            if kept is None:
                raise
            continue
        if resp.status >= 400:
            raise urllib.error.HTTPError(url, resp.status, data.decode(errors="replace"),
                                         resp.headers, None)
        return data


def get(url, timeout=120):
    return request("GET", url, timeout=timeout)


def post(url, body):
    return request("POST", url, json.dumps(body).encode())


def ts(text):
    """An API time (UTC, with or without a zone suffix) in seconds."""
    text = text.rstrip("Z")
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


class Server:
    def __init__(self, osmo, pool_extra=""):
        self.dir = tempfile.TemporaryDirectory(prefix="osmo-bench-", dir=DATA_PARENT)
        work = self.dir.name
        self.url = f"http://127.0.0.1:{free_port()}"
        config = os.path.join(work, "config.yaml")
        with open(config, "w") as f:
            f.write("pools:\n  default:\n    backend: local\n" + pool_extra)
        self.log = open(os.path.join(work, "server.log"), "w")
        self.proc = subprocess.Popen(
            [osmo, "server", "--config", config, "--data-dir", os.path.join(work, "data"),
             "--listen", self.url.removeprefix("http://")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                get(self.url + "/api/health")
                return
            except Exception:
                time.sleep(0.05)
        raise SystemExit("the server did not come up")

    def submit(self, spec, values=()):
        return post(self.url + "/api/pool/default/workflow",
                    {"file": spec, "set_variables": list(values)})["name"]

    def status(self, wf):
        rows = get(f"{self.url}/api/workflow?name={wf.rsplit('-', 1)[0]}&limit=1000")["workflows"]
        row = next((r for r in rows if r["name"] == wf), None)
        return row["status"] if row else None

    def wait(self, wf, timeout=1800):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status(wf)
            if status not in (None, "PENDING", "RUNNING"):
                return status
            time.sleep(0.02)
        raise SystemExit(f"{wf} did not finish within {timeout} s")

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        # The node agent runs in a session of its own (tasks outlive a server
        # restart) and exits once none runs: waited for, so that no run leaves
        # a task, a sandbox or a network behind for the next.
        try:
            with open(os.path.join(self.dir.name, "data", "agent", "agent.pid")) as f:
                agent = int(f.read())
        except (OSError, ValueError):
            agent = None
        deadline = time.time() + 30
        while agent and os.path.exists(f"/proc/{agent}") and time.time() < deadline:
            time.sleep(0.05)
        if agent and os.path.exists(f"/proc/{agent}"):
            print(f"warning: the node agent {agent} still runs 30 s after its server stopped",
                  file=sys.stderr)
        self.dir.cleanup()


def bench_data(args):
    n = args.n or 1000
    spec = """workflow:
  name: fanin
  tasks:
  {% for i in range(n) %}
  - {name: w{{ i }}, image: ubuntu, command: [sh, -c, 'echo {{ i }} > {{output}}/part']}
  - name: r{{ i }}
    image: ubuntu
    inputs: [{task: w{{ i }}}]
    command: [sh, -c, 'test "$(cat {{input:0}}/part)" = {{ i }}']
  {% endfor %}
"""
    base = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(f"seq {n} | xargs -P{os.cpu_count()} -I{{}} sh -c "
                       f"'echo {{}} > {d}/{{}}; test $(cat {d}/{{}}) = {{}}'", shell=True, check=True)
    base = time.perf_counter() - base
    server = Server(args.osmo, f"    max_tasks_per_workflow: {2 * n}\n")
    try:
        t0 = time.perf_counter()
        wf = server.submit(spec, [f"n={n // 2}"])
        status = server.wait(wf)
        took = time.perf_counter() - t0
    finally:
        server.stop()
    print(f"{n} tasks ({n // 2} writers, {n // 2} readers of their output): {status} in {took:.2f} s, "
          f"{n / took:.0f} tasks/s; baseline (the same files through xargs -P{os.cpu_count()}): "
          f"{base:.2f} s; ratio {base / took:.2f}")


def bench_many(args):
    n = args.n or 1000
    spec = "workflow:\n  name: one\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n"
    server = Server(args.osmo)
    try:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as ex:
            ids = list(ex.map(lambda _: server.submit(spec), range(n)))
        submitted = time.perf_counter() - t0
        # One unfinished workflow is asked for, not the list of them: watching
        # costs the server (and this client) the same small answer throughout.
        # (Listing all n every 50 ms took about a tenth of the machine, stop 17;
        # listing the unfinished ones, up to n at first, still cost this client
        # a parse of up to n rows every 50 ms.)
        while get(f"{server.url}/api/workflow?name=one&limit=1"
                  "&statuses=PENDING&statuses=RUNNING")["workflows"]:
            time.sleep(0.05)
        took = time.perf_counter() - t0
        statuses = {}
        for row in rows_of(server, ""):
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    finally:
        server.stop()
    if statuses.get("COMPLETED") != n:
        raise SystemExit(f"not all {n} workflows completed: {statuses}")
    print(f"{n} one-task workflows from 8 clients: submitted in {submitted:.2f} s, all finished in "
          f"{took:.2f} s: {n / took * 60:.0f} workflows per minute (target 20,000; Argo publishes "
          f"270 by default, 2,100 tuned)")


def rows_of(server, query):
    """Every row of the `one` workflows the listing's extra `query` selects, page by page."""
    rows, offset = [], 0
    while True:
        page = get(f"{server.url}/api/workflow?name=one&limit=1000&offset={offset}&{query}")["workflows"]
        rows += page
        if len(page) < 1000:
            return rows
        offset += 1000


def bench_retry(args):
    n = args.n or 1000
    budget = n + 5
    server = Server(args.osmo, f"    max_retry_per_task: {budget}\n")
    try:
        spec = f"""workflow:
  name: retry
  tasks:
  - name: t
    image: ubuntu
    command: [sh, -c, 'if [ "$OSMO_RETRY_ID" -lt {n} ]; then exit 16; fi']
    exitActions: {{RESCHEDULE: "16"}}
"""
        wf = server.submit(spec)
        server.wait(wf)
        doc = get(f"{server.url}/api/workflow/{wf}?verbose=true")
        attempts = sorted(doc["groups"][0]["tasks"], key=lambda a: a["retry_id"])
        gaps = [ts(b["runs"][0]["start_time"]) - ts(a["end_time"])
                for a, b in zip(attempts, attempts[1:]) if a["end_time"] and b["runs"]]
        gaps_ms = sorted(g * 1000 for g in gaps)
        p = lambda q: gaps_ms[min(len(gaps_ms) - 1, int(q * len(gaps_ms)))]
        print(f"retry path over {len(gaps_ms)} retries (failing exit -> replacement's command "
              f"starts): p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms (target p99 < 50 ms)")
        # A group restart: the lead reschedules, the other task restarts in place.
        spec = f"""workflow:
  name: gang
  groups:
  - name: g
    tasks:
    - name: lead
      lead: true
      image: ubuntu
      command: [sh, -c, 'if [ "$OSMO_RETRY_ID" -lt {min(n, 200)} ]; then sleep 0.05; exit 16; fi']
      exitActions: {{RESCHEDULE: "16"}}
    - {{name: other, image: ubuntu, command: [sh, -c, 'sleep 600']}}
"""
        wf = server.submit(spec)
        server.wait(wf)
        doc = get(f"{server.url}/api/workflow/{wf}?verbose=true")
        tasks = doc["groups"][0]["tasks"]
        other = next(t for t in tasks if t["name"] == "other")
        runs = other["runs"]
        leads = sorted((t for t in tasks if t["name"] == "lead"), key=lambda a: a["retry_id"])
        ends = [ts(a["end_time"]) for a in leads[:-1]]
        gaps_ms = sorted((ts(r["start_time"]) - e) * 1000 for r, e in zip(runs[1:], ends))
        if gaps_ms:
            p = lambda q: gaps_ms[min(len(gaps_ms) - 1, int(q * len(gaps_ms)))]
            print(f"group restart over {len(gaps_ms)} lead reschedules (lead's exit -> the "
                  f"restarted sibling's next run): p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")
    finally:
        server.stop()


def bench_footprint(args):
    n = args.n or 100_000
    per = 10_000
    spec = """workflow:
  name: queued
  tasks:
  {% for i in range(n) %}
  - {name: t{{ i }}, image: ubuntu, command: [sleep, "3600"]}
  {% endfor %}
"""
    server = Server(args.osmo, f"    cpu_capacity: 1\n    max_tasks_per_workflow: {per}\n")
    ids = []
    try:
        idle = server.rss_mb()
        for _ in range(n // per):
            ids.append(server.submit(spec, [f"n={per}"]))
        time.sleep(1)
        peak = server.rss_mb()
        # The answer's time (until its last byte is read) is the service's;
        # parsing it is the client's, and Python's JSON parser takes longer
        # than the server: reported apart.
        t0 = time.perf_counter()
        body = request_bytes("GET", f"{server.url}/api/workflow/{ids[0]}?verbose=true")
        t1 = time.perf_counter()
        doc = json.loads(body)
        t2 = time.perf_counter()
        assert sum(len(g["tasks"]) for g in doc["groups"]) == per, "the query names every task"
        print(f"{n} queued tasks in {len(ids)} workflows: server peak RSS {peak:.0f} MB "
              f"(idle {idle:.0f} MB; target < 300 MB); verbose query of a {per}-task workflow "
              f"answered in {(t1 - t0) * 1000:.0f} ms (target < 200 ms; {len(body) / 1e6:.1f} MB), "
              f"parsed by this Python client in {(t2 - t1) * 1000:.0f} ms more")
    finally:
        # Each pool's one CPU runs a `sleep 3600`: cancelled, so the agent ends it and exits.
        for wf in ids:
            post(f"{server.url}/api/workflow/{wf}/cancel", {})
        server.stop()
    server = Server(args.osmo)
    try:
        spec = "workflow:\n  name: quick\n  tasks:\n  - {name: t, image: ubuntu, command: [\"true\"]}\n"
        lat = []
        for _ in range(20):
            t0 = time.time()
            wf = server.submit(spec)
            server.wait(wf)
            doc = get(f"{server.url}/api/workflow/{wf}?verbose=true")
            lat.append((ts(doc["groups"][0]["tasks"][0]["runs"][0]["start_time"]) - t0) * 1000)
        print(f"submit-to-running of one task on an idle server: median {statistics.median(lat):.1f} ms "
              f"over 20 (target < 20 ms)")
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", choices=["data", "many", "retry", "footprint"])
    ap.add_argument("--osmo", default="target/release/osmo")
    ap.add_argument("--n", type=int, default=0)
    args = ap.parse_args()
    args.osmo = os.path.abspath(args.osmo)
    print(f"machine: {os.cpu_count()} CPUs; osmo {args.osmo}")
    {"data": bench_data, "many": bench_many, "retry": bench_retry,
     "footprint": bench_footprint}[args.bench](args)


if __name__ == "__main__":
    sys.exit(main())
