"""A recording's record: its fields, statuses, and the shapes it is served and stored in.

Statuses (DESIGN.md "Status model"): ``recording`` → ``uploading`` → ``completed`` |
``failed``; ``discarded`` when a policy drops a recording on purpose; ``deleted``: a
**tombstone** (:meth:`Recording.tombstone`) after retention, an API delete or an erasure
(:mod:`recsink.retention`).

Besides what the API serves, a record carries the catalog's bookkeeping: the **lease** of
whoever works on it now (an upload, a pull, the shipper, a settle: ``lease_owner`` until
``lease_until``, UTC), the **intent** of a commit in flight (``storage_key`` with ``sha256``
and ``byte_size`` while ``uploading``), and the **multipart upload** an upload has open in
S3 (``upload_key``, ``upload_id``), so that whichever instance takes an abandoned lease over
can settle what the previous holder left (:mod:`recsink.commit`).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from recsink.audio import media_type_for


class Status(enum.StrEnum):
    RECORDING = "recording"
    UPLOADING = "uploading"
    COMPLETED = "completed"
    FAILED = "failed"
    DISCARDED = "discarded"
    DELETED = "deleted"


#: A recording in one of these states is settled: a repeat of it is a duplicate (a
#: deleted one's repeat stores nothing and answers the tombstone).
SETTLED = frozenset({Status.COMPLETED, Status.DISCARDED, Status.DELETED})

#: What a tombstone keeps of its record (besides the deletion's own columns): who it was
#: for recsink and the sender (ids, source, idempotency key: a retry of it stores nothing),
#: the content's sha256, when it arrived, and audio facts that say nothing about anyone.
#: Every other column is cleared: numbers, names, call and account ids, times of the call,
#: metadata, storage key and URL (the key template holds ids), pull URL, errors (they may
#: quote any of these), shipping and upload bookkeeping, the hold.
TOMBSTONE_KEEPS = frozenset({
    "id", "source", "status", "received_at", "idempotency_key", "recording_id", "sha256",
    "byte_size", "duration_ms", "media_type", "format", "channels", "sample_rate",
    "attempts", "updated_at", "deleted_at", "deletion_reason", "lease_owner", "lease_until",
    "pull_attempts", "ship_attempts",
})

Queue = Literal["pull", "ship", "settle"]
"""Work kept in the catalog and claimed row by row (:meth:`~recsink.catalog.Catalog.claim`):
audio still to pull, spooled audio still to ship, an interrupted commit still to settle."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime | None) -> str | None:
    """``2024-03-12T14:00:00Z`` (UTC, microseconds only when present)."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    """A datetime from ISO 8601 text (None for none or garbage); naive means UTC."""
    try:
        when = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def whole_number(text: str | None) -> int | None:
    """A count sent as text (a platform's form field, an object's metadata) as an int:
    None unless it is all decimal digits."""
    return int(text) if text and text.isdecimal() else None


def new_id() -> str:
    """recsink's own id for a record: ``rec_`` + 20 random hex digits."""
    return "rec_" + secrets.token_hex(10)


