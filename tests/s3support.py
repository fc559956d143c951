"""S3 test infrastructure: a ``moto_server`` subprocess on loopback, a fault-injecting TCP proxy
to put in front of it, and small boto3 inspection helpers (specs/s3.md, "Recommendation")."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config

#: boto3 ships no static types for its clients; tests treat them as ``Any``.
S3Client = Any

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_READ = 256 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


def _http(url: str, method: str = "GET", timeout: float = 2.0) -> int:
    """Status of a bodyless request, ignoring any HTTP proxy from the environment."""
    with _NO_PROXY.open(urllib.request.Request(url, method=method), timeout=timeout) as resp:
        resp.read()
        return int(resp.status)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """A ``moto_server`` subprocess on 127.0.0.1, or (``url=``) an already running endpoint.

    Attached endpoints are never started or stopped; ``reset()`` on them only works if they are
    moto too, and ``pid``/``rss_kib()`` are ``None``.
    """

    def __init__(self, *, url: str | None = None, log_dir: Path | None = None) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: str | None = None
        if url is not None:
            self.url = url.rstrip("/")
            self.log_path: Path | None = None
        else:
            if log_dir is None:
                self._tmp = tempfile.mkdtemp(prefix="moto-")
                log_dir = Path(self._tmp)
            self.log_path = log_dir / "moto_server.log"
            try:
                self.url = self._spawn()
            except BaseException:
                self.stop()
                raise
        parsed = urllib.parse.urlsplit(self.url)
        self.host: str = parsed.hostname or "127.0.0.1"
        self.port: int = parsed.port or (443 if parsed.scheme == "https" else 80)

    @property
    def pid(self) -> int | None:
        """Process id of the server this object started, else ``None``."""
        return self.proc.pid if self.proc else None

    def _spawn(self, deadline_s: float = 15.0, attempts: int = 3) -> str:
        """Start moto_server on a free port and wait for ``GET /moto-api/`` = 200; a server
        that exits early (e.g. lost the race for the port) is retried on another port."""
        assert self.log_path is not None
        exe = Path(sys.executable).parent / "moto_server"
        deadline = time.monotonic() + deadline_s
        for attempt in range(1, attempts + 1):
            url = f"http://127.0.0.1:{_free_port()}"
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [str(exe), "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            while self.proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if _http(f"{url}/moto-api/", timeout=1) == 200:
                        return url
                time.sleep(0.05)
            if self.proc.poll() is None or attempt == attempts:  # deadline passed, or last try
                raise RuntimeError(f"moto_server did not start on {url}:\n{self.log_tail()}")
        raise AssertionError("unreachable")

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the server log ("" when attached or gone)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def reset(self) -> None:
        """Wipe all moto state (every bucket, for every test sharing this server)."""
        _http(f"{self.url}/moto-api/reset", method="POST", timeout=10)

    def rss_kib(self) -> int | None:
        """Resident set size of the server process in KiB (Linux ``/proc``), if we own it."""
        if self.proc is None:
            return None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def stop(self) -> None:
        """Terminate the process (kill after 5 s) and remove the temporary log dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


@contextlib.contextmanager
def moto_server() -> Iterator[MotoServer]:
    """A started MotoServer, or one attached to ``$S3_ENDPOINT_URL`` when that is set."""
    server = MotoServer(url=os.environ.get("S3_ENDPOINT_URL") or None)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    """The URL of ``$S3_ENDPOINT_URL`` or of a moto_server started for the block."""
    with moto_server() as server:
        yield server.url


# --------------------------------------------------------------------------------------------
# TCP proxy


