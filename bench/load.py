#!/usr/bin/env python3
"""Concurrent clients submitting, querying and reading logs against one server,
with a baseline measured in the same command:

    python3 bench/load.py                                   # 50 clients, 60 s
    python3 bench/load.py --clients 10 --seconds 20 --osmo target/release/osmo

Each client holds one keep-alive HTTP connection and loops without think time
until the deadline: submit a one-task workflow (`sh -c 'echo hi'`), GET one of
its workflows, GET the list (limit=20), GET the logs of one of its workflows.
An error is an exception (the client then reconnects), a non-2xx status, or a
body that is not the JSON expected. Targets (the issue's): zero errors, overall
p99 under 100 ms; the exit status is 1 if either is missed. The baseline is the
same clients on GET /api/health, the cheapest request, for --baseline-seconds
first; the mix's throughput is printed as a ratio to it. The clients are Python
threads on the same machine, so their own time is in every latency: the
baseline shows that floor. The server (embedded SQLite store, local backend,
host sandbox) runs in a temporary directory and is stopped at the end; --keep
leaves the directory and its server.log. Needs root (the sandbox).
"""

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SPEC = ("workflow:\n  name: load\n  tasks:\n"
        "  - {name: t, image: ubuntu, command: [sh, -c, 'echo hi']}\n")
SUBMIT = json.dumps({"file": SPEC, "set_variables": []}).encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, osmo, keep):
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix="osmo-bench-")
        self.port = free_port()
        config = os.path.join(self.dir, "config.yaml")
        with open(config, "w") as f:
            # All clients share one address here, while the rate limit is per
            # address: it stands for 50 users on 50 machines, so it is off.
            f.write("pools:\n  default:\n    backend: local\n"
                    "rate_limit: {requests_per_second: 0}\n")
        self.log_path = os.path.join(self.dir, "server.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [osmo, "server", "--config", config, "--data-dir", os.path.join(self.dir, "data"),
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, NO_COLOR="1"))  # a plain log, for the WARN grep and for reading
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break  # e.g. the port was taken between free_port() and the bind
            ok, _, _ = Client(self.port).call("GET", "/api/health", "status")
            if ok:
                return
            time.sleep(0.05)
        self.stop()
        raise SystemExit("the server did not come up; see " + self.log_path)

    def finished(self):
        """Workflows finished so far, from /metrics: submits are taken far faster
        than the tasks run, so the intake rate alone would flatter the server."""
        ok, _, text = Client(self.port).call("GET", "/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("osmo_workflows_finished_total")) if ok else float("nan")

    def warnings(self):
        """The server log's WARN and ERROR lines (read before stop() removes it)."""
        with open(self.log_path, errors="replace") as f:
            return [line.rstrip() for line in f if "WARN" in line or "ERROR" in line]

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """One keep-alive connection; a request that raises drops it, and the next
    request opens a new one (the failure is counted as an error)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def call(self, method, path, key=None, body=None):
        """-> (ok, ms, parsed JSON or text or an error message). With `key`,
        the body must be a JSON object holding it; without, any text will do."""
        try:
            if self.conn is None:
                # Connect outside the timed part: the first request of a client
                # measures the server, not the TCP handshake.
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.connect()
            t0 = time.perf_counter()
            headers = {"content-type": "application/json"} if body else {}
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
            ms = (time.perf_counter() - t0) * 1000
        except Exception as e:
            if self.conn:
                self.conn.close()
            self.conn = None
            return False, float("nan"), f"{method} {path}: {e!r}"
        if not 200 <= resp.status < 300:
            return False, ms, f"{method} {path}: {resp.status} {data[:200]!r}"
        if key is None:
            return True, ms, data.decode(errors="replace")
        try:
            doc = json.loads(data)
        except ValueError:
            return False, ms, f"{method} {path}: not JSON: {data[:200]!r}"
        if not isinstance(doc, dict) or key not in doc:
            return False, ms, f"{method} {path}: no {key!r} in {data[:200]!r}"
        return True, ms, doc


class Record:
    """One client's results, merged after the run (no lock on the hot path)."""

    def __init__(self):
        self.ms = {}      # kind -> latencies of the requests that succeeded
        self.errors = {}  # kind -> count
        self.samples = []  # the first few error messages, to print

    def add(self, kind, result):
        ok, ms, what = result
        if ok:
            self.ms.setdefault(kind, []).append(ms)
        else:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if len(self.samples) < 3:
                self.samples.append(what)
        return what if ok else None


def health_client(port, deadline, _seed):
    c, rec = Client(port), Record()
    while time.perf_counter() < deadline:
        rec.add("health", c.call("GET", "/api/health", "status"))
    return rec


def mix_client(port, deadline, seed):
    c, rec, mine = Client(port), Record(), []
    rng = random.Random(seed)
    while time.perf_counter() < deadline:
        doc = rec.add("submit", c.call("POST", "/api/pool/default/workflow", "name", SUBMIT))
        if doc:
            mine.append(doc["name"])
        if not mine:
            continue
        # A random one of its own, not always the newest: old (finished, from the
        # store) and new (live, maybe still pending) documents both get read.
        rec.add("get", c.call("GET", f"/api/workflow/{rng.choice(mine)}", "status"))
        rec.add("list", c.call("GET", "/api/workflow?limit=20", "workflows"))
        rec.add("logs", c.call("GET", f"/api/workflow/{rng.choice(mine)}/logs"))
    return rec


def run(clients, seconds, fn, port):
    """Starts `clients` clients together; -> (merged Record, elapsed seconds)."""
    merged = Record()
    with cf.ThreadPoolExecutor(clients) as ex:
        t0 = time.perf_counter()
        futures = [ex.submit(fn, port, t0 + seconds, i) for i in range(clients)]
        for f in futures:
            rec = f.result()
            for kind, ms in rec.ms.items():
                merged.ms.setdefault(kind, []).extend(ms)
            for kind, n in rec.errors.items():
                merged.errors[kind] = merged.errors.get(kind, 0) + n
            merged.samples += rec.samples[:3 - len(merged.samples)]
        # The clients finish the request under way at the deadline: count it.
        elapsed = time.perf_counter() - t0
    return merged, elapsed


def pct(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))] if sorted_ms else float("nan")


