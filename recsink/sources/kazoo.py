"""Kazoo call-recording uploads: request → :class:`recsink.ingest.Intake`, and the GET probe.

Wire format: Kazoo 4.3 ``kzc_recording`` / ``kz_endpoint_recording`` / ``kz_att_http`` and
FreeSWITCH ``mod_http_cache`` (specs/kazoo.md). Every request below the route prefix is
told apart by the shape of its path and query, read from the raw request target one segment
at a time (a ``%2F`` inside a Call-ID stays inside its segment, §8.4):

* **path A** (``record_call`` url, §2.1): the file name ``call_recording_<call_id>.<ext>``
  (or ``..<ext>``, §2.1.3) is the last path segment or the value of a query parameter
  (``?token=…&recording=<name>``, §2.1.1), with the metadata query of §2.1.2;
* **path B** (storage plan, ``kz_att_http``, §2.2):
  ``…/<account_id>/[<owner_id>/]<recording_id>/<media_name>``, raw or ``multipart/form-data``
  with the JSON metadata part first (§4.2); its GET probe may repeat the segments (§5.5).
  These segments win over a path-A-like media name (``call_recording_<id>.mp3`` as
  ``media_name``) unless the query carries path A's metadata;
* **path C** (``record_caller``, FreeSWITCH curl, §2.3): ``…/<call_id>.<ext>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from recsink import logs, state
from recsink.bodies import PartBody, guarded, raw_body, refuse_encoded
from recsink.catalog import Recording
from recsink.errors import Malformed, NotFound, RecsinkError, TooLarge
from recsink.ingest import Intake, decode_content_md5
from recsink.sending import send_object

SOURCE = "kazoo"
_T = TypeVar("_T")

#: Unix epoch in Gregorian seconds (``calendar:datetime_to_gregorian_seconds``).
GREGORIAN_UNIX_EPOCH = 62167219200

_PATH_A_NAME = re.compile(r"call_recording_(?P<call_id>.+?)\.{1,2}(?P<ext>[A-Za-z0-9]{2,4})")
_PATH_C_NAME = re.compile(r"(?P<call_id>.+)\.(?P<ext>[A-Za-z0-9]{2,4})")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
#: ``cb_storage.erl`` names its probe upload ``<32 hex>_test_credentials_file.txt`` (§5.5).
_PROBE_NAME = re.compile(r"[0-9a-fA-F]{32}_test_credentials_file\.txt")
#: Bytes read at a time when serving a stored recording.
_SERVE_BLOCK = 1024 * 1024
#: Largest JSON metadata part accepted, bytes.
MAX_METADATA_BYTES = 1024 * 1024
#: Parts a multipart upload may send before its media part (Kazoo sends one: the JSON
#: metadata, §4.2); more are refused with 400 ``bad_multipart`` (thousands of empty parts
#: would cost seconds of event-loop time).
MAX_PARTS_BEFORE_MEDIA = 16
#: Query keys only path A sends (§2.1.2): with one of them, a path-A file name in the last
#: segment is path A even below path-B-shaped segments.
_PATH_A_QUERY = frozenset({"account_id", "call_id", "recording_id"})


@dataclass(frozen=True)
class Target:
    """What the request target says about a recording."""

    shape: Literal["A", "B", "C"]
    name: str
    call_id: str | None = None
    recording_id: str | None = None
    account_id: str | None = None
    owner_id: str | None = None


def split_target(
    raw_path: str, prefixes: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """Decoded path segments after the longest matching prefix, and the decoded query (first
    value per key).

    ``raw_path`` is the request target as sent. Raw UTF-8 and percent-escapes both decode as
    UTF-8 (§8.1: Kazoo sends non-ASCII caller names unescaped); ``+`` in the query is a space.
    Raises 400 ``bad_target`` for escapes that are not UTF-8.
    """
    path, _, query = raw_path.partition("?")
    rest = path
    for prefix in sorted(prefixes, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + "/"):
            rest = path[len(prefix):]
            break
    try:
        segments = [unquote(s, errors="strict") for s in rest.split("/") if s]
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise Malformed("bad_target", "the request target is not valid UTF-8") from None
    values: dict[str, str] = {}
    for key, value in pairs:
        values.setdefault(key, value)
    return segments, values


def parse_target(segments: list[str], query: Mapping[str, str]) -> Target:
    """Tell paths A, B and C apart (module docstring). Raises 400 ``unrecognized_path``."""
    last = segments[-1] if segments else ""
    path_b = len(segments) >= 3 and bool(_HEX32.fullmatch(segments[-3]))
    if path_b and not _PATH_A_QUERY & query.keys():
        return _path_b(segments)
    for candidate in (last, *query.values()):
        if m := _PATH_A_NAME.fullmatch(candidate):
            return Target(
                "A", candidate, call_id=query.get("call_id") or m["call_id"],
                recording_id=query.get("recording_id") or None,
                account_id=query.get("account_id") or None,
                owner_id=query.get("owner_id") or None)
    if path_b:
        return _path_b(segments)
    if m := _PATH_C_NAME.fullmatch(last):
        return Target("C", last, call_id=m["call_id"])
    raise Malformed(
        "unrecognized_path",
        "expected call_recording_<call_id>.<ext>, <account>/[<owner>/]<recording_id>/<name> "
        "or <call_id>.<ext> (specs/kazoo.md §2)")


def _path_b(segments: list[str]) -> Target:
    """``…/<account_id>/[<owner_id>/]<recording_id>/<media_name>`` (§2.2)."""
    owner = None
    account = segments[-3]
    if len(segments) >= 4 and _HEX32.fullmatch(segments[-4]):
        account, owner = segments[-4], segments[-3]
    return Target("B", segments[-1], recording_id=segments[-2], account_id=account.lower(),
                  owner_id=owner.lower() if owner else None)


def gregorian_to_utc(value: Any) -> datetime | None:
    """Kazoo's ``start`` (Gregorian seconds, Unix + 62167219200) as a UTC datetime.

    Values below the Unix epoch in Gregorian seconds are taken as Unix seconds already.
    Missing, empty or non-numeric values give None (Kazoo may send ``start=``, §8.7), and
    so do infinite ones and times from the year 9000 on.
    """
    seconds = _int(value)
    if seconds is None:
        return None
    if seconds >= GREGORIAN_UNIX_EPOCH:
        seconds -= GREGORIAN_UNIX_EPOCH
    try:
        when = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return when if when < _LATEST_START else None


#: Starts after this are garbage; it also keeps start + duration far from datetime.max.
_LATEST_START = datetime(9000, 1, 1, tzinfo=UTC)
#: The longest claimed ``duration_ms`` believed (a week); longer or negative claims are
#: dropped like non-numeric ones (the file's own duration wins anyway when it has one).
MAX_DURATION_MS = 7 * 24 * 3600 * 1000


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON 1e999
        return None


def _duration_ms(value: Any) -> int | None:
    ms = _int(value)
    return ms if ms is not None and 0 <= ms <= MAX_DURATION_MS else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _intake_fields(target: Target, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Intake fields from the target and the metadata (query pairs for path A, the JSON
    part for a multipart path B upload; specs/kazoo.md §2.1.2 and §4.2)."""
    channel_vars = meta.get("custom_channel_vars")
    channel_vars = channel_vars if isinstance(channel_vars, dict) else {}
    return dict(
        source=SOURCE,
        recording_id=target.recording_id or _text(meta.get("id")),
        call_id=target.call_id or _text(meta.get("call_id")),
        account_id=target.account_id or _text(meta.get("account_id"))
        or _text(channel_vars.get("Account-ID")),
        owner_id=target.owner_id or _text(meta.get("owner_id")),
        interaction_id=_text(meta.get("interaction_id")),
        from_uri=_text(meta.get("from")),
        to_uri=_text(meta.get("to")),
        started_at=gregorian_to_utc(meta.get("start")),
        duration_ms=_duration_ms(meta.get("duration_ms")),
        name=target.name,
        metadata=dict(meta),
        allow_probe=target.shape == "B" and bool(_PROBE_NAME.fullmatch(target.name)),
    )


