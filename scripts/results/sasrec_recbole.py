#!/usr/bin/env python3
"""SASRec baseline for palr's offline evaluation: RecBole 1.2.1 trains it, palr's protocol scores it.

SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) is trained with
RecBole 1.2.1's implementation and trainer (CE loss over all items, 2 layers, hidden size 64,
max sequence length 50, early stopping on the validation split), on exactly the leave-one-out
split of `palr::data::Split` (README, "Offline evaluation"):

  every rating is an implicit interaction; per user, sort by (timestamp, item id as a number);
  last = test target, second-to-last = validation target, the rest is training history.

RecBole's `order: TO` sorts by timestamp alone, with a stable sort and in float32 (its FLOAT
fields become `torch.FloatTensor`, so timestamps 64 s apart can compare equal), so ties keep the
file's row order. The script therefore writes a copy of the `.inter` file whose rows are sorted
by (user, timestamp, item id numerically); RecBole's stable sorts then keep that order inside
every user. It does not trust this reasoning: before training it reads back, for every user,
the validation and test targets and the input sequences RecBole built, and stops unless they
equal palr's split (and, for MovieLens-100k, the split's sha256 pinned in
`tests/fixtures/ml100k-split-check.json`; optionally also the per-user targets of a
`palr eval --per-user` report).

Scoring follows palr's protocol, not RecBole's evaluator: the test input is the user's training
items plus the validation item (the last 50 of them, as RecBole feeds the model), the target is
ranked against all catalog items minus the user's whole history (train + validation items;
RecBole's sequential evaluator masks nothing), ties broken by item id. Metrics as in
`src/eval/metrics.rs`: HR@1/5/10/20, NDCG@5/10/20 = 1/log2(rank+1), MRR over the top 100
(palr's retrieval depth), and recall@20/50/100 of its own list (= HR@k, as for a retriever
alone). The report has the shape of `palr eval --out` (a `Report` with one method entry), plus a
`sasrec` block (training details, RecBole's own unmasked test figures, the split check).

Compatibility shims (RecBole 1.2.1 predates numpy 2 and torch >= 2.6), applied in this process
only, RecBole's files untouched: see `apply_shims()`.

Usage (venv from scripts/results/sasrec-setup.sh):
    .cache/sasrec-venv/bin/python scripts/results/sasrec_recbole.py --seed 2020 \
        --out benchmarks/results/sasrec.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

# Cut-offs, as in src/eval/metrics.rs and palr::eval::RETRIEVE_DEPTH.
HR_AT = (1, 5, 10, 20)
NDCG_AT = (5, 10, 20)
RECALL_AT = (20, 50, 100)
DEPTH = 100


class SetupError(Exception):
    """Bad input or a split that does not match palr's: the message says what and how to fix."""


# --------------------------------------------------------------------------------------------
# Compatibility shims
# --------------------------------------------------------------------------------------------


def apply_shims() -> list[str]:
    """Makes RecBole 1.2.1 run on numpy 2 / torch 2.15 without editing its files.

    - numpy 2 removed `np.float_`, `np.complex_` and `np.unicode_`, which RecBole's
      `Config.compatibility_settings()` reads to define `np.float = np.float_` etc. (aliases its
      evaluator and layers still use, e.g. `recbole/evaluator/metrics.py`: `dtype=np.float`).
      Each missing one is set to the type numpy 2 names instead (`float64`, `complex128`, `str_`).
    - torch >= 2.6 defaults `torch.load(weights_only=True)`; RecBole's checkpoints pickle its
      `Config`, so loading one needs `weights_only=False`. We load only the checkpoint this
      script just wrote (see `load_checkpoint`), so nothing is patched globally for that.

    Returns a description of what was patched (recorded in the report).
    """
    import numpy as np

    applied = []
    for old, new in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
        if old not in np.__dict__:
            setattr(np, old, getattr(np, new))
            applied.append(f"numpy.{old} = numpy.{new}")
    return applied