def row(kind, ms, errors):
    ms = sorted(ms)
    print(f"{kind:<12} {len(ms) + errors:>8} {errors:>7} {pct(ms, 0.5):>8.1f} "
          f"{pct(ms, 0.99):>8.1f} {(ms[-1] if ms else float('nan')):>8.1f}")
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--baseline-seconds", type=float, default=5)
    ap.add_argument("--osmo", default="target/release/osmo")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    osmo = os.path.abspath(args.osmo)
    print(f"machine: {os.cpu_count()} CPUs; osmo {osmo}; {args.clients} clients, "
          f"mix {args.seconds:g} s, baseline {args.baseline_seconds:g} s", flush=True)
    server = Server(osmo, args.keep)
    try:
        base, base_s = run(args.clients, args.baseline_seconds, health_client, server.port)
        mix, mix_s = run(args.clients, args.seconds, mix_client, server.port)
        finished, warnings = server.finished(), server.warnings()
    finally:
        server.stop()

    print(f"\n{'kind':<12} {'requests':>8} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    row("health", base.ms.get("health", []), base.errors.get("health", 0))
    print("-- mix")
    for kind in ("submit", "get", "list", "logs"):
        row(kind, mix.ms.get(kind, []), mix.errors.get(kind, 0))
    errors = sum(mix.errors.values())
    every = row("all", [m for ms in mix.ms.values() for m in ms], errors)

    base_rps = (len(base.ms.get("health", [])) + sum(base.errors.values())) / base_s
    mix_rps = (len(every) + errors) / mix_s
    submitted = len(mix.ms.get("submit", []))
    print(f"\nbaseline (GET /api/health): {base_rps:.0f} requests/s")
    print(f"mix: {mix_rps:.0f} requests/s (ratio to the baseline {mix_rps / base_rps:.2f}); "
          f"{submitted / mix_s * 60:.0f} workflows submitted per minute ({submitted} in {mix_s:.1f} s), "
          f"{finished:.0f} of them finished by the end")
    for what in base.samples + mix.samples:
        print(f"error: {what}")
    print(f"server log: {len(warnings)} WARN/ERROR lines"
          + (f" (kept in {server.dir})" if args.keep else ""))
    for line in warnings[:5]:
        print(f"  {line}")

    p99 = pct(every, 0.99)
    held_errors, held_p99 = errors == 0, p99 < 100
    print(f"\ntarget zero errors: {'held' if held_errors else 'MISSED'} ({errors} errors)")
    print(f"target p99 < 100 ms: {'held' if held_p99 else 'MISSED'} (p99 {p99:.1f} ms)")
    return 0 if held_errors and held_p99 else 1


if __name__ == "__main__":
    sys.exit(main())