@dataclass
class Recording:
    """A recording record (DESIGN.md "Status model"). Times are UTC; ``duration_ms`` in
    milliseconds; ``byte_size`` in bytes; ``sample_rate`` in Hz."""

    id: str
    source: str
    status: Status
    received_at: datetime
    idempotency_key: str | None = None
    recording_id: str | None = None
    call_id: str | None = None
    interaction_id: str | None = None
    account_id: str | None = None
    from_uri: str | None = None
    to_uri: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    duration_ms: int | None = None
    byte_size: int | None = None
    media_type: str | None = None
    format: str | None = None
    channels: int | None = None
    sample_rate: int | None = None
    sha256: str | None = None
    storage_key: str | None = None
    storage_url: str | None = None
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    updated_at: datetime | None = None
    #: Spooled while S3 was unreachable: "pending" until shipped, then "shipped";
    #: ``ship_spool`` names the spool (one instance's disk) that holds the copy.
    ship_state: str | None = None
    ship_attempts: int = 0
    next_ship_at: datetime | None = None
    ship_error: str | None = None
    ship_spool: str | None = None
    #: Where the platform stored the recording, while recsink pulls it: "pending", then
    #: "done" or "failed".
    pull_url: str | None = None
    pull_state: str | None = None
    pull_attempts: int = 0
    next_pull_at: datetime | None = None
    pull_error: str | None = None
    #: Who works on the record now, and until when (UTC) unless renewed.
    lease_owner: str | None = None
    lease_until: datetime | None = None
    #: The S3 multipart upload an upload of this record has open (object key, upload id).
    upload_key: str | None = None
    upload_id: str | None = None
    #: A tombstone's deletion: when (UTC) and why (``retention``, ``api``,
    #: ``erasure:<era_id>``).
    deleted_at: datetime | None = None
    deletion_reason: str | None = None
    #: A legal hold: why, and since when (UTC). A held recording is never deleted.
    hold_reason: str | None = None
    hold_since: datetime | None = None
    #: Why storage refused the last retention attempt (Object Lock), and when (UTC) the
    #: sweeper tries again.
    delete_error: str | None = None
    next_delete_at: datetime | None = None

    @property
    def settled(self) -> bool:
        return self.status in SETTLED

    @property
    def intent(self) -> bool:
        """An upload got as far as naming its object: it may be committed in storage."""
        return (self.status is Status.UPLOADING and self.storage_key is not None
                and self.sha256 is not None and self.byte_size is not None)

    def resource(self) -> dict[str, Any]:
        """The recording resource as served by the API and upload responses."""
        return {
            "id": self.id,
            "recording_id": self.recording_id,
            "source": self.source,
            "call_id": self.call_id,
            "interaction_id": self.interaction_id,
            "account_id": self.account_id,
            "from": self.from_uri,
            "to": self.to_uri,
            "status": str(self.status),
            "started_at": iso(self.started_at),
            "stopped_at": iso(self.stopped_at),
            "duration_ms": self.duration_ms,
            "byte_size": self.byte_size,
            "media_type": self.media_type,
            "format": self.format,
            "channels": self.channels,
            "sample_rate": self.sample_rate,
            "sha256": self.sha256,
            "storage_url": self.storage_url,
            "name": self.name,
            "received_at": iso(self.received_at),
            "updated_at": iso(self.updated_at),
            "attempts": self.attempts,
            "error": self.error,
            "metadata": self.metadata,
            "shipping": None if self.ship_state is None else {
                "state": self.ship_state, "attempts": self.ship_attempts,
                "next_attempt_at": iso(self.next_ship_at), "error": self.ship_error,
                "spool": self.ship_spool},
            "pull": None if self.pull_state is None else {
                "state": self.pull_state, "attempts": self.pull_attempts,
                "next_attempt_at": iso(self.next_pull_at), "error": self.pull_error},
            "hold": None if self.hold_reason is None else {
                "reason": self.hold_reason, "since": iso(self.hold_since)},
            "deleted_at": iso(self.deleted_at),
            "deletion_reason": self.deletion_reason,
            "deletion_error": self.delete_error,
        }

    def tombstone(self, reason: str, when: datetime) -> dict[str, Any]:
        """The columns that turn this record into a tombstone deleted ``when`` (UTC) for
        ``reason``: status ``deleted``, every column not in :data:`TOMBSTONE_KEEPS` cleared
        (None; metadata ``{}``; counters kept)."""
        values: dict[str, Any] = {
            name: None for name in self.__dataclass_fields__ if name not in TOMBSTONE_KEEPS}
        values.update(status=Status.DELETED, deleted_at=when, deletion_reason=reason,
                      metadata={})
        return values

    def queue_pull(self, url: str) -> None:
        """Mark the recording as one recsink copies from ``url`` (:mod:`recsink.fetch`):
        ``uploading`` until the copy is stored, first attempt due now."""
        self.status = Status.UPLOADING
        self.pull_url, self.pull_state, self.next_pull_at = url, "pending", utcnow()

    def object_metadata(self) -> dict[str, Any]:
        """What a stored object carries about its recording (``x-amz-meta-*``): who it is,
        set when the object is created. Facts known only once the body is complete (sha256,
        duration, audio facts) live in the catalog; ``recsink reindex`` recomputes them
        from the object when they are missing here."""
        return {
            "recsink-id": self.id, "idempotency-key": self.idempotency_key,
            "source": self.source, "call-id": self.call_id, "recording-id": self.recording_id,
            "interaction-id": self.interaction_id, "account-id": self.account_id,
            "from": self.from_uri, "to": self.to_uri, "name": self.name,
            "started-at": iso(self.started_at), "stopped-at": iso(self.stopped_at),
            "received-at": iso(self.received_at), "format": self.format,
            "sha256": self.sha256, "duration-ms": self.duration_ms,
            "channels": self.channels, "sample-rate": self.sample_rate,
        }

    @classmethod
    def from_object_metadata(cls, meta: Mapping[str, str], key: str, url: str) -> Recording:
        """A completed record for an object found in storage (``meta`` as decoded from its
        ``x-amz-meta-*``, plus ``bytes``, its size)."""

        def number(name: str) -> int | None:
            return whole_number(meta.get(name))

        fmt = meta.get("format") or key.rpartition(".")[2]
        return cls(
            id=meta.get("recsink-id") or new_id(), source=meta.get("source") or "unknown",
            status=Status.COMPLETED,
            received_at=parse_iso(meta.get("received-at")) or utcnow(),
            idempotency_key=meta.get("idempotency-key") or None,
            recording_id=meta.get("recording-id") or None, call_id=meta.get("call-id") or None,
            interaction_id=meta.get("interaction-id") or None,
            account_id=meta.get("account-id") or None, from_uri=meta.get("from") or None,
            to_uri=meta.get("to") or None, name=meta.get("name") or None,
            started_at=parse_iso(meta.get("started-at")),
            stopped_at=parse_iso(meta.get("stopped-at")),
            duration_ms=number("duration-ms"), byte_size=number("bytes"),
            media_type=media_type_for(fmt), format=fmt, channels=number("channels"),
            sample_rate=number("sample-rate"), sha256=meta.get("sha256") or None,
            storage_key=key, storage_url=url)
