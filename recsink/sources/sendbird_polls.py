"""Sendbird Calls polls and the reconcile sweep: asking the Platform API until every cloud
recording of an ended call or deleted room is settled, and copying the completed ones out.

Sendbird sends no "recording ready" event and its Platform API offers no download
(specs/sendbird.md §1, §2), so recsink asks, then copies:

1. **Poll** (a row of ``sendbird_polls``, queued by a webhook or by reconcile, claimed with a
   lease so that one instance of a fleet works it and a restart loses nothing): fetch the
   call or room (:class:`~recsink.sources.sendbird_api.PlatformApi`), and move each of its
   ``cloud_recordings[]`` to its status in the catalog (forward only, idempotent).
2. **Copy**: a recording Sendbird reports ``completed``, with ``[sendbird.copy]``, is
   copied with the copy API into that bucket, and its record queued for a pull of the
   copied object (:mod:`recsink.fetch`: read with the ``[sendbird.copy]`` keys, through
   ingest: sha256, audio facts, one stored object per recording id; adopted where it is
   when the bucket and directory are recsink's own S3 storage). Without ``[sendbird.copy]``
   the record is ``completed`` with no ``storage_url``.
3. **Again later**: until every recording is ``completed`` (and copied) or ``failed``, the
   poll is due again after ``poll_backoff`` seconds, doubled each time up to
   ``poll_backoff_max``; a 429 waits at least its ``Retry-After``; a 404 is "not yet". After
   ``poll_max_age`` seconds since the call or room was first seen the poll ends
   ``expired`` and its unsettled records ``failed`` (``sendbird_poll_expired``). A call or
   room with no cloud recordings is done at once.

**Reconcile**: every ``reconcile_interval`` seconds one instance (the lease row
``sendbird_sweeps.reconcile``) lists the direct calls of the last ``reconcile_window``
seconds (``start_ts``/``end_ts``, paged with ``next``) and queues a poll of each ended call
whose recordings are not all settled in the catalog: a lost webhook costs a delay, not a
recording.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import aiojobs

from recsink import logs
from recsink.catalog import Catalog, Recording, Status, utcnow
from recsink.catalog.polls import Poll, PollKind
from recsink.config import SendbirdSettings
from recsink.errors import RecsinkError
from recsink.jobs import Worker
from recsink.sources.sendbird import (
    STATUSES,
    CloudRecording,
    record_of,
    recording_key,
    recordings_of,
)
from recsink.sources.sendbird_api import NotYet, PlatformApi, RateLimited

#: Seconds between looks at the poll queue when nothing woke the poller.
IDLE = 1.0
#: Polls worked at once per instance.
WORKERS = 4
#: Seconds a poll's lease lasts, in ``sendbird.request_timeout``s (a poll makes a request
#: for the call or room and one per recording to copy; it is cut off before its lease ends).
LEASE_REQUESTS = 10
#: Final catalog statuses (a pull still pending counts as settled for reconcile: it is the
#: pull's work now).
FINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.DISCARDED})


class Sendbird:
    """The poll worker and the reconcile sweep of one Sendbird application."""

    def __init__(self, settings: SendbirdSettings, api: PlatformApi, catalog: Catalog,
                 scheduler: aiojobs.Scheduler, new_owner: Callable[[], str],
                 wake_pulls: Callable[[], None]) -> None:
        self.settings = settings
        self.api = api
        self.catalog = catalog
        self._new_owner = new_owner
        self._wake_pulls = wake_pulls
        self.ttl = settings.request_timeout * LEASE_REQUESTS
        self.worker = Worker("sendbird.poll", self._claim, self._poll_once, scheduler,
                             limit=WORKERS, idle=IDLE)
        self._log = logs.get_logger()

    def wake(self) -> None:
        """A poll was queued: look at the queue now."""
        self.worker.wake()

    async def run(self) -> None:
        """Work due polls until cancelled."""
        await self.worker.run()

    async def _claim(self, limit: int) -> list[Poll]:
        return await self.catalog.claim_polls(self._new_owner(), self.ttl, limit)

    # -- one poll ----------------------------------------------------------------------------

    async def _poll_once(self, poll: Poll) -> None:
        attempts = poll.attempts + 1
        error: str | None = None
        wait: float | None = None
        settled = False
        try:
            async with asyncio.timeout(self.ttl * 0.8):
                settled = await self.poll(poll.kind, poll.target_id)
        except RateLimited as exc:
            error, wait = exc.reason(), exc.retry_after
        except NotYet as exc:
            error = exc.reason()
        except TimeoutError:
            error = f"sendbird_api: the poll took over {self.ttl * 0.8:g} s"
        except RecsinkError as exc:  # the Platform API, the catalog
            error = exc.reason()
        now = utcnow()
        if settled:
            await self.catalog.finish_poll(poll, "done", attempts, now, None)
            self._log.info("sendbird.poll_done", kind=poll.kind, target=poll.target_id,
                           attempts=attempts)
            return
        if (now - poll.first_seen).total_seconds() >= self.settings.poll_max_age:
            await self._expire(poll, attempts, error)
            return
        delay = min(self.settings.poll_backoff_max,
                    self.settings.poll_backoff * 2 ** min(attempts - 1, 64))
        if wait is not None:  # a Retry-After, believed up to poll_max_age
            delay = max(delay, min(wait, self.settings.poll_max_age))
        await self.catalog.finish_poll(poll, "pending", attempts,
                                       now + timedelta(seconds=delay), error)
        (self._log.warning if error else self._log.info)(
            "sendbird.poll_again", kind=poll.kind, target=poll.target_id, attempts=attempts,
            retry_in_s=delay, error=error)

    async def poll(self, kind: PollKind, target_id: str) -> bool:
        """Ask Sendbird about the call or room once and apply what it says; True when every
        recording is settled (copied, with ``[sendbird.copy]``). Raises
        :class:`~recsink.sources.sendbird_api.ApiError` and catalog errors."""
        target = await (self.api.direct_call(target_id) if kind == "direct_call"
                        else self.api.room(target_id))
        settled = True
        for recording in recordings_of(target):
            record = await self.apply(recording, kind, target_id)
            settled = settled and self._settled(recording, record)
        return settled

    async def apply(self, recording: CloudRecording, kind: PollKind,
                    target_id: str) -> Recording:
        """Move ``recording``'s record to its status (copying a completed one out with
        ``[sendbird.copy]``); the record as it now is."""
        status = STATUSES.get(recording.status, Status.RECORDING)
        copy_to = self.settings.copy_to
        if status is Status.COMPLETED and copy_to is not None:
            status = Status.UPLOADING  # at Sendbird; completed here once the copy is stored
        record = await self.catalog.transition(record_of(recording, kind, target_id, status))
        if (recording.status == "completed" and copy_to is not None
                and record.pull_url is None and record.status not in FINAL):
            copied = await self.api.copy(recording.recording_id, copy_to)
            pulled = record_of(recording, kind, target_id, Status.UPLOADING)
            pulled.queue_pull(f"s3://{copied.bucket}/{copied.key}")
            pulled.name = copied.key.rpartition("/")[2] or None
            record = await self.catalog.transition(pulled)
            self._log.info("sendbird.copied", id=record.id, recording_id=record.recording_id,
                           bucket=copied.bucket, key=copied.key)
            self._wake_pulls()
        else:
            self._log.info("sendbird.recording", id=record.id,
                           recording_id=record.recording_id, status=str(record.status),
                           sendbird_status=recording.status)
        return record

    def _settled(self, recording: CloudRecording, record: Recording) -> bool:
        """Whether nothing more is to be asked about ``recording``."""
        if not recording.settled:
            return False
        return (recording.status == "failed" or self.settings.copy_to is None
                or record.pull_url is not None or record.status in FINAL)

    async def _expire(self, poll: Poll, attempts: int, error: str | None) -> None:
        """Stop polling: the poll ``expired``, its unsettled records ``failed``."""
        reason = (f"sendbird_poll_expired: not settled at Sendbird within "
                  f"sendbird.poll_max_age ({self.settings.poll_max_age:g} s)")
        failed = 0
        for record in await self.catalog.search(call_id=poll.target_id, limit=1000):
            if (record.source == "sendbird" and record.status not in FINAL
                    and record.pull_state is None and record.lease_owner is None):
                await self.catalog.update(record.id, status=Status.FAILED, error=reason)
                failed += 1
        await self.catalog.finish_poll(poll, "expired", attempts, utcnow(), error or reason)
        self._log.error("sendbird.poll_expired", kind=poll.kind, target=poll.target_id,
                        attempts=attempts, failed=failed, error=error)

    # -- reconcile ---------------------------------------------------------------------------

    async def reconcile_forever(self) -> None:
        """:meth:`reconcile` whenever it is due (on one instance of a fleet), until
        cancelled."""
        while True:  # a fleet's instances look twice an interval; the lease row decides
            await asyncio.sleep(self.settings.reconcile_interval / 2)
            try:
                await self.reconcile()
            except RecsinkError as exc:  # the Platform API or the catalog: next time
                self._log.warning("sendbird.reconcile_failed", error=exc.reason())

    async def reconcile(self, now: datetime | None = None) -> int | None:
        """List the direct calls of the last ``reconcile_window`` seconds and queue a poll
        of each ended one whose recordings are not settled here; how many were queued, or
        None when the sweep is not due or another instance runs it. Raises
        :class:`~recsink.sources.sendbird_api.ApiError` and catalog errors."""
        owner = self._new_owner()
        if not await self.catalog.take_sweep("reconcile", owner, self.ttl,
                                             self.settings.reconcile_interval):
            return None
        try:
            end = int(now.timestamp() if now else time.time())
            start = end - int(self.settings.reconcile_window)
            listed = queued = 0
            async for call in self.api.direct_calls(start, end):
                call_id = call.get("call_id")
                if not isinstance(call_id, str) or not call_id or not _ended(call):
                    continue
                listed += 1
                recordings = recordings_of(call)
                if "cloud_recordings" in call and await self._all_settled(recordings):
                    continue
                if await self.catalog.enqueue_poll("direct_call", call_id,
                                                   reopen=bool(recordings)):
                    queued += 1
            if queued:
                self.wake()
            self._log.info("sendbird.reconciled", listed=listed, queued=queued,
                           start_ts=start, end_ts=end)
            return queued
        finally:
            await self.catalog.end_sweep("reconcile", owner)

    async def _all_settled(self, recordings: list[CloudRecording]) -> bool:
        for recording in recordings:
            record = await self.catalog.by_key(recording_key(recording.recording_id))
            if record is None or not (record.status in FINAL or record.pull_state == "pending"):
                return False
        return True


def _ended(call: dict[str, Any]) -> bool:
    """Whether a listed call has ended ([I]: ``ended_at`` set, or an ``end_result``)."""
    return bool(call.get("ended_at") or call.get("end_result"))
