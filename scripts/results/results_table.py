#!/usr/bin/env python3
"""Merges evaluation reports into the README results table and an NDCG@10 plot.

Inputs are JSON reports in the shape `palr eval --out` writes (`src/eval/report.rs`: a
`Report` with `methods[].metrics` and, with `--per-user`, `per_user[].ranks`), e.g. one for the
retrievers on all users, one for LLM methods on a sample, and `benchmarks/results/sasrec.json`
from `scripts/results/sasrec_recbole.py` (same shape). Every report must be of the same split.

Outputs:
- a Markdown table, one row per method and report: users evaluated, HR@1/5/10/20,
  NDCG@5/10/20 (NDCG@10 with one standard error when per-user ranks are there), MRR (over the
  top 100), and for LLM methods the recall@20 of the candidates they re-ranked (their ceiling);
- optionally that table spliced into a file between the lines `<!-- results-table:start -->` and
  `<!-- results-table:end -->` (the README), or with `--readme-section NAME` between
  `<!-- results-table-NAME:start -->` and `<!-- results-table-NAME:end -->` (a second table,
  e.g. the validation split's);
- optionally a PNG bar chart of NDCG@10 by method, error bars = one standard error
  (sample standard deviation of the per-user NDCG@10 over sqrt(users)), none without per-user ranks.

Only the standard library is needed for the table; the plot needs matplotlib.

    scripts/results/results_table.py benchmarks/results/retrievers.json benchmarks/results/sasrec.json \
        --markdown benchmarks/results/results.md --plot benchmarks/results/ndcg10.png --readme README.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"
METRICS = ["HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"]


class InputError(Exception):
    """A report or target file that cannot be used; the message names it and the fix."""


@dataclass
class Row:
    method: str
    kind: str  # "retriever", "llm" or "baseline" (a model trained outside palr, e.g. SASRec)
    users: int
    evaluable: int
    sampled: bool
    seed: int
    metrics: dict
    ndcg10_se: float | None
    source: str

    def label(self, all_rows: list["Row"]) -> str:
        """The method's name, with its user count for a sample or when another row has the same name."""
        if self.sampled or sum(r.method == self.method for r in all_rows) > 1:
            return f"{self.method} ({self.users} users)"
        return self.method


def ndcg10(rank) -> float:
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= 10 else 0.0


def standard_error(values: list[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def load_report(path: Path) -> tuple[str, list[Row]]:
    """Reads one report; returns its split and one Row per method."""
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such report (run `palr eval --out {path}` or scripts/results/results.sh)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e})") from None
    if not isinstance(rep, dict) or not isinstance(rep.get("methods"), list) or not rep["methods"]:
        raise InputError(f"{path}: no `methods` list: expected a `palr eval --out` report")
    for key in ("split", "users", "n_evaluable_users"):
        if key not in rep:
            raise InputError(f"{path}: missing `{key}`: expected a `palr eval --out` report")
    per_user = rep.get("per_user") or []
    rows = []
    for m in rep["methods"]:
        name = m.get("method")
        metrics = m.get("metrics")
        if not isinstance(name, str) or not isinstance(metrics, dict):
            raise InputError(f"{path}: a method entry without `method`/`metrics`")
        missing = [k for k in METRICS if not isinstance(metrics.get(k), (int, float))]
        if missing:
            raise InputError(f"{path}: method {name} lacks metrics {missing}")
        se = None
        if per_user:
            if any(name not in u.get("ranks", {}) for u in per_user):
                raise InputError(f"{path}: per_user ranks lack method {name}")
            vals = [ndcg10(u["ranks"][name]) for u in per_user]
            mean = sum(vals) / len(vals)
            if len(vals) != rep["users"] or abs(mean - metrics["NDCG@10"]) > 1e-9:
                raise InputError(
                    f"{path}: per-user ranks of {name} give NDCG@10 {mean:.6f} over {len(vals)} users, "
                    f"the report says {metrics['NDCG@10']:.6f} over {rep['users']}: the file is inconsistent"
                )
            se = standard_error(vals)
        if m.get("mode"):
            kind = "llm"
        elif "sasrec" in rep or rep.get("backend", "").startswith("RecBole"):
            kind = "baseline"
            # palr serves a `sasrec` of its own: name the outside baseline by its origin.
            name = f"{name} (RecBole)"
        else:
            kind = "retriever"
        rows.append(Row(name, kind, int(rep["users"]), int(rep["n_evaluable_users"]),
                        bool(rep.get("sampled")), int(rep.get("seed", 0)), metrics, se, str(path)))
    return rep["split"], rows


