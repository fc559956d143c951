"""Sinch Voice notify events: signed callbacks about recordings → catalog transitions.

Wire format: Sinch Voice Callback API v1, ``notify`` event (specs/callbacks.md §A.2), signed
with the ``application`` scheme (§A.4), or Voice API 2.0's ``service`` scheme (§A.8):

    Authorization: application <key>:Base64(HMAC-SHA256(Base64Decode(secret), StringToSign))
    StringToSign = METHOD \\n Base64(MD5(raw body)) \\n Content-Type \\n
                   "x-timestamp:" <x-timestamp> \\n <path, no query>

``recording_finished`` moves the call's recording to ``uploading``; ``recording_available``
moves it to ``completed`` with its ``destination`` (``s3://``, ``gs://``, ``azure://`` or
``https://`` in the customer's own storage), or, with ``sinch.pull``, queues the copy into
recsink's storage and completes it when the copy is stored. Every answer is 200 with an empty
body (never SVAML); Sinch does not retry, and the work runs after the answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import hdrs, web

from recsink import logs, state
from recsink.auth import parse_authorization
from recsink.bodies import guarded
from recsink.catalog import Recording, Status, new_id, utcnow
from recsink.config import SinchApplication, SinchSettings
from recsink.errors import Malformed, TooLarge, Unauthorized

SOURCE = "sinch"
#: Largest notify event accepted, bytes.
MAX_EVENT_BYTES = 64 * 1024
SCHEMES = frozenset({"application", "service"})


def content_md5(body: bytes) -> str:
    """Base64 MD5 of the raw body, as Sinch signs it ("" for an empty body, §A.4 rule 2)."""
    if not body:
        return ""
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def signature(secret: str, method: str, body: bytes, content_type: str, timestamp: str,
              path: str) -> str:
    """The Base64 HMAC-SHA256 signature of a callback (specs/callbacks.md §A.4);
    ``secret`` is the Base64 application secret as the dashboard shows it."""
    to_sign = "\n".join([method.upper(), content_md5(body), content_type,
                         f"x-timestamp:{timestamp}", path])
    digest = hmac.new(base64.b64decode(secret), to_sign.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class SinchVerifier:
    """Checks the ``Authorization`` signature of Sinch callbacks against ``[sinch]``."""

    def __init__(self, settings: SinchSettings) -> None:
        self.settings = settings
        self._applications: dict[str, SinchApplication] = {
            a.key: a for a in settings.applications}

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               now: datetime | None = None) -> str:
        """Return the application key that signed the request. Raises 401 ``bad_signature``
        naming what was wrong (never a secret)."""
        scheme, credentials = parse_authorization(headers.get(hdrs.AUTHORIZATION))
        key, _, given = credentials.partition(":")
        if scheme not in SCHEMES or not key or not given:
            raise _refused("missing or malformed Authorization (application <key>:<sig>)")
        application = self._applications.get(key)
        if application is None:
            raise _refused(f"unknown application key {key!r}")
        timestamp = headers.get("x-timestamp", "")
        try:
            sent = datetime.fromisoformat(timestamp)
        except ValueError:
            raise _refused("missing or malformed x-timestamp") from None
        if sent.tzinfo is None:
            sent = sent.replace(tzinfo=UTC)
        skew = abs(((now or datetime.now(UTC)) - sent).total_seconds())
        if skew > self.settings.timestamp_window:
            raise _refused(f"x-timestamp is {skew:.0f} s away from now "
                           f"(sinch.timestamp_window = {self.settings.timestamp_window:g})")
        expected = signature(application.secret.get_secret_value(), method, body,
                             headers.get(hdrs.CONTENT_TYPE, ""), timestamp, path)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise _refused("signature does not match")
        return key


def _refused(detail: str) -> Unauthorized:
    return Unauthorized("bad_signature", detail)


def recording_key(call_id: str, destination: str | None = None) -> str:
    """Idempotency key of a call's recording: ``sinch:<callid>`` for its first recording,
    with a digest of the destination for any further one (DESIGN.md: callid + destination)."""
    if destination is None:
        return f"sinch:{call_id}"
    return f"sinch:{call_id}:{hashlib.sha256(destination.encode()).hexdigest()[:16]}"


async def callback(request: web.Request) -> web.Response:
    """``POST`` of a Sinch notify event: verify, apply, answer 200 with an empty body."""
    request[state.CALLBACK_SOURCE] = SOURCE
    settings = request.app[state.SETTINGS].sinch
    if request.content_length is not None and request.content_length > MAX_EVENT_BYTES:
        raise TooLarge("too_large", f"a notify event is at most {MAX_EVENT_BYTES} bytes")
    # Small and capped, read whole: the signature covers the raw bytes.
    body = await guarded(request.read(), request.app[state.SETTINGS].server.body_idle_timeout)
    log = logs.get_logger()
    if settings.verify_signatures:
        request.app[state.SINCH].verify(request.method, request.rel_url.raw_path,
                                        request.headers, body)
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Malformed("bad_event", "the body is not JSON") from None
    if not isinstance(event, dict):
        raise Malformed("bad_event", "the body is not a JSON object")
    if not _unicode(event):
        raise Malformed("bad_event", "the event holds a lone surrogate (\\ud800-\\udfff): "
                                       "not text that can be stored")
    call_id = event.get("callid") or event.get("callId")
    kind = event.get("type")
    logs.bind_request(source=SOURCE, call_id=call_id)
    if event.get("event") != "notify" or kind not in ("recording_finished",
                                                         "recording_available"):
        log.info("sinch.event_ignored", event_type=event.get("event"), notify_type=kind)
        return web.Response(status=200)
    if not isinstance(call_id, str) or not call_id:
        raise Malformed("bad_event", f"{kind} without a callid")
    destination = event.get("destination")
    if kind == "recording_available" and not (isinstance(destination, str) and destination):
        raise Malformed("bad_event", "recording_available without a destination")
    record = await _apply(request, event, kind, call_id, destination)
    log.info(f"sinch.{kind}", id=record.id, status=str(record.status),
             pull=record.pull_state)
    return web.Response(status=200)


async def _apply(request: web.Request, event: dict[str, Any], kind: str, call_id: str,
                 destination: str | None) -> Recording:
    catalog = request.app[state.CATALOG]
    metadata = {k: v for k, v in event.items() if isinstance(v, str | int | float | bool)}
    if kind == "recording_finished":
        # A repeated or late finish changes nothing once the call has a recording.
        finished = _record(recording_key(call_id), call_id, Status.UPLOADING, metadata)
        return (await catalog.insert(finished) or await catalog.by_key(recording_key(call_id))
                or await catalog.transition(finished))

    assert destination is not None
    pull = request.app[state.SETTINGS].sinch.pull
    record = _record(recording_key(call_id), call_id, Status.COMPLETED,
                     {**metadata, "destination": destination})
    record.name = destination.rstrip("/").rpartition("/")[2] or None
    if pull:
        record.queue_pull(destination)
    else:
        record.storage_url = destination
    # The call's first recording, unless that one already went to another destination:
    # then this is a further recording of the call, with a key of its own.
    stored = await catalog.transition_matching(record, "destination")
    if stored is None:
        record.idempotency_key = recording_key(call_id, destination)
        stored = await catalog.transition(record)
    record = stored
    if pull:
        request.app[state.FETCHER].wake()
    return record


def _unicode(event: dict[str, Any]) -> bool:
    """Whether the event's keys and text values (what is stored) are valid Unicode: JSON's
    ``\\ud800`` escapes decode to lone surrogates, which SQLite cannot take."""
    try:
        for name, value in event.items():
            name.encode()
            if isinstance(value, str):
                value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _record(key: str, call_id: str, status: Status, metadata: dict[str, Any]) -> Recording:
    return Recording(id=new_id(), source=SOURCE, status=status, received_at=utcnow(),
                     idempotency_key=key, call_id=call_id, metadata=metadata)


def add_routes(app: web.Application, path: str) -> None:
    app.router.add_post(path, callback)
