"""Tests of scripts/results/compare_per_user.py (paired per-user comparison of two eval reports)."""

import importlib.util
import math
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("compare_per_user", ROOT / "scripts" / "results" / "compare_per_user.py")
cmp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cmp)


def report(ranks):
    return {
        "per_user": [
            {"user": str(i), "target": str(100 + i), "ranks": {"m+score": r}} for i, r in enumerate(ranks)
        ]
    }


class Compare(unittest.TestCase):
    def test_identical_reports_differ_by_zero(self):
        r = report([1, 3, None, 12, 2])
        out = cmp.compare(r, r, "m+score")
        self.assertEqual(out["same_rank"], 5)
        for m in out["metrics"].values():
            self.assertEqual(m["diff"], 0.0)
            self.assertEqual(m["se"], 0.0)

    def test_paired_difference_and_standard_error(self):
        a = report([1, 2, None, 11])
        b = report([2, 2, 5, 11])
        out = cmp.compare(a, b, "m+score")
        ndcg = [1 / math.log2(3) - 1, 0.0, 1 / math.log2(6), 0.0]
        mean = sum(ndcg) / 4
        se = math.sqrt(sum((d - mean) ** 2 for d in ndcg) / 3 / 4)
        self.assertAlmostEqual(out["metrics"]["NDCG@10"]["diff"], mean)
        self.assertAlmostEqual(out["metrics"]["NDCG@10"]["se"], se)
        self.assertAlmostEqual(out["metrics"]["HR@10"]["diff"], 0.25)
        self.assertEqual(out["same_rank"], 2)
        text = cmp.markdown(out, "m+score", "f32", "bf16")
        self.assertIn("| NDCG@10 |", text)
        self.assertIn("2 of 4 users", text)

    def test_mismatched_users_or_targets_are_refused(self):
        with self.assertRaises(SystemExit):
            cmp.compare(report([1, 2, 3]), report([1, 2]), "m+score")
        b = report([1, 2])
        b["per_user"][1]["target"] = "999"
        with self.assertRaises(SystemExit):
            cmp.compare(report([1, 2]), b, "m+score")
        with self.assertRaises(SystemExit):
            cmp.compare(report([1, 2]), report([1, 2]), "other")


if __name__ == "__main__":
    unittest.main()
