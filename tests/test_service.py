"""recsink as a service: systemd notifications, graceful drain, disk full, load limits, the
ops routes, and the unit file."""

from __future__ import annotations

import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REPO,
    RunningServer,
    exchange,
    fill,
    kazoo_put,
    make_wav,
    path_a,
    read_status,
    stored_files,
    wait_for,
)

UNIT = REPO / "systemd" / "recsink.service"


def get(port: int, path: str, token: str | None = None) -> Any:
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    return exchange(port, f"GET {path} HTTP/1.1\r\nhost: x\r\n{auth}\r\n".encode())


# -- systemd notify -----------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A Unix datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        yield sock, path


def receive_until(sock: socket.socket, wanted: str) -> list[str]:
    """Datagrams up to and including the first one holding ``wanted``."""
    seen = []
    while True:
        message = sock.recv(4096).decode()
        seen.append(message)
        if wanted in message.split("\n"):
            return seen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_notify_ready_watchdog_and_stopping(
    start_server: Callable[..., RunningServer], notify_socket: tuple[socket.socket, str],
    signum: int,
) -> None:
    """recsink sends READY=1 once it listens, WATCHDOG=1 keep-alives when systemd asks for
    them, STOPPING=1 when SIGTERM or SIGINT starts the drain, and exits 0."""
    sock, path = notify_socket
    server = start_server(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    ready = receive_until(sock, "READY=1")
    assert any(line.startswith("STATUS=listening on 127.0.0.1:") for line in ready[-1].split("\n"))
    assert receive_until(sock, "WATCHDOG=1")
    time.sleep(0.3)
    server.proc.send_signal(signum)
    assert receive_until(sock, "STOPPING=1")
    assert server.proc.wait(30) == 0
    assert [e["event"] for e in server.logs()][-3:] == [
        "server.stopping", "server.drained", "server.stopped"]


def test_notify_abstract_socket(start_server: Callable[..., RunningServer]) -> None:
    """An abstract-namespace NOTIFY_SOCKET (``@name``) works too."""
    name = f"recsink-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        start_server(env={"NOTIFY_SOCKET": "@" + name})
        assert receive_until(sock, "READY=1")


# -- graceful drain -----------------------------------------------------------------------


def test_sigterm_drains_uploads_then_exits_0(start_server: Callable[..., RunningServer]) -> None:
    """20 slow uploads, then SIGTERM: the 10 that finish within the drain timeout are stored
    intact (201), the 10 that do not are cut off and leave nothing (no file, no staging
    leftover, record failed), new connections are refused, and the exit code is 0."""
    server = start_server(server={"drain_timeout": 3.0, "body_idle_timeout": 60.0})
    bodies = [make_wav(2.0, freq=200 + 40 * n) for n in range(20)]
    socks = []
    for n, body in enumerate(bodies):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(kazoo_put(path_a(f"drain{n}", f"202611-drain{n}"), len(body))
                     + body[: len(body) // 2])
        socks.append(sock)
    wait_for(lambda: len(list((server.root / ".staging").iterdir())) == 20)
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: server.events("server.stopping"))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)

    statuses: dict[int, int] = {}

    def finish(n: int) -> None:
        socks[n].sendall(bodies[n][len(bodies[n]) // 2:])
        socks[n].settimeout(30)
        statuses[n] = read_status(socks[n])

    finishers = [threading.Thread(target=finish, args=(n,)) for n in range(10)]
    for thread in finishers:
        thread.start()
    for thread in finishers:
        thread.join()
    assert statuses == dict.fromkeys(range(10), 201)
    assert server.proc.wait(30) == 0
    for sock in socks[10:]:  # cut off: closed without an answer
        sock.settimeout(5)
        assert sock.recv(4096) == b""
    for sock in socks:
        sock.close()

    assert sorted(f.read_bytes() for f in stored_files(server.root)) == sorted(bodies[:10])
    assert list((server.root / ".staging").iterdir()) == []
    with sqlite3.connect(server.workdir / "recsink.db") as db:
        rows = dict(db.execute("SELECT call_id, status FROM recordings").fetchall())
    assert rows == {**{f"drain{n}": "completed" for n in range(10)},
                    **{f"drain{n}": "failed" for n in range(10, 20)}}


# -- disk full ----------------------------------------------------------------------------


def test_disk_full_answers_507_then_recovers(
    start_server: Callable[..., RunningServer], small_filesystem: Path,
) -> None:
    """On a full filesystem an upload answers 507 and leaves no partial file or staging
    leftover; as soon as space returns, uploads are stored again."""
    root = small_filesystem / "recordings"
    server = start_server(storage={"disk": {"root": str(root)}})
    big = make_wav(200.0)  # 3.2 MB: more than the filesystem holds
    reply = exchange(server.port, kazoo_put(path_a("big", "202611-big"), len(big)) + big)
    assert reply.status == 507
    assert reply.json()["error"] == "storage_full"
    assert stored_files(root) == []
    assert list((root / ".staging").iterdir()) == []

    small = make_wav(5.0)  # 80 kB
    assert exchange(server.port, kazoo_put(path_a("s1", "202611-s1"), len(small))
                    + small).status == 201
    filler = small_filesystem / "filler"
    with pytest.raises(OSError, match="No space left"):
        fill(filler)
    full = exchange(server.port, kazoo_put(path_a("s2", "202611-s2"), len(small)) + small)
    assert full.status == 507
    assert list((root / ".staging").iterdir()) == []
    filler.unlink()
    again = exchange(server.port, kazoo_put(path_a("s2", "202611-s2"), len(small)) + small)
    assert again.status == 201
    assert sorted(f.read_bytes() for f in stored_files(root)) == [small, small]


# -- load limits --------------------------------------------------------------------------


def test_concurrent_upload_cap(start_server: Callable[..., RunningServer]) -> None:
    """Beyond ``server.max_uploads`` concurrent uploads, the next one is answered 503 with
    Retry-After at once (nothing read); when a slot frees, uploads are accepted again."""
    server = start_server(server={"max_uploads": 2})
    body = make_wav(1.0)
    slow = []
    for n in range(2):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(kazoo_put(path_a(f"slow{n}", f"202611-slow{n}"), len(body)) + body[:100])
        slow.append(sock)
    wait_for(lambda: len(list((server.root / ".staging").iterdir())) == 2)
    busy = exchange(server.port, kazoo_put(path_a("third", "202611-third"), len(body)) + body)
    assert (busy.status, busy.json()["error"], busy.headers["retry-after"]) == (503, "busy", "5")
    slow[0].sendall(body[100:])
    slow[0].settimeout(10)
    assert read_status(slow[0]) == 201
    assert exchange(server.port, kazoo_put(path_a("third", "202611-third"), len(body))
                    + body).status == 201
    for sock in slow:
        sock.close()


def test_slow_request_head_is_cut_off(start_server: Callable[..., RunningServer]) -> None:
    """A connection that does not finish its first request head within
    ``server.header_timeout`` is closed; a normal request is unaffected."""
    server = start_server(server={"header_timeout": 0.5})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"PUT /kazoo/x.wav HTTP/1.1\r\nhost: x\r\n")
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert 0.4 < time.monotonic() - started < 5
    assert get(server.port, "/healthz").status == 200
    assert server.events("connection.header_timeout")


# -- ops routes ---------------------------------------------------------------------------


def test_ops_routes_on_their_own_address_with_a_token(
    start_server: Callable[..., RunningServer],
) -> None:
    """With ``ops.listen`` the health and metrics routes answer only there, and with
    ``ops.token`` /readyz and /metrics need it (/healthz stays open); uploads stay on the
    main address."""
    server = start_server(ops={"listen": "127.0.0.1:0", "token": "ops-secret"})
    [listening] = server.events("server.listening")
    ops = listening["ops_port"]
    assert ops
    assert ops != server.port
    assert get(server.port, "/metrics").status == 404
    assert get(server.port, "/healthz").status == 404
    assert get(ops, "/healthz").status == 200
    assert get(ops, "/metrics").status == 401
    assert get(ops, "/readyz", "wrong").status == 401
    assert get(ops, "/readyz", "ops-secret").status == 200
    metrics = get(ops, "/metrics", "ops-secret")
    assert metrics.status == 200
    assert b"recsink_uploads_in_flight" in metrics.body
    body = make_wav(0.5)
    assert exchange(ops, kazoo_put("/kazoo/x.wav", len(body)) + body).status == 404
    assert exchange(server.port, kazoo_put("/kazoo/x.wav", len(body)) + body).status == 201


def test_metrics_cover_the_operations_list(start_server: Callable[..., RunningServer]) -> None:
    """/metrics exposes uploads by source and result, bytes received, the upload duration
    histogram, uploads in flight, storage errors, S3 abort failures, spool depth, pending
    pulls and free disk space, in Prometheus text format."""
    server = start_server()
    body = make_wav(0.5)
    exchange(server.port, kazoo_put(path_a("m", "202611-m"), len(body)) + body)
    exchange(server.port, kazoo_put(path_a("m", "202611-m"), len(body)) + body)
    reply = get(server.port, "/metrics")
    assert reply.headers["content-type"].startswith("text/plain; version=")
    text = reply.body.decode()
    for line in ('recsink_uploads_total{result="stored",source="kazoo"} 1.0',
                 'recsink_uploads_total{result="duplicate",source="kazoo"} 1.0',
                 f'recsink_received_bytes_total{{source="kazoo"}} {float(len(body))}',
                 'recsink_upload_duration_seconds_count{source="kazoo"} 2.0',
                 "recsink_uploads_in_flight 0.0", "recsink_storage_errors_total 0.0",
                 "recsink_s3_abort_failures_total 0.0", "recsink_spool_pending 0.0",
                 "recsink_pulls_pending 0.0"):
        assert line in text, line
    [free] = [line for line in text.splitlines() if line.startswith("recsink_disk_free_bytes ")]
    assert float(free.split()[1]) > 0


# -- the unit -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_verifies_and_rates_ok(tmp_path: Path) -> None:
    """systemd/recsink.service passes ``systemd-analyze verify`` (with ExecStart pointed at
    this checkout's recsink) and its exposure rates "OK" or better."""
    unit = tmp_path / "recsink.service"
    executable = Path(sys.executable).parent / "recsink"
    unit.write_text(UNIT.read_text().replace("/opt/recsink/bin/recsink", str(executable)))
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    rated = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                           capture_output=True, text=True)
    verdict = rated.stdout.strip().splitlines()[-1]
    score = float(verdict.split("exposure level for recsink.service: ")[1].split()[0])
    assert score <= 2.0, verdict
    assert " OK " in verdict or " SAFE " in verdict
