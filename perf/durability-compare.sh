#!/usr/bin/env bash
# The append-only log, corekv next to Valkey 8, on this machine, in one run, under the same
# pinning (servers on SERVER_CPU, load generator and probes on CLIENT_CPU):
#
#   1. SET throughput with CLIENTS clients in `always` against `everysec`, and writes per fsync;
#   2. WAITAOF 1 0 0 right after a SET, p50 per fsync mode, against one bare fdatasync of a
#      4 KiB append in the same directory;
#   3. time from start to the first PONG with KEYS keys in the log, as written and after a
#      rewrite (corekv with one shard on SERVER_CPU, and with one shard per CPU);
#   4. longest GET latency seen by a client while the log is rewritten (with KEYS keys).
#
# Usage: perf/durability-compare.sh   (prints markdown, also saved under perf/results/)
# Knobs: SERVER_CPU=1 CLIENT_CPU=0 CLIENTS=50 REQUESTS=200000 WAITS=2000 KEYS=1000000
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-200000}
WAITS=${WAITS:-2000}
KEYS=${KEYS:-1000000}

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
now_ms() { date +%s%3N; }

wait_pong() {
    for _ in $(seq 1 6000); do
        [ "$(taskset -c "$CLIENT_CPU" valkey-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.01
    done
    echo "server on port $1 did not start" >&2
    exit 1
}

# start_corekv NAME PORT CPUS [args...]: starts corekv on CPUS with the log on in $work/NAME.
start_corekv() {
    local name=$1 port=$2 cpus=$3
    shift 3
    mkdir -p "$work/$name"
    taskset -c "$cpus" target/release/corekv-server --port "$port" --dir "$work/$name" \
        --appendonly yes --logfile "$work/$name.log" "$@" >/dev/null 2>&1 &
    pids+=($!)
}

start_valkey() {
    local name=$1 port=$2
    shift 2
    mkdir -p "$work/$name"
    taskset -c "$SERVER_CPU" valkey-server --port "$port" --dir "$work/$name" --save '' \
        --appendonly yes --logfile "$work/$name.log" "$@" >/dev/null 2>&1 &
    pids+=($!)
}

# start_server corekv|valkey NAME PORT CPUS
start_server() {
    if [ "$1" = corekv ]; then start_corekv "$2" "$3" "$4"; else start_valkey "$2" "$3"; fi
}

stop() { valkey-cli -p "$1" shutdown >/dev/null 2>&1 || true; sleep 0.5; }

info_field() { valkey-cli -p "$1" info persistence | tr -d '\r' | awk -F: -v f="$2" '$1 == f {print $2}'; }

set_rps() {
    taskset -c "$CLIENT_CPU" valkey-benchmark -p "$1" -t set -n "$REQUESTS" -c "$CLIENTS" \
        -r 100000 -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1 |
        awk '{print $2}'
}

# "<fsyncs> <records synced>" of corekv's first shard, from INFO.
ck_fsyncs() {
    valkey-cli -p "$1" info persistence | tr -d '\r' | grep '^aof_shard0:' |
        sed 's/.*fsyncs=\([0-9]*\),writes_synced=\([0-9]*\).*/\1 \2/'
}

load_keys() {
    awk -v n="$KEYS" 'BEGIN { for (i = 0; i < n; i++) { k = sprintf("key:%012d", i);
        printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$3\r\nxxx\r\n", length(k), k } }' |
        taskset -c "$CLIENT_CPU" valkey-cli -p "$1" --pipe >/dev/null
}

wait_rewrite_done() {
    for _ in $(seq 1 6000); do
        [ "$(info_field "$1" aof_rewrite_in_progress)" = 0 ] &&
            [ "$(info_field "$1" aof_rewrite_scheduled)" = 0 ] && return 0
        sleep 0.05
    done
}

# Prints milliseconds from start to the first PONG, with the log read cold where the page cache
# can be dropped (root): corekv writes its log with direct I/O, so it is never cached, where
# Valkey's would be.
ready_ms() {
    local t0
    sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null || true
    t0=$(now_ms)
    start_server "$@"
    wait_pong "$3"
    echo $(($(now_ms) - t0))
}

ratio() { echo "scale=2; $1 / $2" | bc; }

ck=$(free_port)
vk=$(free_port)
all_cpus="0-$(($(nproc) - 1))"

{
    echo "### 1. SET throughput, $CLIENTS clients, always against everysec"
    echo
    echo "| server | everysec req/s | always req/s | always/everysec | writes per fsync (always) |"
    echo "|---|---|---|---|---|"
    start_corekv tput "$ck" "$SERVER_CPU" --appendfsync everysec
    wait_pong "$ck"
    ck_every=$(set_rps "$ck")
    valkey-cli -p "$ck" config set appendfsync always >/dev/null
    read -r f0 r0 < <(ck_fsyncs "$ck")
    ck_always=$(set_rps "$ck")
    read -r f1 r1 < <(ck_fsyncs "$ck")
    ck_batch=$(echo "scale=1; ($r1 - $r0) / ($f1 - $f0)" | bc)
    stop "$ck"
    start_valkey tput "$vk" --appendfsync everysec
    wait_pong "$vk"
    vk_every=$(set_rps "$vk")
    valkey-cli -p "$vk" config set appendfsync always >/dev/null
    vk_always=$(set_rps "$vk")
    stop "$vk"
    echo "| corekv | $ck_every | $ck_always | $(ratio "$ck_always" "$ck_every") | $ck_batch |"
    echo "| Valkey | $vk_every | $vk_always | $(ratio "$vk_always" "$vk_every") | |"
    echo

    echo "### 2. WAITAOF 1 0 0 after a SET, latency (µs) against one bare fdatasync"
    echo
    mkdir -p "$work/fsync"
    read -r f50 f99 _ < <(probe fsync "$work/fsync" "$WAITS")
    echo "Bare 4 KiB append + fdatasync in the same directory: p50 $f50 µs, p99 $f99 µs."
    echo
    echo "| server | appendfsync | p50 µs | p99 µs | p50 / bare fdatasync |"
    echo "|---|---|---|---|---|"
    start_corekv wait "$ck" "$SERVER_CPU"
    wait_pong "$ck"
    for mode in always everysec no; do
        valkey-cli -p "$ck" config set appendfsync "$mode" >/dev/null
        read -r p50 p99 _ < <(probe waitaof "$ck" "$WAITS")
        echo "| corekv | $mode | $p50 | $p99 | $(ratio "$p50" "$f50") |"
    done
    stop "$ck"
    start_valkey wait "$vk"
    wait_pong "$vk"
    for mode in always everysec; do
        valkey-cli -p "$vk" config set appendfsync "$mode" >/dev/null
        n=$WAITS
        # Valkey acknowledges WAITAOF in everysec only at its next once-a-second fsync.
        [ "$mode" = everysec ] && n=10
        read -r p50 p99 _ < <(probe waitaof "$vk" "$n")
        echo "| Valkey | $mode | $p50 | $p99 | $(ratio "$p50" "$f50") |"
    done
    echo "| Valkey | no | never | never | (WAITAOF 1 blocks: the file is never fsynced) |"
    stop "$vk"
    echo

    cache="page cache dropped before each start"
    [ -w /proc/sys/vm/drop_caches ] || cache="page cache not dropped (needs root)"
    echo "### 3. Start to first PONG with $KEYS keys in the log (ms; $cache)"
    echo
    echo "| server | as written | after BGREWRITEAOF |"
    echo "|---|---|---|"
    for setup in "corekv 1-shard $SERVER_CPU" "corekv all-cpus $all_cpus" "valkey valkey $SERVER_CPU"; do
        read -r kind name cpus <<<"$setup"
        port=$ck
        [ "$kind" = valkey ] && port=$vk
        start_server "$kind" "load-$name" "$port" "$cpus"
        wait_pong "$port"
        load_keys "$port"
        stop "$port"
        written=$(ready_ms "$kind" "load-$name" "$port" "$cpus")
        valkey-cli -p "$port" bgrewriteaof >/dev/null
        sleep 0.2
        wait_rewrite_done "$port"
        stop "$port"
        rewritten=$(ready_ms "$kind" "load-$name" "$port" "$cpus")
        stop "$port"
        case $name in
        1-shard) label="corekv, 1 shard on CPU $SERVER_CPU" ;;
        all-cpus) label="corekv, one shard per CPU ($(nproc))" ;;
        *) label="Valkey" ;;
        esac
        echo "| $label | $written | $rewritten |"
        eval "load_${name//-/_}=\"$written $rewritten\""
    done
    read -r vk_w vk_r <<<"$load_valkey"
    read -r c1_w c1_r <<<"$load_1_shard"
    read -r ca_w ca_r <<<"$load_all_cpus"
    echo
    echo "Ratios to Valkey: 1 shard $(ratio "$c1_w" "$vk_w") as written, $(ratio "$c1_r" "$vk_r") after rewrite; one shard per CPU $(ratio "$ca_w" "$vk_w") and $(ratio "$ca_r" "$vk_r")."
    echo

    echo "### 4. GET latency while the log is rewritten ($KEYS keys)"
    echo
    echo "| server | p50 µs | p99.9 µs | max µs, no rewrite | max µs, during BGREWRITEAOF |"
    echo "|---|---|---|---|---|"
    for setup in "corekv load-1-shard $ck" "valkey load-valkey $vk"; do
        read -r kind name port <<<"$setup"
        start_server "$kind" "$name" "$port" "$SERVER_CPU"
        wait_pong "$port"
        read -r _ _ quiet_max _ < <(probe pause "$port" 2)
        (sleep 0.5 && valkey-cli -p "$port" bgrewriteaof >/dev/null) &
        trigger=$!
        read -r p50 p999 busy_max _ < <(probe pause "$port" 4)
        wait "$trigger"
        wait_rewrite_done "$port"
        stop "$port"
        echo "| $kind | $p50 | $p999 | $quiet_max | $busy_max |"
    done
    echo
    echo "Machine: $(nproc) CPUs, $(uname -r), $(df -T "$work" | awk 'NR==2 {print $2}') on $(df "$work" | awk 'NR==2 {print $1}'); servers pinned to CPU $SERVER_CPU (except 'one shard per CPU'), clients to CPU $CLIENT_CPU; $(valkey-server --version | awk '{print $3}'); corekv $(target/release/corekv-server --version | awk '{print $2}'); $(date -u +%Y-%m-%d)."
} | tee "perf/results/$(date -u +%Y-%m-%d)-$(hostname)-durability.md"
