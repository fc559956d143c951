"""Background work kept in the catalog: a :class:`Worker` claims due rows of one queue
(pulls, shipping, settling) and runs a job for each, as tracked jobs of one aiojobs
:class:`~aiojobs.Scheduler` that shutdown closes (aio-libs/aiojobs: no loose tasks).

Claims are leases (:meth:`recsink.catalog.Catalog.claim`), so across a fleet each row is
worked on by one instance at a time, and a crashed instance's rows are claimed again once
their leases expire. A worker looks at the catalog every ``idle`` seconds, and at once when
:meth:`Worker.wake` says something was queued in this process (other instances' work is
found by the next look).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import aiojobs

from recsink import logs
from recsink.errors import RecsinkError

T = TypeVar("T")


class Worker(Generic[T]):
    """Runs ``job(row)`` for rows ``claim(n)`` hands out, at most ``limit`` at once."""

    def __init__(self, name: str, claim: Callable[[int], Awaitable[list[T]]],
                 job: Callable[[T], Awaitable[None]], scheduler: aiojobs.Scheduler, *,
                 limit: int, idle: float,
                 tick: Callable[[], Awaitable[None]] | None = None) -> None:
        self.name = name
        self._claim = claim
        self._job = job
        self._scheduler = scheduler
        self._limit = limit
        self._idle = idle
        self._tick = tick
        self._running = 0
        self._wake = asyncio.Event()
        self._log = logs.get_logger()

    def wake(self) -> None:
        """Work was queued: look at the catalog now rather than at the next tick."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and run due work until cancelled."""
        while True:
            self._wake.clear()
            claimed: list[T] = []
            free = self._limit - self._running
            try:
                if self._tick is not None:
                    await self._tick()
                if free > 0:
                    claimed = await self._claim(free)
            except RecsinkError as exc:  # the catalog is down: look again later
                self._log.warning(f"{self.name}.claim_failed", error=exc.reason())
            for row in claimed:
                self._running += 1
                await self._scheduler.spawn(self._one(row))
            if len(claimed) < free or not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle)

    async def _one(self, row: T) -> None:
        try:
            await self._job(row)
        except Exception as exc:  # a bug: log it, keep working on the rest
            self._log.error(f"{self.name}.failed", error=repr(exc), exc_info=exc)
        finally:
            self._running -= 1
            self._wake.set()
