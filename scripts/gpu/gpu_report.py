#!/usr/bin/env python3
"""The table of scripts/gpu/gpu-check.sh: palr's GPU figures next to PyTorch's for the
same shapes and next to each figure's physical floor.

    gpu_report.py PALR_JSON [TORCH_JSON]

Each JSON file holds one record per line (part, name, ms, bytes, flops, extra),
as `palr bench gpu --json` and scripts/gpu/gpu_torch_bench.py write them. The floor
of a figure is max(bytes / bandwidth, flops / matrix rate), with the two
ceilings measured in the same run (the larger of palr's and PyTorch's copy and
matmul figures); the datasheet H100 SXM values stand in only when neither was
measured, and the table says so.
"""
import json
import sys


def load(path):
    recs = []
    if not path:
        return recs
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    recs.append(json.loads(line))
    except FileNotFoundError:
        print(f"note: {path} not found", file=sys.stderr)
    return recs


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    palr = load(sys.argv[1])
    torch = load(sys.argv[2] if len(sys.argv) > 2 else None)
    torch_by_name = {r["name"]: r for r in torch}

    bw, peak, src = [], [], "measured"
    for r in palr + torch:
        if r["part"] == "ceilings" and "tb_s" in r.get("extra", {}):
            bw.append(r["extra"]["tb_s"] * 1e12)
        if r["part"] == "ceilings" and "tflop_s" in r.get("extra", {}):
            peak.append(r["extra"]["tflop_s"] * 1e12)
    if not bw or not peak:
        src = "H100 SXM datasheet (not measured)"
    bw = max(bw) if bw else 3.35e12
    peak = max(peak) if peak else 989e12
    print(f"ceilings ({src}): {bw / 1e12:.2f} TB/s copy (read + write), {peak / 1e12:.0f} TFLOP/s bf16 matmul")
    print()
    hdr = f"{'figure':<52} {'palr ms':>10} {'torch ms':>10} {'floor ms':>10} {'bound':>7} {'palr/floor':>10} {'palr/torch':>10}  notes"
    print(hdr)
    print("-" * len(hdr))
    for r in palr:
        if r["part"] == "ceilings":
            t = torch_by_name.get(r["name"])
            print(f"{r['name']:<52} {r['ms']:>10.4f} {t['ms'] if t else float('nan'):>10.4f} "
                  f"{'':>10} {'':>7} {'':>10} {'':>10}  {json.dumps(r.get('extra', {}))}")
            continue
        mem = r["bytes"] / bw * 1e3
        comp = r["flops"] / peak * 1e3
        floor = max(mem, comp)
        bound = "memory" if mem >= comp else "compute"
        t = torch_by_name.get(r["name"])
        tms = t["ms"] if t else float("nan")
        extra = r.get("extra", {})
        notes = []
        if "tokens_s" in extra:
            notes.append(f"{extra['tokens_s']:.0f} tok/s")
            if t and "tokens_s" in t.get("extra", {}):
                notes.append(f"torch {t['extra']['tokens_s']:.0f} tok/s")
        if "overhead_pct" in extra:
            notes.append(f"unmerged overhead {extra['overhead_pct']:+.1f}%")
        ratio_f = r["ms"] / floor if floor > 0 else float("nan")
        ratio_t = r["ms"] / tms if t else float("nan")
        print(f"{r['name']:<52} {r['ms']:>10.4f} {tms:>10.4f} {floor:>10.4f} {bound:>7} "
              f"{ratio_f:>10.2f} {ratio_t:>10.2f}  {', '.join(notes)}")
    missing = [r["name"] for r in torch if r["name"] not in {p["name"] for p in palr}]
    if missing:
        print()
        print("PyTorch only: " + "; ".join(f"{n} {torch_by_name[n]['ms']:.4f} ms" for n in missing))


if __name__ == "__main__":
    main()
