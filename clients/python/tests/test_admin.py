"""palr-client's AdminClient against a live palr server (tests/live.py) with the admin API on:
adapters listed, loaded, refused, replaced, named by a request, unloaded; both reloads; the
scopes. The answers' dataclasses against admin.proto need no server.

Run from the repository root in the client's environment:
    "$(scripts/setup/client-venv.sh | tail -n 1)" -m unittest discover -s clients/python/tests -v
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import unittest
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402
import palr_client  # noqa: E402
from live import REPO, Server  # noqa: E402
from palr_client import AdminClient, Client  # noqa: E402
from palr_client._proto import admin_pb2 as admin_pb  # noqa: E402

HISTORY = ["1", "50", "172", "181", "258", "127"]
# A PEFT LoRA adapter (rank 4) for the default model.
FIXTURE_ADAPTER = REPO / "tests/fixtures/lora-peft"


class WithoutServer(unittest.TestCase):
    def test_admin_answer_types_are_the_proto_messages(self):
        # Every field of each message, by name, and nothing else.
        pairs = [
            (palr_client.LoadedRetriever, admin_pb.LoadedRetriever),
            (palr_client.RetrieversReload, admin_pb.ReloadRetrieversResponse),
            (palr_client.DataCounts, admin_pb.DataCounts),
            (palr_client.DataReload, admin_pb.ReloadDataResponse),
            (palr_client.Adapter, admin_pb.Adapter),
            (palr_client.AdapterList, admin_pb.ListAdaptersResponse),
            (palr_client.AdapterLoad, admin_pb.LoadAdapterResponse),
            (palr_client.AdapterUnload, admin_pb.UnloadAdapterResponse),
        ]
        for cls, message in pairs:
            names = {f.name for f in dataclasses.fields(cls)}
            self.assertEqual(names, set(message.DESCRIPTOR.fields_by_name), cls.__name__)
        # An absent `replaced` is None, not an empty Adapter.
        answer = palr_client.AdapterLoad.from_proto(
            admin_pb.LoadAdapterResponse(adapter=admin_pb.Adapter(name="a", rank=4), took_ms=2.5)
        )
        self.assertEqual((answer.adapter.name, answer.adapter.rank), ("a", 4))
        self.assertIsNone(answer.replaced)

    def test_status_codes_map_to_their_exceptions(self):
        cases = {
            grpc.StatusCode.ALREADY_EXISTS: palr_client.AlreadyExists,
            grpc.StatusCode.FAILED_PRECONDITION: palr_client.FailedPrecondition,
            grpc.StatusCode.NOT_FOUND: palr_client.NotFound,
            grpc.StatusCode.PERMISSION_DENIED: palr_client.PermissionDenied,
            grpc.StatusCode.INTERNAL: palr_client.PalrError,
        }

        class Failed(grpc.RpcError):
            def __init__(self, status):
                self.status = status

            def code(self):
                return self.status

            def details(self):
                return "what to change"

        for code, cls in cases.items():
            error = palr_client.errors.from_rpc_error(Failed(code))
            self.assertIs(type(error), cls)
            self.assertEqual((error.code, error.details), (code, "what to change"))


class AdminServer(unittest.TestCase):
    """configs/palr.toml with a tokens file (an admin token, a service token without the admin
    scope), the admin API on a free port and a temporary directory as `[model] adapter_dirs`."""

    ADMIN = "py-admin-0123456789abcdef"
    SERVICE = "py-service-0123456789abcdef"

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="palr-client-admin-")
        d = Path(cls.dir.name).resolve()
        tokens = d / "tokens"
        tokens.write_text(f"ops {cls.ADMIN} admin\nsvc {cls.SERVICE}\n")
        cls.adapters = d / "adapters"
        for name in ("v1", "v2"):
            shutil.copytree(FIXTURE_ADAPTER, cls.adapters / name)
        cls.server = Server(
            {
                "PALR_SERVER__AUTH__TOKENS_FILE": f'"{tokens}"',
                "PALR_SERVER__ADMIN_ADDR": '"127.0.0.1:0"',
                "PALR_MODEL__ADAPTER_DIRS": f'["{cls.adapters}"]',
                "PALR_SERVER__WARMUP": "false",
            }
        )
        if cls.server.admin_addr is None:
            status = cls.server.stop()
            raise AssertionError(f"admin API off (palr serve exited {status})")
        cls.admin = AdminClient(cls.server.admin_addr, token=cls.ADMIN)
        cls.client = Client(cls.server.addr, token=cls.SERVICE, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.admin.close()
        cls.client.close()
        status = cls.server.stop()
        cls.dir.cleanup()
        if status != 0:
            raise AssertionError(f"palr serve exited {status} after SIGTERM, not 0 (drained)")

    def recommend(self, adapter):
        return self.client.recommend(HISTORY, k=3, mode="score", num_candidates=5, adapter=adapter)

    def test_adapter_load_replace_use_unload(self):
        listed = self.admin.list_adapters()
        self.assertEqual((listed.adapters, listed.default_adapter), ((), ""))
        with self.assertRaises(palr_client.NotFound):
            self.recommend("fx")

        # Loaded: what it is, listed, and requests may name it.
        loaded = self.admin.load_adapter("fx", self.adapters / "v1")
        a = loaded.adapter
        self.assertEqual((a.name, a.rank, a.projections), ("fx", 4, 35))
        self.assertEqual(Path(a.dir), self.adapters / "v1")
        self.assertFalse(a.merged or a.is_default)
        self.assertGreater(a.generation, 0)
        self.assertGreater(a.parameters, 0)
        self.assertGreater(a.loaded_unix_ms, 0)
        self.assertIsNone(loaded.replaced)
        self.assertGreater(loaded.took_ms, 0)
        listed = self.admin.list_adapters()
        self.assertEqual(listed.adapters, (a,))
        self.assertEqual(listed.names, ["fx"])
        answer = self.recommend("fx")
        self.assertEqual((answer.adapter, answer.mode, len(answer.items)), ("fx", "score", 3))
        self.assertTrue(all(item.ranked_by_llm for item in answer.items))

        # The name is taken: refused, and nothing changes.
        with self.assertRaises(palr_client.AlreadyExists) as caught:
            self.admin.load_adapter("fx", str(self.adapters / "v2"))
        e = caught.exception
        self.assertEqual(e.code, grpc.StatusCode.ALREADY_EXISTS)
        self.assertIn("replace", e.details)
        self.assertEqual(self.admin.list_adapters().adapters, (a,))
        # A directory outside adapter_dirs.
        with self.assertRaises(palr_client.InvalidArgument) as caught:
            self.admin.load_adapter("other", FIXTURE_ADAPTER)
        self.assertIn("adapter_dirs", caught.exception.details)

        # Replaced: a new generation from the new directory, the old one reported.
        swapped = self.admin.load_adapter("fx", self.adapters / "v2", replace=True)
        self.assertEqual(swapped.replaced, a)
        b = swapped.adapter
        self.assertEqual((b.name, Path(b.dir)), ("fx", self.adapters / "v2"))
        self.assertGreater(b.generation, a.generation)
        self.assertEqual(self.admin.list_adapters().adapters, (b,))
        self.assertEqual(self.recommend("fx").adapter, "fx")

        # Unloaded: requests naming it are NOT_FOUND; unloading it again too.
        unloaded = self.admin.unload_adapter("fx", timeout=30)
        self.assertEqual(unloaded.adapter, b)
        self.assertEqual(self.admin.list_adapters().adapters, ())
        with self.assertRaises(palr_client.NotFound):
            self.recommend("fx")
        with self.assertRaises(palr_client.NotFound) as caught:
            self.admin.unload_adapter("fx")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("fx", caught.exception.details)

        # replace=True where nothing has the name: a plain load.
        fresh = self.admin.load_adapter("fx", self.adapters / "v1", replace=True)
        self.assertIsNone(fresh.replaced)
        self.assertGreater(fresh.adapter.generation, b.generation)
        self.assertEqual(self.admin.unload_adapter("fx").adapter, fresh.adapter)

    def test_reload_retrievers(self):
        serving = {r.name: r for r in self.client.list_retrievers()}
        fusions = {n for n, r in serving.items() if r.fusion_members}
        first = self.admin.reload_retrievers()
        # The configuration did not change: the same set, nothing added, removed or pending.
        self.assertEqual({r.name for r in first.retrievers}, set(serving) - fusions)
        self.assertEqual(set(first.fusions), fusions)
        default = [n for n, r in serving.items() if r.is_default]
        self.assertEqual([first.default_retriever], default)
        self.assertEqual((first.added, first.removed, first.not_reloaded), ((), (), ()))
        self.assertGreater(first.took_ms, 0)
        for r in first.retrievers:
            self.assertEqual(r.plugin_version, serving[r.name].plugin_version, r.name)
            self.assertIn(r.library_file, serving[r.name].library_path, r.name)
        # Every reload loads anew: new generations.
        second = self.admin.reload_retrievers()
        generations = {r.name: r.generation for r in first.retrievers}
        for r in second.retrievers:
            self.assertGreater(r.generation, generations[r.name], r.name)
        answer = self.client.recommend(HISTORY, k=3, retriever="markov", mode="retriever")
        self.assertEqual(len(answer.items), 3)

    def test_reload_data_of_unchanged_files(self):
        info = self.client.model_info()
        reload = self.admin.reload_data()
        # The files did not change: the same counts and view, nothing added or removed.
        self.assertEqual(reload.after, reload.before)
        self.assertEqual(reload.after.items, info.catalog_items)
        self.assertGreater(reload.after.users, 0)
        self.assertGreater(reload.after.interactions, reload.after.users)
        self.assertEqual((reload.items_added, reload.items_removed), (0, 0))
        fingerprint = reload.training_view_fingerprint
        self.assertEqual(fingerprint, reload.previous_training_view_fingerprint)
        self.assertEqual(fingerprint, info.training_view_fingerprint)
        self.assertEqual(reload.training_view_stage, info.training_view_stage)
        self.assertEqual(
            {r.name for r in reload.retrievers},
            {r.name for r in self.client.list_retrievers() if not r.fusion_members},
        )
        self.assertEqual(self.client.model_info().catalog_items, info.catalog_items)
        answer = self.client.recommend(HISTORY, k=3, retriever="markov", mode="retriever")
        self.assertEqual(len(answer.items), 3)

    def test_tokens_without_the_admin_scope(self):
        # The service token (recommend, read) is PERMISSION_DENIED on every admin call; no token
        # or an unknown one is UNAUTHENTICATED.
        with AdminClient(self.server.admin_addr, token=self.SERVICE, timeout=10) as svc:
            calls = {
                "list_adapters": svc.list_adapters,
                "load_adapter": lambda: svc.load_adapter("x", self.adapters / "v1"),
                "unload_adapter": lambda: svc.unload_adapter("x"),
                "reload_retrievers": svc.reload_retrievers,
                "reload_data": svc.reload_data,
            }
            for name, call in calls.items():
                with self.subTest(name):
                    with self.assertRaises(palr_client.PermissionDenied) as caught:
                        call()
                    self.assertEqual(caught.exception.code, grpc.StatusCode.PERMISSION_DENIED)
                    self.assertIn("admin", caught.exception.details)
        for token in (None, "not-a-token-0123456789abcdef"):
            with AdminClient(self.server.admin_addr, token=token, timeout=10) as stranger:
                with self.subTest(token=token), self.assertRaises(palr_client.Unauthenticated):
                    stranger.list_adapters()
        self.assertEqual(self.admin.list_adapters().default_adapter, "")


if __name__ == "__main__":
    unittest.main()
