"""Sendbird Calls: signed webhooks → polls of the Platform API → catalog records.

Wire formats: specs/sendbird.md §1 (webhooks), §2 (the cloud-recording resource) and
specs/callbacks.md §C (signature, vector SB-1).

**Webhooks** (``POST sendbird.path``): ``x-sendbird-signature`` must be
``hex(HMAC-SHA256(key = master API token, msg = raw body))`` (§C.1; [I] for Calls), else
401 ``bad_signature`` (the log line never shows the token). ``direct_call:end`` queues a
poll of the call, a room's deletion (``room:delete``, [I] name; ``room:deleted`` and
``room:destroy`` too) a poll of the room; every other event is ignored. The answer is 200
with an empty body at once: queuing is one catalog write, and queuing a call or room that
has a poll already changes nothing, so Sendbird's resends (up to three) are harmless.

**Records**: each entry of a call's or room's ``cloud_recordings[]`` is one record, keyed
``sendbird:rid:<recording_id>`` (:func:`recording_key`), with the call or room id as
``call_id``, ``metadata.type`` ``direct_call`` or ``room``, its times (Unix ms on the wire)
and duration (ms [I]). Sendbird's statuses map onto the catalog's one to one
(:data:`STATUSES`), except that with ``[sendbird.copy]`` a ``completed`` recording stays
``uploading`` here until its copy is stored (:mod:`recsink.sources.sendbird_polls`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from recsink import logs, state
from recsink.bodies import read_capped, refuse_encoded
from recsink.catalog import Recording, Status, new_id, utcnow
from recsink.catalog.polls import PollKind
from recsink.errors import Malformed, Unauthorized

SOURCE = "sendbird"
#: Largest webhook body accepted, bytes.
MAX_EVENT_BYTES = 256 * 1024
SIGNATURE_HEADER = "x-sendbird-signature"
#: Categories that end a direct call or delete a room: what is polled after them.
CALL_ENDED = frozenset({"direct_call:end"})
ROOM_DELETED = frozenset({"room:delete", "room:deleted", "room:destroy"})
#: Sendbird's cloud-recording statuses (specs/sendbird.md §2) → the catalog's.
STATUSES = {"recording": Status.RECORDING, "uploading": Status.UPLOADING,
            "completed": Status.COMPLETED, "failed": Status.FAILED}
#: Sendbird's statuses after which a recording changes no more.
SETTLED = frozenset({"completed", "failed"})
#: Unix milliseconds believed (before year 3000); others are left unknown.
_MAX_MS = 32503680000000


def signature(token: str, body: bytes) -> str:
    """``x-sendbird-signature`` of ``body``: hex HMAC-SHA256 keyed with the master API
    token (specs/callbacks.md §C.1, vector SB-1 in §C.4)."""
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def verify(token: str, given: str | None, body: bytes) -> None:
    """Raise 401 ``bad_signature`` unless ``given`` is ``body``'s signature (compared in
    constant time, hex case ignored). The detail never quotes the token."""
    if not given:
        raise Unauthorized("bad_signature", f"missing {SIGNATURE_HEADER}")
    expected = signature(token, body)
    if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
        raise Unauthorized("bad_signature", f"{SIGNATURE_HEADER} does not match the body "
                           "signed with sendbird.api_token")


def recording_key(recording_id: str) -> str:
    """A Sendbird recording's idempotency key (recsink.catalog: ``<source>:rid:<id>``)."""
    return f"{SOURCE}:rid:{recording_id}"


@dataclass(frozen=True)
class CloudRecording:
    """One entry of ``cloud_recordings[]`` (specs/sendbird.md §2). ``status`` as Sendbird
    says it; times UTC; ``duration_ms`` milliseconds; ``byte_size`` bytes."""

    recording_id: str
    status: str
    target_event_type: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    duration_ms: int | None = None
    byte_size: int | None = None
    media_type: str | None = None

    @property
    def settled(self) -> bool:
        return self.status in SETTLED


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: Any) -> int | None:
    """A non-negative integer from the wire (ints, or digits as text), else None."""
    if isinstance(value, str) and value.isdecimal() and len(value) <= 15:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_MS:
        return value
    return None


