"""Connections against a real ``recsink serve`` over raw sockets (issue 11 items 2, 10, 12,
13): the connection cap, the file-descriptor limit at start, accept() errors in the log,
refusals that close their connection, ``X-Request-ID`` and one log line on every answer,
encoded bodies refused, and a deadline for every request head."""

from __future__ import annotations

import base64
import contextlib
import gzip
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    Reply,
    RunningServer,
    base_config,
    exchange,
    kazoo_put,
    make_wav,
    merge,
    path_a,
    start_server_process,
    stored_files,
    wait_for,
)

USER, PASSWORD = "kazoo", "right-password"
WRONG_BASIC = "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode()
RIGHT_BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


# -- helpers ------------------------------------------------------------------------------

def nofile(soft: int, hard: int) -> Callable[[], None]:
    """A ``preexec_fn`` giving the child these RLIMIT_NOFILE limits."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """``started(name, config_sections, preexec_fn=None)``: a real recsink process, killed
    by pid at the end of the test."""
    servers: list[RunningServer] = []

    def start(name: str, sections: dict[str, Any],
              preexec_fn: Callable[[], None] | None = None) -> RunningServer:
        workdir = tmp_path / name
        server = start_server_process(workdir, merge(base_config(workdir), sections),
                                      preexec_fn=preexec_fn)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


class Wire:
    """One client connection read answer by answer (Content-Length framed, as recsink's
    answers are)."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""
        #: Interim (1xx) statuses seen so far.
        self.interim: list[int] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        self.buf += data
        return bool(data)

    def answer(self, head_only: bool = False) -> Reply:
        """The next final answer (1xx skipped)."""
        while True:
            while b"\r\n\r\n" not in self.buf:
                assert self._fill(), f"closed before an answer: {self.buf!r}"
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ")[1])
            if status >= 200:
                break
            self.interim.append(status)
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines)}
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert self._fill(), "closed in the middle of an answer"
        body, self.buf = self.buf[:length], self.buf[length:]
        return Reply(status, headers, body)

    def answer_interim(self) -> int:
        """The next interim (1xx) status, read before the final answer."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"closed before an answer: {self.buf!r}"
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1])

    def closed_by_server(self) -> bool:
        """True when the server closed the connection with nothing more sent (a socket
        timeout, raised, means it is still open)."""
        return not self._fill() and not self.buf

    def close(self) -> None:
        self.sock.close()


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """A sample of ``GET /metrics`` (0 when absent), read with the upload credentials
    (/metrics needs them once ``[auth]`` has some)."""
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    reply = exchange(server.port,
                     b"GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Basic " + basic
                     + b"\r\n\r\n")
    assert reply.status == 200, reply.body
    text = reply.body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def lines_of(server: RunningServer, request_id: str) -> list[dict[str, Any]]:
    return [line for line in server.logs() if line.get("request_id") == request_id]


def upload(port: int, call: str, body: bytes, extra: bytes = b"") -> Reply:
    return exchange(port, kazoo_put(path_a(call, f"202611-{call}"), len(body), extra=extra)
                    + body)


def upload_succeeds(port: int, call: str, body: bytes) -> bool:
    try:
        return upload(port, call, body).status == 201
    except OSError:  # refused at the cap while the flood's connections are still closing
        return False


# -- item 2: connection cap, descriptor limit, accept errors -------------------------------

def test_flood_beyond_max_connections_is_closed_and_logged_sparingly(
        started: Callable[..., RunningServer]) -> None:
    """With a low RLIMIT_NOFILE, connections beyond server.max_connections are closed at
    once (counted in recsink_connections_refused_total, logged sparingly); when no
    descriptor is left, asyncio's accept() errors are counted and logged once, not once per
    attempt; once the flood closes, an upload is stored."""
    server = started("flood", {
        "server": {"max_connections": 8, "max_uploads": 4, "header_timeout": 60,
                   "keepalive_timeout": 60}}, preexec_fn=nofile(256, 256))
    flood = [Wire(server.port, timeout=0.01) for _ in range(40)]
    closed: set[int] = set()

    def count_closed() -> int:
        for n, wire in enumerate(flood):
            if n not in closed and select.select([wire.sock], [], [], 0)[0]:
                assert wire.closed_by_server()
                closed.add(n)
        return len(closed)

    wait_for(lambda: count_closed() >= 32)
    assert count_closed() == 32, "exactly the connections beyond the cap are closed"

    # No descriptor left at all: every accept() fails until the limit is back.
    resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE, (3, 256))
    waiting = [Wire(server.port, timeout=0.01) for _ in range(10)]
    wait_for(lambda: server.events("connection.accept_failed"))
    resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE, (256, 256))

    for wire in flood + waiting:
        wire.close()
    wait_for(lambda: upload_succeeds(server.port, "after-flood", make_wav(0.2)), timeout=30)

    refused = metric(server, "recsink_connections_refused_total")
    assert refused >= 32
    assert metric(server, "recsink_accept_errors_total") >= 1
    logs = server.logs()
    accept_lines = [line for line in logs if "accept" in str(line.get("event"))]
    assert 1 <= len(accept_lines) <= 2, accept_lines[:5]
    assert all(line["event"] == "connection.accept_failed" for line in accept_lines)
    refused_lines = [line for line in logs if line.get("event") == "connection.refused"]
    assert 1 <= len(refused_lines) < refused / 4


def test_start_raises_a_low_soft_descriptor_limit(
        started: Callable[..., RunningServer]) -> None:
    """A soft RLIMIT_NOFILE below what server.max_connections and recsink's own files need
    is raised to the hard limit at start (and logged)."""
    server = started("raised", {}, preexec_fn=nofile(64, 4096))
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3:5] == ["4096", "4096"]
    [raised] = server.events("server.fd_limit_raised")
    assert (raised["soft"], raised["to"]) == (64, 4096)
    assert raised["needed"] > 1024


def test_start_refuses_a_hard_descriptor_limit_too_low(tmp_path: Path) -> None:
    """When even the hard RLIMIT_NOFILE is below server.max_connections plus recsink's own
    files, ``recsink serve`` refuses to start (exit 1) and says what to change."""
    workdir = tmp_path / "refused"
    workdir.mkdir()
    config = workdir / "recsink.toml"
    config.write_text(tomli_w.dumps(base_config(workdir)), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsink", "serve", "--config", str(config)], cwd=workdir,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=nofile(512, 512))
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out.decode()
    assert b'"server.failed"' in out
    assert b"RLIMIT_NOFILE allows 512" in out
    assert b"server.max_connections" in out
    assert b"Traceback" not in out


def test_refusals_for_address_or_credentials_close_the_connection(
        started: Callable[..., RunningServer]) -> None:
    """A 403 address_not_allowed and a 401 for wrong credentials close the connection
    (``Connection: close``; recv returns b'' after the answer); an admitted client keeps
    its connection."""
    server = started("auth", {"auth": {
        "allow_networks": ["127.0.0.1/32"],
        "basic": [{"username": USER, "password": PASSWORD}]}})
    wav = make_wav(0.2)
    for source, authorization, status in (("127.0.0.2", RIGHT_BASIC, 403),
                                          ("127.0.0.1", WRONG_BASIC, 401)):
        wire = Wire(server.port, source=source)
        wire.send(kazoo_put(path_a(f"refused{status}"), len(wav),
                            extra=f"authorization: {authorization}\r\n".encode()) + wav)
        answer = wire.answer()
        assert answer.status == status
        assert answer.headers["connection"] == "close"
        assert wire.closed_by_server()
        wire.close()
    wire = Wire(server.port)
    wire.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert wire.answer().status == 200
    wire.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert wire.answer().status == 200
    wire.close()


# -- item 12: every answer has an X-Request-ID, every refusal one log line and one count ---

def test_refusal_at_expect_100_continue_is_logged_counted_and_identified(
        started: Callable[..., RunningServer]) -> None:
    """An upload refused while answering ``Expect: 100-continue`` (a wrong password in a
    FreeSWITCH URL) gets no 100, a 401 with X-Request-ID, exactly one log line and one
    count in recsink_uploads_total{result="rejected"}, even when the client then sends the
    body anyway."""
    server = started("expect", {"auth": {"basic": [{"username": USER, "password": PASSWORD}]}})
    wav = make_wav(0.2)
    before = metric(server, "recsink_uploads_total", source="kazoo", result="rejected")
    wire = Wire(server.port)
    wire.send(kazoo_put("/kazoo/fs-call.wav", len(wav), "audio/x-wav",
                        f"authorization: {WRONG_BASIC}\r\nexpect: 100-continue\r\n".encode()))
    answer = wire.answer()
    assert (wire.interim, answer.status) == ([], 401)
    request_id = answer.headers["x-request-id"]
    with contextlib.suppress(OSError):  # closed already
        wire.send(wav)  # curl sends the body anyway after its wait
    assert wire.closed_by_server()
    wire.close()
    [line] = lines_of(server, request_id)
    assert (line["event"], line["status"], line["error"]) == ("upload.rejected", 401,
                                                             "unauthorized")
    assert metric(server, "recsink_uploads_total", source="kazoo",
                  result="rejected") == before + 1


def test_refusal_at_expect_then_body_sent_anyway_counts_once(
        started: Callable[..., RunningServer]) -> None:
    """An admitted client refused at ``Expect: 100-continue`` (here an encoded body: 415)
    that sends the body anyway is logged and counted once; the body is skipped and the
    connection serves the next request."""
    server = started("expect-body", {})
    body = gzip.compress(make_wav(0.2))
    before = metric(server, "recsink_uploads_total", source="kazoo", result="rejected")
    wire = Wire(server.port)
    wire.send(kazoo_put("/kazoo/fs-gz.wav", len(body), "audio/x-wav",
                        b"content-encoding: gzip\r\nexpect: 100-continue\r\n"))
    answer = wire.answer()
    assert (wire.interim, answer.status) == ([], 415)
    assert answer.headers["accept-encoding"] == "identity"
    wire.send(body + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert wire.answer().status == 200
    wire.close()
    [line] = lines_of(server, answer.headers["x-request-id"])
    assert (line["event"], line["error"]) == ("upload.rejected", "unsupported_encoding")
    assert metric(server, "recsink_uploads_total", source="kazoo",
                  result="rejected") == before + 1
    assert stored_files(server.root) == []


def test_every_answer_has_a_request_id(started: Callable[..., RunningServer]) -> None:
    """GET and HEAD of a stored recording (streamed answers), a 404, an aiohttp-made 400
    for a malformed head and its 417 for an unknown Expect all carry X-Request-ID."""
    server = started("ids", {})
    wav = make_wav(0.2)
    assert upload(server.port, "ids", wav).status == 201
    target = path_a("ids", "202611-ids")
    answers = []
    for method in ("GET", "HEAD"):
        wire = Wire(server.port)
        wire.send(f"{method} {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        answers.append(wire.answer(head_only=method == "HEAD"))
        wire.close()
    assert answers[0].body == wav
    for raw in (b"GET /nothing-here HTTP/1.1\r\nhost: x\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nhost x\r\n\r\n",
                b"PUT /kazoo/x.wav HTTP/1.1\r\nhost: x\r\nexpect: bogus\r\n"
                b"content-length: 1\r\n\r\nx"):
        answers.append(exchange(server.port, raw))
    assert [a.status for a in answers] == [200, 200, 404, 400, 417]
    for answer in answers:
        assert len(answer.headers.get("x-request-id", "")) == 16, answer
    [bad_head] = [line for line in server.events("request.rejected") if line["status"] == 400]
    assert bad_head["request_id"] == answers[3].headers["x-request-id"]


# -- item 13: a deadline for every request head ---------------------------------------------

def test_a_trickled_second_head_is_cut_off_at_header_timeout(
        started: Callable[..., RunningServer]) -> None:
    """On a keep-alive connection, a second request head trickled a byte at a time (each
    byte well within server.header_timeout, the whole far beyond it) is cut off after
    server.header_timeout, long before server.keepalive_timeout, unanswered."""
    server = started("trickle", {"server": {"header_timeout": 1.0,
                                            "keepalive_timeout": 120.0}})
    wire = Wire(server.port, timeout=5)
    wire.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert wire.answer().status == 200
    second = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 400 + b"\r\n\r\n"
    deadline = time.monotonic() + 60  # keepalive_timeout is 120 s
    sent = 0
    while time.monotonic() < deadline and sent < len(second):
        # The trickle's pace: a byte each time 0.2 s pass without the server closing.
        if select.select([wire.sock], [], [], 0.2)[0]:
            break
        wire.send(second[sent:sent + 1])
        sent += 1
    assert sent < len(second), "the whole trickled head went through"
    assert wire.closed_by_server(), "an answer came to the trickled head"
    wire.close()
    assert server.events("connection.header_timeout")


# -- item 10: encoded bodies are refused, never decompressed --------------------------------

def _chunked(body: bytes, size: int = 4096) -> bytes:
    out = b""
    for start in range(0, len(body), size):
        piece = body[start:start + size]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


def test_encoded_uploads_are_refused_before_reading(
        started: Callable[..., RunningServer]) -> None:
    """A gzip upload, with Content-Length or chunked, and a callback with a
    Content-Encoding are answered 415 unsupported_encoding (Accept-Encoding: identity);
    nothing is stored and no staging file is left."""
    server = started("gzip", {"sinch": {"verify_signatures": False}})
    wav = make_wav(2.0)
    body = gzip.compress(wav)
    head = (f"PUT {path_a('gz1', '202611-gz1')} HTTP/1.1\r\nhost: x\r\n"
            "content-type: audio/wav\r\ncontent-encoding: gzip\r\n").encode()
    framings = {
        "content-length": head + b"content-length: %d\r\n\r\n" % len(body) + body,
        "chunked": head.replace(b"gz1", b"gz2") + b"transfer-encoding: chunked\r\n\r\n"
        + _chunked(body),
        "callback": b"POST /sinch/voice HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
        b"\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(
            gz := gzip.compress(b'{"event":"notify"}')) + gz,
    }
    for name, raw in framings.items():
        answer = exchange(server.port, raw)
        assert (answer.status, answer.json()["error"]) == (415, "unsupported_encoding"), name
        assert answer.headers["accept-encoding"] == "identity"
    assert stored_files(server.root) == []
    assert list((server.root / ".staging").iterdir()) == []
    assert len([line for line in server.events("upload.rejected")
                if line["error"] == "unsupported_encoding"]) == 2
    identity = exchange(server.port, kazoo_put(path_a("gz3", "202611-gz3"), len(wav),
                                               extra=b"content-encoding: identity\r\n") + wav)
    assert identity.status == 201
