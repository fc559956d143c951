"""Group commit, for both engines: every write waiting while the previous transaction
commits goes into the next one, so N concurrent writers cost one commit (one WAL fsync, one
round trip), not N; each write still succeeds or fails on its own.

An engine gives :class:`GroupCommit` the function that commits one batch; the batch's
futures get their rows after the commit, or their own statement's error, or the commit's.
A write whose caller stopped waiting (cancelled) still runs with its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: A row as the engines return it: its values in the order the statement names them.
Row = Sequence[Any]


@dataclass
class Write:
    """One write statement waiting for the next group commit."""

    statement: str
    args: Mapping[str, Any]
    done: asyncio.Future[list[Row]]

    def answer(self, rows: list[Row] | None = None, error: BaseException | None = None) -> None:
        """Hand the write its rows or its error, unless its caller stopped waiting."""
        if self.done.done():
            return
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(rows or [])


class GroupCommit:
    """Queues writes and commits them in batches of at most ``limit``, with
    ``commit(batch)`` (which answers each write), at most ``parallel`` batches at a time (a
    new batch starts while fewer are committing and writes wait)."""

    def __init__(self, commit: Callable[[list[Write]], Awaitable[None]],
                 limit: int | None = None, parallel: int = 1) -> None:
        self._commit = commit
        self._limit = limit
        self._parallel = parallel
        self._queue: list[Write] = []
        self._committers: set[asyncio.Task[None]] = set()
        #: Committers still taking batches (a finished one leaves this before its task ends).
        self._active = 0

    async def write(self, statement: str, args: Mapping[str, Any]) -> list[Row]:
        """Run one write statement in the next batch; its rows once committed. Raises the
        engine's error of its statement or of the batch's commit."""
        write = Write(statement, args, asyncio.get_running_loop().create_future())
        self._queue.append(write)
        if self._active < self._parallel:
            self._active += 1
            committer = asyncio.create_task(self._commit_queued())
            self._committers.add(committer)
            committer.add_done_callback(self._committers.discard)
        return await write.done

    async def drain(self) -> None:
        """Wait until every write submitted so far is committed (or failed)."""
        while self._committers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.gather(*self._committers))

    async def _commit_queued(self) -> None:
        try:
            while self._queue:
                cut = len(self._queue) if self._limit is None else self._limit
                batch, self._queue = self._queue[:cut], self._queue[cut:]
                try:
                    await self._commit(batch)
                except BaseException as exc:
                    for write in batch:
                        write.answer(error=exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            # No await between the empty queue seen above and this: a write queued from now
            # on starts a committer of its own.
            self._active -= 1
