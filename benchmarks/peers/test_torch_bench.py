"""Checks of torch_bench.py that need neither torch nor a model:
`python3 -m unittest discover -s benchmarks/peers`."""

import contextlib
import io
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_bench  # noqa: E402


class PromptIds(unittest.TestCase):
    def test_matches_palr(self):
        # Same values as src/bench/engine.rs `prompt_ids_are_pinned` and the candle harness.
        self.assertEqual(torch_bench.prompt_ids(5, 49152), [3501, 8310, 8502, 19572, 35564])
        self.assertEqual(torch_bench.prompt_ids(5, 49152), torch_bench.PINNED_49152)

    def test_in_range(self):
        ids = torch_bench.prompt_ids(512, 49152)
        self.assertEqual(len(ids), 512)
        self.assertTrue(all(0 <= t < 49152 for t in ids))
        self.assertTrue(all(t == 0 for t in torch_bench.prompt_ids(3, 0)))


class Args(unittest.TestCase):
    def rejects(self, argv, needle):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit):
            torch_bench.parse_args(argv)
        self.assertIn(needle, err.getvalue())

    def test_bad_flags_are_named(self):
        with tempfile.TemporaryDirectory() as d:
            self.rejects(["--model", d], "no config.json")
            open(os.path.join(d, "config.json"), "w").close()
            self.rejects(["--model", d, "--runs", "0"], "--runs")
            self.rejects(["--model", d, "--dtype", "f16"], "use f32 or bf16")
            self.assertEqual(torch_bench.parse_args(["--model", d, "--dtype", "bf16"]).dtype, "bf16")
            a = torch_bench.parse_args(["--model", d])
            self.assertEqual((a.prompt_tokens, a.decode_tokens, a.warmup, a.runs), (512, 64, 1, 5))


if __name__ == "__main__":
    unittest.main()
