"""Shared test fixtures: settings in a temporary directory, the real app through
``create_app``, a real ``recsink serve`` process on a loopback port, and raw-socket helpers
for byte-exact requests."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import math
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from aiohttp.test_utils import TestClient

from recsink.app import create_app
from recsink.config import Settings
from tests.azure_support import azurite  # noqa: F401  (fixture)
from tests.faults.shim import fault_shim  # noqa: F401  (fixture)
from tests.pg_fixtures import pg_dsn, postgres  # noqa: F401  (fixtures)
from tests.s3_fixtures import bucket, moto, s3, s3_proxy, s3_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CORPUS = Path(os.environ.get("RECSINK_CORPUS", REPO.parent / "shared" / "corpus"))

#: specs/kazoo.md §9: the body every example request carries, standing in for an mp3.
TESTBODY = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4
ACCOUNT = "3a1b2c3d4e5f60718293a4b5c6d7e8f9"
OWNER = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
CALL_ID = "a84b4c76e66710@pc33.atlanta.example.com"
RECORDING_ID = "202403-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
MEDIA_NAME = "5d41402abc4b2a76b9719d911017c592.mp3"


def make_wav(
    seconds: float = 0.5, rate: int = 8000, channels: int = 1, freq: float = 440.0
) -> bytes:
    """A 16-bit PCM RIFF/WAVE file holding a sine tone."""
    frames = int(seconds * rate)
    samples = bytearray()
    for i in range(frames):
        value = int(12000 * math.sin(2 * math.pi * freq * i / rate))
        samples += struct.pack("<h", value) * channels
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(samples))
    return out.getvalue()


def wav_stream(size: int, seed: int = 0) -> Iterator[bytes]:
    """A ``size``-byte RIFF/WAVE body (8 kHz mono 16-bit), generated 1 MiB at a time."""
    mib = 1024 * 1024
    header = (b"RIFF" + struct.pack("<I", size - 8) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
              + b"data" + struct.pack("<I", size - 44))
    pattern = hashlib.sha256(str(seed).encode()).digest() * (mib // 32)
    sent = 0
    first = header + pattern[: mib - len(header)]
    while sent < size:
        block = first if sent == 0 else pattern
        block = block[: size - sent]
        sent += len(block)
        yield block


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def base_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "storage": {"disk": {"root": str(tmp_path / "recordings")}},
        "catalog": {"path": str(tmp_path / "recsink.db")},
    }


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """``make_settings(**sections)``: Settings rooted in the test's temporary directory."""

    def make(**sections: Any) -> Settings:
        return Settings(**merge(base_config(tmp_path), sections))

    return make


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings]
) -> Callable[..., Any]:
    """``await make_client(**sections)``: a test client on the real app."""

    async def make(**sections: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings(**sections)))
        return client

    return make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient[Any, Any]:
    """A test client on the real app with default settings."""
    made: TestClient[Any, Any] = await make_client()
    return made


def stored_files(root: Path) -> list[Path]:
    """Every committed object under a disk storage root (staging excluded)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, request: bytes, timeout: float = 30) -> Reply:
    """Send ``request`` byte for byte on a new connection and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        method = request.split(b" ", 1)[0].decode()
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


