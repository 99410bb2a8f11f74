"""palr-client's packaging: an sdist made from the repository carries the protos (public and
admin API) and no generated code, and the wheel built from that sdist carries stubs generated
from them, with every RPC of each service."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
import unittest
import zipfile
from pathlib import Path

from live import skip

PACKAGE = Path(__file__).resolve().parents[1]
# Each proto (its path under proto/), its stubs' module name and its service.
PROTOS = {
    "palr/v1/recommender.proto": ("recommender", "Recommender"),
    "palr/admin/v1/admin.proto": ("admin", "Admin"),
}
REPO_PROTO = PACKAGE.parents[1] / "proto"
STUBS = ["__init__.py"] + [
    f"{module}{suffix}"
    for module, _ in PROTOS.values()
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
]


class Packaging(unittest.TestCase):
    def test_sdist_and_wheel(self):
        try:
            import build  # noqa: F401
        except ImportError:
            skip("no `build` module here (scripts/setup/client-venv.sh installs it)")
        with tempfile.TemporaryDirectory(prefix="palr-client-dist-") as out:
            # Without isolation: the environment's pinned setuptools and grpcio-tools build it,
            # first the sdist, then the wheel from the unpacked sdist (away from the repository).
            subprocess.run(
                [sys.executable, "-m", "build", "--no-isolation", "--outdir", out, str(PACKAGE)],
                check=True,
                capture_output=True,
            )
            [sdist] = Path(out).glob("palr_client-*.tar.gz")
            [wheel] = Path(out).glob("palr_client-*.whl")
            top = sdist.name.removesuffix(".tar.gz")
            with tarfile.open(sdist) as t:
                names = {n.removeprefix(f"{top}/") for n in t.getnames()}
                for proto in PROTOS:
                    copy = t.extractfile(f"{top}/proto/{proto}").read()
                    repo = (REPO_PROTO / proto).read_bytes()
                    self.assertEqual(copy, repo, f"the sdist's {proto} is the repository's")
            self.assertIn("setup.py", names)
            self.assertFalse([n for n in names if "_pb2" in n], "no generated code in the sdist")
            with zipfile.ZipFile(wheel) as z:
                names = set(z.namelist())
            for stub in STUBS:
                self.assertIn(f"palr_client/_proto/{stub}", names)
            self.assertIn("palr_client/py.typed", names)

            # The wheel's stubs, imported from the wheel alone, serve every RPC of each proto.
            for proto, (module, service) in PROTOS.items():
                rpcs = re.findall(r"^\s*rpc (\w+)\(", (REPO_PROTO / proto).read_text(), re.M)
                self.assertGreaterEqual(len(rpcs), 5, proto)
                code = (
                    "import sys; sys.path.insert(0, sys.argv[1]);"
                    f"from palr_client._proto import {module}_pb2 as pb, {module}_pb2_grpc as g;"
                    f"assert g.{service}Stub; print(pb.__file__);"
                    f"service = pb.DESCRIPTOR.services_by_name['{service}'];"
                    "print(' '.join(m.name for m in service.methods))"
                )
                origin, found = subprocess.run(
                    [sys.executable, "-I", "-c", code, str(wheel)],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=out,
                ).stdout.splitlines()
                self.assertTrue(origin.startswith(str(wheel)), origin)
                self.assertEqual(found.split(), rpcs, proto)


if __name__ == "__main__":
    unittest.main()
