"""Tests of scripts/train_sasrec.py (the SASRec trainer for palr's `sasrec` retriever plugin).

They need torch, safetensors and tqdm, i.e. the training venv:
    .cache/train-venv/bin/python -m unittest discover -s scripts/tests -v
With a python that lacks them (the system python3 of `scripts/test.sh`) they are skipped.

A tiny synthetic view (50 items, 40 users, "item i is followed by item i+1") is trained in a few
seconds; the tests check the weights file's exact layout, that the model learns the pattern,
that `--dump-scores` agrees with an independent forward pass written below in plain torch ops on
the saved tensors (this pins the math that the Rust plugin mirrors), and that bad inputs fail
with a clear message.
"""

import importlib.util
import json
import math
import random
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_sasrec.py"
MISSING = [m for m in ("torch", "safetensors", "tqdm") if importlib.util.find_spec(m) is None]
SKIP_REASON = (f"{', '.join(MISSING)} not installed for {sys.executable}: run these tests with the "
               "training venv (.cache/train-venv/bin/python -m unittest discover -s scripts/tests)")

N_ITEMS, N_USERS, MAX_LEN = 50, 40, 8
HIDDEN, BLOCKS, HEADS, INNER = 32, 2, 2, 64
TRAIN_OPTS = ["--hidden", str(HIDDEN), "--blocks", str(BLOCKS), "--heads", str(HEADS),
              "--inner", str(INNER), "--max-len", str(MAX_LEN), "--dropout", "0.1", "--lr", "5e-3",
              "--batch-size", "16", "--max-epochs", "20", "--patience", "5", "--threads", "1",
              "--seed", "1", "--quiet"]


def synthetic_view(stage: str) -> dict:
    """User u walks the item cycle from item 7u mod 50, one step at a time, for 6..12 items; the
    validation target is the next item. Stage test appends the validation item to the sequence."""
    sequences, targets = [], []
    for u in range(N_USERS):
        start, n = (7 * u) % N_ITEMS, 6 + u % 7
        seq = [(start + j) % N_ITEMS for j in range(n)]
        target = (start + n) % N_ITEMS
        if stage == "valid":
            sequences.append(seq)
            targets.append(target)
        else:
            sequences.append(seq + [target])
    view = {
        "format": "palr-training-view/1", "stage": stage, "fingerprint": "ab" * 32,
        "n_items": N_ITEMS, "n_users": N_USERS,
        "n_interactions": sum(len(s) for s in sequences),
        "item_ids": [str(1000 + i) for i in range(N_ITEMS)],
        "user_ids": [str(u + 1) for u in range(N_USERS)], "sequences": sequences,
    }
    if stage == "valid":
        view["valid_targets"] = targets
    return view


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def expected_shapes(n_items, d, blocks, inner, max_len):
    shapes = {"item_emb": (n_items + 1, d), "pos_emb": (max_len, d), "emb_ln.weight": (d,),
              "emb_ln.bias": (d,)}
    for b in range(blocks):
        p = f"blocks.{b}."
        for lin in ("q", "k", "v", "out"):
            shapes[f"{p}attn.{lin}.weight"] = (d, d)
            shapes[f"{p}attn.{lin}.bias"] = (d,)
        for ln in ("ln1", "ln2"):
            shapes[f"{p}{ln}.weight"] = (d,)
            shapes[f"{p}{ln}.bias"] = (d,)
        shapes[f"{p}ffn.w1.weight"] = (inner, d)
        shapes[f"{p}ffn.w1.bias"] = (inner,)
        shapes[f"{p}ffn.w2.weight"] = (d, inner)
        shapes[f"{p}ffn.w2.bias"] = (d,)
    return shapes