def load_checkpoint(path: Path):
    """Loads a checkpoint RecBole's trainer wrote in this run (it pickles a Config)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------------------------
# palr's split, computed from the atomic files
# --------------------------------------------------------------------------------------------


def read_atomic(path: Path, wanted: dict[str, str]) -> list[dict[str, str]]:
    """Reads a RecBole atomic file (tab-separated, header `name:type`) keeping `wanted` columns.

    `wanted` maps a field name to its required type; a missing column is an error.
    """
    if not path.is_file():
        raise SetupError(
            f"{path} does not exist: run `palr data fetch ml-100k` (or pass --data DIR holding "
            f"NAME.inter and NAME.item)"
        )
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        cols = {}
        for i, h in enumerate(header):
            name, _, typ = h.partition(":")
            cols[name] = (i, typ)
        idx = {}
        for name, typ in wanted.items():
            if name not in cols:
                raise SetupError(f"{path}: no column `{name}:{typ}` in header {header}")
            if cols[name][1] != typ:
                raise SetupError(f"{path}: column `{name}` has type {cols[name][1]}, expected {typ}")
            idx[name] = cols[name][0]
        rows = []
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise SetupError(f"{path}:{n}: {len(parts)} fields, header has {len(header)}")
            rows.append({name: parts[i] for name, i in idx.items()})
    return rows


def id_key(all_ids: list[str]):
    """palr's id order: numeric when every id is an integer, else lexicographic."""
    if all(s.lstrip("-").isdigit() for s in all_ids):
        return int
    return str


def palr_split(rows: list[dict[str, str]]):
    """Per user (external id) the full item sequence in palr's order.

    Sort key per user: (timestamp as a number, item id numerically when all ids are integers).
    Returns (sequences: {user: [item, ...]}, user_key, item_key).
    """
    ukey = id_key([r["user_id"] for r in rows])
    ikey = id_key([r["item_id"] for r in rows])
    by_user: dict[str, list[tuple[float, object, str]]] = {}
    for r in rows:
        try:
            ts = float(r["timestamp"])
        except ValueError:
            raise SetupError(f"timestamp {r['timestamp']!r} is not a number") from None
        by_user.setdefault(r["user_id"], []).append((ts, ikey(r["item_id"]), r["item_id"]))
    seqs = {u: [it for _, _, it in sorted(v)] for u, v in by_user.items()}
    return seqs, ukey, ikey


def split_sha256(seqs: dict[str, list[str]], ukey) -> str:
    """The fixture's `sha256_format`: lines 'user,valid,test\\n' in ascending user id."""
    h = hashlib.sha256()
    for u in sorted(seqs, key=ukey):
        s = seqs[u]
        if len(s) >= 3:
            h.update(f"{u},{s[-2]},{s[-1]}\n".encode())
    return h.hexdigest()


