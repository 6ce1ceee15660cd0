#!/usr/bin/env bash
# Runs a command with a throwaway Docker daemon and DOCKER_HOST pointing at it:
#
#   scripts/with-docker.sh cargo test -p osmo --test docker_runtime
#
# Installs the `docker.io` package with apt-get when dockerd is missing. The daemon keeps its
# data, its runtime state and its socket in a temp dir and creates no bridge and no iptables
# rules (osmo runs containers with the host's network), so nothing is left on the host when it is
# stopped. Before the command runs it builds a small image offline, from Debian's busybox-static
# and bash-static packages (no registry is needed or reached), and tags it with the names OSMO's
# own workflows use: ubuntu:latest, ubuntu:22.04 and busybox:latest. When the command ends the
# daemon is stopped, every container it still has is removed, and the temp dir goes; the script
# exits with the command's status.
#
# For tests that stop and restart the daemon, it exports:
#   OSMO_TEST_DOCKERD_PIDFILE   the daemon's pid file
#   OSMO_TEST_DOCKERD_START     a shell command that starts the daemon again (returns when ready)
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]  (e.g. $0 cargo test -p osmo --test docker_runtime)" >&2
    exit 2
fi

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "with-docker: $1 needs root" >&2
        exit 1
    fi
}

if ! command -v dockerd >/dev/null 2>&1 || ! [ -x /usr/bin/docker-init ]; then
    echo "with-docker: dockerd not found; installing docker.io" >&2
    need_root "installing docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
need_root "dockerd"

DIR=$(mktemp -d /tmp/osmo-docker.XXXXXX)
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/dockerd.pid"
export DOCKER_HOST="unix://$SOCK"

CTRD_SOCK="$DIR/containerd.sock"
CTRD_PID=

# The daemon's command line, also for tests that restart it (after a kill -9, whose pid file
# stays). --bridge=none and --iptables=false: no docker0 and no firewall rules to clean up;
# tasks use the host's network anyway.
start_cmd="rm -f '$PIDFILE'; dockerd --data-root '$DIR/data' --exec-root '$DIR/exec' --pidfile '$PIDFILE' \
-H '$DOCKER_HOST' --containerd '$CTRD_SOCK' --bridge=none --iptables=false --ip-masq=false \
--userland-proxy=false --storage-driver=overlay2 >>'$DIR/dockerd.log' 2>&1 &
for i in \$(seq 1 200); do docker version >/dev/null 2>&1 && exit 0; sleep 0.1; done
echo 'with-docker: dockerd did not come up; its log:' >&2; tail -n 30 '$DIR/dockerd.log' >&2; exit 1"
export OSMO_TEST_DOCKERD_PIDFILE="$PIDFILE"
export OSMO_TEST_DOCKERD_START="$start_cmd"

daemon_pid() { cat "$PIDFILE" 2>/dev/null || true; }

# Kills a process after all its descendants (by pid, deepest first).
kill_tree() {
    local child
    for child in $(cat "/proc/$1/task/"*/children 2>/dev/null); do kill_tree "$child"; done
    kill -9 "$1" 2>/dev/null
}

cleanup() {
    set +e
    local pid
    pid=$(daemon_pid)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        # Containers first (osmo removes its own; this catches a crashed run's), then the daemon.
        docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1
        kill "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    fi
    # containerd last; its shims end with their containers.
    if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
        kill "$CTRD_PID"
        for _ in $(seq 1 50); do kill -0 "$CTRD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$CTRD_PID" 2>/dev/null
    fi
    # Shims left by a daemon that died (a test kills it): each with its container's processes.
    local p
    for p in $(grep -l -s -F "$DIR/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        [ "$p" != $$ ] && kill_tree "$p"
    done
    # Mounts the daemon may have left (overlay layers, its exec root).
    grep -o " $DIR[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# containerd runs on its own (as under systemd), so a test can kill dockerd and start it again
# while the containers live on.
: >"$DIR/containerd.toml"
containerd --config "$DIR/containerd.toml" --root "$DIR/containerd-root" --state "$DIR/containerd-state" \
    --address "$CTRD_SOCK" >>"$DIR/containerd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 1 100); do [ -S "$CTRD_SOCK" ] && break; sleep 0.1; done

bash -c "$start_cmd"
echo "with-docker: dockerd on $DOCKER_HOST ($DIR)" >&2

# The test image: busybox (with its applets as links) and a static bash, nothing else.
build_image() {
    local work="$DIR/image" deb
    mkdir -p "$work/debs" "$work/x" "$work/root"
    (cd "$work/debs" && apt-get download busybox-static bash-static >/dev/null 2>&1) || {
        apt-get update -qq && (cd "$work/debs" && apt-get download busybox-static bash-static >/dev/null)
    }
    for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
    local r="$work/root"
    mkdir -p "$r/bin" "$r/usr/bin" "$r/sbin" "$r/usr/sbin" "$r/tmp" "$r/proc" "$r/sys" "$r/dev" \
        "$r/etc" "$r/root" "$r/var/tmp" "$r/home"
    chmod 1777 "$r/tmp" "$r/var/tmp"
    cp "$work/x/bin/busybox" "$r/bin/busybox"
    cp "$work/x/bin/bash-static" "$r/bin/bash"
    local applet
    for applet in $("$r/bin/busybox" --list); do
        [ "$applet" = bash ] && continue
        [ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"
    done
    for applet in env sh bash; do ln -sf "../../bin/$applet" "$r/usr/bin/$applet"; done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
    echo 'hosts: files dns' >"$r/etc/nsswitch.conf"
    tar -C "$r" -cf - . | docker import - ubuntu:latest >/dev/null
    docker tag ubuntu:latest ubuntu:22.04
    docker tag ubuntu:latest busybox:latest
}
build_image
echo "with-docker: test image built, tagged ubuntu:latest ubuntu:22.04 busybox:latest" >&2

set +e
"$@"
status=$?
set -e
exit "$status"
