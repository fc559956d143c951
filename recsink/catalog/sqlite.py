"""The SQLite catalog: one machine, one recsink process (the default, ``catalog.path``).

Durability: WAL mode with ``synchronous=FULL``; once a write method returns, its change is
committed and survives a crash. Writes are group-committed (:mod:`recsink.catalog.group`):
N concurrent writers cost one WAL fsync, not N. Reads go through a second,
read-only connection and see committed data only, without queueing behind a commit.
aiosqlite runs each connection in its own thread.

Migrations run under ``BEGIN IMMEDIATE`` (SQLite's write lock, for the transaction only);
the version is SQLite's ``user_version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import aiosqlite

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


def _identity(path: Path) -> tuple[int, int]:
    """(device, inode) of ``path``; raises OSError."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _translate(exc: sqlite3.Error) -> Exception:
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
        return Conflict(str(exc))
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        return CatalogFull(str(exc))
    return CatalogUnavailable(str(exc))


class SqliteCatalog(Catalog):
    """The catalog in one SQLite file; use :meth:`open`, then :meth:`close`."""

    shared: ClassVar[bool] = False

    def __init__(self, path: Path, db: sqlite3.Connection, writer: ThreadPoolExecutor,
                 reader: aiosqlite.Connection) -> None:
        super().__init__(sql.SQLITE)
        self.path = path
        #: The file opened (device, inode): a file deleted or replaced under a running
        #: process takes its writes into nothing (``check_writable``).
        self._identity = _identity(path)
        #: The writer connection, used only on its own thread (``writer``): a group commit
        #: runs there whole, one hand-off for the batch (aiosqlite would take two per
        #: statement, each waiting for the busy event loop).
        self._db = db
        self._writer = writer
        self._reader = reader
        self._group = GroupCommit(self._commit)

    @classmethod
    async def open(cls, path: Path, *, migrate: bool = True) -> SqliteCatalog:
        """Open (creating if needed) the catalog at ``path`` and bring its schema up to
        date (unless ``migrate`` is False). Raises :class:`CatalogUnavailable`,
        :class:`SchemaTooNew`."""
        loop = asyncio.get_running_loop()
        writer = ThreadPoolExecutor(1, thread_name_prefix="recsink-sqlite")
        conn: sqlite3.Connection | None = None
        try:
            conn = await loop.run_in_executor(writer, _connect, path, migrate)
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute("PRAGMA query_only=1")
            await reader.execute("PRAGMA busy_timeout=5000")
        except BaseException as exc:
            if conn is not None:
                await loop.run_in_executor(writer, conn.close)
            writer.shutdown(wait=False)
            if isinstance(exc, sqlite3.Error):
                raise CatalogUnavailable(f"{path}: {exc}") from exc
            raise
        return cls(path, conn, writer, reader)

    async def close(self) -> None:
        await self._group.drain()
        await self._reader.close()
        await asyncio.get_running_loop().run_in_executor(self._writer, self._db.close)
        self._writer.shutdown()

    def describe(self) -> str:
        return str(self.path)

    async def check_writable(self) -> None:
        """The catalog file is still the one opened (not deleted, moved or replaced: writes
        would go to a file nobody will open again), and it commits a write."""
        try:
            now = await asyncio.to_thread(_identity, self.path)
        except OSError as exc:
            raise CatalogUnavailable(
                f"the catalog file {self.path} is gone ({exc.strerror}): deleted or moved "
                "while recsink runs; restart recsink to open it again") from exc
        if now != self._identity:
            raise CatalogUnavailable(
                f"the catalog file {self.path} was replaced while recsink runs; restart "
                "recsink to open it")
        await super().check_writable()

    async def schema_version(self) -> int:
        rows = await self._read("PRAGMA user_version", {})
        return int(rows[0][0])

    async def _read(self, statement: str, args: Mapping[str, Any]) -> list[Row]:
        try:
            rows = await self._reader.execute_fetchall(statement, args)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return list(rows)

    async def _write(self, statement: str, args: Mapping[str, Any]) -> list[Row]:
        """Run one write statement in the next group commit; its rows once committed."""
        try:
            return await self._group.write(statement, args)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def execute_on_writer(self, statement: str,
                                args: Mapping[str, Any] | None = None) -> list[Row]:
        """One statement on the writer connection, outside group commit (a PRAGMA, a
        trigger: maintenance and tests); its rows. Raises ``sqlite3.Error``."""
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, lambda: self._db.execute(statement, args or {}).fetchall())

    async def _commit(self, batch: list[Write]) -> None:
        """One transaction for ``batch``, run whole on the writer's thread; each write gets
        its rows after the commit, or the error of its own statement (a failed statement
        undoes only itself), or the commit's error."""
        statements = [(write.statement, write.args) for write in batch]
        outcomes = await asyncio.get_running_loop().run_in_executor(
            self._writer, _run_batch, self._db, statements)
        for write, (rows, error) in zip(batch, outcomes, strict=True):
            write.answer(rows, error)


def _connect(path: Path, migrate: bool) -> sqlite3.Connection:
    """Blocking, on the writer's thread: the writer connection (autocommit; transactions
    are explicit), its schema brought up to date unless ``migrate`` is False. Raises
    :class:`CatalogUnavailable` when the file cannot be opened, :class:`SchemaTooNew`,
    ``sqlite3.Error``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise CatalogUnavailable(f"cannot open {path}: {exc}") from exc
    try:
        db.execute("PRAGMA busy_timeout=5000")
        with contextlib.suppress(sqlite3.OperationalError):  # a full disk: WAL already
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        _migrate(db, path, apply=migrate)
    except BaseException:
        db.close()
        raise
    return db


_Outcome = tuple[list[Row] | None, BaseException | None]


def _run_batch(db: sqlite3.Connection,
               statements: list[tuple[str, Mapping[str, Any]]]) -> list[_Outcome]:
    """Blocking, on the writer's thread: ``statements`` in one ``BEGIN IMMEDIATE``
    transaction (one alone in autocommit); each one's rows or error. Raises the commit's
    error (after a rollback)."""
    if len(statements) == 1:  # autocommit: no BEGIN/COMMIT
        statement, args = statements[0]
        try:
            return [(db.execute(statement, args).fetchall(), None)]
        except sqlite3.Error as exc:
            return [(None, exc)]
    outcomes: list[_Outcome] = []
    ran: list[int] = []  # statements in the open transaction that succeeded
    db.execute("BEGIN IMMEDIATE")
    for statement, args in statements:
        try:
            outcomes.append((db.execute(statement, args).fetchall(), None))
            ran.append(len(outcomes) - 1)
        except sqlite3.Error as exc:
            if not db.in_transaction:  # the error rolled back the writes before it too
                for earlier in ran:
                    outcomes[earlier] = (None, exc)
                ran = []
                db.execute("BEGIN IMMEDIATE")
            outcomes.append((None, exc))
    try:
        db.execute("COMMIT")
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return outcomes


def _migrate(db: sqlite3.Connection, path: Path, *, apply: bool) -> None:
    """Blocking: apply the missing migrations in one ``BEGIN IMMEDIATE`` transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > LATEST:
        raise SchemaTooNew("schema_too_new", too_new(version, str(path)))
    if version == LATEST or not apply:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for target, script in migrations("sqlite").items():
            if target > version:
                for statement in _statements(script):
                    db.execute(statement)
        db.execute(f"PRAGMA user_version={LATEST}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """A migration script's statements (``executescript`` would commit on its own)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]