async def _read_target(request: web.Request) -> tuple[Target, dict[str, str]]:
    """Authorize the request and parse its target (shared by uploads and GET probes)."""
    settings = request.app[state.SETTINGS]
    segments, query = split_target(request.raw_path, settings.kazoo.prefixes)
    admission = request.app[state.AUTH].check(
        request.remote, request.headers.get(hdrs.AUTHORIZATION), segments, query)
    request[state.ADMISSION] = admission
    target = parse_target(admission.segments, query)
    query.pop(settings.auth.query_token_param, None)  # a secret: never stored or logged
    logs.bind_request(source=SOURCE, call_id=target.call_id,
                      recording_id=target.recording_id or query.get("recording_id"))
    return target, query


async def upload(request: web.Request) -> web.Response:
    """``PUT``/``POST`` of a recording: 201 with the new record, 200 with the existing one."""
    request[state.UPLOAD_SOURCE] = SOURCE
    with request.app[state.GATE].slot():
        return await _upload(request)


async def _upload(request: web.Request) -> web.Response:
    target, query = await _read_target(request)
    refuse_encoded(request.headers)
    ingestor = request.app[state.INGESTOR]
    ingestor.check_length(request.content_length)
    settings = request.app[state.SETTINGS]
    idle = settings.server.body_idle_timeout
    md5 = decode_content_md5(request.headers.get("Content-MD5"))

    if request.content_type.startswith("multipart/"):
        meta, part = await _read_multipart(request, idle)
        intake = Intake(body=PartBody(part, idle), content_md5=md5,
                        **_intake_fields(target, meta))
    else:
        body = raw_body(request, request.app[state.SERVING].registry, idle, ingestor.threads)
        intake = Intake(body=body, content_length=request.content_length, content_md5=md5,
                        **_intake_fields(target, query if target.shape == "A" else {}))
    logs.bind_request(call_id=intake.call_id, recording_id=intake.recording_id)
    # The account is known now (a multipart body's JSON part is read, its media part not).
    admission = request[state.ADMISSION]
    admission.require(intake.account_id)
    outcome = await ingestor.ingest(intake)
    admission.require(outcome.record.account_id)  # an existing record of the same key
    return web.json_response(outcome.record.resource(), status=201 if outcome.created else 200)