class _Side(asyncio.Protocol):
    """One socket of a forwarded connection; writes what it reads to its peer.

    A side starts paused and reads only while linked to its peer, not stalled, not at EOF and
    while the peer's send buffer is below its high-water mark (backpressure both ways).
    """

    def __init__(self, proxy: TcpProxy, *, accepted: bool) -> None:
        self.proxy = proxy
        self.accepted = accepted  # client side (True) or upstream side (False)
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.got_eof = False
        self.write_blocked = False
        #: A client whose current request's answer is to be lost: "drop" (only that answer,
        #: ``drop_answer_to``), "down" (and the proxy goes down, ``down_after_answer_to``).
        self.dropping: str = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Runs before the transport registers its reader; asyncio then reads 256 KiB at a time
        # (_SelectorSocketTransport.max_size) and writes the bytes objects on unchanged.
        transport.pause_reading()
        transport.set_write_buffer_limits(high=4 * _READ)
        self.proxy._sides.add(self)
        if self.accepted:
            self.proxy._link(self)

    def may_read(self) -> bool:
        peer = self.peer
        return (
            peer is not None
            and not self.got_eof
            and not peer.write_blocked
            and not self.proxy._stalled
        )

    def update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.may_read():
            t.resume_reading()
        else:
            t.pause_reading()

    def data_received(self, data: bytes) -> None:
        if (not self.accepted and self.peer is not None and self.peer.dropping
                and data.startswith(b"HTTP/1.1 100 ") and self.peer.transport is not None):
            # An interim "100 Continue" (botocore sends Expect: 100-continue with file-like
            # bodies) is not the answer: pass it on, and judge what follows it.
            while data.startswith(b"HTTP/1.1 100 "):  # werkzeug may send it twice
                interim, _, data = data.partition(b"\r\n\r\n")
                self.peer.transport.write(interim + b"\r\n\r\n")
            if not data:
                return
        if not self.accepted and self.peer is not None and self.peer.dropping:
            # The server answered the request whose answer is to be lost: drop it and
            # reset the client's connection (the server keeps what it did); with
            # ``down_after_answer_to``, the proxy goes down from now on too.
            down = self.peer.dropping == "down"
            self.peer.abort()
            self.abort()
            if down:
                asyncio.get_running_loop().create_task(self.proxy._down())
            return
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
            for mode in ("drop", "down"):
                match = self.proxy._answer_rules.get(mode)
                if self.accepted and match is not None and match(data):
                    del self.proxy._answer_rules[mode]
                    self.dropping = mode
            trigger = self.proxy._stall_after
            if self.accepted and trigger is not None and trigger(data):
                # Forwarded, then nothing more moves: the request is served, its answer held.
                self.proxy._stall_after = None
                self.proxy._stalled = True
                for side in list(self.proxy._sides):
                    side.update_reading()

    def eof_received(self) -> bool:
        self.got_eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return False
        if peer.got_eof:  # both directions done: flush and close both
            peer.transport.close()
            return False
        peer.transport.write_eof()  # half-close: pass the FIN on, keep the other direction
        return True

    def pause_writing(self) -> None:
        self.write_blocked = True
        if self.peer is not None:
            self.peer.update_reading()

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self.peer is not None:
            self.peer.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy._sides.discard(self)
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if exc is None:
                peer.transport.close()
            else:
                peer.abort()

    def abort(self) -> None:
        """Close at once, with RST (SO_LINGER 0) rather than FIN."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self.transport.abort()


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target`` from an asyncio loop in a background thread.

    ``down()`` refuses new connections and resets open ones, ``stall()`` keeps connections but
    stops moving bytes, ``stall_after(request)`` does so once a chosen request went through
    (its answer is lost), ``down_after_answer_to(request)`` goes down as a chosen request's
    answer comes back (lost), ``drop_answer_to(request)`` loses that one answer only, ``up()``
    restores normal forwarding on the same port. The methods are thread-safe and return once
    the change is in effect.
    """

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self._sock: socket.socket | None = self._bind(port)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._sides: set[_Side] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._stalled = False
        self._stall_after: Callable[[bytes], bool] | None = None
        #: "drop" / "down" -> the request whose answer is to be lost (see _Side.dropping).
        self._answer_rules: dict[str, Callable[[bytes], bool]] = {}

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def is_up(self) -> bool:
        """True while listening and forwarding (not down, stalled or closed)."""
        return self._server is not None and not self._stalled

    def start(self) -> TcpProxy:
        """Start the loop thread and listen."""
        if self._thread is not None or self._sock is None:
            raise RuntimeError("TcpProxy already started or closed")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"TcpProxy-{self.port}", daemon=True
        )
        self._thread.start()
        self.up()
        return self

    def _call(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._loop is None:
            raise RuntimeError("TcpProxy not running")
        asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout=10)

    def up(self) -> None:
        """Listen again on the same port (if down) and resume forwarding (if stalled)."""
        self._call(self._up)

    def down(self) -> None:
        """Close the listener (new connections get ECONNREFUSED) and reset open connections."""
        self._call(self._down)

    def stall(self) -> None:
        """Keep accepting and holding connections but forward no bytes until ``up()``."""
        self._call(self._stall)

    def stall_after(self, request: Callable[[bytes], bool]) -> None:
        """Stall (as :meth:`stall`) as soon as bytes a client sends, for which ``request``
        is true, have been forwarded: the server handles that request, but its answer (and
        everything else) is held until ``up()``. Checked on each read from a client: match
        what ends the request, so that all of it is forwarded."""

        async def arm() -> None:
            self._stall_after = request

        self._call(arm)

    def drop_answer_to(self, request: Callable[[bytes], bool]) -> None:
        """Lose the answer to one request: once bytes a client sends, for which ``request``
        is true, have been forwarded, the server's answer to them is dropped and that
        client's connection reset; every other connection goes on as before (a lost answer,
        the server having done what was asked)."""

        async def arm() -> None:
            self._answer_rules["drop"] = request

        self._call(arm)

    def down_after_answer_to(self, request: Callable[[bytes], bool]) -> None:
        """Lose the answer to one request and go down from then on (as :meth:`down`): the
        server handles the request whose start (a client read for which ``request`` is
        true) went through, and as its answer comes back, that answer is dropped, its
        client's connection reset, and new connections are refused until ``up()``. Unlike
        :meth:`stall_after`, the request's body is forwarded whole whatever its size, and a
        client that tries again (aiohttp does, on a reused connection) is refused at once
        rather than held."""

        async def arm() -> None:
            self._answer_rules["down"] = request

        self._call(arm)

    def close(self) -> None:
        """Reset every connection, stop listening and join the loop thread. Idempotent."""
        if self._loop is not None and self._thread is not None:
            self._call(self._down)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()
            self._loop = self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- on the loop thread --------------------------------------------------------------

    async def _up(self) -> None:
        self._stalled = False
        self._stall_after = None
        self._answer_rules.clear()
        if self._server is None:
            sock, self._sock = self._sock or self._bind(self.port), None
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Side(self, accepted=True), sock=sock, backlog=128
            )
        for side in list(self._sides):
            side.update_reading()

    async def _stall(self) -> None:
        self._stalled = True
        for side in list(self._sides):
            side.update_reading()

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()  # closes the listening socket synchronously
            self._server = None
        deadline = time.monotonic() + 5
        while (self._sides or self._connecting) and time.monotonic() < deadline:
            for task in list(self._connecting):
                task.cancel()
            for side in list(self._sides):
                side.abort()
            await asyncio.sleep(0.001)  # sockets close in loop callbacks; let them run

    def _link(self, client: _Side) -> None:
        """Connect upstream for a just-accepted client (reset it right away when down)."""
        if self._server is None:
            client.abort()
            return
        task = asyncio.get_running_loop().create_task(self._connect(client))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, client: _Side) -> None:
        assert client.transport is not None
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(
                lambda: _Side(self, accepted=False), *self.target
            )
        except OSError:
            client.abort()
            return
        except asyncio.CancelledError:
            client.abort()
            raise
        if client.transport.is_closing():
            upstream.abort()
            return
        client.peer, upstream.peer = upstream, client
        client.update_reading()
        upstream.update_reading()


