"""palr-client's packaging: an sdist made from the repository carries the proto and no generated
code, and the wheel built from that sdist carries stubs generated from it, with every RPC."""

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
PROTO = PACKAGE.parents[1] / "proto/palr/v1/recommender.proto"
STUBS = ["__init__.py", "recommender_pb2.py", "recommender_pb2.pyi", "recommender_pb2_grpc.py"]


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
                proto = t.extractfile(f"{top}/proto/palr/v1/recommender.proto").read()
            self.assertEqual(proto, PROTO.read_bytes(), "the sdist's proto is the repository's")
            self.assertIn("setup.py", names)
            self.assertFalse([n for n in names if "_pb2" in n], "no generated code in the sdist")
            with zipfile.ZipFile(wheel) as z:
                names = set(z.namelist())
            for stub in STUBS:
                self.assertIn(f"palr_client/_proto/{stub}", names)
            self.assertIn("palr_client/py.typed", names)

            # The wheel's stubs, imported from the wheel alone, serve every RPC of the proto.
            rpcs = re.findall(r"^\s*rpc (\w+)\(", PROTO.read_text(), re.M)
            self.assertGreaterEqual(len(rpcs), 5)
            code = (
                "import sys; sys.path.insert(0, sys.argv[1]);"
                "from palr_client._proto import recommender_pb2 as pb, recommender_pb2_grpc as g;"
                "assert g.RecommenderStub; print(pb.__file__);"
                "service = pb.DESCRIPTOR.services_by_name['Recommender'];"
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
            self.assertEqual(found.split(), rpcs)


if __name__ == "__main__":
    unittest.main()
