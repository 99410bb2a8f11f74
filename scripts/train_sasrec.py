#!/usr/bin/env python3
"""Trains SASRec for palr's `sasrec` retriever plugin on a view that `palr data export-view` wrote.

    palr data export-view --stage valid --out view-valid.json
    python3 scripts/train_sasrec.py --view view-valid.json \
        --out plugins/sasrec/weights/ml100k/valid.safetensors --log-dir benchmarks/results/sasrec/valid

Input (never re-split here: palr's own split is the only one)
-------------------------------------------------------------
A JSON "training view" (`format` = "palr-training-view/1"): `stage` (valid | test | all),
`fingerprint`, `n_items`, `n_users`, `n_interactions`, `item_ids` (external item ids in
item-index order), `user_ids`, `sequences` (per user, item indices oldest first) and, for stage
`valid` only, `valid_targets` (per user, the held-out validation item index, or null).

Model (SASRec, Kang & McAuley 2018, in the post-LN, GELU, full-softmax variant; the Rust plugin
`plugins/sasrec` computes exactly this, so any change here is a format change)
------------------------------------------------------------------------------
- `item_emb` (n_items + 1, d): row 0 is padding and stays zero; item index i uses row i + 1.
  `pos_emb` (L, d) is a learned absolute position embedding, L = `max_len`.
- Sequences are right-aligned: an input of n <= L items occupies positions L-n .. L-1, so the
  most recent item is always at position L-1. Longer histories keep their last L items.
- h = LayerNorm_emb(item_emb[x] + pos_emb[pos]), then dropout (no sqrt(d) scaling).
- `blocks` post-LN transformer blocks:
      a = MHA(h);  h = LN1(h + dropout(a))
      f = W2 GELU(W1 h + b1) + b2;  h = LN2(h + dropout(f))      (exact erf GELU)
  MHA: separate q, k, v Linear layers (with bias), `heads` heads of size d / heads, logits
  (q . k) / sqrt(head_dim); query t sees key s only if s <= t and s is not padding (other logits
  are set to -1e9, finite, so all-padding query rows stay finite and are simply never used);
  softmax over keys, dropout on the probabilities, heads concatenated, then the `out` Linear.
- Scores = final hidden state at position L-1 dotted with item_emb rows 1..n_items (the same
  table as the input, no bias): one logit per item index.
- LayerNorm eps 1e-12; init N(0, 0.02) for Linear and embedding weights, zero biases,
  LayerNorm weight 1 and bias 0.

Training
--------
Full-softmax cross-entropy over all items at every non-padded position (position t predicts
the item at t+1), so every prefix of every sequence is a training sample. A sequence longer than
L+1 items is cut into windows of at most L+1 items (L inputs) such that each of its target
positions 1..n-1 is predicted exactly once; the last window ends at the sequence's end.
Windows are bucketed by length (a sort with a little random jitter, redone every epoch) into
batches that are padded only to their own longest window, and the batch order is shuffled.
Because a batch of long windows holds ~10x the positions of a batch of short ones, each step's
loss is the sum of its positions' cross-entropies divided by the epoch's mean number of
positions per batch (`--loss-norm position`, the default), so that every position weighs the
same whatever batch it falls in; the per-batch mean (`--loss-norm batch`) over-weights short
sequences and was clearly worse on validation (benchmarks/results/sasrec/sweep.md). Adam.
Stage `valid`: after every `--eval-every` epochs the model is scored with palr's protocol
(input = the last L items of the user's sequence; every item of the sequence masked; rank of
the target = 1 + number of items with a strictly higher score; NDCG@10 = 1/log2(rank+1) if
rank <= 10, HR@10 = [rank <= 10]; means over users with a target); the best state on NDCG@10 is
kept and training stops after `--patience` epochs without improvement. Stages `test` and `all`
have no targets and run a fixed `--epochs N` or `--epochs-from` a valid run's summary (its best
epoch).
`--ema DECAY` (default 0 = off) keeps an exponential moving average of all parameters, updated
after every optimizer step k = 1, 2, ...: ema = d_k * ema + (1 - d_k) * param with
d_k = DECAY * (1 - DECAY^(k-1)) / (1 - DECAY^k), i.e. the bias-corrected average
sum_i DECAY^(k-i) param_i / sum_i DECAY^(k-i) of the weights after steps 1..k (d_1 = 0: the
initial random weights never enter it; for large k, d_k -> DECAY, a horizon of ~1/(1-DECAY)
steps). When on, the EMA weights are what is validated each epoch, kept as the best state by
early stopping, and saved (also at the end of a fixed-epoch run); the raw weights only train.

Output
------
- `--out FILE.safetensors`: tensors (PyTorch Linear layout, weight = (out, in)), all of one
  dtype (`--save-dtype f16`, the default, or f32):
      item_emb (n_items+1, d), pos_emb (L, d), emb_ln.weight, emb_ln.bias (d),
      blocks.{b}.attn.{q,k,v,out}.weight (d, d) and .bias (d),
      blocks.{b}.ln1.weight/.bias (d), blocks.{b}.ffn.w1.weight (inner, d), .bias (inner),
      blocks.{b}.ffn.w2.weight (d, inner), .bias (d), blocks.{b}.ln2.weight/.bias (d).
  `__metadata__["palr_sasrec"]` is a JSON string: {"format": "palr-sasrec/1", "hidden",
  "blocks", "heads", "inner", "max_len", "layer_norm_eps", "activation": "gelu", "stage",
  "fingerprint", "item_ids", "n_items", "trained": {"epochs_run", "best_epoch", "valid_ndcg10",
  "valid_hr10", "seconds", "seed", "dropout", "lr", "batch_size", "ema", "created_utc", "torch",
  "command"}} (`ema` is the `--ema` decay, 0 = the raw weights were saved).
- `--log-dir DIR`: `train_log.jsonl` (one line per epoch), `train_curve.png` (loss and valid
  NDCG@10 per epoch) and `train_summary.json` (the header's `trained` block plus the
  hyper-parameters, the view, the CPU, per-epoch seconds).
- `--dump-scores FILE`: after saving, the SAVED file is reloaded (f16 rounding included) and run
  in eval mode on each history of `--dump-histories` (a JSON list of lists of item indices; by
  default every sequence of the view); written as JSON
  [{"history": [...], "top": [[item_index, score], ...]}] with the top `--dump-k` items, history
  items excluded, scores as float32 values, higher first, ties broken by the lower item index.
  palr's Rust plugin is checked against this file.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with other work (a
# compiler, say) spinning threads fight for the cores and an epoch takes ~3x longer; alone, the
# cost of sleeping is negligible. Set before torch loads; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

VIEW_FORMAT = "palr-training-view/1"
WEIGHTS_FORMAT = "palr-sasrec/1"
META_KEY = "palr_sasrec"
SUMMARY_FORMAT = "palr-sasrec-train-summary/1"
LAYER_NORM_EPS = 1e-12
MASKED_LOGIT = -1e9
INIT_STD = 0.02
# Bucketing: windows are sorted by length * exp(U(-j, j)) each epoch, so batches hold windows of
# similar length (little padding) but not the same ones every epoch.
BUCKET_JITTER = 0.1
EVAL_BATCH = 256
# Hyper-parameters that a fixed-epoch run must share with the run it takes its epochs from.
SHARED_HYPER = ("hidden", "blocks", "heads", "inner", "max_len", "dropout", "lr", "beta1", "beta2",
                "batch_size", "loss_norm", "ema")
# What a summary written before an option existed means for it (the behaviour it had then).
SHARED_HYPER_DEFAULTS = {"ema": 0.0}


class UsageError(Exception):
    """A bad input or option: reported as one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# The view


