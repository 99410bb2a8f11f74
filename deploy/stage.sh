#!/usr/bin/env bash
# Lays out what palr's image holds under DEST (deploy/Containerfile: /opt/palr, its working
# directory), from a tree scripts/setup/prepare.sh has built and fetched:
#
#   deploy/stage.sh DEST      copy
#   deploy/stage.sh --list    print "SOURCE TARGET" lines (TARGET relative to DEST), copy nothing
#
# deploy/tests/test_kubernetes.py reads --list and checks that every path configs/palr.toml
# names, relative to the working directory, is there.
set -euo pipefail
cd "$(dirname "$0")/.."
entries=(
    "target/release/palr bin/palr"
    # Bare plugin names are looked up beside the executable.
    "target/release/libpalr_retriever_popularity.so bin/libpalr_retriever_popularity.so"
    "target/release/libpalr_retriever_itemknn.so bin/libpalr_retriever_itemknn.so"
    "target/release/libpalr_retriever_markov.so bin/libpalr_retriever_markov.so"
    "target/release/libpalr_retriever_sasrec.so bin/libpalr_retriever_sasrec.so"
    "models/smollm2-135m-instruct models/smollm2-135m-instruct"
    "data/ml-100k data/ml-100k"
    "plugins/sasrec/weights/ml100k plugins/sasrec/weights/ml100k"
    "configs/palr.toml configs/palr.toml"
)
if [ "${1:-}" = "--list" ]; then
    printf '%s\n' "${entries[@]}"
    exit 0
fi
dest=${1:?usage: deploy/stage.sh DEST | --list}
for e in "${entries[@]}"; do
    read -r src rel <<< "$e"
    mkdir -p "$(dirname "$dest/$rel")"
    cp -r "$src" "$dest/$rel"
done