async def _multipart_step(step: Awaitable[_T], idle_timeout: float) -> _T:
    """One read from a multipart body: 400 ``bad_multipart`` when its framing or part
    headers are malformed, 408 after ``idle_timeout`` seconds without bytes."""

    async def checked() -> _T:
        try:
            return await step
        except (ValueError, AssertionError, HttpProcessingError) as exc:
            raise Malformed("bad_multipart", f"malformed multipart body: {exc}") from None

    return await guarded(checked(), idle_timeout)


async def _read_multipart(request: web.Request,
                          idle_timeout: float) -> tuple[dict[str, Any], BodyPartReader]:
    """The JSON metadata (if sent) and the media part of a ``multipart/form-data`` upload."""
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError) as exc:
        raise Malformed(
            "bad_multipart",
            f"cannot read the multipart body ({exc}); Kazoo 4.3.17-4.3.20 send multipart/mixed "
            "without a boundary, which no parser can split: upgrade Kazoo or turn off "
            "send_multipart") from None
    meta: dict[str, Any] = {}
    for _ in range(MAX_PARTS_BEFORE_MEDIA + 1):
        part = await _multipart_step(reader.next(), idle_timeout)
        if part is None:
            raise Malformed("bad_multipart", "the multipart body has no media part")
        if isinstance(part, MultipartReader):
            raise Malformed("bad_multipart", "nested multipart bodies are not supported")
        if part.headers.get(hdrs.CONTENT_TYPE, "").startswith("application/json") and not meta:
            meta = await _read_json_part(part, idle_timeout)
            continue
        return meta, part
    raise Malformed("bad_multipart",
                    f"more than {MAX_PARTS_BEFORE_MEDIA} parts before the media part (Kazoo "
                    "sends the JSON metadata part, then the media part)")