def load_view(path: Path) -> dict:
    try:
        view = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"view file {path} does not exist (write it with `palr data export-view`)")
    except json.JSONDecodeError as e:
        raise UsageError(f"view file {path} is not JSON: {e}")
    if not isinstance(view, dict) or view.get("format") != VIEW_FORMAT:
        got = view.get("format") if isinstance(view, dict) else type(view).__name__
        raise UsageError(f"view file {path}: format is {got!r}, expected {VIEW_FORMAT!r} "
                         "(write it with `palr data export-view`)")
    for key in ("stage", "fingerprint", "n_items", "n_users", "item_ids", "user_ids", "sequences"):
        if key not in view:
            raise UsageError(f"view file {path}: missing key {key!r}")
    stage, n_items = view["stage"], view["n_items"]
    if stage not in ("valid", "test", "all"):
        raise UsageError(f"view file {path}: unknown stage {stage!r}")
    if len(view["item_ids"]) != n_items or n_items < 1:
        raise UsageError(f"view file {path}: {len(view['item_ids'])} item_ids for n_items {n_items}")
    seqs = view["sequences"]
    if len(seqs) != view["n_users"] or len(view["user_ids"]) != view["n_users"]:
        raise UsageError(f"view file {path}: sequences/user_ids do not match n_users {view['n_users']}")
    for u, s in enumerate(seqs):
        if any(not isinstance(i, int) or not 0 <= i < n_items for i in s):
            raise UsageError(f"view file {path}: user {u} has an item index outside 0..{n_items - 1}")
    if stage == "valid":
        targets = view.get("valid_targets")
        if targets is None or len(targets) != len(seqs):
            raise UsageError(f"view file {path}: stage valid needs valid_targets, one per user")
        if any(t is not None and not (isinstance(t, int) and 0 <= t < n_items) for t in targets):
            raise UsageError(f"view file {path}: a valid target is outside 0..{n_items - 1}")
        if not any(t is not None for t in targets):
            raise UsageError(f"view file {path}: no user has a validation target")
    return view


