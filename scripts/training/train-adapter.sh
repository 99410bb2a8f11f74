#!/usr/bin/env bash
# Trains the shipped LoRA adapter, adapters/ml100k-markov-score, from scratch: the score-mode
# ranker (labelled candidates, one prefill) on SmolLM2-135M-Instruct, taught on MovieLens-100k
# training histories with the Markov retriever's candidate lists, exactly as they are served.
#
#   scripts/training/train-adapter.sh [--out DIR] [--time-budget SECONDS] [--examples-per-user N]
#       [--candidate-order retriever|retriever-shuffled] [--tail N] [--ranker-config FILE]
#       [--lr LR] [--seed S] [--data-only FILE]
#
# The defaults are the shipped adapter's recipe. --tail N makes leak-free lists (see
# benchmarks/results/experiments/item-genres); --ranker-config (e.g. an item_line) must then be
# served too; --data-only FILE writes the training data there and stops (no Python needed),
# e.g. for scripts/gpu/gpu-train.sh pack.
#
# 1. .cache/train-venv with scripts/requirements-train.txt (torch, transformers, peft), once;
# 2. palr sft-data: task recommend_retrieval_score, candidates = Markov's top 20 in its order
#    (--candidate-order retriever), N positions per user from the training part only;
# 3. scripts/training/train_lora.py: r 16, alpha 32, all projections, bf16 autocast, lr 4e-4, batch 16,
#    one pass at most, stopped by the time budget (default 3300 s, what the shipped adapter had
#    on 2 shared CPU cores); the adapter is saved in bf16 (10 MB).
# Writes DIR (default adapters/ml100k-markov-score): adapter_config.json,
# adapter_model.safetensors, train_summary.json, train_log.jsonl, loss.png, command.txt.
# Environment: PYTHON (default python3), TRAIN_VENV (default .cache/train-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."

out=adapters/ml100k-markov-score
budget=3300
per_user=4
seed=7
order=retriever
tail_n=0
ranker_cfg=
lr=4e-4
data_only=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --time-budget) budget=$2; shift 2 ;;
        --examples-per-user) per_user=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --candidate-order) order=$2; shift 2 ;;
        --tail) tail_n=$2; shift 2 ;;
        --ranker-config) ranker_cfg=$2; shift 2 ;;
        --lr) lr=$2; shift 2 ;;
        --data-only) data_only=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "train-adapter.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

VENV=${TRAIN_VENV:-.cache/train-venv}
if [ -z "$data_only" ]; then
    scripts/train-venv.sh >/dev/null
fi

cargo build --release --workspace
palr=./target/release/palr
$palr model fetch
$palr data fetch ml-100k

sft=(sft-data --tasks recommend_retrieval_score --candidate-order "$order"
     --hard-negative-retriever palr_retriever_markov --max-examples-per-user "$per_user"
     --seed "$seed" --no-progress)
[ "$tail_n" != 0 ] && sft+=(--tail "$tail_n")
[ -n "$ranker_cfg" ] && sft+=(--ranker-config "$ranker_cfg")
if [ -n "$data_only" ]; then
    $palr "${sft[@]}" --out "$data_only"
    exit 0
fi
mkdir -p "$out"
data=$(mktemp --suffix=.jsonl)
trap 'rm -f "$data"' EXIT
sft+=(--out "$data")
$palr "${sft[@]}"

train=(scripts/training/train_lora.py --model models/smollm2-135m-instruct --data "$data" --out "$out"
       --batch-size 16 --micro-batch 8 --lr "$lr" --bf16 --save-dtype bf16
       --time-budget "$budget" --log-every 2 --seed "$seed")
{
    echo "palr ${sft[*]}"
    echo "python ${train[*]}"
} | sed "s#$data#SFT.jsonl#g" > "$out/command.txt"
"$VENV/bin/python" "${train[@]}"
