"""The byte path on aiohttp's public API (issue 16), against a real ``recsink serve`` over raw
sockets: large raw bodies read by a worker thread, the connection layer in front of aiohttp's
C parser (raw UTF-8 targets, refusals in order, chunked framing), and no private aiohttp
attribute anywhere in ``recsink/``."""

from __future__ import annotations

import ast
import hashlib
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from recsink.bodies import DIRECT_MIN
from tests.conftest import RunningServer, kazoo_put, path_a, stored_files
from tests.faults.support import noise_wav
from tests.test_connections import Wire

MiB = 1024 * 1024
RECSINK = Path(__file__).resolve().parent.parent / "recsink"


@pytest.fixture
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(server={"body_idle_timeout": 1.0, "header_timeout": 5.0})


def statuses(server: RunningServer) -> dict[str, str]:
    with sqlite3.connect(server.workdir / "recsink.db") as db:
        return dict(db.execute("SELECT recording_id, status FROM recordings"))


def test_large_raw_upload_is_stored_whole_and_ends_its_connection(
        server: RunningServer) -> None:
    """A raw upload with more than DIRECT_MIN bytes still to come is read off the event loop:
    stored byte for byte (sha256 checked), answered 201 with ``Connection: close``."""
    body = noise_wav(3 * MiB + 123, random.Random(1))
    wire = Wire(server.port)
    wire.send(kazoo_put(path_a("big", "202612-big"), len(body)) + body)
    reply = wire.answer()
    assert reply.status == 201, reply.body
    assert reply.headers["connection"] == "close"
    assert reply.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert wire.closed_by_server()
    [stored] = stored_files(server.root)
    assert stored.read_bytes() == body
    assert list((server.root / ".staging").iterdir()) == []


