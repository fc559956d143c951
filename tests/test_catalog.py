"""The Catalog interface, against both engines: SQLite and a real PostgreSQL (a fresh
database per test): leases, fencing, claims of due work, platform transitions, values,
migrations."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from recsink.catalog import (
    Catalog,
    Conflict,
    Lease,
    LeaseLost,
    Recording,
    SchemaTooNew,
    Status,
    new_id,
    utcnow,
)
from recsink.catalog.migrations import LATEST, migrations
from recsink.catalog.outbox import Delivery, new_delivery_id
from recsink.catalog.postgres import PostgresCatalog
from recsink.catalog.search import Filters
from recsink.catalog.sqlite import SqliteCatalog
from recsink.errors import Malformed

Opener = Callable[[], Awaitable[Catalog]]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """``await open_catalog()``: a catalog on the parameter's engine (SQLite in the test's
    directory, or the test's fresh PostgreSQL database); several calls share one catalog,
    as several instances would. All are closed at the end."""
    opened: list[Catalog] = []
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""

    async def make() -> Catalog:
        catalog: Catalog
        if dsn:
            catalog = await PostgresCatalog.open(dsn, pool_size=4)
        else:
            catalog = await SqliteCatalog.open(tmp_path / "c.db")
        opened.append(catalog)
        return catalog

    yield make
    for catalog in opened:
        await catalog.close()


@pytest.fixture
async def catalog(open_catalog: Opener) -> Catalog:
    """One catalog on the parameter's engine."""
    return await open_catalog()


def upload(key: str | None = "kazoo:rid:r1", **fields: Any) -> Recording:
    return Recording(id=new_id(), source="kazoo", status=Status.UPLOADING,
                     received_at=utcnow(), idempotency_key=key, **fields)


def lease_for(record: Recording, process: str = "host:1:aa") -> Lease:
    return Lease(record.id, f"{process}/1")


async def test_acquire_holds_a_key_once(catalog: Catalog) -> None:
    """The first acquire of a key inserts its row under the lease; another acquire while
    the lease holds finds nothing to take; once it expired, the row is taken over (one more
    attempt) with what the previous holder wrote (its intent) still in it."""
    first = upload()
    row = await catalog.acquire(first, lease_for(first), 60)
    assert row is not None
    assert (row.id, row.lease_owner, row.attempts) == (first.id, "host:1:aa/1", 1)
    assert row.lease_until is not None
    assert row.lease_until > utcnow() + timedelta(seconds=50)
    await catalog.update(row.id, lease_for(first), storage_key="a/r1.wav", sha256="ab",
                         byte_size=3)
    second = upload()
    assert await catalog.acquire(second, lease_for(second, "host:2:bb"), 60) is None
    # The first holder's lease runs out.
    await catalog.update(first.id, lease_until=utcnow() - timedelta(seconds=1))
    taken = await catalog.acquire(second, lease_for(second, "host:2:bb"), 60)
    assert taken is not None
    assert (taken.id, taken.lease_owner, taken.attempts) == (first.id, "host:2:bb/1", 2)
    assert (taken.storage_key, taken.sha256, taken.byte_size, taken.intent) == (
        "a/r1.wav", "ab", 3, True)


async def test_settled_rows_are_never_taken_and_failed_ones_are(catalog: Catalog) -> None:
    """A completed or discarded key's row is never acquired again (a duplicate); a failed
    one goes back to ``uploading`` under the new lease, its error cleared."""
    for key, status in (("k:done", Status.COMPLETED), ("k:dropped", Status.DISCARDED),
                        ("k:failed", Status.FAILED)):
        record = upload(key)
        lease = lease_for(record)
        await catalog.acquire(record, lease, 60)
        await catalog.release(lease, status=status, error="client_disconnected")
        again = upload(key)
        taken = await catalog.acquire(again, lease_for(again, "host:2:bb"), 60)
        if status is Status.FAILED:
            assert taken is not None
            assert (taken.id, taken.status, taken.attempts, taken.error) == (
                record.id, Status.UPLOADING, 2, None)
        else:
            assert taken is None
            stored = await catalog.by_key(key)
            assert stored is not None
            assert (stored.status, stored.attempts) == (status, 1)


