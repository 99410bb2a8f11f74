#!/usr/bin/env bash
# Builds, here (no GPU needed), everything scripts/gpu/gpu-check.sh runs on a GPU
# machine, so nothing is compiled there: the palr binary (`palr bench gpu`) and
# the GPU test binaries (tests/cuda_ops.rs, tests/cuda_model.rs) and the
# popularity retriever plugin (tests/cuda_model.rs's in-process service loads
# it from the test binary's directory), stripped and packed into
# .cache/gpu-bundle/bin.tar.xz with a MANIFEST (commit, sizes, sha256). The
# device tool carries the folder: carry [".cache/gpu-bundle"].
# The binaries need glibc <= the GPU image's (Ubuntu 24.04, glibc 2.39).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.cache/gpu-bundle
stage="$out/stage"
rm -rf "$out"
mkdir -p "$stage/bin"

cargo build --release --bin palr
cargo build --release -p palr-retriever-popularity
cp target/release/palr "$stage/bin/palr"
cp target/release/libpalr_retriever_popularity.so "$stage/bin/"
# The exact paths of the test executables (target/release/deps/NAME-HASH).
cargo test --release --no-run --message-format=json --test cuda_ops --test cuda_model \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])
' > "$stage/tests.txt"
while read -r name exe; do
    cp "$exe" "$stage/bin/$name"
done < "$stage/tests.txt"
for t in cuda_ops cuda_model; do
    [ -x "$stage/bin/$t" ] || { echo "error: test binary $t was not built" >&2; exit 1; }
done
# Symbols stay (panics name their functions); debug info goes.
strip --strip-debug "$stage"/bin/*

{
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!.cache' || echo ' (with uncommitted changes)')"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version | head -1)"
    (cd "$stage/bin" && sha256sum ./* && ls -l ./*)
} > "$out/MANIFEST"
tar -C "$stage" -cf - bin | xz -T0 -6 > "$out/bin.tar.xz"
rm -rf "$stage"
cat "$out/MANIFEST"
du -b "$out/bin.tar.xz" | awk '{printf "bundle: %.1f MiB (the device tool carries at most 64 MiB with the tree)\n", $1 / 1048576}'