def make_windows(sequences: list[list[int]], max_len: int) -> list[list[int]]:
    """Windows of at most max_len + 1 items; each target position 1..n-1 of a sequence is the
    target of exactly one window position. The last window ends at the sequence's end."""
    windows = []
    for seq in sequences:
        end = len(seq)
        while end > 1:
            start = max(0, end - max_len - 1)
            windows.append(list(seq[start:end]))  # inputs seq[start:end-1], targets seq[start+1:end]
            end = start + 1
    return windows


def pad_left(seqs: list[list[int]], width: int) -> torch.Tensor:
    """(len(seqs), width) tokens: item index + 1, right-aligned, 0 = padding."""
    out = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            out[row, width - len(s):] = torch.as_tensor(s, dtype=torch.long) + 1
    return out


# --------------------------------------------------------------------------------------------
# The model


class Dropout(nn.Module):
    """Inverted dropout, as nn.Dropout, but its mask comes from torch.rand: about twice as fast
    as nn.Dropout's bernoulli_ on CPU, and attention-probability dropout is a large share of an
    epoch."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape).ge_(self.p)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.drop = Dropout(dropout)

    def forward(self, h: torch.Tensor, allowed: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """h (b, m, d), allowed (b, 1, m, m) -> (b, m, d), or (b, 1, d) for the last query
        position only."""
        b, m, d = h.shape

        def split(x):  # (b, rows, d) -> (b, heads, rows, head_dim)
            return x.view(b, -1, self.heads, self.head_dim).transpose(1, 2)

        queries = h[:, -1:] if last_only else h
        if last_only:
            allowed = allowed[:, :, -1:]
        q, k, v = split(self.q(queries)), split(self.k(h)), split(self.v(h))
        # (q . k) / sqrt(head_dim), with the scale applied to q (the smaller tensor).
        logits = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-1, -2)
        logits = logits.masked_fill(~allowed, MASKED_LOGIT)
        probs = self.drop(torch.softmax(logits, dim=-1))
        return self.out((probs @ v).transpose(1, 2).reshape(b, queries.shape[1], d))


class FeedForward(nn.Module):
    def __init__(self, d: int, inner: int):
        super().__init__()
        self.w1, self.w2 = nn.Linear(d, inner), nn.Linear(inner, d)

    def forward(self, h):
        return self.w2(F.gelu(self.w1(h)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, inner: int, dropout: float):
        super().__init__()
        self.attn = Attention(d, heads, dropout)
        self.ln1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.ffn = FeedForward(d, inner)
        self.ln2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.drop = Dropout(dropout)

    def forward(self, h, allowed, last_only=False):
        """last_only: compute the output at the last position only (b, 1, d)."""
        residual = h[:, -1:] if last_only else h
        h = self.ln1(residual + self.drop(self.attn(h, allowed, last_only)))
        return self.ln2(h + self.drop(self.ffn(h)))


class SASRec(nn.Module):
    """State-dict keys are exactly the tensor names of the weights file."""

    def __init__(self, n_items: int, hidden: int, blocks: int, heads: int, inner: int,
                 max_len: int, dropout: float):
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.item_emb = nn.Parameter(torch.empty(n_items + 1, hidden))
        self.pos_emb = nn.Parameter(torch.empty(max_len, hidden))
        self.emb_ln = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.blocks = nn.ModuleList(Block(hidden, heads, inner, dropout) for _ in range(blocks))
        self.drop = Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, INIT_STD)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.item_emb, 0.0, INIT_STD)
        nn.init.normal_(self.pos_emb, 0.0, INIT_STD)
        with torch.no_grad():
            self.item_emb[0].zero_()

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """tokens (b, m <= L), right-aligned, 0 = padding -> hidden states (b, m, d). The m
        columns are positions L-m .. L-1 (a batch is padded only to its longest row).
        last_only: the final block computes position L-1 only (scoring), giving (b, 1, d)."""
        b, m = tokens.shape
        if m > self.max_len:
            raise ValueError(f"input of {m} positions, max_len is {self.max_len}")
        pos = self.pos_emb[self.max_len - m:]
        h = self.drop(self.emb_ln(F.embedding(tokens, self.item_emb, padding_idx=0) + pos))
        causal = torch.ones(m, m, dtype=torch.bool).tril_()
        allowed = (causal.unsqueeze(0) & (tokens != 0).unsqueeze(1)).unsqueeze(1)  # (b, 1, m, m)
        for n, block in enumerate(self.blocks):
            h = block(h, allowed, last_only and n == len(self.blocks) - 1)
        return h

    def item_table(self) -> torch.Tensor:
        return self.item_emb[1:]


class EMA:
    """Bias-corrected exponential moving average of a model's parameters (see the module
    docstring): after k updates, sum_i decay^(k-i) p_i / sum_i decay^(k-i) over the parameters
    p_1..p_k passed to update(). The model has no buffers, so the parameters are its whole state."""

    def __init__(self, model: SASRec, decay: float):
        self.decay, self.steps = decay, 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.params = list(self.model.parameters())
        if len(self.params) != len(self.model.state_dict()):
            raise RuntimeError("the model has buffers that the EMA does not average")

    @torch.no_grad()
    def update(self, model: SASRec):
        self.steps += 1
        k, d = self.steps, self.decay
        # d_k = d (1 - d^(k-1)) / (1 - d^k): 0 at the first step, -> d.
        d_k = d * (1.0 - d ** (k - 1)) / (1.0 - d ** k)
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1.0 - d_k)


def hyper_of(model: SASRec) -> dict:
    b0 = model.blocks[0]
    return {"hidden": model.item_emb.shape[1], "blocks": len(model.blocks), "heads": b0.attn.heads,
            "inner": b0.ffn.w1.weight.shape[0], "max_len": model.max_len}


# --------------------------------------------------------------------------------------------
# Scoring and the validation protocol


@torch.no_grad()
def score_histories(model: SASRec, histories: list[list[int]]) -> torch.Tensor:
    """(len(histories), n_items) float32 scores from the last max_len items of each history
    (eval mode is the caller's business). Histories are batched by length."""
    out = torch.empty(len(histories), model.n_items)
    order = sorted(range(len(histories)), key=lambda i: min(len(histories[i]), model.max_len))
    table = model.item_table()
    for start in range(0, len(order), EVAL_BATCH):
        rows = order[start:start + EVAL_BATCH]
        inputs = [histories[i][-model.max_len:] for i in rows]
        tokens = pad_left(inputs, max(len(s) for s in inputs))
        last = model(tokens, last_only=True)[:, -1]
        out[rows] = last @ table.T
    return out


def mask_histories(scores: torch.Tensor, histories: list[list[int]]) -> torch.Tensor:
    rows = torch.cat([torch.full((len(h),), r, dtype=torch.long) for r, h in enumerate(histories)])
    cols = torch.cat([torch.as_tensor(h, dtype=torch.long) for h in histories])
    scores = scores.clone()
    scores[rows, cols] = float("-inf")
    return scores


@torch.no_grad()
def validate(model: SASRec, histories: list[list[int]], targets: list[int]) -> dict:
    """palr's protocol: history masked, rank = 1 + #items with a strictly higher score."""
    was_training = model.training
    model.eval()
    scores = mask_histories(score_histories(model, histories), histories)
    model.train(was_training)
    tgt = torch.as_tensor(targets, dtype=torch.long)
    target_scores = scores.gather(1, tgt[:, None])
    ranks = 1 + (scores > target_scores).sum(dim=1)
    hit = ranks <= 10
    ndcg = torch.where(hit, 1.0 / torch.log2(ranks.double() + 1), torch.zeros((), dtype=torch.float64))
    # One target per user, so recall@K = HR@K.
    return {"ndcg10": ndcg.mean().item(), "hr10": hit.double().mean().item(),
            "recall20": (ranks <= 20).double().mean().item(),
            "recall50": (ranks <= 50).double().mean().item()}


def top_k(scores: torch.Tensor, history: list[int], k: int) -> list[list]:
    """Top k items (history excluded) as [index, float32 score], ties to the lower index."""
    masked = mask_histories(scores[None], [history])[0] if history else scores
    values, idx = torch.sort(masked, descending=True, stable=True)
    keep = min(k, int(torch.isfinite(values).sum()))
    return [[int(i), float(v)] for i, v in zip(idx[:keep].tolist(), values[:keep].tolist())]


# --------------------------------------------------------------------------------------------
# Saving and loading


def save_weights(model: SASRec, path: Path, dtype: torch.dtype, header: dict):
    from safetensors.torch import save_file

    tensors = {name: t.detach().to(dtype).contiguous() for name, t in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(header)})


