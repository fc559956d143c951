"""Crash recovery and storage guarantees: interrupted commits settle at start-up, staging
leftovers are swept, keys never leave the root, settled records are never reopened."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from recsink.catalog import Catalog, Recording, Status, new_id, utcnow
from recsink.storage.disk import DiskStorage
from tests.conftest import TESTBODY, stored_files


def attempt(key: str | None = None, **fields: Any) -> Recording:
    return Recording(id=new_id(), source="kazoo", status=Status.UPLOADING, received_at=utcnow(),
                     idempotency_key=key, **fields)


async def test_interrupted_uploads_settle_at_start(tmp_path: Path, make_client: Any) -> None:
    """Records left ``uploading``: one whose intended object is in place with its size and
    sha256 becomes ``completed``; one whose object is missing or different, or that never got
    as far, becomes ``failed``."""
    root = tmp_path / "recordings"
    catalog = await Catalog.open(tmp_path / "recsink.db")
    sha = hashlib.sha256(TESTBODY).hexdigest()
    intents = {}
    for name, content in (("placed", TESTBODY), ("missing", None), ("other", b"x" * 1034)):
        record = await catalog.begin(attempt(f"kazoo:rid:{name}"))
        await catalog.update(record.id, storage_key=f"a/{name}.mp3", sha256=sha, byte_size=1034)
        if content is not None:
            (root / "a").mkdir(parents=True, exist_ok=True)
            (root / "a" / f"{name}.mp3").write_bytes(content)
        intents[name] = record.id
    early = await catalog.begin(attempt("kazoo:rid:early"))
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


async def test_commit_links_without_overwriting(tmp_path: Path) -> None:
    """A commit to a taken key lands on the next variant; the staging name is gone and the
    existing object is unchanged."""
    storage = DiskStorage(tmp_path / "root")
    assert await storage.start() == 0
    keys = []
    for body in (b"first", b"second", b"third"):
        staging = await storage.open_staging("acct/2024/rec.mp3")
        await staging.write(body)
        await staging.finish()
        keys.append((await staging.commit({})).key)
    assert keys == ["acct/2024/rec.mp3", "acct/2024/rec~2.mp3", "acct/2024/rec~3.mp3"]
    assert [storage.path(k).read_bytes() for k in keys] == [b"first", b"second", b"third"]
    assert list(storage.staging_dir.iterdir()) == []
    found = await storage.find(keys[0])
    assert found is not None
    assert (found.size, found.sha256) == (5, hashlib.sha256(b"first").hexdigest())
    assert found.stored.url == storage.path(keys[0]).as_uri()
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


async def test_settled_records_are_not_reopened(tmp_path: Path) -> None:
    """``begin`` on a completed key returns it untouched; on a failed key it reopens the
    same record as ``uploading`` with one more attempt."""
    catalog = await Catalog.open(tmp_path / "c.db")
    done = await catalog.begin(attempt("k:done"))
    await catalog.update(done.id, status=Status.COMPLETED)
    again = await catalog.begin(attempt("k:done"))
    assert (again.id, again.status, again.attempts) == (done.id, Status.COMPLETED, 1)
    failed = await catalog.begin(attempt("k:failed"))
    await catalog.update(failed.id, status=Status.FAILED, error="client_disconnected")
    retry = await catalog.begin(attempt("k:failed"))
    assert (retry.id, retry.status, retry.attempts, retry.error) == (
        failed.id, Status.UPLOADING, 2, None)
    await catalog.close()


async def test_full_catalog_answers_507_and_keeps_nothing(make_client: Any) -> None:
    """When SQLite cannot grow (SQLITE_FULL), uploads answer 507 with a JSON error and no
    file is kept; a repeat of an already stored recording still answers 200."""
    from recsink import state

    client = await make_client()
    first = await client.put("/kazoo/call_recording_c0.mp3", data=TESTBODY,
                             params={"recording_id": "r0"})
    assert first.status == 201
    catalog = client.app[state.CATALOG]
    await catalog._db.execute("PRAGMA max_page_count = 1")  # cap the file at its current size
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


async def test_commit_the_catalog_cannot_record_is_undone(make_client: Any) -> None:
    """If the catalog fails after the object is linked into place, the object is removed
    again: nothing unacknowledged stays in storage."""
    from recsink import state

    client = await make_client()
    catalog = client.app[state.CATALOG]
    # A real SQLite trigger refuses exactly the completing write.
    await catalog._db.execute(
        "CREATE TRIGGER refuse_completion BEFORE UPDATE OF status ON recordings "
        "WHEN NEW.status = 'completed' BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
    reply = await client.put("/kazoo/call_recording_c1.mp3", data=TESTBODY,
                             params={"recording_id": "r1"})
    assert reply.status == 503
    assert (await reply.json())["error"] == "catalog_unavailable"
    root = client.app[state.SETTINGS].storage.disk.root
    assert stored_files(root) == []
    assert not list((root / ".staging").iterdir())
    [record] = (await (await client.get("/v1/recordings")).json())["recordings"]
    assert record["status"] == "failed"
