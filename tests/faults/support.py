"""Fault-test support: Kazoo uploads over raw asyncio sockets that can stop at chosen points,
and one check of recsink's invariants against what is really in storage (a disk root, or a
bucket and its spool)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tests.conftest import Reply, RunningServer, api_get, exchange, kazoo_put, make_wav, path_a
from tests.s3support import S3Client, list_multipart_uploads, object_sha256

MiB = 1024 * 1024
T = TypeVar("T")


def fault_seed() -> int:
    """The seed of a test's random choices: ``$RECSINK_FAULTS_SEED`` to replay a failure,
    else a fresh one (printed, and named in every failure message)."""
    given = os.environ.get("RECSINK_FAULTS_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    print(f"fault seed: {seed} (replay with RECSINK_FAULTS_SEED={seed})")
    return seed


# -- uploads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One recording as Kazoo uploads it (path A): deduped by its recording id when it has
    one, else by call id and content."""

    call_id: str
    recording_id: str | None
    body: bytes

    @property
    def target(self) -> str:
        return path_a(self.call_id, self.recording_id)

    @property
    def head(self) -> bytes:
        return kazoo_put(self.target, len(self.body))

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def idempotency_key(self) -> str:
        """recsink's key for it (README: recording id, else call id and content)."""
        if self.recording_id:
            return f"kazoo:rid:{self.recording_id}"
        return f"kazoo:sha:{self.call_id}:{self.sha256}"


def tone_uploads(prefix: str, count: int, rng: random.Random,
                 seconds: tuple[float, float] = (0.5, 3.0)) -> list[Upload]:
    """``count`` uploads of distinct WAV tones; every other one has a Kazoo recording id."""
    uploads = []
    for n in range(count):
        body = make_wav(rng.uniform(*seconds), freq=150 + 11 * n + rng.random())
        recording_id = f"202611-{prefix}{n:04d}" if n % 2 == 0 else None
        uploads.append(Upload(f"{prefix}{n}", recording_id, body))
    return uploads


def noise_wav(size: int, rng: random.Random) -> bytes:
    """A ``size``-byte 8 kHz mono 16-bit WAV of noise (for multipart-sized bodies)."""
    return (b"RIFF" + struct.pack("<I", size - 8) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
            + b"data" + struct.pack("<I", size - 44) + rng.randbytes(size - 44))


# -- clients ----------------------------------------------------------------------------