async def test_writes_fenced_by_a_lost_lease_change_nothing(catalog: Catalog) -> None:
    """Once another holder took a record over, the first holder's fenced writes raise
    LeaseLost and change nothing, and its renewals say False; the taker's go through."""
    record = upload()
    old = lease_for(record)
    await catalog.acquire(record, old, 60)
    await catalog.update(record.id, lease_until=utcnow() - timedelta(seconds=1))
    other = upload()
    new = Lease(record.id, "host:2:bb/1")
    assert await catalog.acquire(other, new, 60) is not None
    with pytest.raises(LeaseLost):
        await catalog.update(record.id, old, status=Status.COMPLETED)
    assert await catalog.renew(old, 60) is False
    assert await catalog.renew(new, 60) is True
    row = await catalog.release(new, status=Status.FAILED, error="x")
    assert (row.status, row.lease_owner, row.lease_until) == (Status.FAILED, None, None)


async def test_a_key_is_given_to_one_record(catalog: Catalog) -> None:
    """Giving a record an idempotency key another record has raises Conflict (the unique
    index decides, whatever the engine)."""
    first, second = upload("k:content"), upload(None)
    await catalog.acquire(first, lease_for(first), 60)
    await catalog.create(second, lease_for(second), 60)
    with pytest.raises(Conflict):
        await catalog.update(second.id, lease_for(second), idempotency_key="k:content")
    row = await catalog.get(second.id)
    assert row is not None
    assert row.idempotency_key is None


async def test_take_holds_an_unsettled_record_nobody_holds(catalog: Catalog) -> None:
    """``take`` holds an unsettled record only while nobody else does, never a settled
    one."""
    record = upload(None)
    await catalog.create(record, lease_for(record), 60)
    assert await catalog.take(record.id, Lease(record.id, "host:2:bb/1"), 60) is None
    await catalog.update(record.id, lease_until=utcnow() - timedelta(seconds=1))
    taken = await catalog.take(record.id, Lease(record.id, "host:2:bb/1"), 60)
    assert taken is not None
    assert taken.lease_owner == "host:2:bb/1"
    await catalog.release(Lease(record.id, "host:2:bb/1"), status=Status.COMPLETED)
    await catalog.update(record.id, lease_until=None)
    assert await catalog.take(record.id, Lease(record.id, "host:3:cc/1"), 60) is None


async def test_each_due_pull_is_claimed_once(open_catalog: Opener) -> None:
    """Pulls due now are claimed by exactly one of several claimers asking at once (two
    catalog objects on one database, as two instances), never one not yet due or held."""
    first, second = await open_catalog(), await open_catalog()
    due = []
    for n in range(12):
        record = Recording(id=new_id(), source="laml", status=Status.UPLOADING,
                           received_at=utcnow(), idempotency_key=f"laml:rid:{n}")
        record.queue_pull(f"https://media.example/{n}.wav")
        if n == 11:
            record.next_pull_at = utcnow() + timedelta(hours=1)  # not due yet
        else:
            due.append(record.id)
        await first.transition(record)
    batches = await asyncio.gather(*(
        catalog.claim("pull", f"host:{n}:aa/1", 60, 3)
        for n, catalog in enumerate([first, second] * 4)))
    claimed = [row.id for batch in batches for row in batch]
    assert sorted(claimed) == sorted(due)  # every due pull once, none twice
    assert await first.claim("pull", "host:9:aa/1", 60, 10) == []
    assert await first.pending("pull") == 12  # claimed or not, until they are done


async def test_settle_claims_expired_leases_and_dead_processes_on_sqlite(
    catalog: Catalog,
) -> None:
    """Expired leases are claimed for settling; a lease another process holds that has not
    expired is claimed too on SQLite (no other process shares that catalog: it stopped),
    never on PostgreSQL (it may be another instance at work)."""
    expired, foreign = upload("k:expired"), upload("k:foreign")
    await catalog.acquire(expired, lease_for(expired, "dead:1:aa"), -1)
    await catalog.acquire(foreign, lease_for(foreign, "other:2:bb"), 600)
    claimed = {row.id for row in await catalog.claim("settle", "me:3:cc/7", 60, 10)}
    if catalog.shared:
        assert claimed == {expired.id}
    else:
        assert claimed == {expired.id, foreign.id}
    assert await catalog.claim("settle", "me:3:cc/8", 60, 10) == []  # held by me now


