"""The minimal failing inputs the hostile property tests found, replayed deterministically
against a real ``recsink serve`` (each also goes through the properties of
tests/hostile/support.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.hostile import strategies as hs
from tests.hostile.support import (
    BASIC,
    BODY_IDLE_TIMEOUT,
    LAML_PATH,
    SINCH_PATH,
    URL_TOKEN,
    Answer,
    Hostile,
    head,
    laml_request,
    laml_signed,
    request,
    sinch_request,
    sinch_signed,
    unique,
)
from tests.hostile.test_callbacks import laml_params
from tests.hostile.test_kazoo import upload_target

#: Seconds a test that waits for server.body_idle_timeout gives the answer (a loaded CI).
STALL_TIMEOUT = BODY_IDLE_TIMEOUT + 4


def error_of(answer: Answer) -> str:
    error: str = json.loads(answer.body)["error"]
    return error


def kazoo_a(uid: str, query: str = "") -> str:
    return f"/kazoo/call_recording_{uid}.wav?token={URL_TOKEN}&recording_id=r-{uid}{query}"


def multipart_upload(meta: bytes, media: bytes = hs.WAV) -> bytes:
    content_type, body, _ = hs.multipart_plain(meta, media)
    uid = unique()
    target = upload_target("b", "call_id", uid, uid, "", f"token={URL_TOKEN}")
    return request("POST", target, body, content_type=content_type)


# -- request heads (server.py) --------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"G(T /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhostx\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhost: x\r\n folded\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhost: x\x00y\r\n\r\n",
    b"GET /healthz HTTP/1.1\nhost: x\n\n",
    b"GET /heal\x01thz HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nhost: x\r\n\r\n",
    b"PUT /kazoo/a.wav HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nRIFF",
    b"PUT /kazoo/a.wav HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
    b"content-length: 5\r\n\r\n4\r\nRIFF\r\n0\r\n\r\n",
    b"PUT /kazoo/a.wav HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    b"zz\r\nRIFF\r\n0\r\n\r\n",
    b"PUT /kazoo/a.wav HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
    b"PUT /kazoo/a.wav HTTP/1.1\r\ncontent-length: 4\r\n\r\nRIFF",
], ids=["method", "no-colon", "obs-fold", "nul", "lf-only", "ctl-in-target", "overlong-line",
        "duplicate-content-length", "chunked-and-content-length", "bad-chunk-size",
        "transfer-encoding-gzip", "no-host"])
def test_malformed_heads_are_answered_with_json(hostile: Hostile, raw: bytes) -> None:
    """What aiohttp's own parser refuses is a JSON 400 ``bad_request``, not its plain text."""
    [answer] = hostile.exchange(raw)
    assert answer.status == 400, str(answer)
    assert error_of(answer) == "bad_request"


@pytest.mark.parametrize("raw", [
    b"GET /v1/recordings?call_id=\xff HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /kazoo/call_recording_\xff.wav?token=" + URL_TOKEN.encode()
    + b" HTTP/1.1\r\nhost: x\r\n\r\n",
    b"PUT /kazoo/call_recording_x.wav?call_id=\xed\xa0\x80 HTTP/1.1\r\nhost: x\r\n"
    b"content-length: 0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-name: \xc3\r\n\r\n",
], ids=["api-query", "kazoo-path", "kazoo-query-surrogate", "header-value"])
def test_head_that_is_not_utf8_is_400(hostile: Hostile, raw: bytes) -> None:
    """Raw bytes in a request head that are not UTF-8 are refused with a JSON 400 (they
    used to reach the catalog as lone surrogates: 500)."""
    [answer] = hostile.exchange(raw)
    assert answer.status == 400, str(answer)
    assert "UTF-8" in json.loads(answer.body)["detail"]


def test_raw_utf8_in_the_query_is_still_accepted(hostile: Hostile) -> None:
    """Raw UTF-8 in a Kazoo query (specs/kazoo.md §8.1) still uploads: 201."""
    uid = unique()
    raw = request("PUT", kazoo_a(uid, "&caller_id_name=Jos\u00e9").encode(), hs.WAV,
                  content_type="audio/wav")
    assert hostile.exchange(raw)[0].status == 201


@pytest.mark.parametrize("version", [b"HTTP/9.9", b"HTTP/2.0", b"HTTP/0.9"])
def test_http_versions_other_than_1x_are_refused(hostile: Hostile, version: bytes) -> None:
    """A request line with another HTTP version is a JSON 400 (aiohttp answered it, echoing
    "HTTP/9.9 200 OK")."""
    [answer] = hostile.exchange(b"GET /healthz " + version + b"\r\nhost: x\r\n\r\n")
    assert answer.status_line.startswith(b"HTTP/1.")
    assert answer.status == 400, str(answer)


@pytest.mark.parametrize("target", ["/healthz", f"/kazoo/call_recording_x.wav?token={URL_TOKEN}",
                                    "/nowhere"])
