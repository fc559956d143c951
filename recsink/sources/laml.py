"""SignalWire / Twilio-compatible RecordingStatusCallback → catalog transitions.

Wire format: SignalWire Compatibility API (cXML/LaML) ``RecordingStatusCallbackPayload``,
form-encoded POST or GET query (specs/callbacks.md §B.2), signed in ``X-SignalWire-Signature``
(alias ``X-Twilio-Signature``, §B.3):

    Base64(HMAC-SHA1(SigningKey, public URL + concat(key + value for keys sorted)))

exactly as twilio-python's ``RequestValidator`` checks it (``twilio/request_validator.py``,
the reference in tests/test_callbacks.py): keys sorted, and a repeated key's values sorted
and de-duplicated (``a=2&a=1&a=1`` signs as ``a1a2``). The public URL is
``laml.public_base_url`` + the path and query as sent, tried like the validator does without
its port and with it (the scheme's default port added when it has none). The form is
``application/x-www-form-urlencoded`` (what SignalWire and Twilio send), at most 64 KiB in
any framing. Statuses map onto
the catalog's: ``in-progress`` → ``recording``, ``completed`` → ``completed`` (or, with
``laml.pull``, a pull of ``RecordingUrl.wav|.mp3`` that completes it), ``absent`` →
``discarded`` (too short or silent), ``failed`` → ``failed``. Dedupe is by ``RecordingSid``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qsl, urlparse

from aiohttp import web

from recsink import logs, state
from recsink.bodies import read_capped, refuse_encoded
from recsink.catalog import Recording, Status, new_id, utcnow, whole_number
from recsink.config import LamlSettings
from recsink.errors import Malformed, Unauthorized

SOURCE = "laml"
SIGNATURE_HEADERS = ("X-SignalWire-Signature", "X-Twilio-Signature")
STATUSES = {"in-progress": Status.RECORDING, "completed": Status.COMPLETED,
            "absent": Status.DISCARDED, "failed": Status.FAILED}
#: Largest callback accepted, bytes.
MAX_FORM_BYTES = 64 * 1024


def signature(signing_key: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The Base64 HMAC-SHA1 signature of a callback to ``url`` with form ``params``
    (specs/callbacks.md §B.3, "Scheme B"), as twilio-python's
    ``RequestValidator.compute_signature`` makes it: ``url``, then for each key in sorted
    order, key + value for each of its values, sorted and de-duplicated."""
    values: dict[str, set[str]] = {}
    for key, value in params:
        values.setdefault(key, set()).add(value)
    data = url + "".join(key + value for key in sorted(values) for value in sorted(values[key]))
    digest = hmac.new(signing_key.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def url_variants(url: str) -> list[str]:
    """The URLs a signature may cover, as twilio-python's ``RequestValidator.validate`` tries
    them ("sig generation on back end is inconsistent"): ``url`` without its port, and with
    its port (the scheme's default, 443 for https and 80 otherwise, added when it has none).
    Both are re-assembled by :func:`urllib.parse.urlparse` like the validator's (an empty
    ``?`` is dropped)."""
    parts = urlparse(url)
    try:
        port = parts.port
    except ValueError:  # not a port number: no variant to try
        return [url]
    if port:
        without, with_port = parts._replace(netloc=parts.netloc.rpartition(":")[0]), parts
    else:
        default = 443 if parts.scheme == "https" else 80
        without, with_port = parts, parts._replace(netloc=f"{parts.netloc}:{default}")
    return [without.geturl(), with_port.geturl()]


class LamlVerifier:
    """Checks ``X-SignalWire-Signature`` / ``X-Twilio-Signature`` against ``[laml]``."""

    def __init__(self, settings: LamlSettings) -> None:
        self.settings = settings

    def verify(self, path_and_query: str, headers: Mapping[str, str],
               params: Sequence[tuple[str, str]]) -> None:
        """Raise 401 ``bad_signature`` unless a signature header matches."""
        given = next((v for h in SIGNATURE_HEADERS if (v := headers.get(h))), None)
        if not given:
            raise Unauthorized("bad_signature", "no X-SignalWire-Signature header")
        key = self.settings.signing_key.get_secret_value()
        if not key:
            raise Unauthorized("bad_signature", "laml.signing_key is not configured")
        url = self.settings.public_base_url.rstrip("/") + path_and_query
        matched = False
        for candidate in url_variants(url):
            matched |= hmac.compare_digest(given.encode(),
                                           signature(key, candidate, params).encode())
        if not matched:
            raise Unauthorized("bad_signature", "signature does not match")


async def callback(request: web.Request) -> web.Response:
    """``POST`` (form) or ``GET`` (query) RecordingStatusCallback: verify, apply, 200."""
    request[state.CALLBACK_SOURCE] = SOURCE
    refuse_encoded(request.headers)  # never decompressed: 415 before reading
    settings = request.app[state.SETTINGS].laml
    if request.method == "POST":
        body = await read_capped(request, MAX_FORM_BYTES,
                                 request.app[state.SETTINGS].server.body_idle_timeout,
                                 "a callback")
        params = _form(request, body)
    else:
        params = []
    if settings.verify_signatures:
        request.app[state.LAML].verify(request.raw_path, request.headers, params)
    fields = dict(request.query) if request.method == "GET" else dict(params)
    sid = fields.get("RecordingSid", "")
    raw_status = fields.get("RecordingStatus", "")
    logs.bind_request(source=SOURCE, call_id=fields.get("CallSid"), recording_id=sid)
    if not sid or raw_status not in STATUSES:
        # Signed, but not a recording status (a call-status callback sent here, say).
        logs.get_logger().info("laml.event_ignored", recording_status=raw_status or None,
                               has_recording_sid=bool(sid))
        return web.Response(status=200)
    status = STATUSES[raw_status]
    record = _record(fields, sid, status)
    recording_url = fields.get("RecordingUrl", "")
    if status is Status.COMPLETED and recording_url:
        if settings.pull:
            record.queue_pull(f"{recording_url}.{settings.pull_format}")
        else:
            record.storage_url = recording_url
    record = await request.app[state.CATALOG].transition(record)
    if record.pull_state == "pending":
        request.app[state.FETCHER].wake()
    logs.get_logger().info("laml.recording_status", id=record.id, status=str(record.status),
                           recording_status=raw_status, pull=record.pull_state)
    return web.Response(status=200)


def _form(request: web.Request, body: bytes) -> list[tuple[str, str]]:
    """The callback's form fields in the order sent, repeated keys kept (as aiohttp's
    ``post()`` parses ``application/x-www-form-urlencoded``, blank values kept; none for an
    empty body). Raises 400 ``bad_form`` for a body of another Content-Type (multipart
    included: neither SignalWire nor Twilio sends it) or one that does not decode in its
    charset."""
    if not body:
        return []
    if request.content_type != "application/x-www-form-urlencoded":
        raise Malformed("bad_form", "the callback body is not a form "
                                    "(application/x-www-form-urlencoded)")
    charset = request.charset or "utf-8"
    try:
        return parse_qsl(body.rstrip().decode(charset), keep_blank_values=True,
                         encoding=charset)
    except (ValueError, LookupError) as exc:  # UnicodeDecodeError too
        raise Malformed("bad_form", f"the callback body is not a form: {exc}") from None


#: Largest count believed from a callback (a year, in seconds). Larger ones, which SQLite's
#: 64-bit integers may not even hold, are dropped like non-numeric ones.
_MAX_COUNT = 365 * 24 * 3600


def _count(text: str | None) -> int | None:
    """A count sent as text (RecordingDuration, RecordingChannels), or None."""
    if text is not None and len(text) > len(str(_MAX_COUNT)):  # spares int() 5000 digits
        return None
    value = whole_number(text)
    return value if value is not None and value <= _MAX_COUNT else None


def _record(fields: dict[str, str], sid: str, status: Status) -> Recording:
    seconds = _count(fields.get("RecordingDuration"))
    # RecordingUrl opens the media without authentication (§B.5): kept out of the metadata
    # that the API serves; it lives in pull_url or storage_url only.
    metadata = {k: v for k, v in fields.items() if k != "RecordingUrl"}
    return Recording(
        id=new_id(), source=SOURCE, status=status, received_at=utcnow(),
        idempotency_key=f"{SOURCE}:rid:{sid}", recording_id=sid,
        call_id=fields.get("CallSid") or None, account_id=fields.get("AccountSid") or None,
        duration_ms=seconds * 1000 if seconds is not None else None,
        channels=_count(fields.get("RecordingChannels")), metadata=metadata)


def add_routes(app: web.Application, path: str) -> None:
    app.router.add_post(path, callback)
    app.router.add_get(path, callback, allow_head=False)
