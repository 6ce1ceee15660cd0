#!/usr/bin/env bash
# Compares osmo's Slurm backend with bare Slurm on the same work: N one-task workflows
# (default 200) through `osmo server` with a `backend: slurm` pool, against the same N
# commands as `sbatch --wait` jobs. Both sides submit everything at once and wait for all;
# prints both wall times and the ratio (target: at most 1.3).
#
#   scripts/with-slurm.sh bench/slurm-vs-sbatch.sh [N]        # needs target/release/osmo or OSMO=...
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
OSMO=${OSMO:-target/release/osmo}
[ -x "$OSMO" ] || OSMO=target/debug/osmo
OSMO=$(realpath "$OSMO")
if [ -z "${SLURM_CONF:-}" ]; then
    echo "no Slurm cluster: run under scripts/with-slurm.sh" >&2
    exit 2
fi
COMMAND='echo hello; exit 0'

W=$(mktemp -d /tmp/osmo-bench.XXXXXX)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

now() { date +%s.%N; }

# --- bare Slurm: N `sbatch --wait` at once ---
mkdir -p "$W/sbatch"
t0=$(now)
for i in $(seq "$N"); do
    sbatch --wait --quiet --job-name="bench.$i" --output="$W/sbatch/$i.out" --chdir="$W/sbatch" \
        --wrap="$COMMAND" >/dev/null &
done
wait
t_sbatch=$(python3 -c "print(round($(now) - $t0, 3))")

# --- osmo: N one-task workflows at once, through the Slurm backend ---
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'pools:\n  default:\n    backend: slurm\n' >"$W/config.yaml"
"$OSMO" server --config "$W/config.yaml" --data-dir "$W/data" --listen "127.0.0.1:$PORT" >"$W/server.log" 2>&1 &
server_pid=$!
export OSMO_URL="http://127.0.0.1:$PORT"
for _ in $(seq 200); do curl -sf "$OSMO_URL/api/health" >/dev/null && break; sleep 0.05; done
if ! t_osmo=$(python3 - "$OSMO_URL" "$N" "$COMMAND" <<'PY'
import json, sys, time, urllib.request, concurrent.futures as cf
url, n, command = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec = "workflow:\n  name: bench\n  tasks:\n  - name: t\n    image: ubuntu\n    command: [sh, -c, %s]\n" % json.dumps(command)
def post(i):
    req = urllib.request.Request(url + "/api/pool/default/workflow", data=json.dumps({"file": spec}).encode(),
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))["name"]
t0 = time.time()
with cf.ThreadPoolExecutor(16) as ex:
    ids = list(ex.map(post, range(n)))
pending = set(ids)
statuses = {}
while pending:
    time.sleep(0.1)
    doc = json.load(urllib.request.urlopen(url + "/api/workflow?limit=1000"))
    rows = doc["workflows"] if isinstance(doc, dict) else doc
    for w in rows:
        if w["name"] in pending and w["status"] not in ("PENDING", "RUNNING"):
            pending.discard(w["name"]); statuses[w["name"]] = w["status"]
    if time.time() - t0 > 1200:
        sys.exit("osmo: timed out with %d workflow(s) unfinished" % len(pending))
bad = {s for s in statuses.values() if s != "COMPLETED"}
if bad:
    sys.exit("osmo: not all workflows COMPLETED: %s" % bad)
print("%.3f" % (time.time() - t0))
PY
); then
    tail -20 "$W/server.log" >&2
    exit 1
fi

printf 'jobs: %d (command: %s)\n' "$N" "$COMMAND"
printf 'sbatch --wait: %8.2f s\n' "$t_sbatch"
printf 'osmo (slurm):  %8.2f s\n' "$t_osmo"
printf 'ratio osmo/sbatch: %.2f (target <= 1.3)\n' "$(python3 -c "print($t_osmo / $t_sbatch)")"