# --------------------------------------------------------------------------------------------
# recsink on S3


def s3_config(bucket: str, endpoint: str, workdir_name: str = "", **s3: Any) -> dict[str, Any]:
    """recsink settings for the S3 backend on ``endpoint``, fast to give up in tests."""
    settings = {"url": f"s3://{bucket}/calls", "endpoint_url": endpoint,
                "credentials": "testing:testing:us-east-1", "max_attempts": 2,
                "connect_timeout": 1.0, "read_timeout": 10.0, "unreachable_hold": 1.0,
                "ship_backoff_max": 1.0, **s3}
    return {"storage": {"backend": "s3", "s3": settings}}


# --------------------------------------------------------------------------------------------
# boto3 helpers


def s3_client(endpoint_url: str, **config: Any) -> S3Client:
    """A sync boto3 S3 client for ``endpoint_url``: dummy credentials, us-east-1, path-style,
    checksums only when required; ``config`` overrides/extends the botocore ``Config``."""
    options: dict[str, Any] = {
        "region_name": "us-east-1",
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        **config,
    }
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(**options),
    )


def list_multipart_uploads(s3: S3Client, bucket: str) -> list[dict[str, Any]]:
    """Every pending multipart upload of ``bucket``."""
    pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket)
    return [upload for page in pages for upload in page.get("Uploads", [])]


def all_objects(s3: S3Client, bucket: str, prefix: str = "") -> dict[str, int]:
    """``{key: size}`` of every object under ``prefix``."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {obj["Key"]: obj["Size"] for page in pages for obj in page.get("Contents", [])}


def object_sha256(s3: S3Client, bucket: str, key: str) -> str:
    """Hex SHA-256 of an object's body, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        for chunk in body.iter_chunks(1 << 20):
            digest.update(chunk)
    finally:
        body.close()
    return digest.hexdigest()


def head_metadata(s3: S3Client, bucket: str, key: str) -> dict[str, str]:
    """The user metadata (``x-amz-meta-*``, names without the prefix) of an object."""
    return dict(s3.head_object(Bucket=bucket, Key=key)["Metadata"])


def recordings(s3: S3Client, bucket: str) -> dict[str, int]:
    """Recording objects in the bucket (recsink's own claim objects left out)."""
    return {k: v for k, v in all_objects(s3, bucket).items() if "/.recsink/" not in k}


def empty_and_delete_bucket(s3: S3Client, bucket: str) -> None:
    """Delete every object version, abort every multipart upload, delete the bucket; each
    step ignores errors (best-effort teardown)."""
    with contextlib.suppress(Exception):
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            keys = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    with contextlib.suppress(Exception):
        for upload in list_multipart_uploads(s3, bucket):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    with contextlib.suppress(Exception):
        s3.delete_bucket(Bucket=bucket)
