#!/usr/bin/env bash
# Score-mode Recommend latency with f32 and with bf16 weights, one server after the
# other on the same machine: `palr serve --dtype D` on a free loopback port, then
# `palr bench recommend --mode score` against it (see benchmarks/README.md, "Recommend
# latency"), for each dtype in turn, ROUNDS times (alternating, so drift hits both).
#
# usage: benchmarks/recommend-dtypes.sh [OUT_DIR]
#
# Environment:
#   REQUESTS   timed requests per run (default 50)
#   ROUNDS     rounds of f32 then bf16 (default 2)
#   RETRIEVER  the retriever whose candidates are ranked (default: the server's default)
#
# Writes OUT_DIR/{f32,bf16}-N.json (palr bench recommend --json), OUT_DIR/machine.txt and
# OUT_DIR/table.md (also printed). OUT_DIR defaults to target/recommend-dtypes/<UTC time>.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benchmarks/machine.sh
. "$ROOT/benchmarks/machine.sh"
OUT=${1:-$ROOT/target/recommend-dtypes/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
PALR=$ROOT/target/release/palr
[[ -x $PALR ]] || { echo "recommend-dtypes.sh: build first (cargo build --release --workspace)" >&2; exit 1; }
REQUESTS=${REQUESTS:-50}
ROUNDS=${ROUNDS:-2}
RETRIEVER_ARGS=()
[[ -n ${RETRIEVER:-} ]] && RETRIEVER_ARGS=(--retriever "$RETRIEVER")

server=""
cleanup() { [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_one() {
    local dtype=$1 n=$2 port mport
    port=$(free_port)
    mport=$(free_port)
    (cd "$ROOT" && exec "$PALR" serve --dtype "$dtype" --addr "127.0.0.1:$port" \
        --metrics-addr "127.0.0.1:$mport" >"$OUT/server-$dtype-$n.log" 2>&1) &
    server=$!
    # Ready when the model answers (the bench's own warm-up requests follow).
    for _ in $(seq 1 120); do
        if "$PALR" recommend --addr "http://127.0.0.1:$port" --model-info >/dev/null 2>&1; then
            break
        fi
        kill -0 "$server" 2>/dev/null || { cat "$OUT/server-$dtype-$n.log" >&2; exit 1; }
        sleep 0.5
    done
    "$PALR" bench recommend --addr "http://127.0.0.1:$port" --mode score \
        --requests "$REQUESTS" "${RETRIEVER_ARGS[@]}" --json >"$OUT/$dtype-$n.json"
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=""
}

for n in $(seq 1 "$ROUNDS"); do
    run_one f32 "$n"
    run_one bf16 "$n"
done

{
    machine_facts
} >"$OUT/machine.txt"

python3 - "$OUT" "$ROUNDS" <<'EOF' | tee "$OUT/table.md"
import json, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])
machine = dict(l.split(": ", 1) for l in open(os.path.join(out, "machine.txt")).read().splitlines())
print(f"CPU: {machine['cpu']}; ISA: {machine['isa'].strip()}; {machine['cores']} cores; palr {machine['palr']}")
print(f"backend: f32 {json.load(open(os.path.join(out, 'f32-1.json')))['backend']}; bf16 {json.load(open(os.path.join(out, 'bf16-1.json')))['backend']}")
print()
print("| round | dtype | p50 ms | p90 ms | p99 ms | mean ms | prefill p50 ms |")
print("|---|---|---:|---:|---:|---:|---:|")
ratios = []
for n in range(1, rounds + 1):
    p50 = {}
    for dtype in ("f32", "bf16"):
        r = json.load(open(os.path.join(out, f"{dtype}-{n}.json")))
        lat, pre = r["latency"], r["prefill"]
        p50[dtype] = lat["p50_ms"]
        print(f"| {n} | {dtype} | {lat['p50_ms']:.1f} | {lat['p90_ms']:.1f} | {lat['p99_ms']:.1f} "
              f"| {lat['mean_ms']:.1f} | {pre['p50_ms']:.1f} |")
    ratios.append(p50["bf16"] / p50["f32"])
print()
print("bf16 p50 / f32 p50 per round: " + ", ".join(f"{r:.2f}" for r in ratios))
EOF
