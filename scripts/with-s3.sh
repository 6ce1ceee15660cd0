#!/usr/bin/env bash
# Runs a command with a throwaway S3-compatible server that checks every request's signature
# (s3s-fs, from crates.io: the S3 API over a directory), and these variables for the tests:
#
#   OSMO_TEST_S3_URL      http://127.0.0.1:PORT
#   OSMO_TEST_S3_KEY_ID   its access key
#   OSMO_TEST_S3_SECRET   its secret key (any other secret is refused: SignatureDoesNotMatch)
#   OSMO_TEST_S3_BUCKET   an empty bucket (osmo-test)
#
#   scripts/with-s3.sh cargo test -p osmo --test data_urls
#
# s3s-fs is built once with `cargo install` into ~/.cache/osmo/s3s (about two minutes on two
# cores). Its data lives in a temp dir, removed with the server when the command ends; the
# script exits with the command's status, and when that is a failure it prints the last
# errors in the server's log and the free space where the data lived.
#
# The temp dir is in /dev/shm when that has 4 GiB free: the large-file test stores 1 GiB
# there, and a CI machine's disk can be nearly full after the build (a run once failed with
# the server's 500s at 480 MiB into that upload). OSMO_S3S_DATA_PARENT overrides the choice.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]  (e.g. $0 cargo test -p osmo --test data_urls)" >&2
    exit 2
fi

ROOT=${OSMO_S3S_ROOT:-$HOME/.cache/osmo/s3s}
S3S="$ROOT/bin/s3s-fs"
if [ ! -x "$S3S" ]; then
    echo "with-s3: building s3s-fs into $ROOT" >&2
    # 0.14.1: the last release that builds with this toolchain; --locked: its own lock file.
    cargo install s3s-fs@0.14.1 --features binary --locked --quiet --root "$ROOT" \
        --target-dir "$ROOT/target"
    rm -rf "$ROOT/target"
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
parent=${OSMO_S3S_DATA_PARENT:-}
if [ -z "$parent" ]; then
    parent=/tmp
    shm_free_kib=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
    if [ "${shm_free_kib:-0}" -ge $((4 << 20)) ]; then
        parent=/dev/shm
    fi
fi
DATA=$(mktemp -d "$parent/osmo-s3.XXXXXX")
KEY_ID=OSMOTEST$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F)
SECRET=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
mkdir "$DATA/store" "$DATA/store/osmo-test"
"$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$KEY_ID" --secret-key "$SECRET" \
    "$DATA/store" >"$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT

for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        break
    fi
    kill -0 $SERVER 2>/dev/null || { echo "with-s3: s3s-fs exited:" >&2; cat "$DATA/server.log" >&2; exit 1; }
    sleep 0.1
done

export OSMO_TEST_S3_URL="http://127.0.0.1:$PORT" OSMO_TEST_S3_KEY_ID="$KEY_ID"
export OSMO_TEST_S3_SECRET="$SECRET" OSMO_TEST_S3_BUCKET=osmo-test

set +e
"$@"
status=$?
set -e
if [ $status -ne 0 ]; then
    echo "with-s3: the command failed ($status); the last errors in s3s-fs's log:" >&2
    grep -o 'error: .*' "$DATA/server.log" | tail -n 5 >&2 || true
    echo "with-s3: free space for the store ($parent) and the temp dir:" >&2
    df -h "$parent" "${TMPDIR:-/tmp}" >&2 || true
fi
exit $status
