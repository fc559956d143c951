"""Every crash point of a commit (README "Running a fleet"; recsink/commit.py), each hit
exactly in a real ``recsink serve`` process: a directory fsync that fails after the link, a
kill right after a commit under a ``~2`` name, a completing catalog write whose caller is
cancelled, a restart on a full catalog disk, and a restart between two Sinch events. After
each, a 2xx means stored once, nothing acknowledged is lost, and no file stays uncatalogued.
(S3's lost answers: tests/faults/test_s3_outage.py; a dead instance's multipart upload:
tests/test_fleet.py.)"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.conftest import (
    RunningServer,
    api_get,
    exchange,
    fill,
    kazoo_put,
    make_wav,
    path_a,
    stored_files,
    wait_for,
)
from tests.faults.shim import shim_env
from tests.test_callbacks import S4, signed_sinch

Start = Callable[..., RunningServer]


def put(server: RunningServer, target: str, body: bytes) -> tuple[int, dict[str, object]]:
    reply = exchange(server.port, kazoo_put(target, len(body)) + body)
    return reply.status, reply.json()


def record_of(server: RunningServer, call_id: str) -> dict[str, object]:
    [record] = api_get(server, f"/v1/recordings?call_id={call_id}")["recordings"]
    return record  # type: ignore[no-any-return]


def test_a_directory_fsync_failing_after_the_link_is_settled_not_copied(
    start_server: Start, fault_shim: Path, tmp_path: Path,
) -> None:
    """When fsyncing the directory fails right after the recording was linked into place,
    the upload answers 503 and the file, already visible, stays named by the record's
    intent; the PBX's retry settles it (the file is made durable and the record completed)
    and answers 200: one file, no ``~2`` copy."""
    root = (tmp_path / "server" / "recordings").resolve()
    trigger = tmp_path / "fsync-fails"
    trigger.touch()
    server = start_server(env=shim_env(fault_shim, fsync_dir=f"{trigger}:{root}"))
    body = make_wav(1.0)
    target = path_a("dirsync", "202611-dirsync")
    status, answer = put(server, target, body)
    assert (status, answer["error"]) == (503, "storage_unavailable")
    assert len(stored_files(root)) == 1  # linked, not yet durable
    trigger.unlink()
    status, answer = put(server, target, body)
    assert status == 200, answer
    assert answer["status"] == "completed"
    [path] = stored_files(root)
    assert path.as_uri() == answer["storage_url"]
    assert "~2" not in path.name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == answer["sha256"]


def test_a_kill_right_after_a_commit_under_a_second_name_is_recovered(
    start_server: Start, fault_shim: Path, tmp_path: Path,
) -> None:
    """When the planned name is taken by another file, the recording is committed under the
    next name (``~2``); a ``kill -9`` right after that link leaves a record whose intent
    names ``~2``, so the restart completes it from that file (the other file untouched) and
    the PBX's retry answers 200 with it."""
    workdir = tmp_path / "server"
    body = make_wav(1.0)
    target = path_a("second", "202611-second")
    first = start_server()
    status, answer = put(first, target, make_wav(0.2, freq=200))  # learn the planned name
    planned = Path(str(answer["storage_url"]).removeprefix("file://"))
    first.stop()
    planned.rename(planned.with_name("taken-" + planned.name))
    (workdir / "recsink.db").unlink()  # a fresh catalog; the planned name now taken:
    planned.write_bytes(b"another recording that is not in the catalog")
    server = start_server(env=shim_env(fault_shim, link="~2.wav:kill"))
    with_kill = exchange_or_none(server, kazoo_put(target, len(body)) + body)
    assert with_kill is None  # killed before it could answer
    assert server.proc.wait(30) == -9
    restarted = start_server()
    [ready] = restarted.events("storage.ready")
    assert (ready["recovered_completed"], ready["recovered_failed"]) == (1, 0)
    record = record_of(restarted, "second")
    assert record["status"] == "completed"
    assert str(record["storage_url"]).endswith("202611-second~2.wav")
    status, answer = put(restarted, target, body)
    assert (status, answer["id"]) == (200, record["id"])
    assert planned.read_bytes() == b"another recording that is not in the catalog"
    assert sorted(p.name for p in stored_files(planned.parent)) == sorted(
        [planned.name, "202611-second~2.wav", "taken-" + planned.name])


def exchange_or_none(server: RunningServer, request: bytes) -> object | None:
    """The reply, or None when the connection broke before one came."""
    try:
        return exchange(server.port, request)
    except (OSError, ValueError):
        return None
    except Exception as exc:  # http.client's RemoteDisconnected / BadStatusLine
        if "Remote" in type(exc).__name__ or "Status" in type(exc).__name__:
            return None
        raise


