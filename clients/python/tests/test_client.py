"""palr-client against live palr servers (tests/live.py): answers, errors, deadlines, tokens, TLS.

Run from the repository root in the client's environment:
    "$(scripts/setup/client-venv.sh | tail -n 1)" -m unittest discover -s clients/python/tests -v
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

# The refused TLS handshakes below are expected: keep gRPC's C core from logging them.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402
import palr_client  # noqa: E402
from live import Server, catalog, make_pki  # noqa: E402
from palr_client import Client  # noqa: E402
from palr_client._proto import recommender_pb2 as pb  # noqa: E402

HISTORY = ["1", "50", "172", "181", "258", "127"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/recommend.py"


class WithoutServer(unittest.TestCase):
    def test_answer_types_name_the_proto_fields(self):
        # Each dataclass field is read from the proto field of the same name (ModelInfo's
        # default_mode from default_rank_mode); a renamed or dropped field fails here first.
        pairs = [
            (palr_client.Timings, pb.StageTimings),
            (palr_client.Item, pb.RankedItem),
            (palr_client.ScoredItem, pb.ScoredItem),
            (palr_client.RetrieverInfo, pb.RetrieverInfo),
            (palr_client.ModelInfo, pb.ModelInfo),
        ]
        for cls, message in pairs:
            names = {f.name for f in dataclasses.fields(cls)} - {"default_mode"}
            self.assertLessEqual(names, set(message.DESCRIPTOR.fields_by_name), cls.__name__)
        # Every field of the descriptive messages is carried.
        for cls, message in pairs[3:]:
            names = {f.name for f in dataclasses.fields(cls)} | {"default_rank_mode"}
            self.assertEqual(set(message.DESCRIPTOR.fields_by_name) - names, set(), cls.__name__)

    def test_bad_arguments_fail_before_sending(self):
        with Client("127.0.0.1:1") as c:
            with self.assertRaisesRegex(ValueError, "unknown mode 'llm'"):
                c.recommend(HISTORY, mode="llm")
            with self.assertRaisesRegex(TypeError, "list of item ids"):
                c.recommend("1,50,172")
        with self.assertRaisesRegex(ValueError, "go together"):
            Client("127.0.0.1:1", client_cert=b"cert")
        with self.assertRaisesRegex(ValueError, "plaintext"):
            Client("http://127.0.0.1:1", ca_cert=b"ca")

    def test_each_client_has_its_defaults(self):
        # No call is made: a channel connects on its first call.
        for cls, addr, timeout in (
            (Client, palr_client.client.DEFAULT_ADDR, 30.0),
            (palr_client.AdminClient, palr_client.admin.DEFAULT_ADMIN_ADDR, 120.0),
        ):
            with cls() as c:
                self.assertEqual(c.timeout, timeout)
                self.assertEqual(c.addr, addr)
            with cls("127.0.0.1:1", timeout=None) as c:
                self.assertIsNone(c.timeout)
            with cls(timeout=5) as c:
                self.assertEqual(c.timeout, 5)

    def test_no_server_is_unavailable(self):
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with Client(f"127.0.0.1:{port}", timeout=10) as c:
            with self.assertRaises(palr_client.Unavailable) as caught:
                c.model_info()
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)


class PlaintextServer(unittest.TestCase):
    """configs/palr.toml as it is, plaintext, no tokens."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.client = Client(cls.server.addr, timeout=30)
        cls.catalog = catalog()

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        status = cls.server.stop()
        if status != 0:
            raise AssertionError(f"palr serve exited {status} after SIGTERM, not 0 (drained)")

    def check_items(self, answer, k, history):
        self.assertEqual(len(answer.items), k)
        for item in answer.items:
            self.assertIn(item.item_id, self.catalog)
            self.assertEqual(item.title, self.catalog[item.item_id])
        self.assertEqual(set(answer.item_ids) & set(history), set(), "no history item returned")
        self.assertEqual(len(set(answer.item_ids)), k, "no item twice")
        scores = [item.score for item in answer.items]
        self.assertEqual(scores, sorted(scores, reverse=True), "best first")

    def test_recommend_by_retriever(self):
        answer = self.client.recommend(HISTORY, k=5, retriever="markov", mode="retriever")
        self.check_items(answer, 5, HISTORY)
        self.assertEqual((answer.retriever, answer.mode), ("markov", "retriever"))
        self.assertEqual([i.retriever_rank for i in answer.items], [1, 2, 3, 4, 5])
        self.assertFalse(any(i.ranked_by_llm for i in answer.items))
        self.assertGreater(answer.timings.total_ms, 0)
        self.assertEqual(answer.timings.prompt_tokens, 0, "no LLM, no prompt")

    def test_recommend_with_the_llm(self):
        answer = self.client.recommend(
            [1, 50, 172], k=3, mode="score", num_candidates=5, user_id="py-client-test"
        )
        self.check_items(answer, 3, ["1", "50", "172"])
        self.assertEqual(answer.mode, "score")
        self.assertEqual(answer.retriever, self.client.model_info().default_retriever)
        self.assertTrue(all(i.ranked_by_llm for i in answer.items))
        self.assertTrue(all(1 <= i.retriever_rank <= 5 for i in answer.items))
        t = answer.timings
        self.assertGreater(t.prompt_tokens, 0)
        self.assertGreater(t.prefill_ms, 0)
        self.assertGreaterEqual(t.total_ms, t.prefill_ms)

    def test_exclude_and_rank_and_retrieve(self):
        first = self.client.recommend(HISTORY, k=3, retriever="markov", mode="retriever")
        second = self.client.recommend(
            HISTORY, k=3, retriever="markov", mode="retriever", exclude=first.item_ids[:1]
        )
        self.assertEqual(second.item_ids[:2], first.item_ids[1:])

        retrieved = self.client.retrieve(HISTORY, 10, retriever="markov")
        self.assertEqual(retrieved.item_ids[:3], first.item_ids)
        self.assertEqual(len(retrieved.items), 10)

        candidates = retrieved.item_ids[:4][::-1]
        ranked = self.client.rank(HISTORY, candidates, k=2, mode="retriever")
        self.assertEqual(ranked.item_ids, candidates[:2], "retriever mode keeps the caller's order")
        self.assertEqual([i.retriever_rank for i in ranked.items], [1, 2])

    def test_list_retrievers_and_model_info(self):
        info = self.client.model_info()
        self.assertEqual(info.catalog_items, len(self.catalog))
        self.assertGreater(info.max_k, 0)
        self.assertIn(info.default_mode, {"score", "generate", "retriever"})
        retrievers = {r.name: r for r in self.client.list_retrievers()}
        self.assertLessEqual({"popularity", "itemknn", "markov", "sasrec"}, set(retrievers))
        self.assertEqual(
            [n for n, r in retrievers.items() if r.is_default], [info.default_retriever]
        )
        self.assertEqual(retrievers["markov"].breaker_state, "closed")

    def test_bad_requests_raise_their_status(self):
        invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
        cases = [
            (dict(history=[]), palr_client.InvalidArgument, invalid, "history"),
            (dict(history=["1", "99999"]), palr_client.InvalidArgument, invalid, "99999"),
            (dict(history=HISTORY, k=10_000), palr_client.InvalidArgument, invalid, "k"),
            (dict(history=HISTORY, retriever="nosuch"), palr_client.NotFound, not_found, "markov"),
            (dict(history=HISTORY, adapter="nosuch"), palr_client.NotFound, not_found, "nosuch"),
        ]
        for kwargs, error, code, named in cases:
            with self.subTest(**kwargs):
                with self.assertRaises(error) as caught:
                    self.client.recommend(mode="retriever", **kwargs)
                e = caught.exception
                self.assertIsInstance(e, palr_client.PalrError)
                self.assertEqual(e.code, code)
                self.assertIn(named, e.details)
                self.assertEqual(str(e), f"{e.code.name}: {e.details}")
        with self.assertRaises(palr_client.InvalidArgument) as caught:
            self.client.rank(HISTORY, ["1", "2"], mode="retriever")
        self.assertIn("history", caught.exception.details)

    def test_example_script(self):
        def example(*args):
            cmd = [sys.executable, str(EXAMPLE), "--addr", self.server.addr, *args]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

        run = example(
            "--history", ",".join(HISTORY), *"--k 3 --mode retriever --retriever markov".split()
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        lines = run.stdout.splitlines()
        expected = self.client.recommend(HISTORY, k=3, retriever="markov", mode="retriever")
        for rank, (line, item) in enumerate(zip(lines[1:4], expected.items, strict=True), 1):
            self.assertEqual(line.split()[:2], [str(rank), item.item_id], run.stdout)
        self.assertEqual(lines[4], "mode retriever, retriever markov")
        self.assertIn("total", lines[5])

        run = example("--history", "1,99999")
        self.assertEqual(run.returncode, 1)
        self.assertIn("error: INVALID_ARGUMENT", run.stderr)

    def test_deadlines(self):
        # Ranking with the LLM takes far longer than 10 ms on a CPU: the client's default
        # deadline applies, and a call's own timeout overrides it.
        with Client(self.server.addr, timeout=0.01) as hasty:
            with self.assertRaises(palr_client.DeadlineExceeded) as caught:
                hasty.recommend(HISTORY, k=3, mode="score", num_candidates=20)
            self.assertEqual(caught.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)
            answer = hasty.recommend(HISTORY, k=3, mode="score", num_candidates=20, timeout=60)
            self.assertEqual(len(answer.items), 3)


class SecuredServer(unittest.TestCase):
    """Mutual TLS and a tokens file: a full token, a read-only one and an admin one (the admin
    API on, over the same TLS)."""

    TOKEN = "py-client-0123456789abcdef"
    READER = "py-reader-0123456789abcdef"
    ADMIN = "py-admin-0123456789abcdef"

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="palr-client-tls-")
        d = Path(cls.dir.name)
        cls.pki = make_pki(d)
        tokens = d / "tokens"
        tokens.write_text(
            f"# callers\nfrontend {cls.TOKEN}\ndashboard {cls.READER} read\nops {cls.ADMIN} admin\n"
        )
        setting = lambda path: f'"{path}"'  # noqa: E731  a TOML string
        cls.server = Server(
            {
                "PALR_SERVER__TLS__CERT_FILE": setting(cls.pki["server.pem"]),
                "PALR_SERVER__TLS__KEY_FILE": setting(cls.pki["server.key"]),
                "PALR_SERVER__TLS__CLIENT_CA_FILE": setting(cls.pki["ca.pem"]),
                "PALR_SERVER__AUTH__TOKENS_FILE": setting(tokens),
                "PALR_SERVER__ADMIN_ADDR": setting("127.0.0.1:0"),
                "PALR_SERVER__WARMUP": "false",
            }
        )
        cls.port = cls.server.addr.rsplit(":", 1)[1]

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.dir.cleanup()

    def client(self, token=None, identity=True, **tls):
        tls.setdefault("ca_cert", self.pki["ca.pem"])
        if identity:
            tls.update(
                client_cert=self.pki["client.pem"], client_key=self.pki["client.key"].read_bytes()
            )
        return Client(f"https://127.0.0.1:{self.port}", token=token, timeout=10, **tls)

    def test_the_token_opens_every_call(self):
        with self.client(self.TOKEN) as c:
            answer = c.recommend(HISTORY, k=2, retriever="markov", mode="retriever")
            self.assertEqual(len(answer.items), 2)
            self.assertTrue(c.list_retrievers())
        # The certificate checked against another name than the address's host.
        with self.client(self.TOKEN, tls_domain="localhost") as c:
            self.assertGreater(c.model_info().catalog_items, 0)

    def test_no_token_or_a_wrong_one_is_unauthenticated(self):
        for token in (None, "not-a-token-0123456789abcdef"):
            with self.subTest(token=token), self.client(token) as c:
                with self.assertRaises(palr_client.Unauthenticated) as caught:
                    c.recommend(HISTORY, k=2, mode="retriever")
                self.assertEqual(caught.exception.code, grpc.StatusCode.UNAUTHENTICATED)

    def test_a_read_only_token_reads_but_does_not_recommend(self):
        with self.client(self.READER) as c:
            self.assertGreater(c.model_info().catalog_items, 0)
            with self.assertRaises(palr_client.PermissionDenied) as caught:
                c.recommend(HISTORY, k=2, mode="retriever")
            self.assertIn("recommend", caught.exception.details)

    def test_the_admin_client_over_mutual_tls(self):
        admin_port = self.server.admin_addr.rsplit(":", 1)[1]
        tls = dict(client_cert=self.pki["client.pem"], client_key=self.pki["client.key"])
        with palr_client.AdminClient(
            f"https://localhost:{admin_port}", token=self.ADMIN, ca_cert=self.pki["ca.pem"], **tls
        ) as admin:
            self.assertEqual(admin.list_adapters().adapters, ())
        with palr_client.AdminClient(f"127.0.0.1:{admin_port}", token=self.ADMIN, timeout=10) as c:
            with self.assertRaises(palr_client.Unavailable):
                c.list_adapters()

    def test_tls_is_required_both_ways(self):
        attempts = {
            "no client certificate": self.client(self.TOKEN, identity=False),
            "server not trusted": self.client(self.TOKEN, ca_cert=self.pki["client.pem"]),
            "plaintext": Client(f"127.0.0.1:{self.port}", token=self.TOKEN, timeout=10),
        }
        for what, client in attempts.items():
            with self.subTest(what), client, self.assertRaises(palr_client.Unavailable):
                client.model_info()


if __name__ == "__main__":
    unittest.main()
