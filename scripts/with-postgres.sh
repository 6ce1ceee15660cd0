#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL 15 server and OSMO_TEST_DATABASE_URL pointing at it:
#
#   scripts/with-postgres.sh cargo test -p osmo-store
#
# The cluster lives in a temp dir (fsync off: test data only), listens on 127.0.0.1 on a free
# port, and is stopped and removed when the command ends; the script exits with the command's
# status. Installs the `postgresql` package with apt-get if initdb/pg_ctl are missing. As root,
# the server runs as the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]  (e.g. $0 cargo test -p osmo-store)" >&2
    exit 2
fi

find_bin() {
    local name=$1 dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/$name" ]; then
            echo "$dir/$name"
            return
        fi
    done
    return 1
}

if ! find_bin initdb >/dev/null || ! find_bin pg_ctl >/dev/null; then
    echo "with-postgres: initdb/pg_ctl not found; installing postgresql" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "with-postgres: run as root or install the postgresql package first" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
fi
INITDB=$(find_bin initdb)
PG_CTL=$(find_bin pg_ctl)

# A free port: ask the kernel for one.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000)))

DIR=$(mktemp -d /tmp/osmo-pg.XXXXXX)
chmod 755 "$DIR"

# Run a command as the cluster's owner: `postgres` when we are root, ourselves otherwise.
if [ "$(id -u)" -eq 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir "$DIR" --shell /bin/sh postgres
    fi
    chown postgres: "$DIR"
    as_owner() { su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; }
else
    as_owner() { "$@"; }
fi

cleanup() {
    as_owner "$PG_CTL" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_owner "$INITDB" -D "$DIR/data" -A trust -U postgres --no-sync >"$DIR/initdb.log" 2>&1 || {
    cat "$DIR/initdb.log" >&2
    exit 1
}
as_owner "$PG_CTL" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
    start >/dev/null || {
    cat "$DIR/postgres.log" >&2
    exit 1
}

export OSMO_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
echo "with-postgres: PostgreSQL on port $PORT ($DIR); OSMO_TEST_DATABASE_URL=$OSMO_TEST_DATABASE_URL" >&2

set +e
"$@"
status=$?
set -e
exit "$status"