#: What a client can see when the server or the network fails under it.
BROKEN = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """One HTTP response (recsink's answers always carry a Content-Length)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(int(status_line.split(" ", 2)[1]), headers, body)


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close and wait until the socket really is closed (a test may block the loop next)."""
    writer.close()
    with contextlib.suppress(*BROKEN):
        await writer.wait_closed()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def upload(port: int, item: Upload, *, pieces: int = 1, pause: float = 0.0,
                 cut: int | None = None, release: asyncio.Event | None = None,
                 broken: list[str] | None = None, timeout: float = 120) -> Reply | None:
    """Send ``item`` on a new connection, its body in ``pieces`` writes ``pause`` seconds
    apart, and read the answer. With ``cut``/``release``: send only ``cut`` body bytes, wait
    for ``release``, then the rest. None when the connection broke before an answer (what
    broke it is added to ``broken``)."""
    body = item.body
    async with asyncio.timeout(timeout):
        try:
            reader, writer = await _connect(port)
        except BROKEN as exc:
            if broken is not None:
                broken.append(f"{item.call_id}: connecting: {exc!r}")
            return None
        try:
            writer.write(item.head)
            if cut is not None and release is not None:
                writer.write(body[:cut])
                await writer.drain()
                await release.wait()
                body = body[cut:]
            step = -(-len(body) // pieces)
            for start in range(0, len(body), step):
                writer.write(body[start:start + step])
                await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
            return await read_reply(reader)
        except BROKEN as exc:
            if broken is not None:
                broken.append(f"{item.call_id}: {exc!r}")
            return None
        finally:
            await _close(writer)


#: Where a client can go away (tests/faults/test_disconnects.py).
POINTS = ("inside_head", "inside_body", "inside_body_rst", "half_closed_body",
          "after_body", "after_body_rst")


async def break_off(port: int, item: Upload, point: str, at: int,
                    timeout: float = 60) -> Reply | None:
    """Send ``item`` and go away at ``point`` (one of :data:`POINTS`): ``at`` bytes into the
    head or body, or once the body is sent (before the answer). ``half_closed_body`` shuts
    the sending side after ``at`` body bytes and reads what comes back (None if nothing)."""
    async with asyncio.timeout(timeout):
        reader, writer = await _connect(port)
        try:
            if point == "inside_head":
                writer.write(item.head[:at])
            elif point in ("after_body", "after_body_rst"):
                writer.write(item.head + item.body)
            else:
                writer.write(item.head + item.body[:at])
            await writer.drain()
            if point == "half_closed_body":
                writer.write_eof()
                try:
                    return await read_reply(reader)
                except BROKEN:
                    return None
            if point.endswith("_rst"):
                _reset(writer)
            return None
        finally:
            await _close(writer)


async def deliver(port: int, item: Upload, attempts: int = 60, wait: float = 0.5) -> Reply:
    """Upload ``item`` as a PBX retries it: again after a 503 or a broken connection."""
    for _ in range(attempts):
        reply = await upload(port, item)
        if reply is not None and reply.status != 503:
            return reply
        await asyncio.sleep(wait)
    raise AssertionError(f"{item.call_id}: still refused after {attempts} attempts")


async def bounded(coroutines: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """Run ``coroutines`` with at most ``limit`` at once; results in order."""
    gate = asyncio.Semaphore(limit)

    async def run(coroutine: Awaitable[T]) -> T:
        async with gate:
            return await coroutine

    return await asyncio.gather(*(run(c) for c in coroutines))


async def until(predicate: Callable[[], Any], server: RunningServer, timeout: float = 30,
                what: str = "") -> Any:
    """Poll ``predicate`` (blocking calls allowed: it runs in a thread) until truthy,
    without stopping the event loop's clients meanwhile; fail at once if ``server`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = "\n".join(server.log_path.read_text().splitlines()[-20:])
            raise AssertionError(f"recsink exited {server.proc.returncode}:\n{tail}")
        if value := await asyncio.to_thread(predicate):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached within {timeout:g} s: {what or predicate}")


# -- what is in storage --------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    """An object found in storage: where (the URL a record would name), size, sha256."""

    url: str
    size: int
    sha256: str


def _file_object(path: Path) -> StoredObject:
    data = path.read_bytes()
    return StoredObject(path.resolve().as_uri(), len(data), hashlib.sha256(data).hexdigest())


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


class Store(Protocol):
    """Where a recsink instance keeps recordings, as the tests see it."""

    #: The remote port of recsink's own connections to its storage (not client sockets).
    peer_port: int | None

    def objects(self) -> list[StoredObject]:
        """Every recording object committed in storage."""

    def leftovers(self) -> list[str]:
        """Anything a failed or interrupted upload may have left behind."""


class DiskStore:
    """A disk storage root: committed files, and ``.staging`` for leftovers."""

    peer_port: int | None = None

    def __init__(self, root: Path) -> None:
        self.root = root

    def objects(self) -> list[StoredObject]:
        return [_file_object(p) for p in _files(self.root) if ".staging" not in p.parts]

    def leftovers(self) -> list[str]:
        return [f"staging file {p}" for p in _files(self.root / ".staging")]


class BucketStore:
    """A bucket prefix (read straight from moto, not through any proxy) and the instance's
    spool: spooled recordings are objects too, until shipped."""

    def __init__(self, s3: S3Client, bucket: str, spool_dir: Path, peer_port: int,
                 prefix: str = "calls/") -> None:
        self.s3, self.bucket, self.spool_dir = s3, bucket, spool_dir
        self.peer_port: int | None = peer_port
        self.prefix = prefix
        self._sha256: dict[tuple[str, str], str] = {}  # (key, etag) -> sha256

    def _listing(self) -> list[dict[str, Any]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]

    def objects(self) -> list[StoredObject]:
        found = []
        for obj in self._listing():
            key = obj["Key"]
            if "/.recsink/" in key:
                continue
            if (key, obj["ETag"]) not in self._sha256:
                self._sha256[key, obj["ETag"]] = object_sha256(self.s3, self.bucket, key)
            found.append(StoredObject(f"s3://{self.bucket}/{key}", obj["Size"],
                                      self._sha256[key, obj["ETag"]]))
        spool = self.spool_dir / "recordings"
        return found + [_file_object(p) for p in _files(spool) if ".staging" not in p.parts]

    def leftovers(self) -> list[str]:
        return ([f"open multipart upload {u['Key']} ({u['UploadId'][:12]}…)"
                 for u in list_multipart_uploads(self.s3, self.bucket)]
                + [f"spool staging file {p}"
                   for p in _files(self.spool_dir / "recordings" / ".staging")])


#: S3 settings of the fault tests: 5 MiB parts (the smallest S3 takes) so that multipart
#: uploads are cheap to have in flight.
S3_SETTINGS: dict[str, Any] = {"part_size": 5 * MiB}


@dataclass
class Backend:
    """``start(**sections)`` starts recsink on this backend (again: a restart on the same
    storage and catalog); ``store`` is that storage as the tests inspect it."""

    kind: str
    start: Callable[..., RunningServer]
    store: Store


# -- the server, from outside ---------------------------------------------------------------

_KIND = re.compile(r"^(\w+):\[\d+\]$")


def _fd_targets(pid: int) -> list[str]:
    """What each of the process's file descriptors points at."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue  # closed while listing
    return targets


def open_fds(pid: int, ignore_peer_port: int | None = None) -> Counter[str]:
    """The process's open file descriptors, by what they are (a file's path; ``socket``,
    ``pipe``, … for the rest); sockets connected to ``ignore_peer_port`` (recsink's own
    pooled connections to S3) are left out."""
    peers: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                peers[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    found: Counter[str] = Counter()
    for target in _fd_targets(pid):
        if m := _KIND.match(target):
            inode = target.rsplit("[", 1)[1].rstrip("]")
            if m[1] == "socket" and ignore_peer_port and peers.get(inode) == ignore_peer_port:
                continue
            found[m[1] if m[1] != "socket" or inode not in peers
                  else f"tcp socket (peer port {peers[inode]})"] += 1
        else:
            found[target] += 1
    return found


def fd_baseline(server: RunningServer, store: Store) -> Counter[str]:
    """What ``server`` has open when idle (compare :func:`check_invariants` against it)."""
    settle("client connections still open", lambda: ["open"] * client_connections(server),
           timeout=30)
    return open_fds(server.proc.pid, store.peer_port)


def _normal(kind: str) -> str:
    return "tcp socket" if kind.startswith("tcp socket") else kind


def fd_leaks(server: RunningServer, store: Store, baseline: Counter[str]) -> list[str]:
    now = open_fds(server.proc.pid, store.peer_port)
    extra = (Counter(_normal(k) for k in now.elements())
             - Counter(_normal(k) for k in baseline.elements()))
    return [f"file descriptor open beyond the idle baseline: {kind} x{n} (now: {dict(now)})"
            for kind, n in extra.items()]


def metric(server: RunningServer, name: str, labelled: bool = False) -> float:
    """The sum of ``name``'s samples in ``GET /metrics`` (over all its labels; a
    ``labelled`` metric has none until something is counted: 0)."""
    request = b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    text = exchange(server.port, request).body.decode()
    samples = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{"))]
    assert samples or labelled, f"no {name} in /metrics"
    return sum(samples)


def client_connections(server: RunningServer) -> int:
    """Connections to ``server``'s port that it still has open (not its listener)."""
    ours = set(_fd_targets(server.proc.pid))
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{server.proc.pid}/net/{table}") as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                listening = fields[3] == "0A"
                if (local_port == server.port and not listening
                        and f"socket:[{fields[9]}]" in ours):
                    count += 1
    return count


def quiesce(server: RunningServer, timeout: float, quiet: float = 0.5) -> None:
    """Wait until ``server`` is idle: no client connection open, no upload in flight and
    no upload finishing for ``quiet`` seconds (a handler can outlive its connection)."""
    deadline = time.monotonic() + timeout
    while True:
        open_now = client_connections(server)
        in_flight = metric(server, "recsink_uploads_in_flight")
        finished = metric(server, "recsink_uploads_total", labelled=True)
        if not open_now and not in_flight:
            time.sleep(quiet)
            # Connections first: the metric requests below are connections too.
            if (not client_connections(server)
                    and metric(server, "recsink_uploads_total", labelled=True) == finished
                    and not metric(server, "recsink_uploads_in_flight")):
                return
        elif time.monotonic() > deadline:
            raise AssertionError(f"recsink still busy after {timeout:g} s: {open_now} client "
                                 f"connections open, {in_flight:g} uploads in flight")
        else:
            time.sleep(0.1)


def all_records(server: RunningServer) -> list[dict[str, Any]]:
    """Every record in the catalog, through the API."""
    records: list[dict[str, Any]] = api_get(server, "/v1/recordings?limit=1000")["recordings"]
    assert len(records) < 1000, "more records than one API page: check fewer"
    return records


def settle(what: str, problems: Callable[[], list[str]], timeout: float) -> None:
    """Wait until ``problems()`` finds none; fail with the last ones found."""
    deadline = time.monotonic() + timeout
    while True:
        found = problems()
        if not found:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}:\n  " + "\n  ".join(found))
        time.sleep(0.1)


def check_invariants(
    server: RunningServer, store: Store, *, acknowledged: Iterable[Upload] = (),
    fds: Counter[str] | None = None, why: str = "",
    timeout: float = 30,
) -> list[StoredObject]:
    """recsink's invariants once the dust settles, against storage as it really is:

    * once the server is quiet (:func:`quiesce`), no record is left ``uploading``;
    * nothing leaked: no staging file or open multipart upload, no file descriptor beyond
      ``fds`` (the idle baseline);
    * the catalog agrees with storage: each completed record's object exists with the
      record's size and sha256, each object in storage has exactly one completed record,
      and no recording is stored twice;
    * every ``acknowledged`` upload (answered 2xx) is stored intact, under its call id.

    ``why`` (the seed, the phase) starts every failure message. Returns the objects.
    """
    where = f"[{why}] " if why else ""
    quiesce(server, timeout)
    settle(f"{where}records left uploading", lambda: [
        f"{r['id']} ({r['call_id']})" for r in all_records(server)
        if r["status"] == "uploading"], timeout)
    settle(f"{where}leftovers", store.leftovers, timeout)
    if fds is not None:
        settle(f"{where}descriptors leaked", lambda: fd_leaks(server, store, fds), timeout)

    objects = store.objects()
    by_url = {o.url: o for o in objects}
    completed = [r for r in all_records(server) if r["status"] == "completed"]
    problems = []
    for record in completed:
        found = by_url.get(record["storage_url"])
        label = f"record {record['id']} ({record['call_id']})"
        if found is None:
            problems.append(f"{label} is completed but {record['storage_url']} does not exist")
        elif (found.size, found.sha256) != (record["byte_size"], record["sha256"]):
            problems.append(f"{label} says {record['byte_size']} bytes {record['sha256'][:12]}, "
                            f"storage has {found.size} bytes {found.sha256[:12]}")
    named = Counter(r["storage_url"] for r in completed)
    for obj in objects:
        if named[obj.url] != 1:
            problems.append(f"{obj.url} ({obj.size} bytes) has {named[obj.url]} completed "
                            "records, not 1")
    for sha256, copies in Counter(o.sha256 for o in objects).items():
        if copies > 1:
            problems.append(f"content {sha256[:12]} is stored {copies} times")
    stored = {o.sha256 for o in objects}
    completed_as = {(r["call_id"], r["sha256"]) for r in completed}
    for item in acknowledged:
        if item.sha256 not in stored:
            problems.append(f"{item.call_id} was acknowledged but is not stored intact")
        elif (item.call_id, item.sha256) not in completed_as:
            problems.append(f"{item.call_id} is stored but has no completed record")
    assert not problems, f"{where}catalog and storage disagree:\n  " + "\n  ".join(problems)
    return objects