async def test_platform_events_only_move_a_record_forward(catalog: Catalog) -> None:
    """A platform's events insert or move a record forward, filling what it lacks and
    merging metadata; a late event changes nothing; a matching transition leaves a record
    whose metadata names another destination alone."""
    def event(status: Status, **fields: Any) -> Recording:
        return Recording(id=new_id(), source="sinch", status=status, received_at=utcnow(),
                         idempotency_key="sinch:call", call_id="call", **fields)

    first = await catalog.insert(event(Status.UPLOADING, metadata={"a": "é"}))
    assert first is not None
    assert first.status is Status.UPLOADING
    assert await catalog.insert(event(Status.UPLOADING)) is None
    done = await catalog.transition_matching(
        event(Status.COMPLETED, storage_url="s3://b/x.wav", metadata={"destination": "x"}),
        "destination")
    assert done is not None
    assert (done.id, done.status, done.storage_url, done.metadata) == (
        first.id, Status.COMPLETED, "s3://b/x.wav", {"a": "é", "destination": "x"})
    late = await catalog.transition(event(Status.UPLOADING, metadata={"late": True}))
    assert late.status is Status.COMPLETED
    assert await catalog.transition_matching(
        event(Status.COMPLETED, metadata={"destination": "y"}), "destination") is None


async def test_values_round_trip(catalog: Catalog) -> None:
    """Every kind of value comes back as it went in: UTC times (microseconds too), text
    beyond ASCII, nested metadata, large sizes, None."""
    when = datetime(2024, 3, 12, 14, 0, 0, 123456, tzinfo=UTC)
    record = upload("k:values", started_at=when, byte_size=5 * 1024**3, from_uri="José",
                    metadata={"nested": {"list": [1, "zwei", None]}, "ok": True})
    await catalog.acquire(record, lease_for(record), 60)
    row = await catalog.get(record.id)
    assert row is not None
    assert (row.started_at, row.byte_size, row.from_uri, row.metadata, row.stopped_at) == (
        when, 5 * 1024**3, "José", record.metadata, None)
    assert row.received_at == record.received_at


async def test_a_value_the_engine_cannot_store_is_malformed(catalog: Catalog) -> None:
    """Text PostgreSQL cannot hold (a NUL) is refused as Malformed, not as the catalog
    being unavailable; SQLite stores it."""
    record = upload("k:nul", call_id="a\x00b")
    lease = lease_for(record)
    if catalog.shared:
        with pytest.raises(Malformed):
            await catalog.acquire(record, lease, 60)
    else:
        row = await catalog.acquire(record, lease, 60)
        assert row is not None
        assert row.call_id == "a\x00b"


async def test_schema_is_migrated_once_and_newer_is_refused(
    open_catalog: Opener, catalog: Catalog,
) -> None:
    """A new catalog is at the latest schema version; opening it again changes nothing;
    a catalog migrated by a newer recsink is refused with a message saying so."""
    assert await catalog.schema_version() == LATEST
    again = await open_catalog()
    assert await again.schema_version() == LATEST
    if isinstance(catalog, SqliteCatalog):
        await catalog.execute_on_writer(f"PRAGMA user_version = {LATEST + 1}")
    else:
        with psycopg.connect(catalog.url, autocommit=True) as conn:
            conn.execute("UPDATE recsink_schema SET version = %s", (LATEST + 1,))
    with pytest.raises(SchemaTooNew, match="newer than this recsink"):
        await open_catalog()


async def test_three_instances_start_together_on_an_empty_database(pg_dsn: str) -> None:
    """Three catalogs opened at once on an empty PostgreSQL database all come up (the
    migration runs once, under a transaction-level lock) at the latest version."""
    opened = await asyncio.gather(*(PostgresCatalog.open(pg_dsn, pool_size=2)
                                    for _ in range(3)))
    try:
        assert [await c.schema_version() for c in opened] == [LATEST] * 3
        with psycopg.connect(pg_dsn) as conn:
            [(count,)] = conn.execute("SELECT count(*) FROM recsink_schema").fetchall()
        assert count == 1
    finally:
        for catalog in opened:
            await catalog.close()