async def _read_json_part(part: BodyPartReader, idle_timeout: float) -> dict[str, Any]:
    raw = bytearray()
    while chunk := await _multipart_step(part.read_chunk(64 * 1024), idle_timeout):
        raw += chunk
        if len(raw) > MAX_METADATA_BYTES:
            raise TooLarge("too_large",
                               f"the JSON metadata part is over {MAX_METADATA_BYTES} bytes")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise Malformed("bad_metadata", f"the JSON metadata part is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise Malformed("bad_metadata", "the JSON metadata part is not an object")
    try:  # as the catalog will store it
        json.dumps(meta, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # "\ud800" escapes decode to lone surrogates
        raise Malformed("bad_metadata", "the JSON metadata part holds a lone surrogate "
                          "(an unpaired \\ud800-\\udfff escape), which is not text") from None
    except RecursionError:
        raise Malformed("bad_metadata", "the JSON metadata part is nested too deep") from None
    return meta


async def fetch(request: web.Request) -> web.StreamResponse:
    """``GET``/``HEAD`` on an upload path: the stored bytes, exactly (storage-plan probe,
    specs/kazoo.md §5.5). The doubled-segment probe path of Kazoo ≥ 4.3.106 resolves like
    the upload path because shapes are read from the last segments. Always the whole
    object: ``Range`` and conditional headers are ignored (Kazoo sends none; aiohttp's
    FileResponse would answer them with bodiless 416/412 errors).

    Answers only a completed recording whose name, account (when the path or query gives
    one) and call id (paths A and C) are the path's, else 404 ``not_found``; a credential
    bound to accounts gets 403 ``account_not_allowed`` for other accounts' paths. The
    object is opened (and its first block read) before the status line
    (:func:`~recsink.sending.send_object`), so a storage
    failure is a JSON 503; a failure once the body is under way (storage gone, the object
    shorter or longer than the catalog's ``byte_size``) raises
    :class:`~recsink.storage.StorageUnavailable` after headers went out, and the error
    middleware then closes the connection instead of answering twice.
    """
    target, query = await _read_target(request)
    request[state.ADMISSION].require(target.account_id)
    record = await _find(request, target, query)
    if record is None or record.storage_key is None or not _names(record, target):
        raise NotFound("not_found", "no stored recording at this path")
    response = web.StreamResponse(
        headers={hdrs.CONTENT_TYPE: record.media_type or "application/octet-stream"})
    response.content_length = size = record.byte_size or 0
    await send_object(request, response, request.app[state.STORAGE], record.storage_key,
                      size, _SERVE_BLOCK)
    logs.get_logger().info("recording.served", id=record.id, bytes=size,
                           method=request.method)
    return response


def _names(record: Recording, target: Target) -> bool:
    """True when ``record`` is the one the request path names: the same file name, and the
    same account and call id wherever the path (or path A's query) gives them."""
    if record.name != target.name:
        return False
    if target.account_id and (record.account_id or "").lower() != target.account_id.lower():
        return False
    return not (target.call_id and record.call_id != target.call_id)


async def _find(request: web.Request, target: Target, query: Mapping[str, str]) -> Recording | None:
    catalog = request.app[state.CATALOG]
    recording_id = target.recording_id or query.get("recording_id") or query.get("id")
    if recording_id:
        record = await catalog.by_key(f"{SOURCE}:rid:{recording_id}")
        if record is not None and record.status == "completed":
            return record
    if target.call_id:
        return await catalog.latest_completed(SOURCE, target.call_id, target.name)
    return None


async def expect(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` (FreeSWITCH curl, §3.2): invite the body (``100 Continue``)
    only when the upload would be admitted. Otherwise send nothing here: the handler then
    runs the same checks before reading a byte and refuses the upload as every refusal is
    (the middleware's one log line, the uploads metric, ``X-Request-ID``), RFC 9110
    §10.1.1's final status instead of 100."""
    try:
        await _read_target(request)
        refuse_encoded(request.headers)
        request.app[state.INGESTOR].check_length(request.content_length)
        request.app[state.GATE].check()
    except RecsinkError:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers[hdrs.EXPECT]}")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not begun
    return None


def add_routes(app: web.Application, prefixes: Sequence[str]) -> None:
    """Route every method Kazoo uses at and below each prefix."""
    for prefix in prefixes:
        resource = app.router.add_resource(prefix + "{tail:(?:/.*)?}")
        resource.add_route("PUT", upload, expect_handler=expect)
        resource.add_route("POST", upload, expect_handler=expect)
        resource.add_route("GET", fetch)
        resource.add_route("HEAD", fetch)
    app.on_response_prepare.append(_no_sniffing)


async def _no_sniffing(request: web.Request, response: web.StreamResponse) -> None:
    """Probe answers (the recording's bytes, or a JSON error) carry
    ``X-Content-Type-Options: nosniff``: a browser must not render stored bytes as a page."""
    if request.match_info.handler is fetch:
        response.headers[hdrs.X_CONTENT_TYPE_OPTIONS] = "nosniff"
