"""A real Azure Blob emulator for tests: Azurite (npm ``azurite``), blob service only, on a
loopback port, in memory, telemetry off.

``.ci/run`` installs it into ``.azurite/``; elsewhere set ``AZURITE_DIR`` (or put
``azurite-blob`` on PATH). Without it the Azure tests skip, unless
``RECSINK_REQUIRE_AZURITE`` is set (CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Azurite's well-known development account (https://github.com/Azure/Azurite#default-storage-account).
ACCOUNT = "devstoreaccount1"
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
       "K1SZFPTOtr/KBHBeksoGMGw==")


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob service."""

    port: int
    pid: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint={self.endpoint};")


def _executable() -> str | None:
    candidates = [os.environ.get("AZURITE_BLOB_BIN"),
                  str(Path(os.environ.get("AZURITE_DIR", REPO / ".azurite"))
                      / "node_modules" / ".bin" / "azurite-blob"),
                  shutil.which("azurite-blob")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A session-wide Azurite blob service on 127.0.0.1, stopped by pid at the end."""
    executable = _executable()
    if executable is None:
        if os.environ.get("RECSINK_REQUIRE_AZURITE"):
            pytest.fail("azurite-blob not found: .ci/run installs it into .azurite/")
        pytest.skip("azurite-blob not found (npm install --prefix .azurite azurite@3.35.0)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
    with (workdir / "azurite.log").open("wb") as log:
        proc = subprocess.Popen(
            [executable, "--blobHost", "127.0.0.1", "--blobPort", str(port),
             "--inMemoryPersistence", "--extentMemoryLimit", "256", "--disableTelemetry",
             "--skipApiVersionCheck", "--silent"],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"azurite exited: {(workdir / 'azurite.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("azurite did not start in 30 s") from None
                time.sleep(0.05)
        yield Azurite(port, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