def sqlite_at_schema(path: Path, version: int) -> sqlite3.Connection:
    """A SQLite catalog file at ``path`` with the migrations up to ``version`` applied, as
    a release of that schema left it (use as a context manager: commits on exit)."""
    db = sqlite3.connect(path)
    for target, script in migrations("sqlite").items():
        if target <= version:
            db.executescript(script)
    db.execute(f"PRAGMA user_version = {version}")
    return db


async def test_upgrading_sqlite_settles_old_uploads_and_revives_sinch(tmp_path: Path) -> None:
    """A catalog of the previous schema (3) is migrated in place: an upload left
    ``uploading`` gets an expired lease (so it is settled like any interrupted upload), and
    a Sinch ``recording_finished`` record that the previous version's start-up wrongly failed
    goes back to ``uploading``."""
    path = tmp_path / "old.db"
    with sqlite_at_schema(path, 3) as db:
        now = "2026-11-01T00:00:00Z"
        for rid, source, status, error in (("up", "kazoo", "uploading", None),
                                           ("fin", "sinch", "failed", "interrupted")):
            db.execute("INSERT INTO recordings (id, idempotency_key, source, status, error, "
                       "received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (rid, f"{source}:{rid}", source, status, error, now, now))
    catalog = await SqliteCatalog.open(path)
    try:
        assert await catalog.schema_version() == LATEST
        revived = await catalog.get("fin")
        assert revived is not None
        assert (revived.status, revived.error) == (
            Status.UPLOADING, None)
        [stale] = await catalog.claim("settle", "me:1:aa/1", 60, 10)
        assert stale.id == "up"
    finally:
        await catalog.close()


async def test_metadata_is_stored_as_standard_json(catalog: Catalog) -> None:
    """Metadata holding non-finite numbers (a sender's ``1e999`` reads as infinity) is
    stored as standard JSON, those numbers as null, on both engines (jsonb and SQLite's JSON
    functions refuse ``Infinity``), and the record is found by its number."""
    record = upload(metadata={"start": float("inf"), "x": [float("nan"), 1.5],
                              "caller_id_number": "+4930777888"})
    await catalog.insert(record)
    stored = await catalog.get(record.id)
    assert stored is not None
    assert stored.metadata == {"start": None, "x": [None, 1.5],
                               "caller_id_number": "+4930777888"}
    page, _ = await catalog.find(Filters(number="4930777888"), None, 10)
    assert [r.id for r in page] == [record.id]


async def test_upgrading_sqlite_with_nonstandard_metadata_json(tmp_path: Path) -> None:
    """A catalog of schema 10 whose metadata holds ``Infinity`` (written before metadata
    was kept to standard JSON) migrates: the number index skips what it cannot read."""
    path = tmp_path / "old.db"
    with sqlite_at_schema(path, 10) as db:
        now = "2026-11-01T00:00:00Z"
        db.execute("INSERT INTO recordings (id, idempotency_key, source, status, from_uri, "
                   "metadata, received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   ("old", "kazoo:rid:old", "kazoo", "completed", "sip:+4930111222@pbx",
                    '{"start":Infinity}', now, now))
    catalog = await SqliteCatalog.open(path)
    try:
        assert await catalog.schema_version() == LATEST
        page, _ = await catalog.find(Filters(number="4930111222"), None, 10)
        assert [r.id for r in page] == ["old"]
    finally:
        await catalog.close()


