"""The PostgreSQL catalog: the one truth a fleet of recsink instances shares
(``catalog.url = "postgresql://…"``).

Driver: psycopg 3 with psycopg_pool's :class:`~psycopg_pool.AsyncConnectionPool`
(``catalog.pool_size`` connections per instance). psycopg is the driver PostgreSQL's own
ecosystem maintains, speaks libpq (so every DSN and ``PG*`` setting operators know works),
and with ``prepare_threshold=None`` (the default; ``catalog.prepared_statements`` turns
preparing on for direct connections) it keeps no prepared statements on a server
connection, which is what PgBouncer in transaction mode needs. recsink relies on no session state at
all: every read is one autocommitted statement, every batch of writes one transaction, and
migrations hold a transaction-level advisory lock (``pg_advisory_xact_lock``), never a
session-level one.

Writes are group-committed (:mod:`recsink.catalog.group`): the writes waiting while one
batch commits go into the next, pipelined on one connection (psycopg's pipeline mode: one
round trip) in one transaction (one commit), one batch at a time; reads use the pool's other
connections. A batch takes its rows in id order, so the batches of several instances never
deadlock on each other's rows (measured: two batches at a time, unordered, did, and waited
out PostgreSQL's deadlock_timeout; two at a time gained nothing measurable on 2 cores). On the
benchmark machine this cut the CPU a write costs, recsink's and PostgreSQL's, by half or
more (bench/RESULTS.md). Claims of due work use ``FOR UPDATE SKIP LOCKED``, so instances
claiming at the same moment get different rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from recsink.catalog import sql
from recsink.catalog.base import (
    Catalog,
    CatalogFull,
    CatalogUnavailable,
    Conflict,
    SchemaTooNew,
)
from recsink.catalog.group import GroupCommit, Row, Write
from recsink.catalog.migrations import LATEST, migrations, too_new
from recsink.config import mask_dsn as mask
from recsink.errors import Malformed

#: The transaction-level advisory lock migrations run under ("recsink" in ASCII).
#: Writes committed together at most (one transaction, one pipeline).
BATCH = 64
MIGRATION_LOCK = 0x72656373696E6B


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, pg_errors.UniqueViolation):
        return Conflict(str(exc))
    if isinstance(exc, pg_errors.DiskFull):
        return CatalogFull(str(exc))
    if isinstance(exc, psycopg.DataError):  # NUL in text, a number out of range, …
        return Malformed("unstorable", f"a value cannot be stored in the catalog: "
                         f"{str(exc).splitlines()[0]}")
    if isinstance(exc, PoolTimeout):
        return CatalogUnavailable(f"no connection to PostgreSQL: {exc}")
    return CatalogUnavailable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _row_of(write: Write) -> str:
    """The record a write names (its id), "" for one that names none (a claim)."""
    return str(write.args.get("_id") or write.args.get("id") or "")


class PostgresCatalog(Catalog):
    """The catalog in a PostgreSQL database; use :meth:`open`, then :meth:`close`."""

    shared: ClassVar[bool] = True

    def __init__(self, url: str, pool: AsyncConnectionPool[Any], timeout: float) -> None:
        super().__init__(sql.POSTGRES)
        self.url = url
        self._pool = pool
        self._timeout = timeout
        self._group = GroupCommit(self._commit, limit=BATCH)

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10, wait: float = 5.0,
                   migrate: bool = True, prepare: bool = False) -> PostgresCatalog:
        """Connect to ``url`` (a libpq DSN or URL), bring the schema up to date (unless
        ``migrate`` is False) and return the catalog. ``wait``: seconds to wait for a
        connection before an operation fails; ``prepare``: let PostgreSQL keep statements
        prepared (not behind PgBouncer in transaction mode). Raises
        :class:`CatalogUnavailable`, :class:`SchemaTooNew`."""
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=wait,
            name="recsink-catalog",
            kwargs={"autocommit": True, "prepare_threshold": 0 if prepare else None,
                    "connect_timeout": max(1, round(wait))})
        try:
            await pool.open(wait=True, timeout=wait)
        except (PoolTimeout, psycopg.Error) as exc:
            await pool.close()
            raise CatalogUnavailable(f"cannot connect to {mask(url)}: {exc}") from exc
        catalog = cls(url, pool, wait)
        try:
            await catalog._migrate(apply=migrate)
        except BaseException:
            await pool.close()
            raise
        return catalog

    async def close(self) -> None:
        await self._group.drain()
        await self._pool.close()

    def describe(self) -> str:
        return mask(self.url)

    async def schema_version(self) -> int:
        rows = await self._read("SELECT version FROM recsink_schema", {})
        return int(rows[0][0]) if rows else 0

    async def _read(self, statement: str, args: Mapping[str, Any]) -> list[Row]:
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                cursor = await conn.execute(statement, args)
                rows: list[Row] = await cursor.fetchall()
                return rows
        except (psycopg.Error, PoolTimeout) as exc:
            raise _translate(exc) from exc

    async def _write(self, statement: str, args: Mapping[str, Any]) -> list[Row]:
        """Run one write statement in the next group commit; its rows once committed."""
        try:
            return await self._group.write(statement, args)
        except (psycopg.Error, PoolTimeout) as exc:
            raise _translate(exc) from exc

    async def _commit(self, batch: list[Write]) -> None:
        """``batch`` in one transaction, its statements pipelined (one round trip, one
        commit); when one of them fails, which aborts the transaction, each runs again on
        its own, so that every write gets its own outcome.

        The writes of a batch come from different callers (a caller waits for its write),
        so their order is free: they run in the order of the rows they name, so that the
        batches of several instances lock rows in one order and never deadlock."""
        batch = sorted(batch, key=_row_of)
        async with self._pool.connection(timeout=self._timeout) as conn:
            if len(batch) > 1:
                try:
                    async with conn.transaction(), conn.pipeline():
                        cursors = [await conn.execute(w.statement, w.args) for w in batch]
                    results = [await cursor.fetchall() for cursor in cursors]
                except psycopg.Error:
                    if conn.broken:
                        raise
                else:
                    for write, rows in zip(batch, results, strict=True):
                        write.answer(rows)
                    return
            for write in batch:
                try:
                    rows = await (await conn.execute(write.statement, write.args)).fetchall()
                except psycopg.Error as exc:
                    if conn.broken:
                        raise
                    write.answer(error=exc)
                else:
                    write.answer(rows)

    async def _migrate(self, *, apply: bool) -> None:
        """Apply the missing migrations in one transaction under the advisory lock, so
        instances starting together on an empty database wait for each other."""
        try:
            async with self._pool.connection(timeout=self._timeout) as conn, \
                    conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS recsink_schema (version integer NOT NULL)")
                rows = await (await conn.execute("SELECT version FROM recsink_schema")).fetchall()
                version = int(rows[0][0]) if rows else 0
                if version > LATEST:
                    raise SchemaTooNew("schema_too_new", too_new(version, mask(self.url)))
                if version == LATEST or not apply:
                    return
                for target, script in migrations("postgres").items():
                    if target > version:
                        await conn.execute(script.encode(), prepare=False)
                if rows:
                    await conn.execute("UPDATE recsink_schema SET version = %s", (LATEST,))
                else:
                    await conn.execute("INSERT INTO recsink_schema VALUES (%s)", (LATEST,))
        except (psycopg.Error, PoolTimeout) as exc:
            raise CatalogUnavailable(f"migrating {mask(self.url)}: {exc}") from exc