def load_weights(path: Path) -> tuple[SASRec, dict]:
    """The model (float32, eval mode) and the header of a weights file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if META_KEY not in meta:
            raise UsageError(f"{path}: no {META_KEY!r} metadata: not a palr SASRec weights file")
        header = json.loads(meta[META_KEY])
        if header.get("format") != WEIGHTS_FORMAT:
            raise UsageError(f"{path}: format {header.get('format')!r}, expected {WEIGHTS_FORMAT!r}")
        tensors = {name: f.get_tensor(name).float() for name in f.keys()}
    model = SASRec(header["n_items"], header["hidden"], header["blocks"], header["heads"],
                   header["inner"], header["max_len"], dropout=0.0)
    model.load_state_dict(tensors, strict=True)
    return model.eval(), header


# --------------------------------------------------------------------------------------------
# Records


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plot_curve(path: Path, log: list[dict], best_epoch: int | None):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no train_curve.png", file=sys.stderr)
        return
    epochs = [r["epoch"] for r in log]
    evals = [r for r in log if r.get("valid_ndcg10") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(epochs, [r["loss"] for r in log], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (mean over positions)", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot([r["epoch"] for r in evals], [r["valid_ndcg10"] for r in evals], color="tab:red",
                 label="valid NDCG@10")
        ax2.set_ylabel("valid NDCG@10", color="tab:red")
        if best_epoch is not None:
            ax2.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch {best_epoch}")
        ax2.legend(loc="center right")
    ax.set_title("SASRec training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--view", required=True, type=Path, help="`palr data export-view` JSON")
    p.add_argument("--out", required=True, type=Path, help="weights file (.safetensors)")
    p.add_argument("--log-dir", type=Path, help="train_log.jsonl, train_curve.png, train_summary.json "
                   "(default: the directory of --out)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--inner", type=int, default=256, help="feed-forward inner size")
    p.add_argument("--max-len", type=int, default=200,
                   help="L: positions; longer inputs keep their last L items")
    p.add_argument("--dropout", type=float, default=0.5, help="hidden and attention dropout")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.98)
    p.add_argument("--batch-size", type=int, default=128, help="windows per step")
    p.add_argument("--loss-norm", choices=("batch", "position"), default="position",
                   help="batch: each step's loss is the mean over its positions (batches of short "
                   "windows weigh as much as batches of long ones); position: the sum over its "
                   "positions divided by the epoch's mean positions per batch (every position "
                   "of the epoch weighs the same)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="exponential moving average of the parameters, decay per optimizer step "
                   "(bias-corrected; 0 = off): validated, kept and saved instead of the raw weights")
    p.add_argument("--max-epochs", type=int, default=200, help="stage valid: upper bound")
    p.add_argument("--patience", type=int, default=20, help="stage valid: epochs without improvement")
    p.add_argument("--eval-every", type=int, default=1, help="stage valid: epochs between evaluations")
    p.add_argument("--epochs", type=int, help="train exactly N epochs (required for stages test/all "
                   "unless --epochs-from; on stage valid: no early stopping, the last state is kept)")
    p.add_argument("--epochs-from", type=Path, help="a valid run's train_summary.json (or its "
                   "directory): train its best_epoch epochs; its hyper-parameters must match")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--save-dtype", choices=("f16", "f32"), default="f16")
    p.add_argument("--dump-scores", type=Path, help="JSON of the saved model's top items per history")
    p.add_argument("--dump-histories", type=Path,
                   help="JSON list of histories (item index lists) for --dump-scores (default: every "
                   "sequence of the view)")
    p.add_argument("--dump-k", type=int, default=20)
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    return p.parse_args(argv)


def check_args(a):
    for name in ("hidden", "blocks", "heads", "inner", "max_len", "batch_size", "max_epochs",
                 "eval_every", "threads", "dump_k"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if a.patience < 1:
        raise UsageError("--patience must be at least 1")
    if a.hidden % a.heads:
        raise UsageError(f"--hidden {a.hidden} is not divisible by --heads {a.heads}")
    if not 0.0 <= a.dropout < 1.0:
        raise UsageError("--dropout must be in [0, 1)")
    if not 0.0 <= a.ema < 1.0:
        raise UsageError("--ema must be in [0, 1) (0 = off)")
    if a.epochs is not None and a.epochs_from is not None:
        raise UsageError("give --epochs or --epochs-from, not both")
    if a.epochs is not None and a.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    if a.dump_histories and not a.dump_scores:
        raise UsageError("--dump-histories needs --dump-scores")


def epochs_from_summary(path: Path, a) -> int:
    if path.is_dir():
        path = path / "train_summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--epochs-from {path}: cannot read a train summary: {e}")
    if summary.get("format") != SUMMARY_FORMAT or not isinstance(summary.get("best_epoch"), int):
        raise UsageError(f"--epochs-from {path}: not a train_sasrec.py summary with a best_epoch")
    if summary.get("view", {}).get("stage") != "valid":
        raise UsageError(f"--epochs-from {path}: that run trained on stage "
                         f"{summary.get('view', {}).get('stage')!r}, not valid (no early stopping)")
    theirs = summary.get("hyper", {})
    theirs = {k: theirs.get(k, SHARED_HYPER_DEFAULTS.get(k)) for k in SHARED_HYPER}
    diff = [f"{k}: {theirs[k]!r} there, {getattr(a, k)!r} here" for k in SHARED_HYPER
            if theirs[k] != getattr(a, k)]
    if diff:
        raise UsageError(f"--epochs-from {path}: hyper-parameters differ ({'; '.join(diff)}); "
                         "pass the same options, or --epochs N to choose the count yourself")
    return summary["best_epoch"]


def read_histories(path: Path, n_items: int) -> list[list[int]]:
    try:
        hs = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--dump-histories {path}: {e}")
    if not isinstance(hs, list) or not all(isinstance(h, list) for h in hs):
        raise UsageError(f"--dump-histories {path}: expected a JSON list of lists of item indices")
    for n, h in enumerate(hs):
        if not h:
            raise UsageError(f"--dump-histories {path}: history {n} is empty (SASRec needs one item)")
        if any(not isinstance(i, int) or not 0 <= i < n_items for i in h):
            raise UsageError(f"--dump-histories {path}: history {n} has an index outside 0..{n_items - 1}")
    return hs


def dump_scores(weights: Path, histories: list[list[int]], k: int, out: Path):
    model, _ = load_weights(weights)
    scores = score_histories(model, histories)
    rows = [{"history": h, "top": top_k(scores[r], h, k)} for r, h in enumerate(histories)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows))


def train(a, view: dict, fixed_epochs: int | None) -> dict:
    from tqdm import tqdm

    stage, n_items = view["stage"], view["n_items"]
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    torch.set_num_threads(a.threads)

    windows = make_windows(view["sequences"], a.max_len)
    if not windows:
        raise UsageError("the view has no sequence of two or more items: nothing to train on")
    win_tensors = [torch.as_tensor(w, dtype=torch.long) for w in windows]
    lengths = [len(w) - 1 for w in windows]  # input positions = targets
    n_targets = sum(lengths)

    if stage == "valid":
        users = [u for u, t in enumerate(view["valid_targets"]) if t is not None]
        val_hist = [view["sequences"][u] for u in users]
        val_tgt = [view["valid_targets"][u] for u in users]
        if any(not h for h in val_hist):
            raise UsageError("a user with a validation target has an empty sequence")

    model = SASRec(n_items, a.hidden, a.blocks, a.heads, a.inner, a.max_len, a.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(a.beta1, a.beta2), fused=True)
    # With --ema, `scored` is the averaged copy (validated, kept and saved); without, the model.
    ema = EMA(model, a.ema) if a.ema > 0 else None
    scored = ema.model if ema else model
    early_stop = stage == "valid" and fixed_epochs is None
    max_epochs = a.max_epochs if fixed_epochs is None else fixed_epochs

    log_dir = a.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = (log_dir / "train_log.jsonl").open("w")
    log, epoch_seconds = [], []
    best = {"epoch": None, "ndcg10": -1.0, "hr10": None, "recall50": None, "state": None}
    load_start = list(os.getloadavg())
    t_start = time.perf_counter()
    bar = tqdm(range(1, max_epochs + 1), desc=f"SASRec {stage}", unit="epoch", disable=a.quiet,
               dynamic_ncols=True)
    epochs_run = 0
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        keys = [(lengths[i] * math.exp(rng.uniform(-BUCKET_JITTER, BUCKET_JITTER)), rng.random(), i)
                for i in range(len(windows))]
        order = [i for *_, i in sorted(keys)]
        batches = [order[s:s + a.batch_size] for s in range(0, len(order), a.batch_size)]
        rng.shuffle(batches)
        position_scale = len(batches) / n_targets
        loss_sum, positions = 0.0, 0
        for rows in batches:
            width = max(lengths[i] for i in rows)
            tokens = torch.zeros(len(rows), width + 1, dtype=torch.long)  # window: inputs + last target
            for r, i in enumerate(rows):
                tokens[r, width - lengths[i]:] = win_tensors[i] + 1
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            keep = inputs != 0
            positions += inputs.numel()
            hidden = model(inputs)[keep]
            logits = hidden @ model.item_table().T
            if a.loss_norm == "batch":
                loss = F.cross_entropy(logits, targets[keep] - 1)
            else:
                loss = F.cross_entropy(logits, targets[keep] - 1, reduction="sum") * position_scale
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema:
                ema.update(model)
            loss_sum += (loss.item() * int(keep.sum()) if a.loss_norm == "batch"
                         else loss.item() / position_scale)
        secs = time.perf_counter() - t0
        epoch_seconds.append(secs)
        epochs_run = epoch
        rec = {"epoch": epoch, "loss": loss_sum / n_targets, "seconds": round(secs, 3)}
        if stage == "valid" and (epoch % a.eval_every == 0 or epoch == max_epochs):
            t1 = time.perf_counter()
            m = validate(scored, val_hist, val_tgt)
            rec.update(valid_ndcg10=m["ndcg10"], valid_hr10=m["hr10"],
                       valid_recall20=m["recall20"], valid_recall50=m["recall50"],
                       eval_seconds=round(time.perf_counter() - t1, 3))
            if early_stop and m["ndcg10"] > best["ndcg10"]:
                best.update(epoch=epoch, ndcg10=m["ndcg10"], hr10=m["hr10"], recall50=m["recall50"],
                            state=copy.deepcopy(scored.state_dict()))
        log.append(rec)
        log_file.write(json.dumps(rec) + "\n")
        log_file.flush()
        if not a.quiet:
            extra = (f" valid NDCG@10 {rec['valid_ndcg10']:.4f} HR@10 {rec['valid_hr10']:.4f}"
                     if "valid_ndcg10" in rec else "")
            tqdm.write(f"epoch {epoch:3d} loss {rec['loss']:.4f} {secs:.2f}s{extra}"
                       + (" *" if best["epoch"] == epoch else ""))
            bar.set_postfix(loss=f"{rec['loss']:.3f}", best=best["epoch"])
        if early_stop and best["epoch"] is not None and epoch - best["epoch"] >= a.patience:
            break
    bar.close()
    log_file.close()
    seconds = time.perf_counter() - t_start

    if early_stop:
        model.load_state_dict(best["state"])
        best_epoch, ndcg, hr, r50 = best["epoch"], best["ndcg10"], best["hr10"], best["recall50"]
    else:
        if ema:
            model.load_state_dict(ema.model.state_dict())
        best_epoch = epochs_run
        last = log[-1]
        ndcg, hr, r50 = last.get("valid_ndcg10"), last.get("valid_hr10"), last.get("valid_recall50")
    model.eval()
    trained = {
        "epochs_run": epochs_run, "best_epoch": best_epoch, "valid_ndcg10": ndcg, "valid_hr10": hr,
        "valid_recall50": r50,
        "seconds": round(seconds, 1), "seed": a.seed, "dropout": a.dropout, "lr": a.lr,
        "batch_size": a.batch_size, "ema": a.ema,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "torch": torch.__version__,
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv)),
    }
    eval_seconds = [r["eval_seconds"] for r in log if "eval_seconds" in r]
    stats = {"windows": len(windows), "targets_per_epoch": n_targets,
             "positions_per_epoch_with_padding": positions,
             "epoch_seconds": [round(s, 3) for s in epoch_seconds],
             "mean_epoch_seconds": round(sum(epoch_seconds) / len(epoch_seconds), 3),
             "eval_seconds_total": round(sum(eval_seconds), 1),
             "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())}
    return {"model": model, "trained": trained, "stats": stats, "log": log}


def run(argv=None) -> int:
    a = parse_args(argv)
    check_args(a)
    view = load_view(a.view)
    stage = view["stage"]
    if a.epochs_from is not None:
        fixed = epochs_from_summary(a.epochs_from, a)
    else:
        fixed = a.epochs
    if stage != "valid" and fixed is None:
        raise UsageError(f"stage {stage!r} has no validation targets, so there is no early stopping: "
                         "give --epochs N or --epochs-from VALID_LOG_DIR/train_summary.json")
    if a.log_dir is None:
        a.log_dir = a.out.parent
    dump_hist = None
    if a.dump_scores:
        dump_hist = (read_histories(a.dump_histories, view["n_items"]) if a.dump_histories
                     else [s for s in view["sequences"] if s])

    result = train(a, view, fixed)
    model, trained = result["model"], result["trained"]
    header = {"format": WEIGHTS_FORMAT, **hyper_of(model), "layer_norm_eps": LAYER_NORM_EPS,
              "activation": "gelu", "stage": stage, "fingerprint": view["fingerprint"],
              "item_ids": view["item_ids"], "n_items": view["n_items"], "trained": trained}
    dtype = {"f16": torch.float16, "f32": torch.float32}[a.save_dtype]
    save_weights(model, a.out, dtype, header)

    summary = {
        "format": SUMMARY_FORMAT, **trained,
        "hyper": {**hyper_of(model), "layer_norm_eps": LAYER_NORM_EPS, "activation": "gelu",
                  "dropout": a.dropout, "lr": a.lr, "beta1": a.beta1, "beta2": a.beta2,
                  "batch_size": a.batch_size, "loss_norm": a.loss_norm, "ema": a.ema,
                  "max_epochs": a.max_epochs, "patience": a.patience,
                  "eval_every": a.eval_every, "epochs": fixed,
                  "epochs_from": str(a.epochs_from) if a.epochs_from else None},
        "view": {"path": str(a.view), "stage": stage, "fingerprint": view["fingerprint"],
                 "n_items": view["n_items"], "n_users": view["n_users"],
                 "n_interactions": view.get("n_interactions")},
        "out": str(a.out), "out_bytes": a.out.stat().st_size, "save_dtype": a.save_dtype,
        "cpu_model": cpu_model(), "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        **result["stats"], "total_seconds": trained["seconds"],
    }
    (a.log_dir / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_curve(a.log_dir / "train_curve.png", result["log"],
               trained["best_epoch"] if stage == "valid" else None)
    if a.dump_scores:
        dump_scores(a.out, dump_hist, a.dump_k, a.dump_scores)
    if not a.quiet:
        print(f"saved {a.out} ({summary['out_bytes']} bytes): {trained['epochs_run']} epochs, best "
              f"{trained['best_epoch']}, valid NDCG@10 {trained['valid_ndcg10']}, HR@10 "
              f"{trained['valid_hr10']}, {trained['seconds']} s")
    return 0


def main():
    try:
        sys.exit(run())
    except UsageError as e:
        print(f"train_sasrec.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