def test_unknown_expect_is_a_json_417(hostile: Hostile, target: str) -> None:
    """An Expect other than 100-continue is a JSON 417 (aiohttp's was plain text)."""
    raw = head("PUT", target, [("host", "x"), ("expect", "bogus"), ("content-length", "4")])
    [answer] = hostile.exchange(raw + b"RIFF")
    assert answer.status == 417, str(answer)
    assert error_of(answer) == "expectation_failed"


# -- credentials (auth.py) ------------------------------------------------------------------

def test_non_ascii_basic_credentials_are_401(hostile: Hostile) -> None:
    """``Authorization: Basic éé==`` is 401 (base64 of non-ASCII text raised ValueError:
    500)."""
    raw = request("PUT", f"/kazoo/call_recording_{unique()}.wav", hs.WAV,
                  headers=[("host", "x"), ("authorization", "Basic \u00e9\u00e9==")],
                  content_type="audio/wav")
    [answer] = hostile.exchange(raw)
    assert (answer.status, error_of(answer)) == (401, "unauthorized")


# -- SignalWire (sources/laml.py) -----------------------------------------------------------

@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data; boundary=zz", b"hello"),
    ("application/x-www-form-urlencoded; charset=zzz", b"a=b"),
    ("application/x-www-form-urlencoded", b"a=\xff\xfe"),
], ids=["no-boundary-in-body", "unknown-charset", "not-utf8"])
def test_laml_body_that_is_not_a_form_is_400(hostile: Hostile, content_type: str,
                                            body: bytes) -> None:
    """A callback body that cannot be read as a form is a JSON 400 ``bad_form`` (500)."""
    [answer] = hostile.exchange(laml_request(LAML_PATH, body, "c2ln", content_type))
    assert (answer.status, error_of(answer)) == (400, "bad_form")


def test_stalled_laml_body_is_408(hostile: Hostile) -> None:
    """A callback whose body stops short of its Content-Length is 408 after
    server.body_idle_timeout (it held the connection for ever)."""
    raw = head("POST", LAML_PATH, [("host", "x"), ("content-length", "100"),
                                   ("content-type", "application/x-www-form-urlencoded")])
    [answer] = hostile.exchange(raw + b"RecordingSid=x", timeout=STALL_TIMEOUT)
    assert (answer.status, error_of(answer)) == (408, "body_timeout")


@pytest.mark.parametrize("field", ["RecordingDuration", "RecordingChannels"])
@pytest.mark.parametrize("value", ["9223372036854776", "9" * 30, "1" * 5000])
def test_huge_laml_counts_are_dropped(hostile: Hostile, field: str, value: str) -> None:
    """A signed callback with an enormous RecordingDuration or RecordingChannels is
    accepted with the count unknown (it overflowed SQLite's integers: 500)."""
    sid = unique()
    signature, body = laml_signed(laml_params(sid, **{field: value}))
    [answer] = hostile.exchange(laml_request(LAML_PATH, body, signature))
    assert answer.status == 200, str(answer)
    [record] = json.loads(hostile.exchange(request("GET", f"/v1/recordings?recording_id={sid}",
                                                   headers=[("host", "x"),
                                                            ("authorization", BASIC)]))[0]
                          .body)["recordings"]
    column = "duration_ms" if field == "RecordingDuration" else "channels"
    assert record[column] is None


# -- Kazoo (sources/kazoo.py) ---------------------------------------------------------------

def test_malformed_multipart_part_header_is_400(hostile: Hostile) -> None:
    """A part header without a colon is a JSON 400 ``bad_multipart`` (aiohttp's
    InvalidHeader escaped: 500)."""
    content_type, body, _ = hs.multipart_plain(b"{}", hs.WAV)
    body = body.replace(b"content-disposition: form-data; name=media",
                        b"content-disposition form-data")
    uid = unique()
    raw = request("POST", kazoo_a(uid), body, content_type=content_type)
    [answer] = hostile.exchange(raw)
    assert (answer.status, error_of(answer)) == (400, "bad_multipart")


def test_stalled_multipart_metadata_is_408(hostile: Hostile) -> None:
    """A multipart upload that stops inside its JSON part is 408 after
    server.body_idle_timeout (the metadata read had no timeout: it waited for ever)."""
    content_type, body, _ = hs.multipart_plain(b'{"id": "x"}', hs.WAV)
    cut = body.index(b"{") + 4
    raw = head("POST", kazoo_a(unique()), [("host", "x"), ("content-type", content_type),
                                            ("content-length", str(len(body)))])
    [answer] = hostile.exchange(raw + body[:cut], timeout=STALL_TIMEOUT)
    assert (answer.status, error_of(answer)) == (408, "body_timeout")


@pytest.mark.parametrize(("meta", "detail"), [
    (b'{"call_id": "\\ud800x"}', "lone surrogate"),
    (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "JSON"),
], ids=["lone-surrogate", "deep-nesting"])
def test_unstorable_kazoo_metadata_is_400(hostile: Hostile, meta: bytes, detail: str) -> None:
    """JSON metadata with a lone surrogate escape or nested too deep is a JSON 400
    ``bad_metadata`` (UnicodeEncodeError in the catalog, RecursionError: 500)."""
    [answer] = hostile.exchange(multipart_upload(meta))
    assert (answer.status, error_of(answer)) == (400, "bad_metadata")
    assert detail in json.loads(answer.body)["detail"]


