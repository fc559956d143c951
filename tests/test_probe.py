"""The Kazoo GET/HEAD probe (specs/kazoo.md §5.5) against a real ``recsink serve`` over raw
sockets, with pipelined requests: storage failing before the answer gives a clean JSON error
and the next response stays parseable; storage failing once the body is under way closes the
connection, and nothing else (no second status line) lands inside the body."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import (
    ACCOUNT,
    RunningServer,
    exchange,
    kazoo_put,
    make_wav,
    wait_for,
    wav_stream,
)
from tests.hostile.support import Answer, converse
from tests.s3support import TcpProxy

MIB = 1024 * 1024
#: More parts than recsink.sources.kazoo.MAX_PARTS_BEFORE_MEDIA (16) allows.
MANY_PARTS = 17
HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


def upload(server: RunningServer, uid: str, body: bytes) -> tuple[str, dict[str, Any]]:
    """PUT ``body`` as a path-B recording; its target and the catalog's resource."""
    target = f"/kazoo/{ACCOUNT}/r-{uid}/{uid}.wav"
    reply = exchange(server.port, kazoo_put(target, len(body)) + body)
    assert reply.status == 201, reply
    return target, reply.json()


def stored_path(record: dict[str, Any]) -> Path:
    return Path(unquote(urlsplit(record["storage_url"]).path))


def probe(method: str, target: str) -> bytes:
    return f"{method} {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode()


