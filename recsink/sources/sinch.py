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

An ``x-timestamp`` older than ``sinch.timestamp_window`` seconds, or more than
``sinch.timestamp_future`` seconds ahead of now, is refused (401). A signature seen before
while it is still acceptable (a replay) is answered 200 without effect and logged
(``sinch.replayed``): each instance remembers the signatures it accepted (bounded, see
:class:`ReplayCache`). In a fleet a replay sent to another instance is applied again, which
changes nothing: every transition is idempotent in the shared catalog (keyed by call id and
destination, see :func:`recording_key`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import hdrs, web

from recsink import logs, state
from recsink.auth import parse_authorization
from recsink.bodies import read_capped, refuse_encoded
from recsink.catalog import Recording, Status, new_id, utcnow
from recsink.config import SinchApplication, SinchSettings
from recsink.errors import Malformed, Unauthorized

SOURCE = "sinch"
#: Largest notify event accepted, bytes.
MAX_EVENT_BYTES = 64 * 1024
SCHEMES = frozenset({"application", "service"})
#: Signatures an instance remembers at most (about 150 bytes each) to spot replays.
REPLAY_CACHE_ENTRIES = 65536


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


class ReplayCache:
    """The signatures accepted lately, to answer a replay without effect.

    Bounded in memory: at most ``size`` entries, each forgotten ``ttl`` seconds after it was
    remembered (the longest a signature stays acceptable) or, when the cache is full, oldest
    first. A replay the cache forgot is applied again, which changes nothing (the catalog's
    transitions are idempotent). Entries are kept in insertion order, which with one ``ttl``
    is also their expiry order.
    """

    def __init__(self, ttl: float, size: int = REPLAY_CACHE_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def claim(self, token: bytes) -> bool:
        """Remember ``token``; False if it was already remembered (a replay)."""
        now = self._clock()
        while self._expiry and next(iter(self._expiry.values())) <= now:
            self._expiry.popitem(last=False)
        if token in self._expiry:
            return False
        while len(self._expiry) >= self.size:
            self._expiry.popitem(last=False)
        self._expiry[token] = now + self.ttl
        return True

    def forget(self, token: bytes) -> None:
        """Forget ``token`` (its request failed: the same request may be tried again)."""
        self._expiry.pop(token, None)


class SinchVerifier:
    """Checks the ``Authorization`` signature of Sinch callbacks against ``[sinch]``, and
    remembers the signatures it accepted (:attr:`replays`)."""

    def __init__(self, settings: SinchSettings) -> None:
        self.settings = settings
        self._applications: dict[str, SinchApplication] = {
            a.key: a for a in settings.applications}
        self.replays = ReplayCache(settings.timestamp_window + settings.timestamp_future)

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               now: datetime | None = None) -> bytes:
        """Check the request's signature; return its replay token (a digest of the key and
        the signature) for :attr:`replays`. Raises 401 ``bad_signature`` naming what was
        wrong (never a secret): a missing or malformed header, an unknown key, an
        ``x-timestamp`` that is not ISO 8601, older than ``timestamp_window`` or more than
        ``timestamp_future`` seconds ahead, or a signature that does not match."""
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
        age = ((now or datetime.now(UTC)) - sent).total_seconds()
        if age > self.settings.timestamp_window:
            raise _refused(f"x-timestamp is {age:.0f} s old "
                           f"(sinch.timestamp_window = {self.settings.timestamp_window:g})")
        if -age > self.settings.timestamp_future:
            raise _refused(f"x-timestamp is {-age:.0f} s in the future "
                           f"(sinch.timestamp_future = {self.settings.timestamp_future:g})")
        expected = signature(application.secret.get_secret_value(), method, body,
                             headers.get(hdrs.CONTENT_TYPE, ""), timestamp, path)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise _refused("signature does not match")
        return hashlib.sha256(f"{key}:{expected}".encode()).digest()[:16]


def _refused(detail: str) -> Unauthorized:
    return Unauthorized("bad_signature", detail)


def recording_key(call_id: str, destination: str | None = None) -> str:
    """Idempotency key of a call's recording: ``sinch:<callid>`` for its first recording,
    with a digest of the destination for any further one (DESIGN.md: callid + destination)."""
    if destination is None:
        return f"sinch:{call_id}"
    return f"sinch:{call_id}:{hashlib.sha256(destination.encode()).hexdigest()[:16]}"


async def callback(request: web.Request) -> web.Response:
    """``POST`` of a Sinch notify event: verify, apply, answer 200 with an empty body; a
    replayed signature is answered 200 without effect (logged ``sinch.replayed``)."""
    request[state.CALLBACK_SOURCE] = SOURCE
    refuse_encoded(request.headers)  # never decompressed: 415 before reading
    settings = request.app[state.SETTINGS].sinch
    # Small and capped in every framing; read whole: the signature covers the raw bytes.
    body = await read_capped(request, MAX_EVENT_BYTES,
                             request.app[state.SETTINGS].server.body_idle_timeout,
                             "a notify event")
    if not settings.verify_signatures:
        return await _handle(request, body)
    verifier = request.app[state.SINCH]
    token = verifier.verify(request.method, request.rel_url.raw_path, request.headers, body)
    if not verifier.replays.claim(token):
        logs.get_logger().warning("sinch.replayed", source=SOURCE,
                                  x_timestamp=request.headers.get("x-timestamp"))
        return web.Response(status=200)
    try:
        return await _handle(request, body)
    except BaseException:
        verifier.replays.forget(token)  # not applied: the same request may come again
        raise


async def _handle(request: web.Request, body: bytes) -> web.Response:
    """Apply a verified notify event's body."""
    log = logs.get_logger()
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
