#!/usr/bin/env bash
# The one prepared GPU run: correctness, then timings next to PyTorch and the
# physical floors. Runs on the GPU machine, from the repository root, with the
# bundle that scripts/gpu/gpu-bundle.sh built on a machine without a GPU (nothing is
# compiled here).
#
#   scripts/gpu/gpu-check.sh RESULTS_DIR [PARTS]
#
# PARTS (comma-separated, default tests,bench,torch,report):
#   tests   tests/cuda_ops.rs and tests/cuda_model.rs with PALR_REQUIRE_CUDA=1
#           (a missing driver fails instead of skipping); cuda_model's service
#           test loads the popularity plugin from the bundle's bin/, next to it
#   sanitize  (not in the default) tests/cuda_ops.rs under compute-sanitizer
#           memcheck with PALR_CUDA_SYNC_CHECK=1, filtered by
#           GPU_CHECK_SANITIZE_FILTER (a test-name substring; slow: minutes)
#   profile (not in the default) Nsight Compute on the LoRA SGMV kernels at 7B
#           widths, one row and five (palr bench gpu --parts lora --quick): each
#           kernel's duration, DRAM and SM throughput -> ncu-lora.csv; compare the
#           kernels' sum with bench.log's per-projection overhead to tell kernel
#           time from launch gaps
#   bench   palr bench gpu (ceilings, attention, LoRA, SmolLM2 and 7B shapes)
#   torch   scripts/gpu/gpu_torch_bench.py: the same figures with PyTorch
#   report  scripts/gpu/gpu_report.py: the table (also printed last)
# Writes to RESULTS_DIR (6 files, 7 with profile): env.txt tests.log bench.log
# palr-bench.json torch-bench.json report.txt [ncu-lora.csv]. Keeps to a time budget (GPU_CHECK_BUDGET_S,
# default 500 s): each part gets what is left, so the table still comes out.
# Exit status: 1 if a test failed, 2 on a setup error, else 0.
set -uo pipefail
cd "$(dirname "$0")/../.."

res=${1:?usage: scripts/gpu/gpu-check.sh RESULTS_DIR [tests,bench,torch,report]}
parts=",${2:-tests,bench,torch,report},"
budget=${GPU_CHECK_BUDGET_S:-500}
deadline=$((SECONDS + budget))
mkdir -p "$res"
res=$(cd "$res" && pwd)