def read_all(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data``; everything the server sends until it closes the connection."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        while chunk := sock.recv(MIB):
            out += chunk
    return out


def split_head(raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """(status line, headers, the rest) of the first response in ``raw``."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower().decode(): v.strip().decode()
               for k, _, v in (line.partition(b":") for line in lines)}
    return status, headers, rest


def assert_cut_off(raw: bytes) -> None:
    """``raw`` is one 200 whose body broke off short of its Content-Length, then the end
    of the connection: no other response inside or after it."""
    status, headers, body = split_head(raw)
    assert status.startswith(b"HTTP/1.1 200"), status
    assert len(body) < int(headers["content-length"]), "the body was not cut short"
    assert b"HTTP/1." not in body, "a second response landed inside the body"


def assert_logged_as_storage_failure(server: RunningServer) -> None:
    """The broken-off answer is logged once as a storage failure, not as a bug."""
    [line] = wait_for(lambda: server.events("request.rejected"))
    assert line["error"] == "storage_unavailable", line
    assert "broke off" in line["detail"], line
    assert not server.events("request.failed")


def assert_clean_error_then_healthz(answers: list[Answer]) -> None:
    """A JSON 5xx with its own framing, then the pipelined /healthz answer, parsed."""
    assert [a.status for a in answers] == [503, 200], [str(a) for a in answers]
    error, health = answers
    assert (error.header("content-type") or "").startswith("application/json")
    if not error.to_head:
        assert json.loads(error.body)["error"] == "storage_unavailable"
    assert json.loads(health.body)["status"] == "ok"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_probe_of_a_deleted_file_is_a_clean_error(
    start_server: Callable[..., RunningServer], method: str,
) -> None:
    """GET or HEAD of a completed recording whose file is gone answers a JSON 503 with its
    own framing (HEAD too: the object is opened before any 200), and a pipelined next
    request is answered after it."""
    server = start_server()
    target, record = upload(server, "gone", make_wav(0.2))
    stored_path(record).unlink()
    answers = converse(server.port, probe(method, target) + HEALTHZ, answers=2)
    assert_clean_error_then_healthz(answers)


def test_probe_of_a_small_truncated_file_is_a_clean_error(
    start_server: Callable[..., RunningServer],
) -> None:
    """A stored file shorter than the catalog's byte_size, found out before the headers
    (it fits in the first block read), is a JSON 503; the pipelined request still works."""
    server = start_server()
    target, record = upload(server, "short", make_wav(0.2))
    os.truncate(stored_path(record), record["byte_size"] - 10)
    answers = converse(server.port, probe("GET", target) + HEALTHZ, answers=2)
    assert_clean_error_then_healthz(answers)


def test_probe_of_a_file_truncated_past_the_first_block_closes_the_connection(
    start_server: Callable[..., RunningServer],
) -> None:
    """A file truncated below the catalog's byte_size beyond the first block breaks the
    body off and closes the connection: the pipelined /healthz answer never lands in it."""
    server = start_server()
    target, record = upload(server, "long", b"".join(wav_stream(3 * MIB)))
    os.truncate(stored_path(record), 2 * MIB)
    raw = read_all(server.port, probe("GET", target) + HEALTHZ)
    assert_cut_off(raw)
    assert_logged_as_storage_failure(server)


def test_nosniff_on_probe_answers(start_server: Callable[..., RunningServer]) -> None:
    """Probe answers, 200 and errors alike, carry ``X-Content-Type-Options: nosniff``."""
    server = start_server()
    target, _ = upload(server, "sniff", make_wav(0.2))
    for method, path, status in (("GET", target, 200), ("HEAD", target, 200),
                                 ("GET", target.replace(".wav", ".mp3"), 404)):
        [answer] = converse(server.port, probe(method, path))
        assert answer.status == status, str(answer)
        assert answer.header("x-content-type-options") == "nosniff", str(answer)


def test_many_parts_before_the_media_part_are_refused(
    start_server: Callable[..., RunningServer],
) -> None:
    """A multipart upload with more than 16 parts before its media part (empty JSON ones
    here) answers 400 ``bad_multipart``, keeping nothing."""
    server = start_server()
    boundary = "b0undary"
    empty = (f"--{boundary}\r\ncontent-type: application/json\r\n\r\n{{}}\r\n").encode()
    media = (f"--{boundary}\r\ncontent-type: audio/wav\r\n\r\n").encode() + make_wav(0.1)
    body = empty * MANY_PARTS + media + f"\r\n--{boundary}--\r\n".encode()
    target = f"/kazoo/{ACCOUNT}/r-parts/parts.wav"
    reply = exchange(server.port, kazoo_put(
        target, len(body), content_type=f"multipart/form-data; boundary={boundary}") + body)
    assert reply.status == 400, reply
    assert reply.json()["error"] == "bad_multipart"
    assert "parts before the media part" in reply.json()["detail"]
    assert not [p for p in server.root.rglob("*") if p.is_file()]


# -- S3 -------------------------------------------------------------------------------

S3_SETTINGS = {"connect_timeout": 1.0, "read_timeout": 2.0, "max_attempts": 1}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_probe_with_s3_down_is_a_clean_error(
    s3_server: Callable[..., RunningServer], s3_proxy: TcpProxy, method: str,
) -> None:
    """With S3 unreachable, a GET or HEAD probe is a JSON 503 (HEAD too, not a 200), and the
    pipelined next request is answered."""
    server = s3_server(endpoint=s3_proxy.url, **S3_SETTINGS)
    target, record = upload(server, "s3down", make_wav(0.2))
    assert record["storage_url"].startswith("s3://")
    s3_proxy.down()
    answers = converse(server.port, probe(method, target) + HEALTHZ, answers=2)
    assert_clean_error_then_healthz(answers)


def test_s3_going_down_mid_object_closes_the_connection(
    s3_server: Callable[..., RunningServer], s3_proxy: TcpProxy,
) -> None:
    """S3 going down while a large object streams breaks the body off and closes the
    connection; no error response lands inside the body."""
    server = s3_server(endpoint=s3_proxy.url, **S3_SETTINGS)
    size = 48 * MIB  # more than every buffer between S3 and the client holds
    target, record = upload(server, "s3mid", b"".join(wav_stream(size)))
    assert record["storage_url"].startswith("s3://")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(probe("GET", target) + HEALTHZ)
        raw = sock.recv(64 * 1024)
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(64 * 1024)
        s3_proxy.down()
        while chunk := sock.recv(MIB):
            raw += chunk
    assert_cut_off(raw)
    assert_logged_as_storage_failure(server)
