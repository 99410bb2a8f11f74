#!/usr/bin/env bash
# Side-by-side engine benchmark: palr (f32 and bf16), candle (f32) and
# transformers/PyTorch (f32 and bf16) on one Hugging Face LLaMA directory, one after another,
# all with the protocol of `palr bench engine` (see benchmarks/README.md).
#
# usage: benchmarks/run-peers.sh MODEL_DIR [OUT_DIR]
#
# Environment:
#   PEERS_VENV      virtualenv for the torch harness (default: .cache/peers-venv);
#                   created from benchmarks/peers/requirements.txt when missing
#   PEERS_PYTHON    interpreter used to create that venv (default: python3)
#   BENCH_ARGS      extra flags for every engine (default: none; e.g. "--runs 9")
#   BENCH_THREADS   worker threads for every engine (default: 0 = one per core)
#   SKIP_TORCH=1    leave the torch harness out (no venv needed)
#   SKIP_CANDLE=1   leave the candle harness out
#   PEERS_MAX_LOAD  if set (e.g. 0.5), wait after building until the 1-minute load
#                   average is below it, checking every 20 s for at most
#                   PEERS_MAX_WAIT_S seconds (default 1800), then run anyway
#
# Writes OUT_DIR/{palr-f32,palr-bf16,candle-f32,torch-f32,torch-bf16}.json, OUT_DIR/machine.txt
# (CPU model and the ISA extensions the kernels choose between),
# OUT_DIR/load.txt (load average as each engine starts) and OUT_DIR/table.md (also
# printed). OUT_DIR defaults to
# target/peers/<UTC date-time>.
set -euo pipefail

die() {
    echo "run-peers.sh: $*" >&2
    exit 1
}

