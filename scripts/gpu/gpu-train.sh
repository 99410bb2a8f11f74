#!/usr/bin/env bash
# Trains palr's ranker adapters on a lent GPU machine, where the default model cannot be
# fetched (no network) and one call carries at most 64 MiB with the working tree.
#
# Here (the build machine):
#   scripts/gpu/gpu-train.sh pack DATA.jsonl[,DATA2.jsonl...]
#       splits the default model's GGUF into .cache/gpu-stage{1,2}/ (about 45 MiB each) and
#       packs .cache/gpu-train/ (the rest of the GGUF, its SHA-256, the xz-compressed data
#       files, the palr binary); prints the three device calls to make.
# On the GPU machine (three calls in a row, each within the machine's warm period):
#   scripts/gpu/gpu-train.sh stage DIR     copies a GGUF part to /tmp/palr-stage (calls 1 and 2)
#   scripts/gpu/gpu-train.sh train OUT [TRAIN_LORA ARGS...]
#       joins and checks the GGUF, imports it with palr (the same f32 weights as
#       models/smollm2-135m-instruct here), then trains one adapter per data file with
#       scripts/training/train_lora.py, all at once on the one GPU, and writes OUT/NAME.tar (the
#       adapter directory: adapter_config.json, adapter_model.safetensors, train_summary.json,
#       train_log.jsonl, loss.png, command.txt) and OUT/train.log.
# Defaults for train_lora.py: r 16, alpha 32, all projections, bf16 autocast, lr 4e-4,
# batch 16, 2 epochs, 200 s budget each; extra arguments are appended (later ones win).
set -uo pipefail
cd "$(dirname "$0")/../.."

gguf_name=SmolLM2-135M-Instruct.Q4_1.gguf
stage=/tmp/palr-stage

case "${1:-}" in
pack)
    data=${2:?usage: scripts/gpu/gpu-train.sh pack DATA.jsonl[,DATA2.jsonl...]}
    set -e
    src=.cache/downloads/$gguf_name
    [ -f "$src" ] || { echo "no $src: run ./target/release/palr model fetch first" >&2; exit 2; }
    rm -rf .cache/gpu-stage1 .cache/gpu-stage2 .cache/gpu-train
    mkdir -p .cache/gpu-stage1 .cache/gpu-stage2 .cache/gpu-train
    part=$((45 * 1024 * 1024))
    split -b "$part" -d -a 1 "$src" .cache/gpu-train/gguf.part
    mv .cache/gpu-train/gguf.part0 .cache/gpu-stage1/
    mv .cache/gpu-train/gguf.part1 .cache/gpu-stage2/
    sha256sum "$src" | awk '{print $1}' > .cache/gpu-train/gguf.sha256
    IFS=, read -ra files <<< "$data"
    for f in "${files[@]}"; do
        xz -T2 -6 -c "$f" > ".cache/gpu-train/$(basename "$f").xz"
    done
    cargo build --release --bin palr
    cp target/release/palr .cache/gpu-train/palr
    strip .cache/gpu-train/palr 2>/dev/null || true
    du -sh .cache/gpu-stage1 .cache/gpu-stage2 .cache/gpu-train
    cat <<EOF
device calls, one right after the other:
  run(command="scripts/gpu/gpu-train.sh stage .cache/gpu-stage1", carry=[".cache/gpu-stage1"], timeout_s=60)
  run(command="scripts/gpu/gpu-train.sh stage .cache/gpu-stage2", carry=[".cache/gpu-stage2"], timeout_s=60)
  run(command="scripts/gpu/gpu-train.sh train \$OUT", carry=[".cache/gpu-train"], timeout_s=400)
EOF
    ;;
stage)
    dir=${2:?usage: scripts/gpu/gpu-train.sh stage DIR}
    mkdir -p "$stage" && cp "$dir"/gguf.part* "$stage"/ && ls -la "$stage"
    ;;
train)
    out=${2:?usage: scripts/gpu/gpu-train.sh train OUT [TRAIN_LORA ARGS...]}
    shift 2
    mkdir -p "$out"
    log=$out/train.log
    exec > >(tee "$log") 2>&1
    echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
    work=/tmp/palr-train
    rm -rf "$work" && mkdir -p "$work"
    cat "$stage"/gguf.part* .cache/gpu-train/gguf.part* > "$work/$gguf_name" || exit 2
    got=$(sha256sum "$work/$gguf_name" | awk '{print $1}')
    want=$(cat .cache/gpu-train/gguf.sha256)
    if [ "$got" != "$want" ]; then
        echo "error: the joined GGUF has SHA-256 $got, want $want (a stage call missing?): ls $stage: $(ls "$stage" 2>&1)"
        exit 2
    fi
    chmod +x .cache/gpu-train/palr
    .cache/gpu-train/palr model import-gguf "$work/$gguf_name" "$work/model" --dtype f32 || exit 2
    python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
    pids=()
    names=()
    for z in .cache/gpu-train/*.jsonl.xz; do
        name=$(basename "$z" .jsonl.xz)
        xz -dc "$z" > "$work/$name.jsonl"
        args=(--model "$work/model" --data "$work/$name.jsonl" --out "$work/$name"
              --batch-size 16 --micro-batch 16 --lr 4e-4 --bf16 --save-dtype bf16 --epochs 2
              --time-budget 200 --log-every 20 --seed 7 "$@")
        mkdir -p "$work/$name"
        echo "python scripts/training/train_lora.py ${args[*]}" | sed "s#$work/model#models/smollm2-135m-instruct#; s#$work/##g" > "$work/$name/command.txt"
        PYTHONUNBUFFERED=1 python3 scripts/training/train_lora.py "${args[@]}" > "$work/$name.log" 2>&1 &
        pids+=($!)
        names+=("$name")
    done
    status=0
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || status=1
        name=${names[$i]}
        echo "== $name"
        tail -25 "$work/$name.log"
        cp "$work/$name.log" "$work/$name/train_stdout.log"
        tar -C "$work" -cf "$out/$name.tar" "$name"
    done
    exit $status
    ;;
*)
    sed -n '2,21p' "$0"
    exit 2
    ;;
esac
