"""Retention, erasure and legal hold: recordings kept as long as the law says, and no longer.

**Deleting** one recording (:meth:`Retention.delete`) goes, under the row's lease (so one
instance deletes it, once; :meth:`~recsink.catalog.Catalog.lock_for_deletion`):

1. storage deletes the object (disk: the file, its directory fsynced; S3: the object, the
   version recsink wrote in a versioned bucket). An object already gone counts as deleted
   (a crash between 1 and 2, or a restored catalog without its objects). One the store
   refuses to delete (S3 Object Lock) leaves the recording ``completed``, with
   ``delete_error``, logged (``recording.delete_refused``) and retried after
   ``retention.retry_interval`` seconds;
2. the row becomes a **tombstone** (:meth:`~recsink.catalog.Recording.tombstone`): status
   ``deleted``, ``deleted_at``, ``deletion_reason`` (``retention``, ``api``,
   ``erasure:<era_id>``), every personal field cleared; the status change writes the
   ``recording.deleted`` webhook event in the same transaction, and the stored bodies of the
   recording's earlier webhook deliveries are rewritten with the tombstone.

A recording under a **legal hold** (``hold_reason``) is never deleted, by retention, the API
or an erasure.

**Retention** (:meth:`Retention.sweep`, every ``retention.sweep_interval`` seconds on every
instance): the first of ``retention.rules`` whose filters (source, account id) match a
settled recording decides how long it is kept, counted from ``received_at``; a recording no
rule matches is kept for ever. Expired rows are claimed under a lease (PostgreSQL: ``FOR
UPDATE SKIP LOCKED``), so instances sweeping together delete each recording once.

**Erasures** (:meth:`Retention.erase`): every recording of one call id, one account id, or
one number (the from and to numbers, and numbers in the caller's metadata: the digits must
be equal) is deleted, held ones are reported. Each erasure (and each API deletion) is first
appended to ``retention.erasure_log`` (JSON lines, fsynced), outside the catalog and the
storage, so ``recsink erasures reapply`` (:func:`reapply`) can apply it again after a backup
of either was restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from recsink import logs
from recsink.catalog import Catalog, Recording, Status, iso, open_catalog, utcnow
from recsink.commit import Commits, Held, RecordingBusy
from recsink.config import RetentionSettings, Settings
from recsink.errors import Locked, Malformed, NotFound, RecsinkError
from recsink.storage import MultipartUpload, ObjectLocked, Storage, StorageUnavailable
from recsink.storage.disk import DiskStorage

#: Rows claimed per retention round trip.
BATCH = 32
#: Erasure candidates read per round trip.
PAGE = 100
Selector = Literal["call_id", "account_id", "number"]
SELECTORS: tuple[Selector, ...] = ("call_id", "account_id", "number")
#: Fewest digits a number to erase must have (fewer would match too much).
MIN_DIGITS = 4
#: Metadata values that can hold a number: text or an integer.
_NUMBERISH = re.compile(r"[+\d\s\-().]+")


def new_erasure_id() -> str:
    return "era_" + secrets.token_hex(10)


def digits(number: str) -> str:
    """The digits of a phone number or a SIP/tel URI's user part (``sip:+4930…@host``
    → ``4930…``); "" when the text is not a number."""
    user = re.sub(r"^(sips?|tel):", "", number.strip(), flags=re.IGNORECASE)
    user = user.split("@", 1)[0].split(";", 1)[0]
    if not _NUMBERISH.fullmatch(user):
        return ""
    return re.sub(r"\D", "", user)


def numbers_of(record: Recording) -> Iterator[str]:
    """The digits of every number ``record`` carries: from, to, and the metadata's values
    that are numbers (Kazoo's ``caller_id_number``, ``callee_id_number``, …)."""
    for value in (record.from_uri, record.to_uri, *record.metadata.values()):
        if isinstance(value, str | int) and not isinstance(value, bool):
            found = digits(str(value))
            if found:
                yield found


def parse_selector(body: Any) -> tuple[Selector, str]:
    """The one selector of an erasure request body: ``{"call_id"|"account_id"|"number":
    "<non-empty text>"}``. Raises :class:`~recsink.errors.Malformed`."""
    if not isinstance(body, dict) or len(body) != 1:
        raise Malformed("bad_erasure", "send exactly one of call_id, account_id, number")
    (name, value), = body.items()
    selector = next((s for s in SELECTORS if s == name), None)
    if selector is None:
        raise Malformed("bad_erasure", "send exactly one of call_id, account_id, number")
    if not isinstance(value, str) or not value.strip():
        raise Malformed("bad_erasure", f"{name} must be a non-empty string")
    if selector == "number" and len(digits(value)) < MIN_DIGITS:
        raise Malformed("bad_erasure", f"number must be a phone number (at least "
                        f"{MIN_DIGITS} digits), e.g. +4930123456")
    return selector, value.strip()


@dataclass
class ErasureResult:
    """What applying an erasure did: records matched, deleted now, already deleted
    objects found gone (``gone``), held ones and ones that could not be deleted now
    (storage refused or unreachable, another instance busy with them)."""

    id: str
    selector: Selector
    value: str
    matched: int = 0
    deleted: int = 0
    gone: int = 0
    held: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def resource(self) -> dict[str, Any]:
        """``{"id", "matched", "deleted", "held", "failed"}``: the API's answer."""
        return {"id": self.id, "matched": self.matched, "deleted": self.deleted,
                "held": self.held, "failed": self.failed}


class ErasureLog:
    """The JSON-lines file every erasure and API deletion is appended to (fsynced) before
    it is applied. A line: ``{"type": "erasure", "id", "at", "selector": {name: value},
    "by"}`` or ``{"type": "deletion", "id": <record id>, "at", "by"}``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def append(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` as one line and fsync it (and the directory when the file is
        new). Raises :class:`~recsink.storage.StorageUnavailable` when the file cannot be
        written: nothing is deleted then."""
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            await asyncio.to_thread(self._append, line.encode())
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot append to the erasure log {self.path}: {exc.strerror}") from exc

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """Every entry of the log at ``path``, in order (a torn last line is skipped).
        Raises OSError."""
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries


def _scrubbed(tombstone: Recording) -> Any:
    """A webhook body rewriter: the body's ``data`` replaced by ``tombstone``'s resource."""

    def rewrite(body: str) -> str:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        payload["data"] = tombstone.resource()
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))

    return rewrite


