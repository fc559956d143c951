"""The console's catalog search on both engines (SQLite, and a real PostgreSQL): every
filter, newest first, keyset cursors that page through everything once, counts, phone
numbers as erasure finds them, and the overview's hourly counts."""

from __future__ import annotations

from datetime import timedelta

from recsink.catalog import Catalog, Recording, Status, utcnow
from recsink.catalog.search import Cursor, Filters
from tests.test_catalog import catalog, open_catalog  # noqa: F401  (fixtures)


def record(n: int, **fields: object) -> Recording:
    """The ``n``-th of a set of recordings, ``n`` minutes old (every fourth from sinch)."""
    values: dict[str, object] = {
        "id": f"rec_{n:020d}", "source": "sinch" if n % 4 == 0 else "kazoo",
        "status": Status.FAILED if n % 5 == 0 else Status.COMPLETED,
        "received_at": utcnow() - timedelta(minutes=n), "idempotency_key": f"k:{n}",
        "recording_id": f"r{n}", "call_id": f"call-{n}", "account_id": f"acct{n % 3}",
        "from_uri": f"sip:+49301234{n:03d}@pbx", "to_uri": "sip:+4940999000@pbx"}
    values.update(fields)
    return Recording(**values)  # type: ignore[arg-type]


async def test_every_filter_cursor_and_count(catalog: Catalog) -> None:  # noqa: F811
    """Each filter selects what it names, newest first; pages of 7 cover all 30 matches
    once, in order; counts equal what the pages hold; a number matches its digits in
    from/to or the metadata; a date range bounds received_at."""
    for n in range(30):
        await catalog.insert(record(n))
    await catalog.insert(record(99, from_uri=None, metadata={"caller_id_number": "+4930555"},
                                received_at=utcnow() - timedelta(days=3)))
    seen: list[str] = []
    after: Cursor | None = None
    while True:
        page, after = await catalog.find(Filters(), after, 7)
        seen += [r.id for r in page]
        if after is None:
            break
        after = Cursor.decode(after.encode())
    assert seen == [f"rec_{n:020d}" for n in [*range(30), 99]]
    assert await catalog.count(Filters()) == 31
    cases = {
        Filters(call_id="call-3"): ["rec_00000000000000000003"],
        Filters(recording_id="r4"): ["rec_00000000000000000004"],
        Filters(recording_id="rec_00000000000000000004"): ["rec_00000000000000000004"],
        Filters(number="4930555"): ["rec_00000000000000000099"],
        Filters(number="49301234007"): ["rec_00000000000000000007"],
        Filters(source="sinch", status=Status.FAILED): [
            f"rec_{n:020d}" for n in range(30) if n % 20 == 0],
        Filters(account_id="acct1", since=utcnow() - timedelta(minutes=10, seconds=30)): [
            f"rec_{n:020d}" for n in range(11) if n % 3 == 1],
        Filters(until=utcnow() - timedelta(days=1)): ["rec_00000000000000000099"],
    }
    for filters, expected in cases.items():
        page, more = await catalog.find(filters, None, 50)
        assert [r.id for r in page] == expected, filters
        assert more is None
        assert await catalog.count(filters) == len(expected), filters


async def test_activity_counts_by_hour_source_and_status(catalog: Catalog) -> None:  # noqa: F811
    """The overview's counts group the last day's records by UTC hour, source and status,
    and leave older ones out."""
    now = utcnow()
    await catalog.insert(record(1, received_at=now, source="kazoo"))
    await catalog.insert(record(2, received_at=now, source="kazoo"))
    await catalog.insert(record(5, received_at=now, source="sinch"))
    await catalog.insert(record(7, received_at=now - timedelta(days=2)))
    hour = now.strftime("%Y-%m-%dT%H")
    found = sorted(await catalog.activity(now - timedelta(hours=24)))
    assert found == [(hour, "kazoo", "completed", 2), (hour, "sinch", "failed", 1)]


async def test_number_index_follows_every_change(catalog: Catalog) -> None:  # noqa: F811
    """The number index (migration 0011) follows the rows: a number found after an insert
    is gone once the record's from URI changes (as a tombstone clears it) or the record is
    deleted, the new number is found instead, and metadata numbers count too."""
    await catalog.insert(record(1))
    await catalog.insert(record(2, metadata={"callee_id_number": "+4989777666"}))

    async def found(number: str) -> list[str]:
        page, _ = await catalog.find(Filters(number=number), None, 50)
        assert await catalog.count(Filters(number=number)) == len(page)
        return [r.id for r in page]

    assert await found("49301234001") == ["rec_00000000000000000001"]
    assert await found("4989777666") == ["rec_00000000000000000002"]
    await catalog.update("rec_00000000000000000001", from_uri="sip:+4971155544@pbx")
    assert await found("49301234001") == []
    assert await found("4971155544") == ["rec_00000000000000000001"]
    await catalog.update("rec_00000000000000000001", from_uri=None, to_uri=None)
    assert await found("4971155544") == []
    assert await found("4940999000") == ["rec_00000000000000000002"]
    await catalog.delete("rec_00000000000000000002")
    assert await found("4940999000") == []
    assert await found("4989777666") == []