def load_all(paths: list[Path]) -> tuple[str, list[Row]]:
    if not paths:
        raise InputError("no reports given")
    split, rows = None, []
    for p in paths:
        s, r = load_report(p)
        if split is not None and s != split:
            raise InputError(f"{p}: split {s!r}, but earlier reports are {split!r}: merge one split at a time")
        split = s
        rows.extend(r)
    return split, rows


def markdown(split: str, rows: list[Row]) -> str:
    head = ("| method | users | HR@1 | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | MRR | "
            "candidate recall@20 |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        m = r.metrics
        users = f"{r.users} (sample, seed {r.seed})" if r.sampled else str(r.users)
        nd10 = f"{m['NDCG@10']:.4f}" + (f" ± {r.ndcg10_se:.4f}" if r.ndcg10_se is not None else "")
        recall = f"{m['recall@20']:.4f}" if r.kind == "llm" and "recall@20" in m else "—"
        cells = [r.method, users] + [f"{m[k]:.4f}" for k in ("HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5")]
        cells += [nd10, f"{m['NDCG@20']:.4f}", f"{m['MRR']:.4f}", recall]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"MovieLens-100k, **{split}** split, leave-one-out, full ranking over all items minus the "
            "user's history; MRR over the top 100; ± = one standard error over users; candidate "
            "recall@20 = share of targets among the 20 candidates an LLM method re-ranked.\n\n")
    return note + head + "\n".join(lines) + "\n"


def markers(section: str | None) -> tuple[str, str]:
    """The lines a table goes between: the main table's, or a named section's."""
    if section is None:
        return START, END
    if not section or not all(c.isalnum() or c in "-_" for c in section):
        raise InputError(f"section name {section!r}: use letters, digits, '-' and '_'")
    return f"<!-- results-table-{section}:start -->", f"<!-- results-table-{section}:end -->"


def splice(path: Path, table: str, section: str | None = None) -> None:
    start, end = markers(section)
    text = path.read_text(encoding="utf-8")
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise InputError(f"{path}: needs one line `{start}` followed by one line `{end}` to put the table between")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{table}{end}{after}", encoding="utf-8")


def plot(rows: list[Row], split: str, out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise InputError("the plot needs matplotlib (scripts/results/sasrec-setup.sh installs it in .cache/sasrec-venv)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"retriever": "#4C72B0", "llm": "#DD8452", "baseline": "#55A868"}
    names = {"retriever": "retriever alone", "llm": "retriever + LLM re-ranking", "baseline": "SASRec (RecBole)"}
    labels = [r.label(rows) for r in rows]
    values = [r.metrics["NDCG@10"] for r in rows]
    errors = [r.ndcg10_se if r.ndcg10_se is not None else 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(rows)), 4.2))
    x = list(range(len(rows)))
    ax.bar(x, values, yerr=errors, capsize=4, color=[colors[r.kind] for r in rows], edgecolor="black", linewidth=0.5)
    top = max(v + e for v, e in zip(values, errors)) or 1.0
    for xi, v, e in zip(x, values, errors):
        ax.text(xi, v + e + 0.015 * top, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=9)
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"MovieLens-100k {split} split, full ranking (error bars: 1 SE)", fontsize=10)
    ax.set_ylim(0, top * 1.18)
    seen = []
    for r in rows:
        if r.kind not in seen:
            seen.append(r.kind)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in seen],
              labels=[names[k] for k in seen], fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="`palr eval --out` / sasrec_recbole.py JSON reports")
    p.add_argument("--markdown", type=Path, help="write the table here (it is always printed)")
    p.add_argument("--readme", type=Path, help=f"splice the table into this file between {START} and {END}")
    p.add_argument("--readme-section", metavar="NAME",
                   help="with --readme: between <!-- results-table-NAME:start --> and <!-- results-table-NAME:end --> instead")
    p.add_argument("--plot", type=Path, help="write the NDCG@10 bar chart (PNG) here")
    args = p.parse_args(argv)
    try:
        split, rows = load_all(args.reports)
        table = markdown(split, rows)
        print(table, end="")
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(table, encoding="utf-8")
        if args.readme:
            splice(args.readme, table, args.readme_section)
        elif args.readme_section:
            raise InputError("--readme-section needs --readme")
        if args.plot:
            plot(rows, split, args.plot)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
