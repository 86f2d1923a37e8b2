#!/usr/bin/env bash
# Replication latency, corekv next to Valkey 8, on this machine, in one run, under the same
# pinning (primary and replica on SERVER_CPU, the probe on CLIENT_CPU): for each appendfsync
# mode of the replica (the primary runs `appendonly yes`, `everysec`), a SET followed by
# `WAIT 1 <timeout>` and a SET followed by `WAITAOF 1 1 <timeout>`, p50 and p99, with how many
# replies missed the replica at the timeout; and one bare 4 KiB append + fdatasync in the same
# directory as the reference (WAITAOF 1 1 needs two: the primary's and the replica's).
#
# Usage: perf/replication-compare.sh   (prints markdown, also saved under perf/results/)
# Knobs: SERVER_CPU=1 CLIENT_CPU=0 WAITS=2000 TIMEOUT_MS=1000
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
WAITS=${WAITS:-2000}
TIMEOUT_MS=${TIMEOUT_MS:-1000}

./scripts/install-valkey.sh >/dev/null
cargo build --release --quiet

work=$(mktemp -d -p "${PERF_DIR:-$PWD/target}")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    pkill -9 -f -- "--dir $work/" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

probe() { taskset -c "$CLIENT_CPU" python3 perf/resp_probe.py "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_pong() {
    for _ in $(seq 1 6000); do
        [ "$(valkey-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.01
    done
    echo "server on port $1 did not start" >&2
    exit 1
}

# Waits until the replica on port $1 reports its link up.
wait_link() {
    for _ in $(seq 1 6000); do
        valkey-cli -p "$1" info replication | tr -d '\r' | grep -q '^master_link_status:up' &&
            return 0
        sleep 0.01
    done
    echo "replica on port $1 did not sync" >&2
    exit 1
}

# start KIND NAME PORT [args...]: a server with the log on in $work/NAME, pinned to SERVER_CPU.
start() {
    local kind=$1 name=$2 port=$3
    shift 3
    mkdir -p "$work/$name"
    if [ "$kind" = corekv ]; then
        taskset -c "$SERVER_CPU" target/release/corekv-server --port "$port" \
            --dir "$work/$name" --appendonly yes --logfile "$work/$name.log" "$@" \
            >/dev/null 2>&1 &
    else
        taskset -c "$SERVER_CPU" valkey-server --port "$port" --dir "$work/$name" --save '' \
            --appendonly yes --logfile "$work/$name.log" "$@" >/dev/null 2>&1 &
    fi
    pids+=($!)
    wait_pong "$port"
}

stop() { valkey-cli -p "$1" shutdown nosave >/dev/null 2>&1 || true; sleep 0.3; }

primary=$(free_port)
replica=$(free_port)

{
    mkdir -p "$work/fsync"
    read -r f50 f99 _ < <(probe fsync "$work/fsync" "$WAITS")
    echo "### WAIT 1 and WAITAOF 1 1 after a SET, latency (µs), by the replica's appendfsync"
    echo
    echo "Bare 4 KiB append + fdatasync in the same directory: p50 $f50 µs, p99 $f99 µs."
    echo "Timeout $TIMEOUT_MS ms; 'missed' counts replies in which the replica had not"
    echo "acknowledged when the timeout expired."
    echo
    echo "| server | replica appendfsync | WAIT 1 p50 | WAIT 1 p99 | WAITAOF 1 1 p50 | WAITAOF 1 1 p99 | WAITAOF p50 / bare fdatasync | missed (WAIT, WAITAOF) |"
    echo "|---|---|---|---|---|---|---|---|"
    for kind in corekv valkey; do
        for mode in always everysec no; do
            start "$kind" "$kind-primary-$mode" "$primary"
            start "$kind" "$kind-replica-$mode" "$replica" --appendfsync "$mode" \
                --replicaof 127.0.0.1 "$primary"
            wait_link "$replica"
            n=$WAITS
            # Valkey's replica with `no` never fsyncs: every WAITAOF waits out its timeout.
            [ "$kind" = valkey ] && [ "$mode" != always ] && n=10
            read -r w50 w99 _ wmiss < <(probe replwait "$primary" "$WAITS" wait "$TIMEOUT_MS")
            read -r a50 a99 _ amiss < <(probe replwait "$primary" "$n" waitaof "$TIMEOUT_MS")
            echo "| $kind | $mode | $w50 | $w99 | $a50 | $a99 | $(echo "scale=2; $a50 / $f50" | bc) | $wmiss/$WAITS, $amiss/$n |"
            stop "$replica"
            stop "$primary"
        done
    done
    echo
    echo "Machine: $(nproc) CPUs, $(uname -r), $(df -T "$work" | awk 'NR==2 {print $2}') on $(df "$work" | awk 'NR==2 {print $1}'); primary and replica pinned to CPU $SERVER_CPU, the probe to CPU $CLIENT_CPU; $(valkey-server --version | awk '{print $3}'); corekv $(target/release/corekv-server --version | awk '{print $2}'); $(date -u +%Y-%m-%d)."
} | tee "perf/results/$(date -u +%Y-%m-%d)-$(hostname)-replication.md"