def test_recsink_migrate_brings_the_schema_up_and_says_from_what(
    pg_dsn: str, tmp_path: Path,
) -> None:
    """``recsink migrate`` creates the schema of an empty PostgreSQL catalog and prints
    from and to which version, changes nothing the second time, and exits 1 with a clear
    message on a catalog migrated by a newer recsink."""
    import json
    import subprocess
    import sys

    import tomli_w

    config = tmp_path / "c.toml"
    config.write_text(tomli_w.dumps({"catalog": {"url": pg_dsn}}))
    command = [sys.executable, "-m", "recsink", "migrate", "--config", str(config)]
    runs = [subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert [json.loads(r.stdout)["from"] for r in runs] == [0, LATEST]
    assert [json.loads(r.stdout)["to"] for r in runs] == [LATEST, LATEST]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE recsink_schema SET version = %s", (LATEST + 1,))
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1
    assert "newer than this recsink understands" in refused.stderr


async def test_postgres_writes_share_transactions_and_fail_alone(pg_dsn: str) -> None:
    """On PostgreSQL, writes issued together are committed in shared transactions (their
    rows carry fewer transaction ids than there are writes), each gets its own row back, and
    a statement that fails (a value PostgreSQL cannot store) fails only its own caller."""
    catalog = await PostgresCatalog.open(pg_dsn, pool_size=4)
    try:
        good = [upload(f"k:{n}", call_id=f"call-{n}") for n in range(20)]
        rows = await asyncio.gather(*(catalog.acquire(r, lease_for(r), 60) for r in good))
        assert [r.id if r else None for r in rows] == [r.id for r in good]
        with psycopg.connect(pg_dsn) as conn:
            [(transactions, count)] = conn.execute(
                "SELECT count(DISTINCT xmin::text), count(*) FROM recordings").fetchall()
        assert count == 20
        assert transactions < 20
        mixed = [upload(f"m:{n}", call_id="bad\x00" if n == 7 else f"call-{n}")
                 for n in range(20)]
        results = await asyncio.gather(
            *(catalog.acquire(r, lease_for(r), 60) for r in mixed), return_exceptions=True)
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 1
        assert isinstance(refused[0], Malformed)
        stored = sorted(r.idempotency_key or "" for r in results if isinstance(r, Recording))
        assert stored == sorted(f"m:{n}" for n in range(20) if n != 7)
        assert await catalog.by_key("m:7") is None
    finally:
        await catalog.close()


# -- the webhook outbox (migration 0005) ----------------------------------------------------

async def _event_types(catalog: Catalog) -> list[tuple[str, str]]:
    return [(event.type, event.record_id) for event, _ in await catalog.events()]


async def test_final_status_changes_write_events_in_their_transaction(
    catalog: Catalog,
) -> None:
    """A change to a final status writes one outbox event with it: completed, discarded, a
    platform's failure, a pull that gave up; an upload attempt that failed (the PBX retries
    it), a repeated event, and a write that did not commit (lease lost, conflict) write
    none."""
    record = upload("kazoo:rid:hook")
    lease = lease_for(record)
    await catalog.acquire(record, lease, 60)
    await catalog.release(lease, status=Status.FAILED, error="length_mismatch")
    assert await _event_types(catalog) == []  # an attempt the PBX retries
    retry = Lease(record.id, "host:1:aa/2")
    assert await catalog.acquire(upload("kazoo:rid:hook"), retry, 60) is not None
    with pytest.raises(LeaseLost):
        await catalog.release(lease, status=Status.COMPLETED)  # not the holder: no commit
    other = upload("kazoo:rid:other")
    await catalog.insert(other)
    with pytest.raises(Conflict):
        await catalog.release(retry, status=Status.COMPLETED, idempotency_key="kazoo:rid:other")
    assert await _event_types(catalog) == []
    await catalog.release(retry, status=Status.COMPLETED)
    assert await _event_types(catalog) == [("recording.completed", record.id)]

    def platform(key: str, status: Status) -> Recording:
        return Recording(id=new_id(), source="laml", status=status, received_at=utcnow(),
                         idempotency_key=key)

    failed = await catalog.transition(platform("laml:rid:f", Status.FAILED))
    discarded = await catalog.transition(platform("laml:rid:d", Status.RECORDING))
    await catalog.transition(platform("laml:rid:d", Status.DISCARDED))
    await catalog.transition(platform("laml:rid:d", Status.DISCARDED))  # repeated
    pulled = platform("laml:rid:p", Status.UPLOADING)
    pulled.queue_pull("https://media.example/p.wav")
    await catalog.transition(pulled)
    [claimed] = await catalog.claim("pull", "host:1:aa/3", 60, 1)
    await catalog.release(Lease(claimed.id, "host:1:aa/3"), status=Status.FAILED,
                          pull_state="failed", error="pull failed: gone")
    assert sorted(await _event_types(catalog)) == sorted([
        ("recording.completed", record.id), ("recording.failed", failed.id),
        ("recording.discarded", discarded.id), ("recording.failed", claimed.id)])
    [(event, row)] = [(e, r) for e, r in await catalog.events() if e.record_id == record.id]
    assert event.id.startswith("evt_")
    assert row is not None
    assert row.status is Status.COMPLETED


def _delivery(event_id: str, endpoint: str, record_id: str) -> Delivery:
    now = utcnow()
    return Delivery(new_delivery_id(), event_id, endpoint, "recording.completed", record_id,
                    '{"type":"recording.completed"}', "pending", 0, None, None, None, now,
                    None, now, now)


async def test_deliveries_are_made_once_and_each_attempt_claimed_once(
    open_catalog: Opener,
) -> None:
    """Fanning one event out twice (two instances) makes one delivery per endpoint; due
    deliveries are claimed by exactly one of several claimers; a disabled endpoint's are
    not claimed until it is enabled; an attempt recorded under a lost lease changes
    nothing; a retry makes a failed delivery due with one more attempt."""
    first, second = await open_catalog(), await open_catalog()
    ids = []
    for n in range(6):
        record = upload(f"kazoo:rid:d{n}")
        lease = lease_for(record)
        await first.acquire(record, lease, 60)
        await first.release(lease, status=Status.COMPLETED)
        ids.append(record.id)
    events = await first.events()
    assert len(events) == 6
    made = [_delivery(e.id, ep, e.record_id) for e, _ in events for ep in ("ep_a", "ep_b")]
    again = [_delivery(e.id, ep, e.record_id) for e, _ in events for ep in ("ep_a", "ep_b")]
    counts = await asyncio.gather(first.fan_out(made), second.fan_out(again))
    assert sum(counts) == 12
    await second.drop_events([e.id for e, _ in events])
    assert await first.events() == []
    await first.disable_endpoint("ep_b", "410")
    batches = await asyncio.gather(*(
        catalog.claim_deliveries(f"host:1:aa/{n}", 60, 2, ["ep_a", "ep_b"])
        for n, catalog in enumerate([first, second] * 4)))
    claimed = [d for batch in batches for d in batch]
    assert sorted(d.record_id for d in claimed) == sorted(ids)  # ep_a's, each once
    assert {d.endpoint for d in claimed} == {"ep_a"}
    assert await first.claim_deliveries("host:1:aa/9", 60, 10, ["ep_a", "ep_b"]) == []
    assert await first.enable_endpoint("ep_b")
    assert len(await first.claim_deliveries("host:1:aa/10", 60, 10, ["ep_a", "ep_b"])) == 6
    # Held by another process: a stopped one on SQLite (claimed at once), maybe another
    # instance at work on PostgreSQL (left alone until its lease expires).
    taken = await first.claim_deliveries("other:2:bb/1", 60, 12, ["ep_a", "ep_b"])
    assert len(taken) == (0 if first.shared else 12)
    one = claimed[0]
    if not first.shared:  # taken by other:2:bb/1 meanwhile
        one = Delivery(**{**vars(one), "lease_owner": "other:2:bb/1"})
    lost = Delivery(**{**vars(one), "lease_owner": "someone:else/1"})
    assert await first.finish_attempt(lost, state="delivered", attempts=1) is None
    done = await first.finish_attempt(one, state="failed", attempts=8, last_status=500,
                                      last_error="HTTP 500", next_attempt_at=None)
    assert done is not None
    assert (done.state, done.attempts, done.lease_owner) == ("failed", 8, None)
    assert [d.id for d in await second.deliveries(state="failed")] == [one.id]
    retried = await second.retry_delivery(one.id)
    assert retried is not None
    assert (retried.state, retried.max_attempts) == ("pending", 9)
    again_claimed = await first.claim_deliveries("host:1:aa/11", 60, 12, ["ep_a"],
                                                 now=utcnow() + timedelta(seconds=120))
    assert one.id in {d.id for d in again_claimed}
    assert await first.oldest_pending() is not None