@dataclass
class RunningServer:
    """A ``recsink serve`` process started by a test."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.config["storage"]["disk"]["root"])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("event") == name]

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start_server_process(
    workdir: Path, config: dict[str, Any], timeout: float = 30,
    env: dict[str, str] | None = None, preexec_fn: Callable[[], Any] | None = None,
) -> RunningServer:
    """Write ``config`` as TOML and start ``python -m recsink serve --config`` on it (with
    ``env`` added to the environment, ``preexec_fn`` run in the child before it starts,
    e.g. to set resource limits); wait for its ``server.listening`` line and read the
    bound port from it. With a fixed ``server.port`` (not 0), ``GET /healthz`` answering
    200 also means ready, for log levels that leave ``server.listening`` out."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "recsink.toml"
    config_path.write_text(tomli_w.dumps(config), encoding="utf-8")
    log_path = workdir / "recsink.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsink", "serve", "--config", str(config_path)],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            preexec_fn=preexec_fn)
    fixed_port = int(config.get("server", {}).get("port", 0))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(encoding="utf-8").splitlines():
            if '"server.listening"' in line:
                port = json.loads(line)["port"]
                return RunningServer(proc, port, workdir, log_path, config)
        if fixed_port and proc.poll() is None and _healthz_ok(fixed_port):
            return RunningServer(proc, fixed_port, workdir, log_path, config)
        if proc.poll() is not None:
            raise AssertionError(f"recsink exited {proc.returncode}: {log_path.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"recsink did not start: {log_path.read_text()}")


def _healthz_ok(port: int) -> bool:
    """True when ``GET /healthz`` on 127.0.0.1:``port`` answers 200."""
    try:
        reply = exchange(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", timeout=2)
    except (OSError, http.client.HTTPException):
        return False
    return reply.status == 200


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """``start_server(**sections)``: a real recsink process on 127.0.0.1, stopped by pid
    at the end of the test."""
    started: list[RunningServer] = []

    def start(name: str = "server", env: dict[str, str] | None = None,
              **sections: Any) -> RunningServer:
        workdir = tmp_path / name
        server = start_server_process(workdir, merge(base_config(workdir), sections), env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


# -- small filesystems ---------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(size="2m", name="small")``: a tmpfs of ``size`` bytes (mount's syntax) the
    test mounts in its directory, unmounted at the end. Skips where mounting is not permitted
    (it needs root), fails instead in CI."""
    mounted: list[Path] = []

    def mount(size: str = "2m", name: str = "small") -> Path:
        mountpoint = tmp_path / name
        mountpoint.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(mountpoint)], capture_output=True, text=True)
        if done.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"cannot mount a tmpfs: {done.stderr}")
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(mountpoint)
        return mountpoint

    yield mount
    for mountpoint in reversed(mounted):
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def small_filesystem(tmpfs: Callable[..., Path]) -> Path:
    """A 2 MiB tmpfs the test mounts (and unmounts): writes beyond it fail with ENOSPC."""
    return tmpfs("2m")


def fill(path: Path) -> None:
    """Write to ``path`` until the filesystem is full (raises ENOSPC)."""
    with path.open("wb") as fh:
        while True:
            fh.write(bytes(64 * 1024))
            fh.flush()


def remount(mountpoint: Path, mode: str, timeout: float = 30) -> None:
    """Remount a filesystem the test mounted ``ro`` or ``rw``. The kernel refuses ``ro``
    (EBUSY) while a file on it is open for writing: retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["mount", "-o", f"remount,{mode}", str(mountpoint)],
                              capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"cannot remount {mountpoint} {mode}: {done.stderr}")
        time.sleep(0.05)


# -- raw-socket Kazoo requests against a running server ------------------------------

def kazoo_put(
    target: str, length: int, content_type: str = "audio/wav", extra: bytes = b""
) -> bytes:
    """The head of an upload exactly as Kazoo's httpc writes it (specs/kazoo.md §3.1)."""
    return (f"PUT {target} HTTP/1.1\r\n".encode()
            + f"content-type: {content_type}\r\ncontent-length: {length}\r\n".encode()
            + b"te: \r\nhost: rec.example.com:8080\r\nconnection: keep-alive\r\n" + extra
            + b"\r\n")


def path_a(call_id: str, recording_id: str | None = None, ext: str = "wav") -> str:
    """A path-A upload target (specs/kazoo.md §2.1) with its metadata query."""
    query = f"call_id={call_id}&account_id={ACCOUNT}&start=63877471200&duration_ms=1000"
    if recording_id:
        query += f"&recording_id={recording_id}"
    return f"/kazoo/call_recording_{call_id}.{ext}?{query}"


def api_get(server: RunningServer, target: str) -> Any:
    return exchange(server.port, f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode()).json()


def wait_for(predicate: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


class RssSampler(threading.Thread):
    """Samples a server's resident memory every 20 ms while it runs."""

    def __init__(self, server: RunningServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_kib = max(self.peak_kib, self.server.rss_kib())
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def stream_until_answered(sock: socket.socket, chunks: Iterable[bytes]) -> int:
    """Send ``chunks`` until the server answers (or stops reading); return bytes sent."""
    sent = 0
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    return sent


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        more = sock.recv(4096)
        if not more:
            break
        data += more
    return int(data.split(b" ", 2)[1])