def test_a_cancelled_completing_write_that_commits_keeps_its_object(
    start_server: Start, fault_shim: Path, tmp_path: Path,
) -> None:
    """When the handler is cancelled (the drain timed out) while its completing catalog
    write waits, that write still commits once the catalog is free again; the object it
    names is never deleted: after the stop the record is completed and its file in place."""
    workdir = tmp_path / "server"
    pause = tmp_path / "pause-after-link"
    pause.touch()
    server = start_server(env=shim_env(fault_shim, link=f"202611-cancel.wav:pause={pause}"),
                          server={"drain_timeout": 0.2})
    body = make_wav(1.0)
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(kazoo_put(path_a("cancel", "202611-cancel"), len(body)) + body)
        reached = Path(f"{pause}.reached")
        wait_for(reached.exists)  # linked into place; the completing write comes next
        lock = sqlite3.connect(workdir / "recsink.db", timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the catalog's write lock: that write must wait
        pause.unlink()
        server.proc.send_signal(2)  # SIGINT: drain 0.2 s, then the handler is cancelled
        wait_for(lambda: [e for e in server.events("upload.failed")
                          if e.get("error") == "cancelled"], timeout=20)
        lock.execute("COMMIT")
        lock.close()
        assert server.proc.wait(30) == 0
    finally:
        sock.close()
    db = sqlite3.connect(workdir / "recsink.db")
    [(status, url)] = db.execute(
        "SELECT status, storage_url FROM recordings WHERE call_id = 'cancel'").fetchall()
    db.close()
    assert status == "completed"
    [path] = stored_files(workdir / "recordings")
    assert path.as_uri() == url
    assert path.read_bytes() == body


def test_recsink_starts_on_a_full_catalog_disk_and_settles_later(
    start_server: Start, tmpfs: Callable[..., Path], tmp_path: Path,
) -> None:
    """An upload cut off by ``kill -9`` waits to be settled while the catalog's disk is full:
    recsink starts all the same and serves (reads answer, uploads get 507), and settles the
    interrupted upload (``failed``, ``interrupted``) once space returns."""
    disk = tmpfs("8m", "catalog")
    config = {"catalog": {"path": str(disk / "recsink.db")}}
    server = start_server(**config)
    body = make_wav(2.0)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(kazoo_put(path_a("cut", "202611-cut"), len(body)) + body[:5000])
        wait_for(lambda: api_get(server, "/v1/recordings?call_id=cut")["recordings"])
        server.proc.kill()
        server.proc.wait()
    # An empty WAL (a reader keeps it and its index file, as a stopped process leaves them):
    # with the disk full, no write can grow it.
    reader = sqlite3.connect(disk / "recsink.db")
    reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filler = disk / "filler"
    with contextlib.suppress(OSError):
        fill(filler)
    restarted = start_server(**config)
    assert restarted.events("settle.deferred")
    assert record_of(restarted, "cut")["status"] == "uploading"
    full = exchange(restarted.port, kazoo_put(path_a("more", "202611-more"), len(body)) + body)
    assert (full.status, full.json()["error"]) == (507, "storage_full")
    filler.unlink()
    wait_for(lambda: record_of(restarted, "cut")["status"] == "failed", timeout=30)
    assert record_of(restarted, "cut")["error"] == "interrupted"
    status, _ = put(restarted, path_a("cut", "202611-cut"), body)
    assert status == 201
    reader.close()


def test_a_restart_between_sinch_events_completes_the_recording(start_server: Start) -> None:
    """recording_finished, a restart, then recording_available: the record completes (a
    restart never fails a recording that Sinch is still uploading)."""
    sinch = {"applications": [{"key": S4["key"], "secret": S4["secret"]}]}
    server = start_server(sinch=sinch)
    finished = b'{"event":"notify","callid":"restart","version":1,"type":"recording_finished"}'
    assert exchange(server.port, signed_sinch(finished)).status == 200
    server.stop()
    server = start_server(sinch=sinch)
    assert record_of(server, "restart")["status"] == "uploading"
    available = (b'{"event":"notify","callid":"restart","version":1,'
                 b'"type":"recording_available","destination":"s3://b/restart.mp3"}')
    assert exchange(server.port, signed_sinch(available)).status == 200
    record = record_of(server, "restart")
    assert (record["status"], record["storage_url"]) == ("completed", "s3://b/restart.mp3")
