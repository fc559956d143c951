"""The storage file system fills up under concurrent uploads, or turns read-only: clear JSON
errors, nothing partial, and recovery as soon as the file system is back, without a
restart. Both on a real tmpfs the test mounts (root needed; skipped elsewhere, failed in CI)."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.conftest import RunningServer, api_get, exchange, remount
from tests.faults.support import (
    DiskStore,
    bounded,
    check_invariants,
    deliver,
    fault_seed,
    fd_baseline,
    metric,
    tone_uploads,
    upload,
)

MiB = 1024 * 1024


def leave_free(mountpoint: Path, free: int) -> Path:
    """Fill the file system at ``mountpoint`` with one file until ``free`` bytes are left."""
    filler = mountpoint / "filler"
    with filler.open("wb") as fh:
        left = shutil.disk_usage(mountpoint).free - free
        while left > 0:
            left -= fh.write(bytes(min(MiB, left)))
    return filler


async def test_disk_full_under_load_answers_507_then_recovers(
    start_server: Callable[..., RunningServer], tmpfs: Callable[..., Path],
) -> None:
    """24 concurrent uploads into 1 MiB of free space: each is stored intact (201) or
    answered 507 ``storage_full`` with a JSON body and leaves nothing (no partial file, no
    staging file, its record failed); once space is freed the retries are stored, without
    a restart."""
    seed = fault_seed()
    rng = random.Random(seed)
    why = f"seed {seed}"
    mountpoint = tmpfs("8m")
    root = mountpoint / "recordings"
    server = start_server(storage={"disk": {"root": str(root)}}, ingest={"chunk_size": 65536})
    store = DiskStore(root)
    warm = tone_uploads("warm", 1, rng)[0]
    assert (await upload(server.port, warm)) is not None
    fds = fd_baseline(server, store)
    filler = leave_free(mountpoint, MiB)

    uploads = tone_uploads("full", 24, rng, seconds=(3.0, 8.0))  # 48-128 kB: 2 MB or so
    replies = await asyncio.gather(*(upload(server.port, item, pieces=4, pause=0.01)
                                     for item in uploads))
    stored, full = [], []
    for item, reply in zip(uploads, replies, strict=True):
        assert reply is not None, (why, item.call_id, "connection broke")
        if reply.status == 507:
            error = reply.json()
            assert error["error"] == "storage_full", (why, error)
            assert "No space left on device" in error["detail"], (why, error)
            full.append(item)
        else:
            assert reply.status == 201, (why, item.call_id, reply.status, reply.body)
            stored.append(item)
    print(f"{len(stored)} stored, {len(full)} answered 507")
    assert full, f"{why}: everything fitted; the file system was not full"
    assert metric(server, "recsink_storage_errors_total") >= len(full), why

    objects = await asyncio.to_thread(check_invariants, server, store,
                                      acknowledged=[warm, *stored], fds=fds, why=why)
    kept = {o.sha256 for o in objects}
    for item in full:
        assert item.sha256 not in kept, (why, item.call_id)
        [record] = api_get(server, f"/v1/recordings?call_id={item.call_id}")["recordings"]
        assert record["status"] == "failed", (why, record)

    filler.unlink()
    retried = await bounded((deliver(server.port, item) for item in full), 8)
    assert [r.status for r in retried] == [201] * len(full), why
    objects = await asyncio.to_thread(check_invariants, server, store,
                                      acknowledged=[warm, *uploads], fds=fds, why=why)
    assert len(objects) == len(uploads) + 1, why


async def test_read_only_storage_answers_503_then_recovers(
    start_server: Callable[..., RunningServer], tmpfs: Callable[..., Path],
) -> None:
    """With the storage file system remounted read-only, concurrent uploads are answered
    503 ``storage_unavailable`` with Retry-After and a detail naming the read-only file
    system, /readyz says why, stored recordings can still be fetched, and nothing is left
    behind; after remounting read-write the PBX's retries are stored, without a restart."""
    seed = fault_seed()
    rng = random.Random(seed)
    why = f"seed {seed}"
    mountpoint = tmpfs("16m")
    root = mountpoint / "recordings"
    server = start_server(storage={"disk": {"root": str(root)}})
    store = DiskStore(root)
    warm = tone_uploads("warm", 1, rng)[0]
    assert (await upload(server.port, warm)) is not None
    fds = fd_baseline(server, store)

    remount(mountpoint, "ro")
    uploads = tone_uploads("ro", 16, rng)
    replies = await asyncio.gather(*(upload(server.port, item, pieces=2, pause=0.01)
                                     for item in uploads))
    for item, reply in zip(uploads, replies, strict=True):
        assert reply is not None, (why, item.call_id, "connection broke")
        assert reply.status == 503, (why, item.call_id, reply.status, reply.body)
        error = reply.json()
        assert error["error"] == "storage_unavailable", (why, error)
        assert "Read-only file system" in error["detail"], (why, error)
        assert int(reply.headers["retry-after"]) > 0, why
    ready = exchange(server.port, b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert ready.status == 503, why
    assert "storage" in ready.json()["problems"], ready.body  # why: in the log
    why = server.events("ready.unavailable")[-1]["problems"]["storage"]
    assert "Read-only file system" in why, why
    got = exchange(server.port, f"GET {warm.target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    assert (got.status, got.body == warm.body) == (200, True), why
    await asyncio.to_thread(check_invariants, server, store, acknowledged=[warm], fds=fds,
                            why=why)
    for item in uploads:
        [record] = api_get(server, f"/v1/recordings?call_id={item.call_id}")["recordings"]
        assert record["status"] == "failed", (why, record)

    remount(mountpoint, "rw")
    assert exchange(server.port, b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n").status == 200
    retried = await bounded((deliver(server.port, item) for item in uploads), 8)
    assert [r.status for r in retried] == [201] * len(uploads), why
    objects = await asyncio.to_thread(check_invariants, server, store,
                                      acknowledged=[warm, *uploads], fds=fds, why=why)
    assert len(objects) == len(uploads) + 1, why
