"""A real palr server for the client's tests: `palr serve` with configs/palr.toml on a free port.

The binary is $PALR_BIN (default target/release/palr), run in the repository so the config's
model and data paths resolve. Where the binary, the model or the data is missing, the tests
that need a server are skipped with the reason; with PALR_CLIENT_TESTS_STRICT=1
(scripts/test.sh, which prepares all three) every skip is a failure instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("PALR_BIN", REPO / "target/release/palr"))
# configs/palr.toml's [model] dir and [data] dir.
MODEL = REPO / "models/smollm2-135m-instruct"
DATA = REPO / "data/ml-100k"


def skip(reason: str) -> None:
    """Skips the test with the reason; fails it under PALR_CLIENT_TESTS_STRICT=1."""
    if os.environ.get("PALR_CLIENT_TESTS_STRICT") == "1":
        raise RuntimeError(f"{reason} (PALR_CLIENT_TESTS_STRICT=1: no test may skip)")
    raise unittest.SkipTest(reason)


def require_server() -> None:
    """Skips (see skip) naming what a live server lacks."""
    missing = [str(p) for p in (BIN, MODEL, DATA) if not p.exists()]
    if missing:
        skip(
            f"no live palr server: missing {', '.join(missing)} "
            "(scripts/setup/prepare.sh makes them)"
        )


def catalog() -> dict[str, str]:
    """The served catalogue, item id -> title (the RecBole .item file of DATA)."""
    lines = (DATA / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    rows = (line.split("\t") for line in lines[1:] if line)
    return {row[0]: row[1] for row in rows}


class Server:
    """`palr serve` on 127.0.0.1, any free port; `env` adds PALR_<TABLE>__<KEY> settings."""

    def __init__(self, env: dict[str, str] | None = None, start_timeout_s: float = 120.0):
        require_server()
        self._log = tempfile.NamedTemporaryFile("w+", prefix="palr-serve-", suffix=".log")
        cmd = [str(BIN), "serve", "--config", "configs/palr.toml", "--addr", "127.0.0.1:0"]
        cmd += ["--metrics-addr", "", "--log-format", "json"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.addr, self.admin_addr = self._wait_serving(start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self, timeout_s: float) -> tuple[str, str | None]:
        """The gRPC address from the log's "serving" line (health is SERVING from then on), and
        the admin API's from the line after it ("admin API on", or None for "admin API off";
        it listens only with an admin-scoped token and `[server] admin_addr`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            addr = None
            for line in Path(self._log.name).read_text(errors="replace").splitlines():
                try:
                    fields = json.loads(line).get("fields", {})
                except json.JSONDecodeError:
                    continue
                message = fields.get("message", "")
                if message == "serving":
                    addr = fields["grpc"]
                elif addr is not None and message.startswith("admin API on"):
                    return addr, fields["admin"]
                elif addr is not None and message == "admin API off":
                    return addr, None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"palr serve exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            time.sleep(0.1)
        raise RuntimeError(f"palr serve not serving after {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM (palr drains and exits), then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate it signed
    (openssl; skipped where there is none)."""

    def openssl(command: str) -> None:
        try:
            run = subprocess.run(["openssl", *command.split()], cwd=directory, capture_output=True)
        except FileNotFoundError:
            skip("no openssl command to make the TLS test certificates")
        if run.returncode != 0:
            raise RuntimeError(f"openssl {command}: {run.stderr.decode(errors='replace')}")

    key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    openssl(
        f"req -x509 {key} -days 2 -keyout ca.key -out ca.pem -subj /CN=palr-client-test-ca"
        " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    )
    extensions = {
        "server": "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in extensions.items():
        (directory / f"{name}.ext").write_text(ext)
        openssl(f"req {key} -keyout {name}.key -out {name}.csr -subj /CN={name}")
        openssl(
            f"x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
            f" -out {name}.pem -extfile {name}.ext"
        )
    names = ["ca.pem", "server.pem", "server.key", "client.pem", "client.key"]
    return {n: directory / n for n in names}
