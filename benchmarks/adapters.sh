#!/usr/bin/env bash
# LoRA adapters loaded while serving (see benchmarks/README.md, "Adapters loaded while
# serving"): how long the admin API's LoadAdapter takes, how much resident memory each loaded
# adapter adds, and what an unmerged adapter costs a score-mode Recommend against the base
# model. One `palr serve` on the default configuration, its admin API on with a throw-away
# token; the adapter directory is loaded COPIES times under different names (each load holds
# its own weights), requests alternate base / adapter ROUNDS times, then everything is
# unloaded again.
#
# usage: benchmarks/adapters.sh [OUT_DIR]
#
# Environment:
#   ADAPTER   the PEFT directory (default adapters/ml100k-markov-score; must lie inside
#             [model] adapter_dirs, default adapters/)
#   COPIES    loads of it under different names (default 4)
#   REQUESTS  timed score-mode requests per run (default 40)
#   ROUNDS    rounds of base then adapter (default 2)
#   PALR      the binary, with the retriever plugins beside it (default target/release/palr)
#
# Then they are loaded and unloaded once more (memory freed by an unload is reused).
#
# Writes OUT_DIR/load-N.json and unload-N.json (palr admin --json), {base,adapter}-R.json
# (palr bench recommend --json), rss.txt (VmRSS after each step, KiB), server.log,
# machine.txt and table.md (also printed). OUT_DIR defaults to target/adapters/<UTC time>.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benchmarks/machine.sh
. "$ROOT/benchmarks/machine.sh"
OUT=${1:-$ROOT/target/adapters/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PALR=${PALR:-$ROOT/target/release/palr}
[[ -x $PALR ]] || { echo "adapters.sh: build first (cargo build --release --workspace)" >&2; exit 1; }
ADAPTER=${ADAPTER:-adapters/ml100k-markov-score}
COPIES=${COPIES:-4}
REQUESTS=${REQUESTS:-40}
ROUNDS=${ROUNDS:-2}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
token() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
ADMIN_TOKEN=$(token)
SVC_TOKEN=$(token)
printf 'ops %s admin\nbench %s\n' "$ADMIN_TOKEN" "$SVC_TOKEN" >"$OUT/tokens"
chmod 600 "$OUT/tokens"
PORT=$(free_port)
MPORT=$(free_port)
APORT=$(free_port)

(cd "$ROOT" && PALR_SERVER__AUTH__TOKENS_FILE="$OUT/tokens" \
    PALR_SERVER__ADMIN_ADDR="127.0.0.1:$APORT" \
    exec "$PALR" serve --addr "127.0.0.1:$PORT" --metrics-addr "127.0.0.1:$MPORT" \
    >"$OUT/server.log" 2>&1) &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

admin() { (cd "$ROOT" && PALR_TOKEN=$ADMIN_TOKEN "$PALR" admin "$@" --addr "http://127.0.0.1:$APORT"); }
rss() { echo "$1 $(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER/status")" >>"$OUT/rss.txt"; }

for _ in $(seq 1 240); do
    admin list-adapters >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
    sleep 0.5
done
: >"$OUT/rss.txt"
bench() {
    (cd "$ROOT" && PALR_TOKEN=$SVC_TOKEN "$PALR" bench recommend --addr "http://127.0.0.1:$PORT" \
        --mode score --warmup 3 --json "$@")
}
# A few rankings first, so the base model's buffers and caches are in the memory measured.
bench --requests 5 >/dev/null
rss base
for i in $(seq 1 "$COPIES"); do
    admin load-adapter "a$i" "$ADAPTER" --json >"$OUT/load-$i.json"
    rss "loaded-$i"
done
for r in $(seq 1 "$ROUNDS"); do
    bench --requests "$REQUESTS" >"$OUT/base-$r.json"
    bench --requests "$REQUESTS" --adapter a1 >"$OUT/adapter-$r.json"
done
rss "after-requests"
for i in $(seq 1 "$COPIES"); do
    admin unload-adapter "a$i" --json >"$OUT/unload-$i.json"
done
rss unloaded
# Loaded again: freed adapter memory stays with the allocator (the resident size does not
# drop), but it is reused, so a load/unload cycle does not grow the process.
for i in $(seq 1 "$COPIES"); do
    admin load-adapter "b$i" "$ADAPTER" --json >/dev/null
done
rss reloaded
for i in $(seq 1 "$COPIES"); do
    admin unload-adapter "b$i" --json >/dev/null
done

{
    machine_facts
    echo "settings: adapter $ADAPTER, copies $COPIES, requests $REQUESTS, rounds $ROUNDS, score mode, default config"
} >"$OUT/machine.txt"

python3 - "$OUT" "$COPIES" "$ROUNDS" <<'EOF' | tee "$OUT/table.md"
import json, os, sys
out, copies, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
machine = dict(l.split(": ", 1) for l in open(os.path.join(out, "machine.txt")).read().splitlines())
rss = dict(l.split() for l in open(os.path.join(out, "rss.txt")))
mib = lambda k: int(rss[k]) / 1024
print(f"CPU: {machine['cpu']}; ISA: {machine['isa'].strip()}; {machine['cores']} cores; "
      f"palr {machine['palr']}; {machine['settings']}")
print()
loads = [json.load(open(os.path.join(out, f"load-{i}.json"))) for i in range(1, copies + 1)]
a = loads[0]["adapter"]
took = sorted(l["took_ms"] for l in loads)
print(f"Adapter: rank {a['rank']}, {a['projections']} projections, {a['parameters']:,} parameters.")
print()
print("| what | value |")
print("|---|---|")
print(f"| LoadAdapter time, {copies} loads (min / median / max) | {took[0]:.0f} / {took[len(took) // 2]:.0f} / {took[-1]:.0f} ms |")
step = (mib(f"loaded-{copies}") - mib("base")) / copies
print(f"| resident memory: base → {copies} adapters loaded (per adapter) | {mib('base'):.0f} → {mib(f'loaded-{copies}'):.0f} MiB ({step:.1f} MiB) |")
print(f"| resident memory after the requests → all unloaded → {copies} loaded again | {mib('after-requests'):.0f} → {mib('unloaded'):.0f} → {mib('reloaded'):.0f} MiB |")
print()
print("| round | ranking with | answers/s | p50 ms | p99 ms | prefill p50 ms |")
print("|---|---|---:|---:|---:|---:|")
for r in range(1, rounds + 1):
    for what in ("base", "adapter"):
        j = json.load(open(os.path.join(out, f"{what}-{r}.json")))
        lat = j["latency"]
        pre = f"{j['prefill']['p50_ms']:.1f}"
        label = "base model" if what == "base" else f"adapter {j.get('adapter') or 'a1'} (unmerged)"
        print(f"| {r} | {label} | {j['throughput_rps']:.2f} | {lat['p50_ms']:.1f} | {lat['p99_ms']:.1f} | {pre} |")
EOF
