"""The operator console's search on a big SQLite catalog (issue 14):

    .venv/bin/python -m bench.ui_search [--rows 1000000] [--path FILE] [--repeat 5]

Creates a catalog at the current schema (every migration, the search indexes of 0010 and
0011 included), fills it with ``--rows`` synthetic recordings over 90 days (4 sources, 2,000
accounts, 1 % failed, numbers from 200,000 callers) with one ``executemany`` in one
transaction (the webhook triggers dropped first: the bench catalog sends nothing), then
times the console's typical searches through :meth:`recsink.catalog.Catalog.find` (one
page of 50) and :meth:`~recsink.catalog.Catalog.count`, best of ``--repeat`` runs, and
prints a Markdown table (bench/RESULTS.md keeps one)."""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from recsink.catalog.records import Status
from recsink.catalog.search import Filters
from recsink.catalog.sqlite import SqliteCatalog

SOURCES = ("kazoo", "sinch", "laml", "sendbird")
NOW = datetime(2025, 6, 30, 12, tzinfo=UTC)
SPAN = timedelta(days=90)
COLUMNS = ("id", "idempotency_key", "source", "recording_id", "call_id", "account_id",
           "from_uri", "to_uri", "status", "received_at", "updated_at", "duration_ms",
           "byte_size", "media_type", "format", "storage_key", "name", "metadata")


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def caller(n: int) -> str:
    return f"+4930{n:07d}"


def rows(count: int, seed: int = 14) -> Iterator[tuple[object, ...]]:
    """``count`` synthetic recording rows, oldest first."""
    rng = random.Random(seed)  # noqa: S311 (synthetic data, reproducible)
    step = SPAN / count
    start = NOW - SPAN
    for n in range(count):
        when = stamp(start + step * n)
        source = SOURCES[n % 4]
        status = "failed" if n % 100 == 7 else "completed"
        call = f"call-{n:08d}@pbx.example.com"
        yield (f"rec_{n:020x}", f"{source}:rid:r{n}", source, f"r{n}", call,
               f"{rng.randrange(2000):032x}", f"sip:{caller(rng.randrange(200_000))}@pbx",
               f"sip:+4940{rng.randrange(10_000_000):07d}@pbx", status, when, when,
               rng.randrange(5_000, 600_000), rng.randrange(10_000, 9_000_000), "audio/wav",
               "wav", f"{source}/{n}.wav", f"call_recording_{call}.wav", "{}")


async def fill(path: Path, count: int) -> float:
    """Create the catalog at ``path`` and insert ``count`` rows; seconds it took."""
    catalog = await SqliteCatalog.open(path)
    await catalog.close()
    started = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS webhook_event_inserted")
    db.execute("DROP TRIGGER IF EXISTS webhook_event_updated")
    marks = ", ".join("?" for _ in COLUMNS)
    with db:
        db.executemany(f"INSERT INTO recordings ({', '.join(COLUMNS)}) "  # noqa: S608
                       f"VALUES ({marks})", rows(count))
    db.execute("ANALYZE")
    db.close()
    return time.perf_counter() - started


def searches(count: int) -> list[tuple[str, Filters]]:
    """The console's typical searches on a catalog of ``count`` rows."""
    middle = count // 2
    day = NOW - SPAN / 2
    return [
        ("newest first, no filter", Filters()),
        ("call id", Filters(call_id=f"call-{middle:08d}@pbx.example.com")),
        ("recording id (sender's)", Filters(recording_id=f"r{middle}")),
        ("account", Filters(account_id=f"{7:032x}")),
        ("source", Filters(source="sinch")),
        ("status failed", Filters(status=Status.FAILED)),
        ("date range (one day)", Filters(since=day, until=day + timedelta(days=1))),
        ("source + status + one day", Filters(source="laml", status=Status.FAILED,
                                              since=day, until=day + timedelta(days=1))),
        ("phone number, one day", Filters(number="4930" + f"{123:07d}"[-7:], since=day,
                                          until=day + timedelta(days=1))),
        ("phone number, all time", Filters(number="4930" + f"{123:07d}"[-7:])),
    ]


async def measure(path: Path, count: int, repeat: int) -> list[tuple[str, int, float, float]]:
    """(search, matches, first page ms, count ms), best of ``repeat``."""
    catalog = await SqliteCatalog.open(path)
    results = []
    try:
        for name, filters in searches(count):
            page_ms, count_ms, total = [], [], 0
            for _ in range(repeat):
                started = time.perf_counter()
                await catalog.find(filters, None, 50)
                page_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                total = await catalog.count(filters)
                count_ms.append((time.perf_counter() - started) * 1000)
            results.append((name, total, min(page_ms), min(count_ms)))
    finally:
        await catalog.close()
    return results


def report(count: int, fill_s: float, results: list[tuple[str, int, float, float]]) -> str:
    lines = [f"{count:,} recordings filled in {fill_s:.1f} s (one transaction).", "",
             "| search | matches | first page of 50, ms | count, ms |",
             "|---|---:|---:|---:|"]
    lines += [f"| {name} | {total:,} | {page:.1f} | {counted:.1f} |"
              for name, total, page, counted in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--path", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recsink-ui-search-") as workdir:
        path = args.path or Path(workdir) / "catalog.db"
        fill_s = asyncio.run(fill(path, args.rows))
        print(report(args.rows, fill_s, asyncio.run(measure(path, args.rows, args.repeat))))


if __name__ == "__main__":
    main()
