#!/usr/bin/env bash
# Reproduces plugins/sasrec/weights/ml100k/{valid,test,all}.safetensors and
# benchmarks/results/sasrec/{valid,test,all}/ with the settings chosen on validation
# (benchmarks/results/sasrec/sweep.md): the `valid` run early-stops on validation NDCG@10,
# the `test` and `all` runs train for its best epoch count on their own views.
# Usage: scripts/train-sasrec-ml100k.sh [STAGE...]   (default: valid test all)
# Needs: the release binary (cargo build --release) and the ml-100k data (scripts/run.sh
# fetches it). ~25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(scripts/train-venv.sh)"
PALR=${PALR:-./target/release/palr}
VIEWS=.cache/sasrec-views
WEIGHTS=plugins/sasrec/weights/ml100k
RESULTS=benchmarks/results/sasrec
HYPER=(--hidden 64 --blocks 2 --heads 2 --inner 256 --max-len 50 --dropout 0.5 --lr 2e-3
       --batch-size 128 --loss-norm position --seed 0)
mkdir -p "$VIEWS" "$WEIGHTS"
stages=("$@"); [ ${#stages[@]} -gt 0 ] || stages=(valid test all)
for stage in "${stages[@]}"; do
  "$PALR" data export-view --stage "$stage" --out "$VIEWS/$stage.json"
  extra=()
  [ "$stage" = valid ] || extra=(--epochs-from "$RESULTS/valid/train_summary.json")
  rm -rf "$RESULTS/$stage"
  "$PY" scripts/train_sasrec.py --view "$VIEWS/$stage.json" --out "$WEIGHTS/$stage.safetensors" \
    --log-dir "$RESULTS/$stage" "${HYPER[@]}" "${extra[@]}" --quiet
done
