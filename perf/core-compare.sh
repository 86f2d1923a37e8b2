#!/usr/bin/env bash
# Server CPU time per request and memory per key: corekv next to Valkey 8, on this machine, in
# one run, under the same pinning (server on SERVER_CPU, load generator on CLIENT_CPU).
#
# CPU per request comes from the server process's utime+stime in /proc (the load generator
# saturates first on small machines, so throughput alone would hide the server's cost).
# Memory per key: 1,000,000 keys `key:%012d` -> `xxx`, loaded with valkey-cli --pipe,
# INFO used_memory and RSS before and after.
#
# Usage: perf/core-compare.sh            (prints a markdown table, also saved under perf/results/)
# Knobs: SERVER_CPU=1 CLIENT_CPU=0 REQUESTS=200000 PIPELINED_REQUESTS=2000000 CLIENTS=50 KEYS=1000000
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
REQUESTS=${REQUESTS:-200000}
PIPELINED_REQUESTS=${PIPELINED_REQUESTS:-2000000}
CLIENTS=${CLIENTS:-50}
KEYS=${KEYS:-1000000}

./scripts/install-valkey.sh >/dev/null
cargo build --release --quiet

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }

wait_ping() {
    for _ in $(seq 1 200); do
        valkey-cli -p "$1" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.05
    done
    echo "server on port $1 did not start" >&2
    exit 1
}

ck_port=$(free_port)
mkdir -p "$work/corekv" "$work/valkey"
taskset -c "$SERVER_CPU" target/release/corekv-server --port "$ck_port" --dir "$work/corekv" \
    --logfile "$work/corekv.log" &
pids+=($!)
ck_pid=$!
wait_ping "$ck_port"

vk_port=$(free_port)
taskset -c "$SERVER_CPU" valkey-server --port "$vk_port" --dir "$work/valkey" --save '' \
    --appendonly no --logfile "$work/valkey.log" &
pids+=($!)
vk_pid=$!
wait_ping "$vk_port"

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Prints "<requests per second> <server CPU microseconds per request>".
measure() {
    local port=$1 pid=$2 test=$3 pipeline=$4 n=$5
    local before after rps
    before=$(cpu_ticks "$pid")
    rps=$(taskset -c "$CLIENT_CPU" valkey-benchmark -p "$port" -t "$test" -n "$n" -c "$CLIENTS" \
        -P "$pipeline" -r 100000 -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second' |
        tail -1 | awk '{print $2}')
    after=$(cpu_ticks "$pid")
    echo "$rps $(echo "scale=3; ($after - $before) * 1000000 / $ticks / $n" | bc)"
}

memory_per_key() {
    local port=$1 pid=$2 used0 used1 rss0 rss1
    valkey-cli -p "$port" flushall >/dev/null
    sleep 1
    used0=$(valkey-cli -p "$port" info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}')
    rss0=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    awk -v n="$KEYS" 'BEGIN { for (i = 0; i < n; i++) { k = sprintf("key:%012d", i);
        printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$3\r\nxxx\r\n", length(k), k } }' |
        valkey-cli -p "$port" --pipe >/dev/null
    sleep 1
    used1=$(valkey-cli -p "$port" info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}')
    rss1=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    echo "$(( (used1 - used0) / KEYS )) $(( (rss1 - rss0) * 1024 / KEYS ))"
}

ratio() { echo "scale=2; $1 / $2" | bc; }

{
    echo "| workload | corekv req/s | Valkey req/s | corekv CPU µs/req | Valkey CPU µs/req | CPU ratio corekv/Valkey |"
    echo "|---|---|---|---|---|---|"
    for pipeline in 1 16; do
        n=$REQUESTS
        [ "$pipeline" -gt 1 ] && n=$PIPELINED_REQUESTS
        for test in set get; do
            read -r ck_rps ck_cpu < <(measure "$ck_port" "$ck_pid" "$test" "$pipeline" "$n")
            read -r vk_rps vk_cpu < <(measure "$vk_port" "$vk_pid" "$test" "$pipeline" "$n")
            echo "| ${test^^} -P $pipeline, $CLIENTS clients | $ck_rps | $vk_rps | $ck_cpu | $vk_cpu | $(ratio "$ck_cpu" "$vk_cpu") |"
        done
    done
    echo
    read -r ck_used ck_rss < <(memory_per_key "$ck_port" "$ck_pid")
    read -r vk_used vk_rss < <(memory_per_key "$vk_port" "$vk_pid")
    echo "| memory per key ($KEYS small string keys) | corekv | Valkey | ratio corekv/Valkey |"
    echo "|---|---|---|---|"
    echo "| used_memory bytes/key | $ck_used | $vk_used | $(ratio "$ck_used" "$vk_used") |"
    echo "| RSS bytes/key | $ck_rss | $vk_rss | $(ratio "$ck_rss" "$vk_rss") |"
    echo
    echo "Machine: $(nproc) CPUs, $(uname -r); server pinned to CPU $SERVER_CPU, valkey-benchmark to CPU $CLIENT_CPU; $(valkey-server --version | awk '{print $3}'); corekv $(target/release/corekv-server --version | awk '{print $2}'); $(date -u +%Y-%m-%d)."
} | tee "perf/results/$(date -u +%Y-%m-%d)-$(hostname)-core.md"