# Seconds a part may take: at most $1, and leave $2 for the parts after it.
allow() {
    local left=$((deadline - SECONDS - $2))
    [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"
}

bundle=.cache/gpu-bundle
work=/tmp/palr-gpu
if [ ! -f "$bundle/bin.tar.xz" ]; then
    echo "error: $bundle/bin.tar.xz missing: run scripts/gpu/gpu-bundle.sh on the build machine and carry .cache/gpu-bundle" >&2
    exit 2
fi
rm -rf "$work"
mkdir -p "$work"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$bundle/bin.tar.xz" "$work" || exit 2

# The CUDA 13 libraries palr opens (driver, NVRTC, cuBLAS): the image's toolkit,
# else the ones PyTorch's wheels ship.
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
    $(python3 -c '
import glob, site, os
roots = set(site.getsitepackages() + [site.getusersitepackages()])
try:
    import torch
    roots.add(os.path.dirname(os.path.dirname(torch.__file__)))
except Exception:
    pass
for r in sorted(roots):
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib"))):
        print(d)
' 2>/dev/null); do
    [ -d "$d" ] && libdirs="$libdirs:$d"
done
export PALR_CUDA_LIB_DIR=${libdirs#:}
export PALR_REQUIRE_CUDA=1 RUST_BACKTRACE=1

{
    echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ)  parts $parts  budget ${budget}s"
    cat "$bundle/MANIFEST"
    echo "== nvidia-smi"
    nvidia-smi 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv 2>&1
    echo "== kernel: $(uname -r)"
    echo "== PALR_CUDA_LIB_DIR=$PALR_CUDA_LIB_DIR"
    for lib in libcuda.so.1 libnvrtc.so.13 libnvrtc-builtins.so.13.0 libcublas.so.13 libcublasLt.so.13; do
        found=$(IFS=:; for d in $PALR_CUDA_LIB_DIR; do [ -e "$d/$lib" ] && echo "$d/$lib"; done | head -1)
        echo "$lib: ${found:-not in those directories (left to the dynamic loader: $(ldconfig -p 2>/dev/null | grep -m1 "$lib" | awk '{print $NF}'))}"
    done
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1
} > "$res/env.txt" 2>&1
cat "$res/env.txt"

status=0
if [[ $parts == *,tests,* ]]; then
    : > "$res/tests.log"
    for t in cuda_ops cuda_model; do
        # Leave time for the timings: 120 s for bench + torch + report at least.
        lim=$(allow 200 120)
        echo "== $t (limit ${lim}s)" | tee -a "$res/tests.log"
        skip=()
        if [ "$t" = cuda_model ] && [ ! -f "${PALR_MODEL_DIR:-models/smollm2-135m-instruct}/config.json" ]; then
            # Said in the log, never counted as a pass: the real model was not carried here.
            echo "NOT RUN: smollm2_on_gpu_matches_the_reference (no default model on this machine; set PALR_MODEL_DIR)" | tee -a "$res/tests.log"
            skip=(--skip smollm2_on_gpu_matches_the_reference)
        fi
        timeout "$lim" "$work/bin/$t" --include-ignored "${skip[@]}" --test-threads=4 2>&1 | tee -a "$res/tests.log"
        rc=${PIPESTATUS[0]}
        echo "== $t exit $rc" | tee -a "$res/tests.log"
        [ "$rc" -ne 0 ] && status=1
    done
fi
if [[ $parts == *,sanitize,* ]]; then
    lim=$(allow 300 30)
    echo "== compute-sanitizer memcheck cuda_ops ${GPU_CHECK_SANITIZE_FILTER:-} (limit ${lim}s)" | tee -a "$res/tests.log"
    PALR_CUDA_SYNC_CHECK=1 timeout "$lim" compute-sanitizer --tool memcheck --error-exitcode 9 \
        "$work/bin/cuda_ops" --include-ignored --test-threads=1 ${GPU_CHECK_SANITIZE_FILTER:-} 2>&1 | tail -200 | tee -a "$res/tests.log"
    rc=${PIPESTATUS[0]}
    echo "== sanitizer exit $rc" | tee -a "$res/tests.log"
    [ "$rc" -ne 0 ] && status=1
fi
if [[ $parts == *,profile,* ]]; then
    lim=$(allow 150 10)
    echo "== ncu on the LoRA kernels (limit ${lim}s)" | tee -a "$res/bench.log"
    timeout "$lim" ncu --clock-control none --kernel-name regex:'lora_|cast_' --csv \
        --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size \
        "$work/bin/palr" bench gpu --parts lora --quick --runs 2 > "$res/ncu-lora.csv" 2> >(tail -20 >> "$res/bench.log")
    echo "== ncu exit $? ($(grep -c lora_ "$res/ncu-lora.csv" 2>/dev/null) LoRA kernel rows)" | tee -a "$res/bench.log"
fi
if [[ $parts == *,bench,* ]]; then
    rm -f "$res/palr-bench.json"
    lim=$(allow 240 60)
    echo "== palr bench gpu (limit ${lim}s)" | tee -a "$res/bench.log"
    timeout "$lim" "$work/bin/palr" bench gpu --json "$res/palr-bench.json" 2>&1 | tee -a "$res/bench.log"
    echo "== palr bench gpu exit ${PIPESTATUS[0]}" | tee -a "$res/bench.log"
fi
if [[ $parts == *,torch,* ]]; then
    rm -f "$res/torch-bench.json"
    lim=$(allow 200 10)
    echo "== PyTorch baselines (limit ${lim}s)" | tee -a "$res/bench.log"
    PYTHONUNBUFFERED=1 timeout "$lim" python3 scripts/gpu/gpu_torch_bench.py --json "$res/torch-bench.json" 2>&1 | tee -a "$res/bench.log"
    echo "== PyTorch baselines exit ${PIPESTATUS[0]}" | tee -a "$res/bench.log"
fi
if [[ $parts == *,report,* ]]; then
    python3 scripts/gpu/gpu_report.py "$res/palr-bench.json" "$res/torch-bench.json" > "$res/report.txt" 2>&1
fi
echo
grep -E "^test result|^== cuda_.* exit|FAILED|panicked" "$res/tests.log" 2>/dev/null | head -40
echo
[ -f "$res/report.txt" ] && cat "$res/report.txt"
echo
echo "tests: $([ $status -eq 0 ] && echo passed || echo FAILED)  (${SECONDS}s)"
exit $status
