#!/usr/bin/env python3
"""Paired comparison of one method in two `palr eval --per-user` reports on the same users.

usage: scripts/results/compare_per_user.py A.json B.json --method METHOD [--label-a A --label-b B]
                                   [--markdown OUT.md]

Per user, the target's rank under METHOD in each report gives NDCG@10, HR@10 and the
reciprocal rank (0 when the target is past the report's depth). For each metric the table
gives both means, the mean of the per-user differences B − A and its standard error
(sample standard deviation of the differences / sqrt(users)), and how many users' target
ranks are identical. Both reports must cover the same users with the same targets.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def metrics(rank: int | None) -> dict[str, float]:
    """NDCG@10, HR@10 and reciprocal rank of a 1-based rank (None = not ranked)."""
    if rank is None:
        return {"NDCG@10": 0.0, "HR@10": 0.0, "MRR": 0.0}
    hit = rank <= 10
    return {
        "NDCG@10": 1.0 / math.log2(rank + 1) if hit else 0.0,
        "HR@10": 1.0 if hit else 0.0,
        "MRR": 1.0 / rank,
    }


def ranks(report: dict, method: str) -> dict[str, tuple[str, int | None]]:
    out = {}
    for u in report["per_user"]:
        if method not in u["ranks"]:
            raise SystemExit(f"method {method!r} is not in the report (has {sorted(u['ranks'])})")
        out[u["user"]] = (u["target"], u["ranks"][method])
    return out


def compare(a: dict, b: dict, method: str) -> dict:
    ra, rb = ranks(a, method), ranks(b, method)
    if ra.keys() != rb.keys():
        raise SystemExit(
            f"the reports cover different users ({len(ra)} vs {len(rb)}; "
            f"{len(ra.keys() ^ rb.keys())} differ): run both on the same --users/--seed"
        )
    users = sorted(ra)
    for u in users:
        if ra[u][0] != rb[u][0]:
            raise SystemExit(f"user {u}: target {ra[u][0]} in one report, {rb[u][0]} in the other")
    n = len(users)
    if n < 2:
        raise SystemExit("need at least two users for a standard error")
    rows = {}
    for name in ("NDCG@10", "HR@10", "MRR"):
        xa = [metrics(ra[u][1])[name] for u in users]
        xb = [metrics(rb[u][1])[name] for u in users]
        d = [y - x for x, y in zip(xa, xb)]
        mean = sum(d) / n
        var = sum((v - mean) ** 2 for v in d) / (n - 1)
        rows[name] = {
            "a": sum(xa) / n,
            "b": sum(xb) / n,
            "diff": mean,
            "se": math.sqrt(var / n),
        }
    same = sum(ra[u][1] == rb[u][1] for u in users)
    return {"users": n, "same_rank": same, "metrics": rows}


def markdown(result: dict, method: str, la: str, lb: str) -> str:
    lines = [
        f"`{method}` on {result['users']} users: {la} vs {lb} "
        f"(target rank identical for {result['same_rank']} of {result['users']} users)",
        "",
        f"| metric | {la} | {lb} | {lb} − {la} | SE of the difference |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in result["metrics"].items():
        lines.append(f"| {name} | {r['a']:.4f} | {r['b']:.4f} | {r['diff']:+.5f} | {r['se']:.5f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--method", required=True)
    p.add_argument("--label-a", default="A")
    p.add_argument("--label-b", default="B")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    with open(args.a) as fa, open(args.b) as fb:
        result = compare(json.load(fa), json.load(fb), args.method)
    text = markdown(result, args.method, args.label_a, args.label_b)
    print(text, end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