def test_small_uploads_keep_the_connection(server: RunningServer) -> None:
    """Bodies below DIRECT_MIN stay on the event loop: two uploads share one keep-alive
    connection."""
    wire = Wire(server.port)
    for n in range(2):
        body = noise_wav(DIRECT_MIN // 2, random.Random(10 + n))
        wire.send(kazoo_put(path_a(f"small{n}", f"202612-small{n}"), len(body)) + body)
        reply = wire.answer()
        assert reply.status == 201, reply.body
        assert reply.headers.get("connection") != "close"
    assert len(stored_files(server.root)) == 2


def test_refused_large_body_gets_its_answer_before_the_connection_closes(
        server: RunningServer) -> None:
    """A large body refused after its first bytes (not audio: 415) is answered, then its
    rest is read and dropped, so the client gets the JSON answer whole, not a reset."""
    body = b"NOTAUDIO" * (2 * MiB // 8)
    wire = Wire(server.port)
    wire.send(kazoo_put(path_a("junk", "202612-junk"), len(body)) + body)
    reply = wire.answer()
    assert reply.status == 415
    assert reply.json()["error"] == "unsupported_format"
    assert wire.closed_by_server()
    assert stored_files(server.root) == []


def test_stalled_large_body_is_failed_after_the_idle_timeout(server: RunningServer) -> None:
    """A large body that stops arriving is failed with 408 ``body_timeout`` after
    server.body_idle_timeout; nothing is stored and no staging file is left."""
    body = noise_wav(2 * MiB, random.Random(2))
    wire = Wire(server.port)
    wire.send(kazoo_put(path_a("stall", "202612-stall"), len(body)) + body[:DIRECT_MIN * 2])
    reply = wire.answer()
    assert reply.status == 408
    assert reply.json()["error"] == "body_timeout"
    assert stored_files(server.root) == []
    assert list((server.root / ".staging").iterdir()) == []
    assert statuses(server) == {"202612-stall": "failed"}


def test_raw_utf8_in_a_pipelined_request_is_accepted(server: RunningServer) -> None:
    """Raw UTF-8 in the query of a request pipelined behind an upload's body is taken like
    the first one's (specs/kazoo.md §8.1): both uploads are stored, with the caller name."""
    bodies = [noise_wav(4096, random.Random(3)), noise_wav(4096, random.Random(4))]
    wire = Wire(server.port)
    wire.send(b"".join(
        kazoo_put(path_a(f"utf{n}", f"202612-utf{n}") + "&caller_id_name=José", len(body))
        + body for n, body in enumerate(bodies)))
    replies = [wire.answer(), wire.answer()]
    assert [r.status for r in replies] == [201, 201]
    assert [r.json()["metadata"]["caller_id_name"] for r in replies] == ["José", "José"]


def test_a_refused_head_is_answered_after_the_request_before_it(
        server: RunningServer) -> None:
    """A malformed head pipelined behind a good request is answered in order: the good
    request's answer, then a JSON 400 ``bad_request``, then the connection closes."""
    wire = Wire(server.port)
    wire.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
              b"GET /healthz HTTP/1.1\r\nhost x\r\n\r\n")
    first, second = wire.answer(), wire.answer()
    assert first.status == 200
    assert second.status == 400
    assert second.headers["content-type"].startswith("application/json")
    assert second.json()["error"] == "bad_request"
    assert wire.closed_by_server()
    assert [e["status"] for e in server.events("request.rejected")] == [400]


def test_chunked_framing_broken_mid_body_fails_the_upload(server: RunningServer) -> None:
    """A chunked upload whose framing breaks after its head reached the handler is answered
    with a JSON 400 ``bad_request`` (not aiohttp's plain text), nothing is stored, and the
    connection closes."""
    body = noise_wav(8192, random.Random(5))
    wire = Wire(server.port)
    wire.send((f"PUT {path_a('chunk', '202612-chunk')} HTTP/1.1\r\nhost: x\r\n"
               "content-type: audio/wav\r\ntransfer-encoding: chunked\r\n"
               "expect: 100-continue\r\n\r\n").encode())
    assert wire.answer_interim() == 100
    wire.send(b"%x\r\n" % 1024 + body[:1024] + b"\r\nzz\r\n" + body[1024:])
    reply = wire.answer()
    assert reply.status == 400
    assert reply.json()["error"] == "bad_request"
    assert "chunk-size" in reply.json()["detail"]
    assert wire.closed_by_server()
    assert stored_files(server.root) == []


def test_broken_chunk_after_an_expectation_failed_still_fails_its_own_request(
        server: RunningServer) -> None:
    """After aiohttp's own 417 for an unknown Expect (which recsink's middleware never sees),
    a later request's broken chunked framing on the same connection still fails that
    request with a JSON 400."""
    wire = Wire(server.port)
    wire.send(b"PUT /kazoo/x.wav HTTP/1.1\r\nhost: x\r\nexpect: bogus\r\n"
              b"content-length: 1\r\n\r\nx")
    refused = wire.answer()
    assert refused.status == 417
    assert refused.json()["error"] == "expectation_failed"
    wire.send((f"PUT {path_a('chunk2', '202612-chunk2')} HTTP/1.1\r\nhost: x\r\n"
               "content-type: audio/wav\r\ntransfer-encoding: chunked\r\n"
               "expect: 100-continue\r\n\r\n").encode())
    assert wire.answer_interim() == 100
    wire.send(b"10\r\nRIFF0123456789ab\r\n+1\r\n")
    reply = wire.answer()
    assert reply.status == 400
    assert "chunk-size" in reply.json()["detail"]


def test_uvloop_serves_the_same_byte_path(start_server: Callable[..., RunningServer]) -> None:
    """With server.event_loop = "uvloop", a large raw upload is read by its thread and
    stored whole, and raw UTF-8 in a query is accepted."""
    server = start_server(server={"event_loop": "uvloop"})
    body = noise_wav(2 * MiB, random.Random(7))
    wire = Wire(server.port)
    wire.send(kazoo_put(path_a("uv", "202612-uv") + "&caller_id_name=José", len(body)) + body)
    reply = wire.answer()
    assert reply.status == 201, reply.body
    assert reply.json()["metadata"]["caller_id_name"] == "José"
    [stored] = stored_files(server.root)
    assert stored.read_bytes() == body


def test_recsink_touches_no_private_attribute_of_a_dependency() -> None:
    """Every ``obj._name`` read or written in recsink/ names an attribute recsink defines
    itself (aiohttp's, or any other dependency's, private ones are never used), and no
    private module or name is imported."""
    defined: set[str] = set()
    used: list[tuple[str, int, str]] = []
    for path in RECSINK.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.Attribute):
                if isinstance(node.ctx, ast.Store):
                    defined.add(node.attr)
                used.append((str(path.relative_to(RECSINK)), node.lineno, node.attr))
            elif isinstance(node, ast.ImportFrom) and node.module:
                private = [a.name for a in node.names
                           if a.name.startswith("_") and not a.name.startswith("__")]
                where = f"{path}:{node.lineno} imports {node.module} {private}"
                assert not private, where
                assert not any(p.startswith("_") and not p.startswith("__")
                               for p in node.module.split(".")), where
    foreign = [f"{where}:{line} .{attr}" for where, line, attr in used
               if attr.startswith("_") and not attr.startswith("__") and attr not in defined
               and attr != "_replace"]  # namedtuple's public method
    assert foreign == []


def test_aiohttp_has_a_lower_bound_only() -> None:
    """pyproject pins aiohttp with a lower bound (>=3.14) and no upper bound."""
    text = (RECSINK.parent / "pyproject.toml").read_text()
    [spec] = [line.strip().strip('",') for line in text.splitlines()
              if line.strip().startswith('"aiohttp>') or line.strip().startswith('"aiohttp=')]
    assert spec == "aiohttp>=3.14", spec
