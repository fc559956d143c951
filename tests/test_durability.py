"""Crash recovery and storage guarantees: interrupted commits settle at start-up, staging
leftovers are swept, keys never leave the root, settled records are never reopened."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recsink.catalog import Lease, Recording, Status, new_id, utcnow
from recsink.catalog.sqlite import SqliteCatalog
from recsink.storage import KeyTaken
from recsink.storage.disk import DiskStorage
from tests.conftest import TESTBODY, remount, stored_files


def attempt(key: str | None = None, **fields: Any) -> Recording:
    return Recording(id=new_id(), source="kazoo", status=Status.UPLOADING, received_at=utcnow(),
                     idempotency_key=key, **fields)


async def acquire(catalog: SqliteCatalog, key: str, **fields: Any) -> Recording:
    """The row of ``key``, held by a new lease."""
    record = attempt(key, **fields)
    row = await catalog.acquire(record, Lease(record.id, "test/1"), 60)
    assert row is not None
    return row


async def test_interrupted_uploads_settle_at_start(tmp_path: Path, make_client: Any) -> None:
    """Records a stopped process left held: one whose intended object is in place with its
    size and sha256 becomes ``completed``; one whose object is missing or different, or
    that never got as far as naming it, becomes ``failed`` (``interrupted``)."""
    root = tmp_path / "recordings"
    catalog = await SqliteCatalog.open(tmp_path / "recsink.db")
    sha = hashlib.sha256(TESTBODY).hexdigest()
    intents = {}
    for name, content in (("placed", TESTBODY), ("missing", None), ("other", b"x" * 1034)):
        record = attempt(f"kazoo:rid:{name}")
        lease = Lease(record.id, "stopped:1:0/1")
        await catalog.acquire(record, lease, 600)
        await catalog.update(record.id, lease, storage_key=f"a/{name}.mp3", sha256=sha,
                             byte_size=1034)
        if content is not None:
            (root / "a").mkdir(parents=True, exist_ok=True)
            (root / "a" / f"{name}.mp3").write_bytes(content)
        intents[name] = record.id
    early = attempt("kazoo:rid:early")
    await catalog.acquire(early, Lease(early.id, "stopped:1:0/2"), 600)
    await catalog.close()

    client = await make_client()
    statuses = {}
    for name, record_id in [*intents.items(), ("early", early.id)]:
        body = await (await client.get(f"/v1/recordings/{record_id}")).json()
        statuses[name] = (body["status"], body["error"])
    assert statuses == {"placed": ("completed", None), "missing": ("failed", "interrupted"),
                        "other": ("failed", "interrupted"), "early": ("failed", "interrupted")}
    placed = await (await client.get(f"/v1/recordings/{intents['placed']}")).json()
    assert placed["storage_url"] == (root / "a" / "placed.mp3").absolute().as_uri()


async def test_staging_leftovers_are_swept_at_start(tmp_path: Path, make_client: Any) -> None:
    """Files left in the staging directory by an earlier run are removed before serving;
    committed recordings are untouched."""
    staging = tmp_path / "recordings" / ".staging"
    staging.mkdir(parents=True)
    (staging / "0123.part").write_bytes(b"half a recording")
    (tmp_path / "recordings" / "kept.mp3").write_bytes(TESTBODY)
    await make_client()
    assert list(staging.iterdir()) == []
    assert [p.name for p in stored_files(tmp_path / "recordings")] == ["kept.mp3"]


@pytest.mark.parametrize("key", ["../x.mp3", "a/../../x.mp3", "/etc/passwd", "..", ""])
def test_disk_keys_never_leave_the_root(tmp_path: Path, key: str) -> None:
    """DiskStorage refuses any key that resolves outside (or to) its root."""
    storage = DiskStorage(tmp_path / "root")
    with pytest.raises(ValueError, match="outside the storage root"):
        storage.path(key)


async def test_commit_never_overwrites(tmp_path: Path) -> None:
    """A commit to a taken key raises KeyTaken and leaves the existing file as it was; the
    staged bytes then commit under the next name, and the staging name is gone."""
    storage = DiskStorage(tmp_path / "root")
    assert await storage.start() == 0
    first = await storage.open_staging("acct/2024/rec.mp3")
    await first.write(b"first")
    await first.finish()
    assert (await first.commit("acct/2024/rec.mp3", {})).key == "acct/2024/rec.mp3"
    second = await storage.open_staging("acct/2024/rec.mp3")
    await second.write(b"second")
    await second.finish()
    with pytest.raises(KeyTaken):
        await second.commit("acct/2024/rec.mp3", {})
    assert (await second.commit("acct/2024/rec~2.mp3", {})).key == "acct/2024/rec~2.mp3"
    assert storage.path("acct/2024/rec.mp3").read_bytes() == b"first"
    assert storage.path("acct/2024/rec~2.mp3").read_bytes() == b"second"
    assert list(storage.staging_dir.iterdir()) == []
    found = await storage.find("acct/2024/rec.mp3")
    assert found is not None
    assert (found.size, found.sha256) == (5, hashlib.sha256(b"first").hexdigest())
    assert found.stored.url == storage.path("acct/2024/rec.mp3").as_uri()
    assert await storage.find("acct/none.mp3") is None


async def test_aborted_staging_leaves_nothing(tmp_path: Path) -> None:
    """Aborting a staging object, before or after finishing it, removes its file."""
    storage = DiskStorage(tmp_path / "root")
    await storage.start()
    for finish in (False, True):
        staging = await storage.open_staging("acct/rec.mp3")
        await staging.write(b"partial")
        if finish:
            await staging.finish()
        await staging.abort()
        await staging.abort()
    assert list(storage.staging_dir.iterdir()) == []


async def test_full_catalog_answers_507_and_keeps_nothing(make_client: Any) -> None:
    """When SQLite cannot grow (SQLITE_FULL), uploads answer 507 with a JSON error and no
    file is kept; a repeat of an already stored recording still answers 200."""
    from recsink import state

    client = await make_client()
    first = await client.put("/kazoo/call_recording_c0.mp3", data=TESTBODY,
                             params={"recording_id": "r0"})
    assert first.status == 201
    catalog = client.app[state.CATALOG]
    await catalog.execute_on_writer("PRAGMA max_page_count = 1")  # cap the file at its current size
    statuses = []
    for n in range(1, 30):
        reply = await client.put(f"/kazoo/call_recording_c{n}.mp3", data=TESTBODY + bytes([n]),
                                 params={"recording_id": f"r{n}", "note": "x" * 2000})
        statuses.append(reply.status)
        if reply.status != 201:
            assert (await reply.json())["error"] == "storage_full"
            break
    assert statuses[-1] == 507
    root = client.app[state.SETTINGS].storage.disk.root
    assert len(stored_files(root)) == len(statuses)  # r0 plus the 201s before the catalog filled
    assert not list((root / ".staging").iterdir())
    again = await client.put("/kazoo/call_recording_c0.mp3", data=TESTBODY,
                             params={"recording_id": "r0"})
    assert again.status == 200


async def test_a_commit_the_catalog_cannot_complete_is_settled_not_deleted(
    make_client: Any,
) -> None:
    """If the catalog refuses the completing write after the object is linked into place,
    the answer is 503 and nothing is deleted (the write may have committed after all); once
    the catalog takes writes again, the record is settled ``completed`` and the PBX's retry
    answers 200 with it: stored once."""
    from recsink import state

    client = await make_client(catalog={"sweep_interval": 0.1, "lease_ttl": 1.0})
    catalog = client.app[state.CATALOG]
    # A real SQLite trigger refuses exactly the completing write.
    await catalog.execute_on_writer(
        "CREATE TRIGGER refuse_completion BEFORE UPDATE OF status ON recordings "
        "WHEN NEW.status = 'completed' BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
    reply = await client.put("/kazoo/call_recording_c1.mp3", data=TESTBODY,
                             params={"recording_id": "r1"})
    assert reply.status == 503
    assert (await reply.json())["error"] == "catalog_unavailable"
    root = client.app[state.SETTINGS].storage.disk.root
    assert len(stored_files(root)) == 1
    await catalog.execute_on_writer("DROP TRIGGER refuse_completion")
    again = await client.put("/kazoo/call_recording_c1.mp3", data=TESTBODY,
                             params={"recording_id": "r1"})
    assert again.status == 200
    [record] = (await (await client.get("/v1/recordings")).json())["recordings"]
    assert record["status"] == "completed"
    assert [p.as_uri() for p in stored_files(root)] == [record["storage_url"]]
    assert not list((root / ".staging").iterdir())


async def test_concurrent_writes_share_a_commit_and_fail_alone(tmp_path: Path) -> None:
    """Writes issued together are committed together (fewer WAL commits than writes), each
    gets its own row back, and a statement that fails fails only its own caller."""
    catalog = await SqliteCatalog.open(tmp_path / "c.db")
    await catalog.execute_on_writer(
        "CREATE TRIGGER refuse_one BEFORE INSERT ON recordings "
        "WHEN NEW.idempotency_key = 'k:7' BEGIN SELECT RAISE(ABORT, 'refused'); END")
    await catalog.execute_on_writer("PRAGMA wal_checkpoint(TRUNCATE)")  # an empty WAL
    results = await asyncio.gather(
        *(acquire(catalog, f"k:{n}") for n in range(20)), return_exceptions=True)
    [(_, wal_frames, _)] = await catalog.execute_on_writer("PRAGMA wal_checkpoint(PASSIVE)")
    assert wal_frames < 20  # 20 transactions would append at least one frame each
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1
    assert "refused" in str(refused[0])
    stored = [r for r in results if isinstance(r, Recording)]
    assert sorted(r.idempotency_key or "" for r in stored) == sorted(
        f"k:{n}" for n in range(20) if n != 7)
    await catalog.close()
    # Durable: a fresh connection sees all 19 rows and not the refused one.
    reopened = await SqliteCatalog.open(tmp_path / "c.db")
    assert len(await reopened.search(limit=100)) == 19
    assert await reopened.by_key("k:7") is None
    await reopened.close()


async def test_direct_io_staging_keeps_unaligned_writes_exact(tmp_path: Path) -> None:
    """With fsync on (O_DIRECT where the file system allows), blocks of any size and
    alignment, including plain bytes, land in the file byte for byte."""
    import mmap

    storage = DiskStorage(tmp_path / "r", fsync=True)
    await storage.start()
    staging = await storage.open_staging("a/b.wav")
    aligned = mmap.mmap(-1, 256 * 1024)
    aligned.write(bytes(range(256)) * 1024)
    pieces: list[bytes] = []
    with memoryview(aligned) as view:
        await staging.write(view)  # a whole aligned block
        pieces.append(bytes(view))
    for piece in (b"odd" * 1001, bytes(range(256)) * 40, b"t" * 5):  # unaligned from here
        await staging.write(piece)
        pieces.append(piece)
    path = await staging.finish()
    assert path.read_bytes() == b"".join(pieces)
    stored = await staging.commit("a/b.wav", {})
    assert (tmp_path / "r" / stored.key).read_bytes() == b"".join(pieces)


async def test_staging_file_left_by_a_read_only_moment_is_removed_later(
    tmpfs: Callable[..., Path],
) -> None:
    """A staging file that could not be removed because the file system had turned
    read-only is removed by the next staging file opened once it is writable again, without
    waiting for a restart."""
    root = tmpfs("4m")
    storage = DiskStorage(root, fsync=True)
    await storage.start()
    staging = await storage.open_staging("a/b.wav")
    await staging.write(b"RIFF" + bytes(1000))
    os.close(staging._fd or -1)  # the kernel refuses ro while a file is open for writing
    staging._fd = None
    remount(root, "ro")
    await staging.abort()
    assert len(list(storage.staging_dir.iterdir())) == 1
    remount(root, "rw")
    second = await storage.open_staging("a/c.wav")
    assert [p.name for p in storage.staging_dir.iterdir()] == [second._path.name]
    await second.abort()
    assert list(storage.staging_dir.iterdir()) == []


async def test_batch_cut_by_a_full_catalog_keeps_exactly_what_it_acknowledged(
    tmp_path: Path,
) -> None:
    """When the catalog file fills up (SQLITE_FULL, which rolls a transaction back) in the
    middle of a group commit, every write that was answered with its row is durable and
    every write that was answered with an error left nothing."""
    catalog = await SqliteCatalog.open(tmp_path / "c.db")
    [(pages,)] = await catalog.execute_on_writer("PRAGMA page_count")
    await catalog.execute_on_writer(f"PRAGMA max_page_count = {pages + 6}")
    results = await asyncio.gather(
        *(acquire(catalog, f"k:{n}", metadata={"note": f"{n}" * 1500}) for n in range(40)),
        return_exceptions=True)
    acknowledged = {r.idempotency_key for r in results if isinstance(r, Recording)}
    refused = [r for r in results if isinstance(r, BaseException)]
    assert acknowledged
    assert refused
    assert all("full" in str(r) for r in refused)
    await catalog.close()
    reopened = await SqliteCatalog.open(tmp_path / "c.db")
    durable = {r.idempotency_key for r in await reopened.search(limit=100)}
    assert durable == acknowledged
    await reopened.close()