[[ $# -ge 1 && $# -le 2 ]] || die "usage: benchmarks/run-peers.sh MODEL_DIR [OUT_DIR]"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODEL=$(cd "$1" 2>/dev/null && pwd) || die "MODEL_DIR $1 is not a directory"
[[ -f $MODEL/config.json ]] || die "$MODEL has no config.json (expected a Hugging Face model directory)"
OUT=${2:-$ROOT/target/peers/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
VENV=${PEERS_VENV:-$ROOT/.cache/peers-venv}
THREADS=${BENCH_THREADS:-0}
# shellcheck disable=SC2206
EXTRA=(${BENCH_ARGS:-})
COMMON=(--model "$MODEL" --threads "$THREADS" --json "${EXTRA[@]}")

echo "== building palr (release)" >&2
(cd "$ROOT" && cargo build --release --bin palr) >&2
if [[ ${SKIP_CANDLE:-0} != 1 ]]; then
    echo "== building the candle harness (release, own lockfile)" >&2
    (cd "$ROOT/benchmarks/peers/candle" && cargo build --release --locked) >&2
fi
if [[ ${SKIP_TORCH:-0} != 1 ]]; then
    REQ=$ROOT/benchmarks/peers/requirements.txt
    if [[ ! -x $VENV/bin/python ]]; then
        echo "== creating $VENV from $REQ" >&2
        "${PEERS_PYTHON:-python3}" -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
        "$VENV/bin/python" -m pip install --quiet -r "$REQ" >&2
    fi
    "$VENV/bin/python" -c "import torch, transformers" 2>/dev/null ||
        die "$VENV lacks torch/transformers: remove it or run $VENV/bin/python -m pip install -r $REQ"
fi

if [[ -n ${PEERS_MAX_LOAD:-} ]]; then
    waited=0
    until python3 -c 'import sys; sys.exit(float(open("/proc/loadavg").read().split()[0]) >= float(sys.argv[1]))' "$PEERS_MAX_LOAD"; do
        if ((waited >= ${PEERS_MAX_WAIT_S:-1800})); then
            echo "== load still $(cut -d' ' -f1 /proc/loadavg) after ${waited} s: running anyway" >&2
            break
        fi
        echo "== load $(cut -d' ' -f1 /proc/loadavg) >= $PEERS_MAX_LOAD, waiting" >&2
        sleep 20
        waited=$((waited + 20))
    done
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

# One engine at a time: they would otherwise fight over the same cores.
run() {
    local name=$1
    shift
    echo "== $name" >&2
    echo "$name start: load average $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
    "$@" >"$OUT/$name.json"
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$OUT/$name.json" ||
        die "$name did not print one JSON object (see $OUT/$name.json)"
}
run palr-f32 "$ROOT/target/release/palr" bench engine --dtype f32 "${COMMON[@]}"
run palr-bf16 "$ROOT/target/release/palr" bench engine --dtype bf16 "${COMMON[@]}"
if [[ ${SKIP_CANDLE:-0} != 1 ]]; then
    run candle-f32 "$ROOT/benchmarks/peers/candle/target/release/candle-peer-bench" --dtype f32 "${COMMON[@]}"
fi
if [[ ${SKIP_TORCH:-0} != 1 ]]; then
    run torch-f32 "$VENV/bin/python" "$ROOT/benchmarks/peers/torch_bench.py" --dtype f32 "${COMMON[@]}"
    run torch-bf16 "$VENV/bin/python" "$ROOT/benchmarks/peers/torch_bench.py" --dtype bf16 "${COMMON[@]}"
fi

{
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "isa: $(grep -o -w -E 'avx2|fma|avx512f|avx512bw|avx512_bf16|amx_tile|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "cores: $(nproc) (lscpu: $(lscpu | sed -n 's/^CPU(s): *//p' | head -1) CPUs, $(lscpu | sed -n 's/^Thread(s) per core: *//p' | head -1) threads per core)"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "kernel: $(uname -sr)"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "load average before/after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "palr: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
    echo "rustc: $(rustc --version)"
} >"$OUT/machine.txt" 2>/dev/null || true

python3 - "$OUT" >"$OUT/table.md" <<'EOF'
import json, os, sys
out = sys.argv[1]
rows = []
for name in ("palr-f32", "palr-bf16", "candle-f32", "torch-f32", "torch-bf16"):
    path = os.path.join(out, name + ".json")
    if os.path.exists(path):
        rows.append(json.load(open(path)))
machine = dict(l.split(": ", 1) for l in open(os.path.join(out, "machine.txt")).read().splitlines() if ": " in l) \
    if os.path.exists(os.path.join(out, "machine.txt")) else {}
print(f"CPU: {machine.get('cpu', '?')}; ISA: {machine.get('isa', '?').strip()}")
print()
print("| engine | dtype | prefill tok/s | decode tok/s | peak RSS MiB | load s | first token |")
print("|---|---|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['engine']} | {r['dtype']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} "
          f"| {r['peak_rss_mib']:.0f} | {r['load_s']:.3f} | {r.get('first_token', '?')} |")
p = rows[0] if rows else None
print()
print(f"{p['prompt_tokens']}-token prompt, {p['decode_tokens']} decode steps, batch 1, "
      f"{p['threads']} threads; medians of {len(p['prefill_runs_s'])} runs." if p else "no results")
for r in rows:
    print(f"- {r['engine']} {r['dtype']}: {r['backend']}")
# Same ids, same f32 weights: every f32 engine must pick the same first token.
# (bf16 weights round differently and may legitimately pick another near-tie.)
f32 = [r for r in rows if r["dtype"] == "f32"]
if len({r.get("first_token") for r in f32}) > 1:
    print()
    print("WARNING: the f32 engines disagree on the first generated token: "
          + ", ".join(f"{r['engine']}={r.get('first_token')}" for r in f32))
EOF
{
    cat "$OUT/table.md"
    echo
    sed 's/^/    /' "$OUT/machine.txt" "$OUT/load.txt"
} | tee "$OUT/table.txt"
echo "results in $OUT" >&2