def read_weights(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["palr_sasrec"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, header


def reference_scores(t: dict, header: dict, history: list) -> "torch.Tensor":
    """SASRec's scores for one history, written out op by op (no nn modules, no padding): what
    the Rust plugin computes. Returns float32 scores for item indices 0..n_items-1."""
    import torch

    t = {k: v.float() for k, v in t.items()}
    L, H, eps = header["max_len"], header["heads"], header["layer_norm_eps"]
    d = header["hidden"]
    hd = d // H
    x = history[-L:]
    n = len(x)

    def layer_norm(h, name):
        mean = h.mean(-1, keepdim=True)
        var = ((h - mean) ** 2).mean(-1, keepdim=True)
        return (h - mean) / torch.sqrt(var + eps) * t[name + ".weight"] + t[name + ".bias"]

    def linear(h, name):
        return h @ t[name + ".weight"].T + t[name + ".bias"]

    rows = torch.tensor([i + 1 for i in x])
    h = layer_norm(t["item_emb"][rows] + t["pos_emb"][L - n:], "emb_ln")
    for b in range(header["blocks"]):
        p = f"blocks.{b}."
        q, k, v = (linear(h, p + "attn." + s) for s in ("q", "k", "v"))
        heads = []
        for j in range(H):
            sl = slice(j * hd, (j + 1) * hd)
            logits = (q[:, sl] @ k[:, sl].T) / math.sqrt(hd)
            future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
            logits = logits.masked_fill(future, -1e9)
            heads.append(torch.softmax(logits, dim=-1) @ v[:, sl])
        h = layer_norm(h + linear(torch.cat(heads, dim=1), p + "attn.out"), p + "ln1")
        f = linear(h, p + "ffn.w1")
        f = 0.5 * f * (1.0 + torch.erf(f / math.sqrt(2.0)))  # exact GELU
        h = layer_norm(h + linear(f, p + "ffn.w2"), p + "ln2")
    return h[-1] @ t["item_emb"][1:].T


def load_module():
    spec = importlib.util.spec_from_file_location("train_sasrec", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@unittest.skipIf(MISSING, SKIP_REASON)
class TrainSasrecTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = Path(cls.tmp.name)
        for stage in ("valid", "test"):
            (d / f"{stage}.json").write_text(json.dumps(synthetic_view(stage)))
        cls.dump_histories = [
            [3], [0, 5, 9], [10, 11, 12, 13],
            list(range(20, 33)),                # longer than max_len: the last 8 items are the input
            [44, 45, 46, 47, 48, 49, 0, 1, 2],  # wraps around the cycle
            [7, 30, 2, 41, 19],                 # no pattern
        ]
        (d / "histories.json").write_text(json.dumps(cls.dump_histories))
        cls.valid = run_script("--view", d / "valid.json", "--out", d / "valid.safetensors",
                               "--log-dir", d / "valid-log", "--dump-scores", d / "dump.json",
                               "--dump-histories", d / "histories.json", "--dump-k", "12",
                               *TRAIN_OPTS)
        cls.test = run_script("--view", d / "test.json", "--out", d / "test.safetensors",
                              "--log-dir", d / "test-log", "--epochs-from", d / "valid-log",
                              "--save-dtype", "f32", *TRAIN_OPTS)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def assert_ran(self, proc):
        self.assertEqual(proc.returncode, 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")

    def test_weights_file_layout_and_header(self):
        import torch

        self.assert_ran(self.valid)
        tensors, header = read_weights(self.dir / "valid.safetensors")
        want = expected_shapes(N_ITEMS, HIDDEN, BLOCKS, INNER, MAX_LEN)
        self.assertEqual(sorted(tensors), sorted(want))
        for name, t in tensors.items():
            self.assertEqual(tuple(t.shape), want[name], name)
            self.assertEqual(t.dtype, torch.float16, name)
        self.assertTrue(torch.all(tensors["item_emb"][0] == 0), "padding row 0 must stay zero")

        self.assertEqual(set(header), {"format", "hidden", "blocks", "heads", "inner", "max_len",
                                       "layer_norm_eps", "activation", "stage", "fingerprint",
                                       "item_ids", "n_items", "trained"})
        view = synthetic_view("valid")
        self.assertEqual(header["format"], "palr-sasrec/1")
        self.assertEqual((header["hidden"], header["blocks"], header["heads"], header["inner"],
                          header["max_len"]), (HIDDEN, BLOCKS, HEADS, INNER, MAX_LEN))
        self.assertEqual(header["layer_norm_eps"], 1e-12)
        self.assertEqual(header["activation"], "gelu")
        self.assertEqual(header["stage"], "valid")
        self.assertEqual(header["fingerprint"], view["fingerprint"])
        self.assertEqual(header["item_ids"], view["item_ids"])
        self.assertEqual(header["n_items"], N_ITEMS)
        tr = header["trained"]
        self.assertEqual(set(tr), {"epochs_run", "best_epoch", "valid_ndcg10", "valid_hr10",
                                   "valid_recall50", "seconds", "seed", "dropout", "lr", "batch_size", "ema",
                                   "created_utc", "torch", "command"})
        self.assertLessEqual(tr["best_epoch"], tr["epochs_run"])
        self.assertEqual((tr["seed"], tr["dropout"], tr["lr"], tr["batch_size"], tr["ema"]),
                         (1, 0.1, 5e-3, 16, 0.0))
        self.assertIn("train_sasrec.py", tr["command"])
        self.assertIn("--dump-k 12", tr["command"])

        log_dir = self.dir / "valid-log"
        for name in ("train_log.jsonl", "train_summary.json", "train_curve.png"):
            self.assertTrue((log_dir / name).is_file(), name)
        lines = [json.loads(x) for x in (log_dir / "train_log.jsonl").read_text().splitlines()]
        self.assertEqual(len(lines), tr["epochs_run"])
        self.assertEqual([x["epoch"] for x in lines], list(range(1, tr["epochs_run"] + 1)))
        best = lines[tr["best_epoch"] - 1]
        self.assertEqual(best["valid_ndcg10"], tr["valid_ndcg10"])
        self.assertEqual(best["valid_recall50"], tr["valid_recall50"])
        self.assertGreaterEqual(best["valid_recall50"], best["valid_recall20"])
        self.assertGreaterEqual(best["valid_recall20"], best["valid_hr10"])
        self.assertEqual(max(x["valid_ndcg10"] for x in lines), tr["valid_ndcg10"])
        summary = json.loads((log_dir / "train_summary.json").read_text())
        self.assertEqual(summary["best_epoch"], tr["best_epoch"])
        self.assertEqual(len(summary["epoch_seconds"]), tr["epochs_run"])
        self.assertEqual(summary["view"]["stage"], "valid")

    def test_fixed_epochs_from_valid_summary(self):
        import torch

        self.assert_ran(self.valid)
        self.assert_ran(self.test)
        _, valid_header = read_weights(self.dir / "valid.safetensors")
        tensors, header = read_weights(self.dir / "test.safetensors")
        self.assertTrue(all(t.dtype == torch.float32 for t in tensors.values()))
        self.assertEqual(header["stage"], "test")
        tr = header["trained"]
        self.assertEqual(tr["epochs_run"], valid_header["trained"]["best_epoch"])
        self.assertEqual(tr["best_epoch"], tr["epochs_run"])
        self.assertIsNone(tr["valid_ndcg10"])
        self.assertIsNone(tr["valid_hr10"])
        self.assertIsNone(tr["valid_recall50"])

    def test_learns_the_pattern(self):
        self.assert_ran(self.valid)
        tensors, header = read_weights(self.dir / "valid.safetensors")
        tr = header["trained"]
        # Chance: HR@10 is about 10/42 and NDCG@10 about 0.1 for 42 to 44 unseen items.
        self.assertGreater(tr["valid_hr10"], 0.9, tr)
        self.assertGreater(tr["valid_ndcg10"], 0.6, tr)
        # The same, recomputed from the saved (f16) tensors with the reference forward pass.
        view = synthetic_view("valid")
        hits = 0
        for seq, target in zip(view["sequences"], view["valid_targets"]):
            s = reference_scores(tensors, header, seq)
            s[seq] = float("-inf")
            hits += int(1 + (s > s[target]).sum()) <= 10
        self.assertGreater(hits / N_USERS, 0.9)

    def test_dump_matches_reference_forward(self):
        import torch

        self.assert_ran(self.valid)
        tensors, header = read_weights(self.dir / "valid.safetensors")
        dump = json.loads((self.dir / "dump.json").read_text())
        self.assertEqual([r["history"] for r in dump], self.dump_histories)
        for row in dump:
            hist, top = row["history"], row["top"]
            self.assertEqual(len(top), 12)
            ref = reference_scores(tensors, header, hist)
            idx = [i for i, _ in top]
            scores = [s for _, s in top]
            self.assertFalse(set(idx) & set(hist), "history items must be excluded")
            self.assertEqual(len(set(idx)), len(idx))
            # higher first, ties to the lower index
            for (i1, s1), (i2, s2) in zip(top, top[1:]):
                self.assertTrue(s1 > s2 or (s1 == s2 and i1 < i2), top)
            for i, s in top:
                self.assertAlmostEqual(s, float(ref[i]), delta=1e-4 * max(1.0, abs(s)),
                                       msg=f"history {hist}, item {i}")
                # float32 values: round-tripping through float32 leaves them unchanged
                self.assertEqual(s, float(torch.tensor(s, dtype=torch.float32)))
            # nothing outside the list (and the history) beats the last listed score
            ref[hist] = float("-inf")
            ref[idx] = float("-inf")
            self.assertLessEqual(float(ref.max()), scores[-1] + 1e-4 * max(1.0, abs(scores[-1])))

    def test_loss_norms_report_the_same_mean_loss(self):
        # With lr 0 the model never changes, so both normalisations must log the same epoch
        # loss: the mean cross-entropy per target position over the epoch (position scales
        # each step's sum by batches / targets and the log undoes exactly that).
        losses = {}
        for norm in ("batch", "position"):
            opts = list(TRAIN_OPTS)
            opts[opts.index("--lr") + 1] = "0"
            opts[opts.index("--max-epochs") + 1] = "1"
            log_dir = self.dir / f"norm-{norm}"
            proc = run_script("--view", self.dir / "valid.json", "--out",
                              self.dir / f"norm-{norm}.safetensors", "--log-dir", log_dir,
                              "--loss-norm", norm, *opts)
            self.assert_ran(proc)
            rec = json.loads((log_dir / "train_log.jsonl").read_text().splitlines()[0])
            losses[norm] = rec["loss"]
        # Untrained scores over ~50 items: the loss is near log(50).
        self.assertAlmostEqual(losses["batch"], losses["position"], places=4)
        self.assertGreater(losses["batch"], 3.0)

    def ema_run(self, name, ema, *, lr="5e-3", epochs="3", stage="valid", extra=()):
        """A run of TRAIN_OPTS with --ema, --lr and a fixed epoch count (or early stopping if
        epochs is None), saved as f32; returns (tensors, header, summary)."""
        opts = list(TRAIN_OPTS)
        opts[opts.index("--lr") + 1] = lr
        if epochs is not None:
            opts += ["--epochs", epochs]
        log_dir = self.dir / f"ema-{name}"
        proc = run_script("--view", self.dir / f"{stage}.json", "--out",
                          self.dir / f"ema-{name}.safetensors", "--log-dir", log_dir,
                          "--save-dtype", "f32", "--ema", ema, *extra, *opts)
        self.assert_ran(proc)
        tensors, header = read_weights(self.dir / f"ema-{name}.safetensors")
        summary = json.loads((log_dir / "train_summary.json").read_text())
        return tensors, header, summary

    def test_ema_average_formula(self):
        # After updates with parameters p_1..p_k the EMA is sum_i d^(k-i) p_i / sum_i d^(k-i),
        # whatever the initial weights were.
        import torch

        mod = load_module()
        model = mod.SASRec(N_ITEMS, HIDDEN, BLOCKS, HEADS, INNER, MAX_LEN, 0.1)
        d = 0.7
        ema = mod.EMA(model, d)
        gen = torch.Generator().manual_seed(3)
        snapshots = []
        for _ in range(4):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen))
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
            ema.update(model)
            k = len(snapshots)
            w = [d ** (k - 1 - i) for i in range(k)]
            for name, got in ema.model.state_dict().items():
                want = sum(wi * s[name] for wi, s in zip(w, snapshots)) / sum(w)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
        # the EMA copy is not the model, and training the model leaves it alone until update()
        self.assertIsNot(ema.model.item_emb, model.item_emb)
        before = ema.model.item_emb.clone()
        with torch.no_grad():
            model.item_emb.add_(1.0)
        self.assertTrue(torch.equal(ema.model.item_emb, before))

    def test_ema_saved_weights(self):
        import torch

        base, _, _ = self.ema_run("off", "0")
        on, header, summary = self.ema_run("0.9", "0.9")
        # the header and the summary record the decay
        self.assertEqual(header["trained"]["ema"], 0.9)
        self.assertEqual(summary["hyper"]["ema"], 0.9)
        # the same trajectory (the EMA draws no random numbers), averaged: different weights
        self.assertEqual(sorted(on), sorted(base))
        self.assertFalse(all(torch.equal(on[k], base[k]) for k in base),
                         "--ema 0.9 saved the raw weights")
        # a decay so small that the average is the last step's weights: the raw run's weights
        tiny, _, _ = self.ema_run("tiny", "1e-12")
        for k in base:
            torch.testing.assert_close(tiny[k], base[k], rtol=0, atol=1e-6, msg=k)
        # lr 0: the weights never move, so their average is the initial weights
        still_off, _, _ = self.ema_run("lr0-off", "0", lr="0", epochs="2")
        still_on, _, _ = self.ema_run("lr0-on", "0.9", lr="0", epochs="2")
        for k in still_off:
            self.assertTrue(torch.equal(still_on[k], still_off[k]), k)

        # early stopping: the kept (saved) state is the EMA state that scored best
        mod = load_module()
        tensors, header, summary = self.ema_run("early", "0.9", epochs=None)
        tr = header["trained"]
        log = [json.loads(x) for x in
               (self.dir / "ema-early" / "train_log.jsonl").read_text().splitlines()]
        self.assertEqual(max(r["valid_ndcg10"] for r in log), tr["valid_ndcg10"])
        model, _ = mod.load_weights(self.dir / "ema-early.safetensors")
        view = synthetic_view("valid")
        m = mod.validate(model, view["sequences"], view["valid_targets"])
        self.assertAlmostEqual(m["ndcg10"], tr["valid_ndcg10"], places=6)

        # a fixed-epoch run must share --ema with the run it takes its epochs from
        p = run_script("--view", self.dir / "test.json", "--out", self.dir / "x.safetensors",
                       "--epochs-from", self.dir / "ema-early", *TRAIN_OPTS)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("ema: 0.9 there, 0.0 here", p.stderr)
        _, header, _ = self.ema_run("from", "0.9", epochs=None, stage="test",
                                    extra=("--epochs-from", self.dir / "ema-early"))
        self.assertEqual(header["trained"]["epochs_run"], tr["best_epoch"])
        self.assertEqual(header["trained"]["ema"], 0.9)

    def test_summary_without_ema_means_ema_off(self):
        # summaries written before --ema existed have no "ema": they mean 0
        self.assert_ran(self.valid)
        old = json.loads((self.dir / "valid-log" / "train_summary.json").read_text())
        del old["hyper"]["ema"]
        (self.dir / "old-summary.json").write_text(json.dumps(old))
        mod = load_module()
        a = mod.parse_args(["--view", "v", "--out", "o", *TRAIN_OPTS])
        self.assertEqual(mod.epochs_from_summary(self.dir / "old-summary.json", a), old["best_epoch"])
        a = mod.parse_args(["--view", "v", "--out", "o", "--ema", "0.5", *TRAIN_OPTS])
        with self.assertRaisesRegex(mod.UsageError, "ema: 0.0 there, 0.5 here"):
            mod.epochs_from_summary(self.dir / "old-summary.json", a)

    def test_windows_cover_every_target_once(self):
        mod = load_module()
        rng = random.Random(5)
        for L in (1, 2, 3, 8):
            for n in list(range(0, 30)):
                seq = [rng.randrange(1000) for _ in range(n)]
                wins = mod.make_windows([seq], L)
                self.assertTrue(all(2 <= len(w) <= L + 1 for w in wins))
                # rebuild the (input prefix end, target) pairs: window k = seq[s:e]
                targets = []
                pos = n
                for w in wins:
                    start = pos - len(w)
                    self.assertEqual(w, seq[start:pos])
                    targets.extend(range(start + 1, pos))
                    pos = start + 1
                self.assertEqual(sorted(targets), list(range(1, n)), (L, n))
                if wins:
                    self.assertEqual(wins[0][-1], seq[-1])

    def test_bad_inputs_fail_clearly(self):
        d = self.dir
        bad = synthetic_view("valid")
        bad["format"] = "palr-training-view/0"
        (d / "bad.json").write_text(json.dumps(bad))
        p = run_script("--view", d / "bad.json", "--out", d / "bad.safetensors", "--quiet")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("palr-training-view/1", p.stderr)
        self.assertIn("format", p.stderr)
        self.assertNotIn("Traceback", p.stderr)

        p = run_script("--view", d / "test.json", "--out", d / "x.safetensors", "--quiet")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--epochs", p.stderr)
        self.assertIn("no validation targets", p.stderr)
        self.assertNotIn("Traceback", p.stderr)
        self.assertFalse((d / "x.safetensors").exists())

        p = run_script("--view", d / "valid.json", "--out", d / "x.safetensors", "--hidden", "30",
                       "--heads", "4", "--quiet")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("divisible", p.stderr)

        if self.valid.returncode == 0:  # settings differ from the valid run's: refused
            p = run_script("--view", d / "test.json", "--out", d / "x.safetensors", "--epochs-from",
                           d / "valid-log" / "train_summary.json", "--quiet")
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("hyper-parameters differ", p.stderr)

        p = run_script("--view", d / "missing.json", "--out", d / "x.safetensors", "--quiet")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("does not exist", p.stderr)


if __name__ == "__main__":
    unittest.main()