@pytest.mark.parametrize(("start", "duration"), [
    ("0", "253402300800000"), ("Infinity", "0"), ("0", "1e999"), ("-1e999", "-1"),
    ("315569519999", "86400000"),  # 9999-12-31T23:59:59Z in Gregorian seconds, + a day
])
def test_unbelievable_kazoo_start_and_duration_are_ignored(hostile: Hostile, start: str,
                                                           duration: str) -> None:
    """A start or duration_ms that is infinite, past the year 9000 or longer than a week
    is ignored: the upload is stored (start + duration overflowed datetime: 500)."""
    uid = unique()
    meta = (f'{{"id": "r-{uid}", "call_id": "{uid}", "start": {start}, '
            f'"duration_ms": {duration}}}').encode()
    [answer] = hostile.exchange(multipart_upload(meta, hs.MP3))
    assert answer.status == 201, str(answer)
    record = json.loads(answer.body)
    assert record["stopped_at"] is None


def test_huge_duration_in_the_path_a_query_is_ignored(hostile: Hostile) -> None:
    """``duration_ms=99999999999999999999`` in a path-A query is ignored: 201 (it
    overflowed SQLite's integers: 500)."""
    raw = request("PUT", kazoo_a(unique(), "&duration_ms=" + "9" * 20), hs.MP3,
                  content_type="audio/mpeg")
    [answer] = hostile.exchange(raw)
    assert answer.status == 201, str(answer)
    assert json.loads(answer.body)["duration_ms"] is None


@pytest.mark.parametrize(("name", "value"), [
    ("range", ""), ("range", "bytes=99999999-"), ("if-match", "\"nope\""),
    ("if-unmodified-since", "Thu, 01 Jan 1970 00:00:00 GMT"),
])
def test_get_probe_ignores_range_and_conditions(hostile: Hostile, name: str,
                                                value: str) -> None:
    """A GET probe with a Range or conditional header gets the whole recording, 200
    (aiohttp's FileResponse answered 416/412 with an empty audio/wav body)."""
    uid = unique()
    target = upload_target("b", "call_id", uid, uid, "", f"token={URL_TOKEN}")
    assert hostile.exchange(request("PUT", target, hs.WAV,
                                    content_type="audio/wav"))[0].status == 201
    [answer] = hostile.exchange(request("GET", target, headers=[("host", "x"), (name, value)]))
    assert answer.status == 200, str(answer)
    assert hashlib.sha256(answer.body).digest() == hashlib.sha256(hs.WAV).digest()


# -- Sinch (sources/sinch.py) --------------------------------------------------------------

def test_stalled_sinch_body_is_408(hostile: Hostile) -> None:
    """A Sinch callback whose body stops short of its Content-Length is 408 after
    server.body_idle_timeout."""
    raw = head("POST", SINCH_PATH, [("host", "x"), ("content-type", "application/json"),
                                    ("content-length", "100")])
    [answer] = hostile.exchange(raw + b'{"event":', timeout=STALL_TIMEOUT)
    assert answer.status == 408, str(answer)


def test_sinch_callid_with_a_lone_surrogate_is_400(hostile: Hostile) -> None:
    """A signed event whose callid holds an unpaired \\ud800 escape is a JSON 400."""
    body = b'{"event":"notify","type":"recording_finished","callid":"\\ud800x"}'
    [answer] = hostile.exchange(sinch_request(sinch_signed(body)))
    assert answer.status == 400, str(answer)


def test_deeply_nested_sinch_event_is_400(hostile: Hostile) -> None:
    """A signed event nested 5000 arrays deep is a JSON 400 ``bad_event``."""
    body = b'{"event":"notify","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    [answer] = hostile.exchange(sinch_request(sinch_signed(body)))
    assert answer.status == 400, str(answer)



@pytest.mark.parametrize("raw", [
    b"PUT /kazoo/call_recording_a.wav HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    b"\xff\r\nRIFF\r\n0\r\n\r\n",
    b"GET /kazoo/\xff" + b"a" * 9000 + b" HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /kazoo/a.wav HTTP/1.1\r\nhost: x\r\nx-\xff: " + b"a" * 9000 + b"\r\n\r\n",
], ids=["chunk-size", "overlong-target", "overlong-header"])
def test_undecodable_bytes_show_as_hex_escapes(hostile: Hostile, raw: bytes) -> None:
    """A refusal quoting request bytes that are not UTF-8 shows them as ``\\xNN``, never as
    lone surrogates (``\\udcNN``), in its answer and in its log line."""
    [answer] = hostile.exchange(raw)
    assert answer.status == 400, str(answer)
    detail = json.loads(answer.body)["detail"]
    assert "\\xff" in detail or "\\xfe" in detail, detail
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in detail), detail
    assert b"\\udc" not in hostile.server.log_path.read_bytes()