def from_ms(value: Any) -> datetime | None:
    """UTC time of Unix milliseconds; None for anything else (0 included)."""
    ms = _count(value)
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def recordings_of(target: dict[str, Any]) -> list[CloudRecording]:
    """The well-formed entries of a call's or room's ``cloud_recordings[]``; entries
    without a ``recording_id`` are skipped, unknown fields ignored."""
    found = target.get("cloud_recordings")
    out = []
    for entry in found if isinstance(found, list) else []:
        if not isinstance(entry, dict) or not (rid := _text(entry.get("recording_id"))):
            continue
        out.append(CloudRecording(
            recording_id=rid, status=str(entry.get("status") or "recording"),
            target_event_type=_text(entry.get("target_event_type")),
            started_at=from_ms(entry.get("started_at")),
            stopped_at=from_ms(entry.get("stopped_at")),
            duration_ms=_count(entry.get("duration")), byte_size=_count(entry.get("byte_size")),
            media_type=_text(entry.get("media_type"))))
    return out


def record_of(recording: CloudRecording, kind: PollKind, target_id: str,
              status: Status) -> Recording:
    """The catalog record of ``recording`` of the call or room ``target_id``, in
    ``status``."""
    metadata: dict[str, Any] = {"type": kind, f"{'call' if kind == 'direct_call' else 'room'}_id":
                                target_id, "sendbird_status": recording.status}
    for name in ("target_event_type", "media_type", "byte_size"):
        if (value := getattr(recording, name)) is not None:
            metadata[name] = value
    duration = recording.duration_ms
    if duration is None and recording.started_at and recording.stopped_at:
        duration = int((recording.stopped_at - recording.started_at).total_seconds() * 1000)
    return Recording(
        id=new_id(), source=SOURCE, status=status, received_at=utcnow(),
        idempotency_key=recording_key(recording.recording_id),
        recording_id=recording.recording_id, call_id=target_id,
        started_at=recording.started_at, stopped_at=recording.stopped_at,
        duration_ms=duration, metadata=metadata,
        error="sendbird reported the recording failed" if status is Status.FAILED else None)


def target_of(event: dict[str, Any]) -> tuple[PollKind, str] | None:
    """What a webhook asks recsink to poll: ``("direct_call", call_id)`` for an ended call,
    ``("room", room_id)`` for a deleted room, None for any other event. Raises
    :class:`Malformed` for such an event that names no id."""
    category = event.get("category")
    if category in CALL_ENDED:
        call = _inner(event, "direct_call", "call")
        target = _text(call.get("call_id")) or _text(event.get("call_id"))
        kind: PollKind = "direct_call"
    elif category in ROOM_DELETED:
        target = _text(_inner(event, "room").get("room_id")) or _text(event.get("room_id"))
        kind = "room"
    else:
        return None
    if target is None:
        raise Malformed("bad_event", f"{category} without a {kind.replace('direct_', '')} id")
    try:
        target.encode()
    except UnicodeEncodeError:  # a JSON \ud800 escape: not text that can be stored
        raise Malformed("bad_event", f"the {kind} id holds a lone surrogate") from None
    return kind, target


def _inner(event: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if isinstance(inner := event.get(name), dict):
            return inner
    return {}


async def callback(request: web.Request) -> web.Response:
    """``POST`` of a Sendbird Calls webhook: verify, queue the poll it calls for, answer
    200 with an empty body."""
    request[state.CALLBACK_SOURCE] = SOURCE
    refuse_encoded(request.headers)
    settings = request.app[state.SETTINGS]
    body = await read_capped(request, MAX_EVENT_BYTES, settings.server.body_idle_timeout,
                             "a webhook")
    verify(settings.sendbird.api_token.get_secret_value(),
           request.headers.get(SIGNATURE_HEADER), body)
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        raise Malformed("bad_event", "the body is not JSON") from None
    if not isinstance(event, dict):
        raise Malformed("bad_event", "the body is not a JSON object")
    log = logs.get_logger()
    target = target_of(event)
    category = event.get("category")
    if target is None:
        log.info("sendbird.event_ignored", category=category if isinstance(category, str)
                 else None)
        return web.Response(status=200)
    kind, target_id = target
    logs.bind_request(source=SOURCE, call_id=target_id)
    queued = await request.app[state.CATALOG].enqueue_poll(kind, target_id)
    if queued:
        request.app[state.SENDBIRD].wake()
    log.info("sendbird.webhook", category=category, kind=kind, queued=queued)
    return web.Response(status=200)


def add_routes(app: web.Application, path: str) -> None:
    app.router.add_post(path, callback)