def write_sorted_inter(rows, ukey, ikey, dest: Path) -> None:
    """The .inter file RecBole reads: rows sorted by (user, timestamp, item id), so its stable
    sorts by timestamp (and by user) keep palr's tie order inside every user."""
    rows = sorted(rows, key=lambda r: (ukey(r["user_id"]), float(r["timestamp"]), ikey(r["item_id"])))
    with dest.open("w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for r in rows:
            f.write(f"{r['user_id']}\t{r['item_id']}\t{r['timestamp']}\n")


# --------------------------------------------------------------------------------------------
# What RecBole built, compared with palr's split
# --------------------------------------------------------------------------------------------


def recbole_rows(dataset, part):
    """(user, target, input sequence) tokens for every row of a built RecBole split."""
    feat = part.inter_feat
    uid, iid = dataset.uid_field, dataset.iid_field
    list_field = iid + dataset.config["LIST_SUFFIX"]
    len_field = dataset.config["ITEM_LIST_LENGTH_FIELD"]
    users = dataset.id2token(uid, feat[uid].numpy())
    targets = dataset.id2token(iid, feat[iid].numpy())
    lists = feat[list_field].numpy()
    lengths = feat[len_field].numpy()
    out = []
    for u, t, seq, n in zip(users, targets, lists, lengths):
        out.append((str(u), str(t), [str(x) for x in dataset.id2token(iid, seq[: int(n)])]))
    return out


def check_split(dataset, parts, seqs, max_len: int) -> dict:
    """Compares RecBole's train/valid/test rows with palr's split for every user.

    Checks: one valid and one test row per user with palr's targets; their input sequences are
    the last `max_len` items before the target in palr's order; each user's training rows have
    exactly palr's training items (from the second on) as targets, each with the right prefix.
    Raises SetupError naming the first mismatches.
    """
    train, valid, test = parts
    problems = []
    recbole_targets = {}
    for name, part, offset in (("valid", valid, 2), ("test", test, 1)):
        seen = {}
        for u, t, inp in recbole_rows(dataset, part):
            if u in seen:
                problems.append(f"{name}: user {u} has two rows")
                continue
            seen[u] = t
            s = seqs.get(u)
            if s is None:
                problems.append(f"{name}: user {u} not in the data")
                continue
            want_t = s[-offset]
            want_inp = s[: len(s) - offset][-max_len:]
            if t != want_t:
                problems.append(f"{name}: user {u} target {t}, palr {want_t}")
            if inp != want_inp:
                problems.append(f"{name}: user {u} input sequence differs from palr's order")
        missing = [u for u, s in seqs.items() if len(s) >= 3 and u not in seen]
        if missing:
            problems.append(f"{name}: {len(missing)} users have no row, e.g. {missing[:5]}")
        recbole_targets[name] = seen
    n_train_rows = 0
    train_targets: dict[str, list[tuple[str, list[str]]]] = {}
    for u, t, inp in recbole_rows(dataset, train):
        train_targets.setdefault(u, []).append((t, inp))
        n_train_rows += 1
    for u, s in seqs.items():
        hist = s[:-2]
        want = [(hist[i], hist[:i][-max_len:]) for i in range(1, len(hist))]
        got = train_targets.get(u, [])
        if got != want:
            problems.append(f"train: user {u}: RecBole's training rows differ from palr's training prefix")
    if problems:
        shown = "\n  ".join(problems[:10])
        raise SetupError(
            f"RecBole's split differs from palr's for {len(problems)} checks:\n  {shown}\n"
            "The pre-sorted .inter file and RecBole's stable sorts should make them equal; "
            "check the RecBole version (1.2.1 expected) and its eval_args."
        )
    ukey = id_key(list(seqs))
    h = hashlib.sha256()
    for u in sorted(recbole_targets["test"], key=ukey):
        h.update(f"{u},{recbole_targets['valid'][u]},{recbole_targets['test'][u]}\n".encode())
    return {
        "users_compared": len(recbole_targets["test"]),
        "valid_and_test_targets_equal": True,
        "input_sequences_equal": True,
        "train_rows_equal": True,
        "train_rows": n_train_rows,
        "recbole_split_sha256": h.hexdigest(),
    }


def check_palr_report(path: Path, seqs) -> int:
    """The per-user test targets of a `palr eval --split test --per-user` report equal ours."""
    rep = json.loads(path.read_text(encoding="utf-8"))
    if rep.get("split") != "test" or not rep.get("per_user"):
        raise SetupError(f"{path}: need a `palr eval --split test --per-user --out` report")
    bad = [
        (r["user"], r["target"])
        for r in rep["per_user"]
        if r["user"] not in seqs or seqs[r["user"]][-1] != r["target"]
    ]
    if bad:
        raise SetupError(f"{path}: {len(bad)} test targets differ from this split, e.g. {bad[:5]}")
    return len(rep["per_user"])


# --------------------------------------------------------------------------------------------
# palr's protocol
# --------------------------------------------------------------------------------------------


def metric_sums(ranks: list[int | None]) -> dict:
    """Mean metrics of 1-based ranks (None = not ranked), as src/eval/metrics.rs."""
    n = max(len(ranks), 1)

    def hit(r, k):
        return 1.0 if r is not None and r <= k else 0.0

    def ndcg(r, k):
        return 1.0 / math.log2(r + 1) if r is not None and r <= k else 0.0

    m = {"users": len(ranks)}
    for k in HR_AT:
        m[f"HR@{k}"] = sum(hit(r, k) for r in ranks) / n
    for k in NDCG_AT:
        m[f"NDCG@{k}"] = sum(ndcg(r, k) for r in ranks) / n
    m["MRR"] = sum(1.0 / r for r in ranks if r is not None) / n
    for k in RECALL_AT:
        m[f"recall@{k}"] = sum(hit(r, k) for r in ranks) / n
    return m


def score_test(model, dataset, seqs, max_len: int, device, batch: int = 256):
    """Full ranking of each user's test target with the history masked; returns
    ({user: full rank}, {user: rank with nothing but padding masked}, seconds).

    The unmasked ranks are what RecBole's own sequential evaluator computes; `main` compares
    them with it to show this function reads the model the way RecBole does."""
    import torch

    iid = dataset.iid_field
    list_field = iid + dataset.config["LIST_SUFFIX"]
    len_field = dataset.config["ITEM_LIST_LENGTH_FIELD"]
    users = sorted(seqs, key=id_key(list(seqs)))
    users = [u for u in users if len(seqs[u]) >= 3]
    n_items = dataset.item_num  # including RecBole's padding id 0
    ranks, unmasked = {}, {}
    t0 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        for b in range(0, len(users), batch):
            chunk = users[b : b + batch]
            seq = torch.zeros((len(chunk), max_len), dtype=torch.int64)
            lens = torch.zeros(len(chunk), dtype=torch.int64)
            mask = torch.zeros((len(chunk), n_items), dtype=torch.bool)
            mask[:, 0] = True  # padding is not an item
            targets = []
            for j, u in enumerate(chunk):
                s = seqs[u]
                hist_all = dataset.token2id(iid, s[:-1])  # train + validation item
                inp = hist_all[-max_len:]
                seq[j, : len(inp)] = torch.as_tensor(inp)
                lens[j] = len(inp)
                mask[j, torch.as_tensor(hist_all)] = True
                targets.append(int(dataset.token2id(iid, s[-1])))
            from recbole.data.interaction import Interaction

            inter = Interaction({list_field: seq, len_field: lens}).to(device)
            scores = model.full_sort_predict(inter).cpu().double()
            tgt = torch.as_tensor(targets)
            if mask[torch.arange(len(chunk)), tgt].any():
                raise SetupError("a test target is in its own user's history (corrupt split)")
            t_score = scores[torch.arange(len(chunk)), tgt].unsqueeze(1)
            ids = torch.arange(n_items).unsqueeze(0)
            for m, out in ((mask, ranks), (ids == 0, unmasked)):
                s = scores.masked_fill(m, -math.inf)
                above = (s > t_score) | ((s == t_score) & (ids < tgt.unsqueeze(1)))
                for u, r in zip(chunk, above.sum(dim=1).tolist()):
                    out[u] = int(r) + 1
    return ranks, unmasked, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    here = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=here / "data" / "ml-100k",
                   help="directory with NAME.inter and NAME.item (as `palr data fetch` writes them)")
    p.add_argument("--dataset", default=None, help="NAME (default: the --data directory's name)")
    p.add_argument("--seed", type=int, default=2020, help="RecBole seed (init, shuffling, dropout)")
    p.add_argument("--epochs", type=int, default=300, help="most epochs (early stopping decides)")
    p.add_argument("--stopping-step", type=int, default=10,
                   help="stop after this many validations without improvement")
    p.add_argument("--valid-metric", default="NDCG@10", help="RecBole validation metric for early stopping")
    p.add_argument("--max-seq-length", type=int, default=50)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--train-batch-size", type=int, default=2048)
    p.add_argument("--learning-rate", type=float, default=0.001)
    p.add_argument("--max-train-minutes", type=float, default=None,
                   help="start no epoch after this much training time; the report says training was "
                        "cut (stopped_by: time_budget) rather than early-stopped")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--workdir", type=Path, default=here / ".cache" / "sasrec",
                   help="scratch: the sorted dataset copy, checkpoints, RecBole logs")
    p.add_argument("--split-check", type=Path, default=here / "tests" / "fixtures" / "ml100k-split-check.json",
                   help="fixture with sha256_all_users; checked when its counts match the data ('' = skip)")
    p.add_argument("--palr-report", type=Path, default=None,
                   help="a `palr eval --split test --per-user --out` report whose targets must match")
    p.add_argument("--method-name", default="sasrec", help="the method's name in the report")
    p.add_argument("--per-user", action="store_true", help="include each user's rank in the report")
    p.add_argument("--out", type=Path, required=True, help="JSON report to write")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Absolute paths: RecBole is run from the work directory (it writes log/ there).
    for attr in ("data", "workdir", "split_check", "palr_report", "out"):
        v = getattr(args, attr)
        if v is not None and str(v):
            setattr(args, attr, v.resolve())
    t_start = time.perf_counter()
    shims = apply_shims()

    import numpy as np
    import torch
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    if recbole.__version__ != "1.2.1":
        raise SetupError(f"RecBole {recbole.__version__} found, 1.2.1 expected (scripts/results/sasrec-setup.sh)")
    torch.set_num_threads(args.threads)

    data_dir = args.data.resolve()
    name = args.dataset or data_dir.name
    inter_path, item_path = data_dir / f"{name}.inter", data_dir / f"{name}.item"
    rows = read_atomic(inter_path, {"user_id": "token", "item_id": "token", "timestamp": "float"})
    items = read_atomic(item_path, {"item_id": "token"})
    seqs, ukey, ikey = palr_split(rows)
    catalog = {r["item_id"] for r in items}
    unknown = {r["item_id"] for r in rows} - catalog
    if unknown:
        raise SetupError(f"{len(unknown)} items of {inter_path} are not in {item_path}, e.g. {sorted(unknown)[:5]}")
    short = [u for u, s in seqs.items() if len(s) < 3]
    if short:
        raise SetupError(f"{len(short)} users have fewer than 3 interactions (e.g. {short[:5]}); "
                         "RecBole's leave-one-out would still give them a test item, palr does not")
    palr_sha = split_sha256(seqs, ukey)
    split_info = {"palr_split_sha256": palr_sha, "users": len(seqs), "items": len(catalog),
                  "interactions": len(rows)}
    if args.split_check and str(args.split_check):
        fx = json.loads(args.split_check.read_text(encoding="utf-8"))
        if (fx["n_users"], fx["n_items"], fx["n_interactions"]) == (len(seqs), len(catalog), len(rows)):
            if fx["sha256_all_users"] != palr_sha:
                raise SetupError(f"split sha256 {palr_sha} != {args.split_check}'s {fx['sha256_all_users']}")
            split_info["fixture"] = str(args.split_check)
            split_info["fixture_sha256_equal"] = True
        else:
            split_info["fixture"] = f"{args.split_check} not applicable (other data set)"
    if args.palr_report:
        split_info["palr_report"] = str(args.palr_report)
        split_info["palr_report_users_equal"] = check_palr_report(args.palr_report, seqs)

    # The dataset copy RecBole reads: rows in palr's order. Its name must not be `ml-100k`:
    # for that name RecBole 1.2.1 ignores `data_path` and reads its bundled copy
    # (`Config._set_default_parameters`).
    work = args.workdir / f"seed-{args.seed}"
    rb_name = f"palr-{name}"
    if work.exists():
        shutil.rmtree(work)
    (work / rb_name).mkdir(parents=True)
    write_sorted_inter(rows, ukey, ikey, work / rb_name / f"{rb_name}.inter")
    shutil.copyfile(item_path, work / rb_name / f"{rb_name}.item")
    os.chdir(work)  # RecBole writes log/ and log_tensorboard/ into the working directory

    config = Config(
        model="SASRec",
        dataset=rb_name,
        config_dict={
            "data_path": str(work),
            "checkpoint_dir": str(work / "saved"),
            "seed": args.seed,
            "reproducibility": True,
            "use_gpu": args.device == "cuda",
            "state": "INFO",
            "show_progress": False,
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
            "normalize_all": False,
            "user_inter_num_interval": "[0,inf)",
            "item_inter_num_interval": "[0,inf)",
            "val_interval": None,
            "rm_dup_inter": None,
            "MAX_ITEM_LIST_LENGTH": args.max_seq_length,
            "n_layers": args.layers,
            "hidden_size": args.hidden,
            "loss_type": "CE",
            "train_neg_sample_args": None,
            "train_batch_size": args.train_batch_size,
            "learning_rate": args.learning_rate,
            "epochs": args.epochs,
            "stopping_step": args.stopping_step,
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
            "metrics": ["Hit", "NDCG", "MRR"],
            "topk": [10],
            "valid_metric": args.valid_metric,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    log = logging.getLogger()

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    parts = (train_data._dataset, valid_data._dataset, test_data._dataset)
    split_info.update(check_split(dataset, parts, seqs, args.max_seq_length))
    log.info("split check: RecBole's split equals palr's for all %d users", split_info["users_compared"])

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    best_epoch = {"epoch": None}
    orig_save = trainer._save_checkpoint

    def save_and_note(epoch, *a, **kw):
        best_epoch["epoch"] = epoch
        return orig_save(epoch, *a, **kw)

    trainer._save_checkpoint = save_and_note
    curve = []
    epoch_times = []
    orig_train_epoch = trainer._train_epoch

    class TimeBudget(Exception):
        pass

    def timed_train_epoch(*a, **kw):
        if args.max_train_minutes is not None and time.perf_counter() - t_train > 60 * args.max_train_minutes:
            raise TimeBudget()
        t = time.perf_counter()
        loss = orig_train_epoch(*a, **kw)
        epoch_times.append(time.perf_counter() - t)
        return loss

    trainer._train_epoch = timed_train_epoch
    t_train = time.perf_counter()
    stopped_by = "epochs"
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                    callback_fn=lambda epoch, score: curve.append([epoch, float(score)]))
        if len(epoch_times) < args.epochs:
            stopped_by = "early_stopping"
    except TimeBudget:
        stopped_by = "time_budget"
        log.warning("time budget of %s min spent: training cut after %d epochs, before early stopping",
                    args.max_train_minutes, len(epoch_times))
    train_s = time.perf_counter() - t_train
    if best_epoch["epoch"] is None:
        raise SetupError("no epoch finished (no checkpoint): raise --max-train-minutes or --epochs")

    ckpt = load_checkpoint(Path(trainer.saved_model_file))
    model.load_state_dict(ckpt["state_dict"])
    model.load_other_parameter(ckpt.get("other_parameter"))
    recbole_test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)

    full_ranks, unmasked_ranks, score_s = score_test(model, dataset, seqs, args.max_seq_length, config["device"])
    # Cross-check: our scoring without the history mask must reproduce RecBole's evaluator.
    um = metric_sums([r if r <= 10 else None for r in unmasked_ranks.values()])
    mrr10 = sum(1.0 / r for r in unmasked_ranks.values() if r <= 10) / max(len(unmasked_ranks), 1)
    ours_unmasked = {"hit@10": um["HR@10"], "ndcg@10": um["NDCG@10"], "mrr@10": mrr10}
    diff = max(abs(ours_unmasked[k] - float(recbole_test[k])) for k in ours_unmasked)
    if diff > 2e-3:  # RecBole rounds to 4 decimals; a real mismatch is far larger
        raise SetupError(f"unmasked scoring {ours_unmasked} differs from RecBole's evaluator {dict(recbole_test)}")
    users = list(full_ranks)
    ranks = [r if r <= DEPTH else None for r in full_ranks.values()]
    metrics = metric_sums(ranks)
    log.info("palr protocol, %d users: HR@10 %.4f NDCG@10 %.4f", len(users), metrics["HR@10"], metrics["NDCG@10"])

    method = args.method_name
    report = {
        "split": "test",
        "training_view": "RecBole training rows (each user's training items) for fitting, validation item "
                         "for early stopping; test input = training items + validation item",
        "backend": f"RecBole {recbole.__version__} SASRec, scored by scripts/results/sasrec_recbole.py",
        "n_items": len(catalog),
        "n_users": len(seqs),
        "n_evaluable_users": len(users),
        "users": len(users),
        "sampled": False,
        "seed": args.seed,
        "candidates": 0,
        "depth": DEPTH,
        "retrievers": [],
        "methods": [{
            "method": method,
            "retriever": method,
            "mode": None,
            "adapter": None,
            "metrics": metrics,
            "times": {"retrieve_s": score_s, "prompt_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0,
                      "rank_s": 0.0, "total_s": score_s, "prompt_tokens": 0, "cached_prompt_tokens": 0,
                      "generated_tokens": 0},
            "seconds_per_user": score_s / max(len(users), 1),
        }],
        "wall_s": time.perf_counter() - t_start,
        "sasrec": {
            "recbole": recbole.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "device": str(config["device"]),
            "threads": args.threads,
            "shims": shims,
            "config": {k: config[k] for k in (
                "loss_type", "n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob",
                "attn_dropout_prob", "hidden_act", "MAX_ITEM_LIST_LENGTH", "learning_rate",
                "train_batch_size", "epochs", "stopping_step", "valid_metric", "seed", "eval_args")},
            "epochs_run": len(epoch_times),
            "stopped_by": stopped_by,
            "epoch_s": epoch_times,
            "best_epoch": best_epoch["epoch"],
            "best_valid_score": float(trainer.best_valid_score),
            "valid_curve": curve,
            "train_s": train_s,
            "s_per_epoch": train_s / max(len(epoch_times), 1),
            "score_s": score_s,
            "recbole_own_test_unmasked": {k: float(v) for k, v in recbole_test.items()},
            "this_script_test_unmasked": ours_unmasked,
            "split_check": split_info,
        },
    }
    if args.per_user:
        report["per_user"] = [
            {"user": u, "target": seqs[u][-1], "ranks": {method: (r if r <= DEPTH else None)}}
            for u, r in full_ranks.items()
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{method}: {len(users)} users, HR@10 {metrics['HR@10']:.4f}, NDCG@10 {metrics['NDCG@10']:.4f}, "
          f"{len(epoch_times)} epochs (best {best_epoch['epoch']}, stopped by {stopped_by}), "
          f"training {train_s:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
