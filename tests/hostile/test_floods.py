"""Connection floods against a real ``recsink serve`` with a small ``server.max_connections``
(its own server: the module's ``flooded`` fixture). Property: whatever mix and number of
idle, partial, bodiless, junk, half-closed, reset and complete connections arrive (beyond
the cap, too), once they close the server is alive, stores a normal upload, and keeps
nothing partial (tests/hostile/support.py properties 1 and 3)."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import merge, start_server_process, wait_for
from tests.hostile import strategies as hs
from tests.hostile.support import (
    BEARER,
    Hostile,
    converse,
    hostile_config,
    request,
    scaled,
    unique,
)

#: The flooded server's connection cap: floods of up to 40 connections go well beyond it.
MAX_CONNECTIONS = 6
AUTH = [("host", "rec.example.com"), ("authorization", f"Bearer {BEARER}")]


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """A real ``recsink serve`` with the hostile configuration and max_connections =
    :data:`MAX_CONNECTIONS`, stopped by pid at the end of the module."""
    workdir = tmp_path_factory.mktemp("flooded")
    config = merge(hostile_config(workdir), {"server": {"max_connections": MAX_CONNECTIONS}})
    target = Hostile(start_server_process(workdir, config))
    yield target
    server = target.server
    if server.proc.poll() is None:
        server.stop()
    assert server.proc.returncode == 0, f"recsink exited {server.proc.returncode}"


def _opening(kind: str) -> bytes:
    """What a flood connection of ``kind`` sends before it goes quiet."""
    upload = f"/kazoo/call_recording_{unique()}.wav"
    return {
        "idle": b"",
        "half_head": b"PUT " + upload.encode() + b" HTTP/1.1\r\nhost: x\r\n",
        "head_without_body": request("PUT", upload, headers=AUTH)[:-2]
        .replace(b"content-length: 0", b"content-length: 100000") + b"\r\n",
        "part_of_body": request("PUT", upload, hs.WAV, headers=AUTH)[:-100],
        "junk": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "complete": b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
    }[kind]


KINDS = st.sampled_from(["idle", "half_head", "head_without_body", "part_of_body", "junk",
                         "complete"])
ENDINGS = st.sampled_from(["close", "half_close", "reset"])


@given(flood=st.lists(st.tuples(KINDS, ENDINGS), min_size=MAX_CONNECTIONS + 2, max_size=40))
@scaled(0.05)
def test_connection_floods_leave_the_server_serving(
        flooded: Hostile, flood: list[tuple[str, str]]) -> None:
    """Any mix and number of idle, partial and complete connections, beyond
    server.max_connections, then closed, reset or half-closed: the server stays alive,
    stores the next normal upload and keeps nothing partial."""
    opened: list[tuple[socket.socket, str]] = []
    try:
        for kind, ending in flood:
            sock = socket.create_connection(("127.0.0.1", flooded.port), timeout=5)
            opened.append((sock, ending))
            with contextlib.suppress(OSError):  # refused at the cap: closed under us
                sock.sendall(_opening(kind))
                if ending == "half_close":
                    sock.shutdown(socket.SHUT_WR)
    finally:
        for sock, ending in opened:
            if ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    call = unique()
    upload = request("PUT", f"/kazoo/call_recording_{call}.wav", hs.WAV, headers=AUTH)

    def stored() -> bool:
        answers = converse(flooded.port, upload)  # none while the cap is still full
        return bool(answers) and answers[0].status in (200, 201)

    wait_for(stored, timeout=30)
    flooded.check_alive()
    flooded.check_storage()
