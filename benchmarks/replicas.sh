#!/usr/bin/env bash
# Scale-out on one machine: Recommend throughput and latency of 1 and of 2 palr replicas on
# loopback, `palr bench recommend` spreading the requests round robin over them (see
# benchmarks/README.md, "Replicas"). Each run starts fresh servers (the same config, each on
# ports of its own), runs the benchmark, records each server's resident memory and stops
# them; 1 then 2 replicas, ROUNDS times (alternating, so drift hits both).
#
# usage: benchmarks/replicas.sh [OUT_DIR]
#
# Environment:
#   REQUESTS     timed requests per run (default 100)
#   CONCURRENCY  requests in flight, closed loop, the same for 1 and 2 replicas (default 4)
#   RATE         open loop instead: this many requests per second, whatever is in flight
#   ROUNDS       rounds of 1 then 2 replicas (default 2)
#   MODE         score, generate or retriever (default score)
#   THREADS      engine threads per replica (default 0 = one per core)
#   PIN          1: replica i runs on core i only (taskset), the client unpinned (default 0)
#   SERVE_ARGS   more `palr serve` flags for every replica (e.g. "--max-concurrent-rank 2")
#   PALR         the binary, with the retriever plugins beside it (default target/release/palr)
#
# Writes OUT_DIR/{1,2}-N.json (palr bench recommend --json), the servers' logs, rss-R-N.txt
# (each server's VmRSS and VmHWM after the run, KiB), machine.txt and table.md (also printed).
# OUT_DIR defaults to target/replicas/<UTC time>.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benchmarks/machine.sh
. "$ROOT/benchmarks/machine.sh"
OUT=${1:-$ROOT/target/replicas/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
PALR=${PALR:-$ROOT/target/release/palr}
[[ -x $PALR ]] || { echo "replicas.sh: build first (cargo build --release --workspace)" >&2; exit 1; }
REQUESTS=${REQUESTS:-100}
CONCURRENCY=${CONCURRENCY:-4}
ROUNDS=${ROUNDS:-2}
MODE=${MODE:-score}
THREADS=${THREADS:-0}
PIN=${PIN:-0}
RATE=${RATE:-}
LOAD=(--concurrency "$CONCURRENCY")
[[ -n $RATE ]] && LOAD=(--rate "$RATE")
CORES=$(nproc)

servers=()
cleanup() {
    for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${servers[@]}"; do wait "$p" 2>/dev/null || true; done
    servers=()
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_one() {
    local n=$1 round=$2 addrs=() i port mport
    for ((i = 0; i < n; i++)); do
        port=$(free_port)
        mport=$(free_port)
        local cmd=("$PALR" serve --addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$mport"
            --threads "$THREADS" ${SERVE_ARGS:-})
        [[ $PIN == 1 ]] && cmd=(taskset -c $((i % CORES)) "${cmd[@]}")
        (cd "$ROOT" && exec "${cmd[@]}" >"$OUT/server-$n-$round-$i.log" 2>&1) &
        servers+=($!)
        addrs+=("http://127.0.0.1:$port")
    done
    # Ready when every server answers (the benchmark's warm-up requests follow).
    for i in "${!addrs[@]}"; do
        for _ in $(seq 1 240); do
            if "$PALR" recommend --addr "${addrs[$i]}" --model-info >/dev/null 2>&1; then
                break
            fi
            kill -0 "${servers[$i]}" 2>/dev/null || { cat "$OUT/server-$n-$round-$i.log" >&2; exit 1; }
            sleep 0.5
        done
    done
    local list
    list=$(IFS=,; echo "${addrs[*]}")
    (cd "$ROOT" && "$PALR" bench recommend --addr "$list" --mode "$MODE" --requests "$REQUESTS" \
        "${LOAD[@]}" --warmup $((2 * n)) --allow-errors --json) >"$OUT/$n-$round.json"
    for i in "${!servers[@]}"; do
        grep -E '^Vm(RSS|HWM):' "/proc/${servers[$i]}/status" | tr -s ' \t' ' ' | tr '\n' ' '
        echo
    done >"$OUT/rss-$n-$round.txt"
    cleanup
}

for round in $(seq 1 "$ROUNDS"); do
    run_one 1 "$round"
    run_one 2 "$round"
done

{
    machine_facts
    echo "settings: requests $REQUESTS, ${LOAD[*]#--}, mode $MODE, threads $THREADS, pin $PIN, serve args '${SERVE_ARGS:-}'"
} >"$OUT/machine.txt"

python3 - "$OUT" "$ROUNDS" <<'EOF' | tee "$OUT/table.md"
import json, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])
machine = dict(l.split(": ", 1) for l in open(os.path.join(out, "machine.txt")).read().splitlines())
print(f"CPU: {machine['cpu']}; ISA: {machine['isa'].strip()}; {machine['cores']} cores; "
      f"palr {machine['palr']}; {machine['settings']}")
print()
print("| round | replicas | answers/s | p50 ms | p90 ms | p99 ms | mean ms | failed | RSS per replica MiB | load before → after |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
for r in range(1, rounds + 1):
    for n in (1, 2):
        j = json.load(open(os.path.join(out, f"{n}-{r}.json")))
        lat, o = j["latency"], j["outcomes"]
        rss = []
        for line in open(os.path.join(out, f"rss-{n}-{r}.txt")):
            f = line.split()
            rss.append(f"{int(f[f.index('VmRSS:') + 1]) / 1024:.0f}")
        failed = o["calls"] - o["answered_in_time"] - o["answered_late"]
        print(f"| {r} | {n} | {j['throughput_rps']:.2f} | {lat['p50_ms']:.1f} | {lat['p90_ms']:.1f} "
              f"| {lat['p99_ms']:.1f} | {lat['mean_ms']:.1f} | {failed} | {' / '.join(rss)} "
              f"| {j['loadavg_before']} → {j['loadavg_after']} |")
EOF