class Retention:
    """Deletes, holds and erases recordings over one catalog and storage (through
    :class:`~recsink.commit.Commits`); :meth:`run` is the retention sweeper."""

    def __init__(self, settings: RetentionSettings, commits: Commits) -> None:
        self.settings = settings
        self.commits = commits
        self.catalog: Catalog = commits.catalog
        self.storage = commits.storage
        self.log_file = ErasureLog(settings.erasure_log)
        self._log = logs.get_logger()

    # -- one recording -----------------------------------------------------------------------

    async def delete(self, record_id: str, reason: str, by: str) -> tuple[Recording, str]:
        """Delete the recording ``record_id`` (see the module docstring) for ``reason``, on
        behalf of ``by`` (a token's name, or ``retention``). Returns the tombstone and what
        was found: ``deleted`` (the object removed now), ``already_gone`` (the row deleted
        now, its object was gone), ``no_object`` (a row without one: failed, discarded),
        ``already_deleted`` (a tombstone already). Raises
        :class:`~recsink.errors.NotFound`, :class:`~recsink.errors.Locked`
        (``legal_hold``; ``object_locked``: storage refuses),
        :class:`~recsink.commit.RecordingBusy` (another upload or deletion holds it, or its
        spooled copy waits to be shipped), storage and catalog errors."""
        owner = self.commits.new_owner()
        row = await self.catalog.lock_for_deletion(record_id, owner, self.commits.ttl)
        if row is None:
            existing = await self.catalog.get(record_id)
            if existing is None:
                raise NotFound("not_found", f"no recording {record_id!r}")
            if existing.status is Status.DELETED:
                return existing, "already_deleted"
            if existing.hold_reason is not None:
                raise Locked("legal_hold", f"recording {record_id} is under a legal hold "
                             f"({existing.hold_reason!r}); lift it before deleting")
            raise RecordingBusy(0)
        return await self._delete(self.commits.hold(row, owner), reason, by)

    async def _delete(self, held: Held, reason: str, by: str) -> tuple[Recording, str]:
        """Steps 1 and 2 for a record this process holds; see :meth:`delete`."""
        held.committing = True  # keep the lease renewed while storage works
        record = held.record
        try:
            if record.upload_id is not None and record.upload_key is not None:
                await self.storage.discard(MultipartUpload(record.upload_key, record.upload_id))
            removed = (await self.storage.delete(record.storage_key)
                       if record.storage_key is not None else None)
        except ObjectLocked as exc:
            retry = utcnow() + timedelta(seconds=self.settings.retry_interval)
            await self.commits.release(held, delete_error=exc.reason(), next_delete_at=retry)
            self._log.warning("recording.delete_refused", id=record.id, reason=reason, by=by,
                              error=exc.reason(), retry_at=iso(retry))
            raise
        except BaseException:
            await self.commits.release(held)
            raise
        tombstone = await self.commits.release(held, **record.tombstone(reason, utcnow()))
        try:
            await self.catalog.scrub_deliveries(record.id, _scrubbed(tombstone))
        except RecsinkError as exc:  # the tombstone stands; say what is left
            self._log.error("webhooks.scrub_failed", id=record.id, error=exc.reason())
        found = "deleted" if removed else ("no_object" if removed is None else "already_gone")
        self._log.info("recording.deleted", id=record.id, reason=reason, by=by,
                       source=record.source, recording_id=record.recording_id, object=found)
        return tombstone, found

    async def hold(self, record_id: str, reason: str, by: str) -> Recording:
        """Put a legal hold on ``record_id``. Raises :class:`~recsink.errors.NotFound`,
        :class:`~recsink.errors.Locked` (``deleted``: a tombstone cannot be held)."""
        record = await self.catalog.hold(record_id, reason)
        if record is None:
            if await self.catalog.get(record_id) is None:
                raise NotFound("not_found", f"no recording {record_id!r}")
            raise Locked("deleted", f"recording {record_id} is deleted: nothing to hold")
        self._log.info("recording.held", id=record_id, reason=reason, by=by)
        return record

    async def release_hold(self, record_id: str, by: str) -> Recording:
        """Lift the legal hold of ``record_id``. Raises :class:`~recsink.errors.NotFound`."""
        record = await self.catalog.release_hold(record_id)
        if record is None:
            raise NotFound("not_found", f"no recording {record_id!r}")
        self._log.info("recording.unheld", id=record_id, by=by)
        return record

    async def delete_logged(self, record_id: str, by: str) -> tuple[Recording, str]:
        """:meth:`delete` for the API: appended to the erasure log first (a restored
        backup brings it back; ``recsink erasures reapply`` deletes it again)."""
        if await self.catalog.get(record_id) is None:
            raise NotFound("not_found", f"no recording {record_id!r}")
        await self.log_file.append({"type": "deletion", "id": record_id,
                                    "at": iso(utcnow()), "by": by})
        return await self.delete(record_id, "api", by)

    # -- erasures ------------------------------------------------------------------------------

    async def erase(self, selector: Selector, value: str, by: str) -> ErasureResult:
        """Log, apply and record a new erasure (see :meth:`apply`)."""
        erasure_id = new_erasure_id()
        await self.log_file.append({"type": "erasure", "id": erasure_id, "at": iso(utcnow()),
                                    "selector": {selector: value}, "by": by})
        result = await self.apply(erasure_id, selector, value, by)
        await self.catalog.add_erasure({
            "id": result.id, "selector": selector, "value": value, "matched": result.matched,
            "deleted": result.deleted, "held": result.held, "failed": result.failed,
            "requested_by": by, "created_at": utcnow()})
        self._log.info("erasure.applied", erasure=erasure_id, selector=selector, by=by,
                       matched=result.matched, deleted=result.deleted, held=result.held,
                       failed=result.failed)
        return result

    async def apply(self, erasure_id: str, selector: Selector, value: str,
                    by: str) -> ErasureResult:
        """Delete every recording ``selector`` = ``value`` matches that is not a tombstone
        (reason ``erasure:<erasure_id>``); held ones, and ones that cannot be deleted now,
        are reported. Raises catalog errors (what is deleted stays deleted)."""
        result = ErasureResult(erasure_id, selector, value)
        wanted = digits(value) if selector == "number" else ""
        pattern = f"%{wanted[-MIN_DIGITS:]}%" if selector == "number" else value
        async for record in self._candidates(selector, pattern):
            if wanted and wanted not in numbers_of(record):
                continue
            result.matched += 1
            if record.hold_reason is not None:
                result.held.append(record.id)
                continue
            try:
                _, found = await self.delete(record.id, f"erasure:{erasure_id}", by)
            except Locked as exc:
                (result.held if exc.code == "legal_hold" else result.failed).append(record.id)
                continue
            except RecsinkError as exc:
                self._log.warning("erasure.deferred", erasure=erasure_id, id=record.id,
                                  error=exc.reason())
                result.failed.append(record.id)
                continue
            result.deleted += found != "already_deleted"
            result.gone += found == "already_gone"
        return result

    async def _candidates(self, selector: Selector, value: str) -> AsyncIterator[Recording]:
        after = ""
        while batch := await self.catalog.erasure_candidates(selector, value, after, PAGE):
            after = batch[-1].id
            for record in batch:
                yield record

    # -- retention -----------------------------------------------------------------------------

    def cutoffs(self, now: datetime) -> list[tuple[str | None, str | None, datetime]]:
        """Each rule as (source, account id, received before this is expired)."""
        return [(rule.source or None, rule.account_id or None, now - rule.keep)
                for rule in self.settings.rules]

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete every recording past its retention at ``now`` (UTC) that this instance
        claims; how many were deleted. Raises catalog errors."""
        deleted = 0
        while True:
            owner = self.commits.new_owner()
            rows = await self.catalog.claim_expired(self.cutoffs(now or utcnow()), owner,
                                                    self.commits.ttl, BATCH, now=now)
            for row in rows:
                try:
                    await self._delete(self.commits.hold(row, owner), "retention",
                                       "retention")
                    deleted += 1
                except ObjectLocked:
                    pass  # logged; retried after retention.retry_interval
                except RecsinkError as exc:
                    self._log.warning("retention.deferred", id=row.id, error=exc.reason())
            if len(rows) < BATCH:
                return deleted

    async def run(self) -> None:
        """:meth:`sweep` every ``retention.sweep_interval`` seconds until cancelled (not at
        all without rules)."""
        if not self.settings.rules:
            return
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                await self.sweep()
            except RecsinkError as exc:  # the catalog is down: next time
                self._log.warning("retention.deferred", error=exc.reason())


async def reapply(retention: Retention, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply again every erasure and deletion of an erasure log (``entries``, in order):
    one report per entry: for an erasure ``{"type", "id", "selector", "matched",
    "deleted"`` (again), ``"already_gone"`` (of those, objects found gone), ``"held",
    "failed"}``; for a deletion ``{"type", "id", "found"}``, ``found`` as
    :meth:`Retention.delete` says, or ``held``, ``missing`` (no such record), ``failed``."""
    reports: list[dict[str, Any]] = []
    for entry in entries:
        by = "reapply"
        if entry.get("type") == "erasure":
            ((name, value),) = dict(entry["selector"]).items()
            selector, value = parse_selector({name: value})
            result = await retention.apply(str(entry["id"]), selector, value, by)
            reports.append({"type": "erasure", "id": entry["id"], "selector": selector,
                            "matched": result.matched, "deleted": result.deleted,
                            "already_gone": result.gone, "held": result.held,
                            "failed": result.failed})
        elif entry.get("type") == "deletion":
            record_id = str(entry["id"])
            try:
                _, found = await retention.delete(record_id, "api", by)
            except NotFound:
                found = "missing"
            except Locked as exc:
                found = "held" if exc.code == "legal_hold" else "failed"
            except RecsinkError:
                found = "failed"
            reports.append({"type": "deletion", "id": record_id, "found": found})
    return reports


