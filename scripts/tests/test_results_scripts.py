"""Unit tests of scripts/results/results_table.py and the RecBole-free parts of scripts/results/sasrec_recbole.py.

Standard library only (the plot test runs where matplotlib is installed):
    python3 -m unittest discover -s scripts/tests -v
"""

import importlib.util
import json
import math
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load(name, file):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "results" / file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


table = load("results_table", "results_table.py")
sasrec = load("sasrec_recbole", "sasrec_recbole.py")


def metrics_of(ranks):
    return sasrec.metric_sums(ranks)


def report(methods, ranks_by_method, split="test", sampled=False, backend="in process", modes=None):
    """A report in `palr eval --out` shape from per-user ranks."""
    users = len(next(iter(ranks_by_method.values())))
    modes = modes or {}
    return {
        "split": split, "training_view": "x", "backend": backend, "n_items": 100, "n_users": users,
        "n_evaluable_users": users, "users": users, "sampled": sampled, "seed": 3, "candidates": 20,
        "depth": 100, "retrievers": [],
        "methods": [{"method": m, "retriever": m.split("+")[0], "mode": modes.get(m), "adapter": None,
                     "metrics": metrics_of(ranks_by_method[m]), "times": {}, "seconds_per_user": 0.0}
                    for m in methods],
        "per_user": [{"user": str(i), "target": "1", "ranks": {m: ranks_by_method[m][i] for m in methods}}
                     for i in range(users)],
        "wall_s": 0.0,
    }


class MetricsTest(unittest.TestCase):
    def test_hand_computed(self):
        # ranks 1, 3, 11, absent (as the unit tests of src/eval/metrics.rs)
        m = metrics_of([1, 3, 11, None])
        self.assertEqual(m["users"], 4)
        self.assertAlmostEqual(m["HR@1"], 0.25)
        self.assertAlmostEqual(m["HR@5"], 0.5)
        self.assertAlmostEqual(m["HR@10"], 0.5)
        self.assertAlmostEqual(m["HR@20"], 0.75)
        self.assertAlmostEqual(m["NDCG@10"], (1.0 + 0.5) / 4)
        self.assertAlmostEqual(m["NDCG@20"], (1.0 + 0.5 + 1 / math.log2(12)) / 4)
        self.assertAlmostEqual(m["MRR"], (1 + 1 / 3 + 1 / 11) / 4)
        self.assertAlmostEqual(m["recall@20"], m["HR@20"])


class SplitTest(unittest.TestCase):
    ROWS = [  # user 1: items 10 and 9 tie at t=5 -> numeric order 9, 10 (a string sort gives 10, 9)
        {"user_id": "1", "item_id": "10", "timestamp": "5"},
        {"user_id": "1", "item_id": "9", "timestamp": "5"},
        {"user_id": "1", "item_id": "3", "timestamp": "1"},
        {"user_id": "2", "item_id": "7", "timestamp": "2"},
        {"user_id": "2", "item_id": "8", "timestamp": "1"},
        {"user_id": "2", "item_id": "1", "timestamp": "3"},
    ]

    def test_order_and_ties(self):
        seqs, ukey, ikey = sasrec.palr_split(self.ROWS)
        self.assertEqual(seqs["1"], ["3", "9", "10"])
        self.assertEqual(seqs["2"], ["8", "7", "1"])

    def test_sorted_inter_file(self):
        seqs, ukey, ikey = sasrec.palr_split(self.ROWS)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "x.inter"
            sasrec.write_sorted_inter(self.ROWS, ukey, ikey, p)
            lines = p.read_text().splitlines()
        self.assertEqual(lines[0], "user_id:token\titem_id:token\ttimestamp:float")
        self.assertEqual([l.split("\t")[1] for l in lines[1:]], ["3", "9", "10", "8", "7", "1"])

    def test_sha_format(self):
        seqs, ukey, _ = sasrec.palr_split(self.ROWS)
        import hashlib
        self.assertEqual(sasrec.split_sha256(seqs, ukey),
                         hashlib.sha256(b"1,9,10\n2,7,1\n").hexdigest())

    @unittest.skipUnless((ROOT / "data/ml-100k/ml-100k.inter").is_file(), "needs `palr data fetch ml-100k`")
    def test_ml100k_matches_fixture(self):
        rows = sasrec.read_atomic(ROOT / "data/ml-100k/ml-100k.inter",
                                  {"user_id": "token", "item_id": "token", "timestamp": "float"})
        seqs, ukey, _ = sasrec.palr_split(rows)
        fx = json.loads((ROOT / "tests/fixtures/ml100k-split-check.json").read_text())
        self.assertEqual(sasrec.split_sha256(seqs, ukey), fx["sha256_all_users"])
        for u in fx["users"]:
            s = seqs[str(u["user_id"])]
            self.assertEqual((s[-1], s[-2]), (str(u["test_item_id"]), str(u["valid_item_id"])))

    def test_palr_report_check(self):
        seqs, _, _ = sasrec.palr_split(self.ROWS)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "r.json"
            p.write_text(json.dumps({"split": "test", "per_user": [{"user": "1", "target": "10", "ranks": {}}]}))
            self.assertEqual(sasrec.check_palr_report(p, seqs), 1)
            p.write_text(json.dumps({"split": "test", "per_user": [{"user": "1", "target": "9", "ranks": {}}]}))
            with self.assertRaisesRegex(sasrec.SetupError, "differ"):
                sasrec.check_palr_report(p, seqs)

    def test_bad_header(self):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "x.inter"
            p.write_text("user_id:token\titem:token\n1\t2\n")
            with self.assertRaisesRegex(sasrec.SetupError, "no column `item_id:token`"):
                sasrec.read_atomic(p, {"user_id": "token", "item_id": "token"})


class TableTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.d = Path(self.dir.name)

    def tearDown(self):
        self.dir.cleanup()

    def write(self, name, obj):
        p = self.d / name
        p.write_text(json.dumps(obj))
        return p

    def test_merge_se_and_labels(self):
        a = self.write("a.json", report(["pop", "markov"], {"pop": [1, None, None, 20], "markov": [1, 3, 11, None]}))
        b = self.write("b.json", report(["markov", "markov+score"], {"markov": [2, None], "markov+score": [1, None]},
                                        sampled=True, modes={"markov+score": "score"}))
        s = self.write("s.json", dict(report(["sasrec"], {"sasrec": [3, 4, 5, 6]}, backend="RecBole 1.2.1 SASRec"),
                                      sasrec={}))
        split, rows = table.load_all([a, b, s])
        self.assertEqual(split, "test")
        self.assertEqual([r.kind for r in rows], ["retriever", "retriever", "retriever", "llm", "baseline"])
        # The outside SASRec is named apart from palr's own `sasrec` retriever.
        self.assertEqual(rows[-1].method, "sasrec (RecBole)")
        # SE of markov's per-user NDCG@10 [1, 0.5, 0, 0]: sample sd / sqrt(4)
        vals = [1.0, 0.5, 0.0, 0.0]
        mean = sum(vals) / 4
        se = math.sqrt(sum((v - mean) ** 2 for v in vals) / 3 / 4)
        self.assertAlmostEqual(rows[1].ndcg10_se, se)
        self.assertEqual(rows[1].label(rows), "markov (4 users)")
        self.assertEqual(rows[0].label(rows), "pop")
        self.assertEqual(rows[3].label(rows), "markov+score (2 users)")  # a sample
        md = table.markdown(split, rows)
        self.assertIn(f"| markov | 4 | 0.2500 | 0.5000 | 0.5000 | 0.7500 |", md)
        self.assertIn("| markov | 2 (sample, seed 3) |", md)
        self.assertIn(f"{mean:.4f} ± {se:.4f}", md)
        score_line = next(l for l in md.splitlines() if l.startswith("| markov+score"))
        self.assertTrue(score_line.endswith("| 0.5000 |"), score_line)  # candidate recall@20
        self.assertTrue(md.splitlines()[-1].endswith("| — |"))

    def test_without_per_user(self):
        r = report(["pop"], {"pop": [1, 2]})
        del r["per_user"]
        _, rows = table.load_all([self.write("a.json", r)])
        self.assertIsNone(rows[0].ndcg10_se)
        self.assertIn("| 0.8155 | ", table.markdown("test", rows))

    def test_inconsistent_per_user(self):
        r = report(["pop"], {"pop": [1, 2]})
        r["methods"][0]["metrics"]["NDCG@10"] = 0.9
        with self.assertRaisesRegex(table.InputError, "inconsistent"):
            table.load_all([self.write("a.json", r)])

    def test_errors(self):
        with self.assertRaisesRegex(table.InputError, "no such report"):
            table.load_all([self.d / "missing.json"])
        with self.assertRaisesRegex(table.InputError, "not JSON"):
            table.load_all([self._raw("x.json", "{")])
        with self.assertRaisesRegex(table.InputError, "no `methods`"):
            table.load_all([self.write("y.json", {"split": "test"})])
        a = self.write("a.json", report(["pop"], {"pop": [1]}))
        v = self.write("v.json", report(["pop"], {"pop": [1]}, split="valid"))
        with self.assertRaisesRegex(table.InputError, "split 'valid'"):
            table.load_all([a, v])

    def _raw(self, name, text):
        p = self.d / name
        p.write_text(text)
        return p

    def test_splice(self):
        readme = self._raw("README.md", f"intro\n{table.START}\nold\n{table.END}\nrest\n")
        table.splice(readme, "| new |\n")
        self.assertEqual(readme.read_text(), f"intro\n{table.START}\n| new |\n{table.END}\nrest\n")
        table.splice(readme, "| newer |\n")
        self.assertEqual(readme.read_text(), f"intro\n{table.START}\n| newer |\n{table.END}\nrest\n")
        bad = self._raw("bad.md", "no markers\n")
        with self.assertRaisesRegex(table.InputError, "needs one line"):
            table.splice(bad, "x")

    def test_splice_named_section(self):
        start, end = "<!-- results-table-valid:start -->", "<!-- results-table-valid:end -->"
        text = f"{table.START}\nmain\n{table.END}\n{start}\nold\n{end}\n"
        readme = self._raw("README.md", text)
        table.splice(readme, "| valid |\n", "valid")
        self.assertEqual(readme.read_text(), f"{table.START}\nmain\n{table.END}\n{start}\n| valid |\n{end}\n")
        with self.assertRaisesRegex(table.InputError, "results-table-other:start"):
            table.splice(readme, "x", "other")
        with self.assertRaisesRegex(table.InputError, "section name"):
            table.splice(readme, "x", "a b")

    def test_plot(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("matplotlib not installed")
        _, rows = table.load_all([self.write("a.json", report(["pop", "markov"], {"pop": [1, None], "markov": [2, 3]}))])
        out = self.d / "p.png"
        table.plot(rows, "test", out)
        self.assertEqual(out.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()
