#!/usr/bin/env bash
# The README's results: MovieLens-100k test split, every method on palr's protocol.
#   1. retrievers alone (popularity, itemknn, markov, sasrec, fused, genre) on all users
#      -> retrievers.json, and on the validation split -> retrievers-valid.json
#   2. LLM methods (retriever top 20 re-ranked by the LLM)                 -> llm[-NAME].json
#      (~1 s/user/method in score mode, ~3.5 s in generate mode on 2 CPU cores)
#   3. SASRec trained with RecBole 1.2.1 (scripts/results/sasrec_recbole.py)     -> sasrec.json
#   4. the table (results.md, spliced into README.md) and the NDCG@10 plot (ndcg10.png) from
#      every report in the output directory: retrievers.json, llm*.json, sasrec.json; and the
#      validation split's table (results-valid.md, README.md's "valid" section) from
#      retrievers-valid.json.
# Skipped stages keep their earlier report, so e.g. `--no-sasrec --llm-methods ...` adds an
# LLM run to the committed retriever and SASRec results.
#
# Usage: scripts/results/results.sh [options] [-- extra `palr eval` arguments for the LLM run]
#   --llm-methods LIST  LLM methods (default markov+score,markov+generate), e.g.
#                       markov+score@ft -- --adapter ft=DIR
#   --users N           evaluate the LLM methods on a seeded sample of N users (default: all);
#                       the sample's retrievers alone are evaluated on the same users too
#   --seed S            seed of that sample (default 0)
#   --llm-name NAME     write llm-NAME.json instead of llm.json (keep several LLM runs)
#   --no-llm            skip stage 2
#   --no-sasrec         skip stage 3 (a 50-minute training budget on 2 CPU cores by default)
#   --sasrec-seed S     RecBole seed (default 2020)
#   --sasrec-args "..." more sasrec_recbole.py options (default: the committed run's settings)
#   --out-dir DIR       reports go here (default benchmarks/results)
#   --no-readme         do not splice the table into README.md
set -euo pipefail
cd "$(dirname "$0")/../.."

llm_methods="markov+score,markov+generate"
users=""
seed=0
llm_name=""
run_llm=1
run_sasrec=1
sasrec_seed=2020
# The committed benchmarks/results/sasrec.json was made with these (see docs/notes/NOTES-results.md):
# a 50-minute training budget on one thread of the shared 2-core machine (two threads were
# 2-3x slower than one while the machine was busy). With a GPU: --device cuda, no budget.
sasrec_args="--train-batch-size 256 --stopping-step 5 --threads 1 --max-train-minutes 50"
out=benchmarks/results
readme=1
while [ $# -gt 0 ]; do
    case "$1" in
        --llm-methods) llm_methods=$2; shift 2 ;;
        --users) users=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --llm-name) llm_name=$2; shift 2 ;;
        --no-llm) run_llm=0; shift ;;
        --no-sasrec) run_sasrec=0; shift ;;
        --sasrec-seed) sasrec_seed=$2; shift 2 ;;
        --sasrec-args) sasrec_args=$2; shift 2 ;;
        --out-dir) out=$2; shift 2 ;;
        --no-readme) readme=0; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "results.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$users" ] && ! [[ "$users" =~ ^[1-9][0-9]*$ ]]; then
    echo "results.sh: --users needs a positive number, got '$users'" >&2; exit 2
fi
if [ -z "$llm_methods" ]; then run_llm=0; fi
mkdir -p "$out"
palr=./target/release/palr
venv_py=.cache/sasrec-venv/bin/python

cargo build --release --workspace
$palr data fetch ml-100k

# The configured retrievers (configs/palr.toml) and `genre`, which that config does not load.
retrievers=(--retriever genre=palr_retriever_genre --methods popularity,itemknn,markov,sasrec,fused,genre)
echo "== retrievers alone, all users"
$palr eval --split test "${retrievers[@]}" --per-user --no-progress \
    --out "$out/retrievers.json" --markdown "$out/retrievers.md"
echo "== retrievers alone, all users, validation split"
$palr eval --split valid "${retrievers[@]}" --per-user --no-progress \
    --out "$out/retrievers-valid.json" --markdown "$out/retrievers-valid.md"

if [ "$run_llm" = 1 ]; then
    $palr model fetch
    methods=$llm_methods
    sample=()
    if [ -n "$users" ]; then
        sample=(--users "$users" --seed "$seed")
        # The retrievers of the LLM methods alone, on the same sampled users (a paired comparison).
        bases=$(tr ',' '\n' <<<"$llm_methods" | sed 's/+.*//' | sort -u | paste -sd, -)
        methods="$bases,$llm_methods"
    fi
    name=llm${llm_name:+-$llm_name}
    echo "== LLM methods: $methods ${users:+on $users users}"
    $palr eval --split test --methods "$methods" "${sample[@]}" --per-user \
        --out "$out/$name.json" --markdown "$out/$name.md" "$@"
fi

if [ "$run_sasrec" = 1 ]; then
    [ -x "$venv_py" ] || scripts/results/sasrec-setup.sh
    echo "== SASRec (RecBole 1.2.1), seed $sasrec_seed"
    # shellcheck disable=SC2086  # sasrec_args is a list of options
    "$venv_py" scripts/results/sasrec_recbole.py --seed "$sasrec_seed" $sasrec_args --per-user \
        --palr-report "$out/retrievers.json" --out "$out/sasrec.json"
fi

echo "== table and plot"
reports=("$out/retrievers.json")
for f in "$out"/llm*.json; do [ -e "$f" ] && reports+=("$f"); done
[ -e "$out/sasrec.json" ] && reports+=("$out/sasrec.json")
py=python3
plot=()
# The plot needs matplotlib: the SASRec environment has it, so has the trainers' one.
for cand in "$venv_py" .cache/train-venv/bin/python; do
    if [ -x "$cand" ] && "$cand" -c "import matplotlib" 2>/dev/null; then
        py=$cand; plot=(--plot "$out/ndcg10.png"); break
    fi
done
[ ${#plot[@]} = 0 ] && echo "no Python with matplotlib (scripts/results/sasrec-setup.sh): table only, no plot" >&2
readme_arg=()
valid_readme_arg=()
if [ "$readme" = 1 ]; then
    readme_arg=(--readme README.md)
    valid_readme_arg=(--readme README.md --readme-section valid)
fi
"$py" scripts/results/results_table.py "${reports[@]}" --markdown "$out/results.md" "${plot[@]}" "${readme_arg[@]}"
"$py" scripts/results/results_table.py "$out/retrievers-valid.json" --markdown "$out/results-valid.md" \
    "${valid_readme_arg[@]}"