async def reapply_log(settings: Settings, path: Path) -> dict[str, Any]:
    """``recsink erasures reapply``: open the catalog and storage of ``settings`` and
    :func:`reapply` every entry of the erasure log at ``path``. Returns ``{"log",
    "entries", "reports": [...], "deleted", "held", "failed"}`` (totals over the
    reports). Raises OSError (the log), catalog and storage errors."""
    entries = ErasureLog.read(path)
    async with contextlib.AsyncExitStack() as stack:
        storage: Storage
        if settings.storage.backend == "s3":
            from recsink.metrics import Metrics
            from recsink.storage.s3 import S3Storage
            from recsink.storage.s3client import open_client

            client = await stack.enter_async_context(open_client(settings.storage.s3))
            storage = S3Storage(client, settings.storage.s3, Metrics())
        else:
            storage = DiskStorage(settings.storage.disk.root,
                                  fsync=settings.storage.disk.fsync)
        catalog = await open_catalog(settings.catalog)
        stack.push_async_callback(catalog.close)
        commits = Commits(catalog, storage, settings.catalog)
        reports = await reapply(Retention(settings.retention, commits), entries)
    deleted = sum(r["deleted"] if r["type"] == "erasure" else r["found"] in (
        "deleted", "already_gone", "no_object") for r in reports)
    held = sum(len(r["held"]) if r["type"] == "erasure" else r["found"] == "held"
               for r in reports)
    failed = sum(len(r["failed"]) if r["type"] == "erasure" else r["found"] == "failed"
                 for r in reports)
    return {"log": str(path), "entries": len(entries), "reports": reports,
            "deleted": deleted, "held": held, "failed": failed}
