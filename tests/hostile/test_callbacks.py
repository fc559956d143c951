"""Hostile Sinch notify events and SignalWire RecordingStatusCallbacks against a real
``recsink serve``: tampered bodies, timestamps, signatures and schemes are refused with 401;
correctly signed callbacks with hostile values and broken form bodies never answer 500 and
never write a file. Properties: tests/hostile/support.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from recsink.sources.laml import signature as laml_signature
from tests.hostile import strategies as hs
from tests.hostile.support import (
    LAML_BASE,
    LAML_KEY,
    LAML_PATH,
    Hostile,
    laml_request,
    laml_signed,
    request,
    sinch_request,
    sinch_signed,
    unique,
)

# -- Sinch ---------------------------------------------------------------------------------

#: Tampering after signing, and whether the result must be refused (a change of case in
#: the scheme, say, is still a valid signature).
SINCH_TAMPERS = st.sampled_from([
    ("body_byte", True), ("body_append", True), ("body_truncate", True),
    ("body_replace", True), ("timestamp_shift", True), ("timestamp_reformat", True),
    ("timestamp_garbage", True), ("timestamp_stale", True), ("timestamp_future", True),
    ("timestamp_missing", True), ("signature_flip", True), ("signature_truncate", True),
    ("signature_empty", True), ("signature_not_base64", True), ("signature_other_path", True),
    ("scheme_bearer", True), ("scheme_missing", True), ("scheme_glued", True),
    ("key_unknown", True), ("key_missing", True), ("authorization_missing", True),
    ("content_type", True), ("scheme_case", False), ("scheme_service", False),
    ("query_added", False),
])


def _flip(text: str, at: int) -> str:
    at %= len(text)
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1:]


def tamper_sinch(parts: dict[str, Any], how: str, at: int) -> dict[str, Any]:
    """``parts`` (a signed callback) with one thing changed after signing."""
    out = dict(parts)
    body: bytes = parts["body"]
    scheme, _, credentials = parts["authorization"].partition(" ")
    key, _, sig = credentials.partition(":")
    sent = datetime.fromisoformat(parts["timestamp"])
    if how == "body_byte":
        i = at % len(body)
        out["body"] = body[:i] + bytes([body[i] ^ 0x20 or 1]) + body[i + 1:]
    elif how == "body_append":
        out["body"] = body + b" "
    elif how == "body_truncate":
        out["body"] = body[:at % len(body)]
    elif how == "body_replace":
        out["body"] = body.replace(b"recording_", b"recording-")
    elif how == "timestamp_shift":
        out["timestamp"] = (sent + timedelta(seconds=1 + at % 60)).isoformat()
    elif how == "timestamp_reformat":
        out["timestamp"] = sent.isoformat()  # the same instant, written differently
    elif how == "timestamp_garbage":
        out["timestamp"] = "yesterday at noon"
    elif how == "timestamp_stale":
        out.update(sinch_signed(body, timestamp=(sent - timedelta(hours=1)).isoformat()))
    elif how == "timestamp_future":
        out.update(sinch_signed(body, timestamp=(sent + timedelta(days=1)).isoformat()))
    elif how == "timestamp_missing":
        out["timestamp"] = ""
    elif how == "signature_flip":
        out["authorization"] = f"{scheme} {key}:{_flip(sig, at)}"
    elif how == "signature_truncate":
        out["authorization"] = f"{scheme} {key}:{sig[:at % len(sig)]}"
    elif how == "signature_empty":
        out["authorization"] = f"{scheme} {key}:"
    elif how == "signature_not_base64":
        out["authorization"] = f"{scheme} {key}:%%%{sig}"
    elif how == "signature_other_path":
        other = sinch_signed(body, path="/sinch/other", timestamp=parts["timestamp"])
        out["authorization"] = other["authorization"]
    elif how == "scheme_bearer":
        out["authorization"] = f"Bearer {key}:{sig}"
    elif how == "scheme_missing":
        out["authorization"] = f"{key}:{sig}"
    elif how == "scheme_glued":
        out["authorization"] = f"{scheme}{key}:{sig}"
    elif how == "key_unknown":
        out["authorization"] = f"{scheme} {_flip(key, at)}:{sig}"
    elif how == "key_missing":
        out["authorization"] = f"{scheme} :{sig}"
    elif how == "authorization_missing":
        out["authorization"] = ""
    elif how == "content_type":
        out["content_type"] = "application/json; charset=utf-8"
    elif how == "scheme_case":
        out["authorization"] = f"{scheme.upper()} {key}:{sig}"
    elif how == "scheme_service":
        out["authorization"] = f"service {key}:{sig}"
    elif how == "query_added":  # only the path is signed (specs/callbacks.md §A.4)
        out["path"] = parts["path"] + "?tenant=acme"
    return out


def notify(kind: str, call_id: Any, **extra: Any) -> bytes:
    event: dict[str, Any] = {"event": "notify", "callid": call_id, "version": 1, "type": kind}
    if kind == "recording_available":
        event["destination"] = f"s3://my-bucket/voice-recordings/{unique()}.mp3"
    event.update(extra)
    return json.dumps(event).encode()


@given(kind=st.sampled_from(["recording_finished", "recording_available"]),
       tamper=SINCH_TAMPERS, at=st.integers(0, 10_000))
def test_sinch_tampered_callbacks_are_refused(hostile: Hostile, kind: str,
                                              tamper: tuple[str, bool], at: int) -> None:
    """A signed Sinch notify event whose body, timestamp, signature, scheme, key or
    Content-Type was changed after signing is refused with 401 ``bad_signature`` (JSON)."""
    how, must_refuse = tamper
    parts = tamper_sinch(sinch_signed(notify(kind, unique())), how, at)
    [answer] = hostile.exchange(sinch_request(parts))
    if must_refuse:
        assert answer.status == 401, str(answer)
        assert json.loads(answer.body)["error"] == "bad_signature"
    else:
        assert answer.status == 200, str(answer)


#: JSON values Sinch's fields may hold in a hostile event, lone-surrogate escapes included
#: (deep nesting is replayed in test_regressions.py: json.dumps cannot build it).
SINCH_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40),
    st.sampled_from(["\ud800", "x\udfffy", "\udbff\udbff"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                         max_size=3),
)


@given(kind=st.sampled_from(["recording_finished", "recording_available", "ace", "dice"]),
       event=st.sampled_from(["notify", "notify", "ace", None, 7]),
       callid=st.one_of(st.just("name"), SINCH_VALUES),
       destination=st.one_of(st.sampled_from([
           "file:///etc/passwd", "s3://bucket/../../etc/passwd", "https://127.0.0.1:1/x.mp3",
           "azure://acct/container/../x", "gs://", "", "s3://b/" + "a" * 5000,
           "javascript:alert(1)"]), SINCH_VALUES),
       extra=st.dictionaries(st.sampled_from(["timestamp", "version", "custom", "callId",
                                              "recording", "duration"]), SINCH_VALUES,
                             max_size=3),
       data=st.data())
def test_sinch_signed_hostile_events(hostile: Hostile, kind: str, event: Any, callid: Any,
                                     destination: Any, extra: dict[str, Any],
                                     data: st.DataObject) -> None:
    """Correctly signed notify events with hostile values (call ids that climb out of the
    root, non-string ids, odd destinations and types) answer 200 or a JSON 400, never a 500,
    and never write a file (pulls are off)."""
    if callid == "name":
        callid = data.draw(hs.escaping_names(str(hostile.workdir))) + unique()
    body = json.dumps({"event": event, "callid": callid, "type": kind,
                       "destination": destination, **extra}).encode()
    [answer] = hostile.exchange(sinch_request(sinch_signed(body)))
    assert answer.status in (200, 400), str(answer)


@given(body=st.one_of(st.binary(max_size=200), st.sampled_from([
           b"", b"null", b"[]", b'"notify"', b"{", b'{"event": "notify"', b"\xff\xfe{}",
           b'{"event":"notify","type":"recording_available","callid":"x"}',
           b'{"event":"notify","type":"recording_finished","callid":""}',
           b'{"event":"notify","type":"recording_finished"}',
           b"\xef\xbb\xbf{}", b'{"a":1e999999}', b'{"a":' + b"1" * 5000 + b"}"])),
       content_type=st.sampled_from(["application/json", "text/plain", "", "application/xml"]))
def test_sinch_signed_bodies_that_are_not_events(hostile: Hostile, body: bytes,
                                                 content_type: str) -> None:
    """Correctly signed bodies that are not notify events (not JSON, not an object,
    truncated, a BOM, missing fields) answer 200 or a JSON 400, never a 500."""
    [answer] = hostile.exchange(sinch_request(sinch_signed(body, content_type=content_type)))
    assert answer.status in (200, 400), str(answer)


# -- SignalWire ----------------------------------------------------------------------------

def laml_params(sid: str, **changes: str) -> list[tuple[str, str]]:
    params = {"AccountSid": "b3877c40-da60-4998-90ad-b792e98472af", "CallSid": f"CA{sid}",
              "RecordingSid": sid, "RecordingStatus": "completed",
              "RecordingUrl": f"https://example.signalwire.com/Recordings/{sid}",
              "RecordingDuration": "94", "RecordingChannels": "1",
              "RecordingSource": "RecordVerb"}
    params.update(changes)
    return list(params.items())


LAML_TAMPERS = st.sampled_from([
    "param_value", "param_added", "param_removed", "signature_flip", "signature_empty",
    "signature_other_key", "target_query", "target_path", "header_missing", "sid_changed",
])


@given(tamper=LAML_TAMPERS, at=st.integers(0, 10_000))
def test_signalwire_tampered_callbacks_are_refused(hostile: Hostile, tamper: str,
                                                   at: int) -> None:
    """A signed SignalWire callback with a parameter changed, added or removed, another
    signature or URL, or no signature header is refused with 401 ``bad_signature``."""
    params = laml_params(unique())
    signature, body = laml_signed(params)
    target = LAML_PATH
    if tamper == "param_value":
        i = at % len(params)
        params[i] = (params[i][0], params[i][1] + "x")
    elif tamper == "param_added":
        params.append(("Extra", "1"))
    elif tamper == "param_removed":
        del params[at % len(params)]
    elif tamper == "signature_flip":
        signature = _flip(signature, at)
    elif tamper == "signature_empty":
        signature = ""
    elif tamper == "signature_other_key":
        signature = laml_signature("another-key", LAML_BASE + LAML_PATH, params)
    elif tamper == "target_query":
        target = LAML_PATH + "?tenant=acme"
    elif tamper == "sid_changed":
        params = [(k, v if k != "RecordingSid" else unique()) for k, v in params]
    if tamper != "target_path":
        body = urlencode(params).encode()
    else:
        target = LAML_PATH + "/"
    data = laml_request(target, body, signature)
    if tamper == "header_missing":
        data = data.replace(b"x-signalwire-signature", b"x-other-signature")
    [answer] = hostile.exchange(data)
    expected = 404 if tamper == "target_path" else 401
    assert answer.status == expected, str(answer)


@given(field=st.sampled_from(["RecordingSid", "CallSid", "AccountSid", "RecordingUrl",
                              "RecordingStatus", "RecordingDuration", "RecordingChannels"]),
       value=st.one_of(st.text(max_size=40), st.sampled_from([
           "", "in-progress", "absent", "failed", "-1", "99999999999999999999", "1e9",
           "\u00b2", "file:///etc/passwd", "../../../etc/passwd", "s3://b/k", "0x10"])),
       climb=st.booleans(), method=st.sampled_from(["POST", "POST", "GET"]), data=st.data())
def test_signalwire_signed_hostile_fields(hostile: Hostile, field: str, value: str,
                                          climb: bool, method: str,
                                          data: st.DataObject) -> None:
    """Correctly signed callbacks (form POST or query GET) whose RecordingSid or other
    fields climb out of the root or hold odd values answer 200 or a JSON 4xx, never a 500,
    and never write a file (pulls are off)."""
    if climb:
        value = data.draw(hs.escaping_names(str(hostile.workdir))) + value
    params = laml_params(unique(), **{field: value})
    if method == "GET":
        target = LAML_PATH + "?" + urlencode(params)
        raw = request("GET", target, headers=[
            ("host", "x"),
            ("x-signalwire-signature", laml_signature(LAML_KEY, LAML_BASE + target, []))])
    else:
        signature, body = laml_signed(params)
        raw = laml_request(LAML_PATH, body, signature)
    [answer] = hostile.exchange(raw)
    assert answer.status < 500, str(answer)


@given(body=st.one_of(st.binary(max_size=200), st.sampled_from([
           b"a=\xff\xfe", b"%", b"a=%zz&b=%", b"&&&==", b"=" * 1000, b"a" * 70_000,
           b"RecordingSid=x&RecordingSid=y", b"a=b;c=d", b"\x00=\x00"])),
       content_type=st.sampled_from([
           "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=zzz",
           "application/x-www-form-urlencoded; charset=utf-16",
           "application/x-www-form-urlencoded; charset=latin-1",
           "multipart/form-data; boundary=zz", "multipart/form-data", "multipart/form-data; "
           "boundary=" + "b" * 100, "text/plain", "application/json", ""]),
       multipart=st.booleans())
def test_signalwire_broken_form_bodies(hostile: Hostile, body: bytes, content_type: str,
                                       multipart: bool) -> None:
    """Form bodies that are not forms (invalid UTF-8, unknown charsets, broken multipart
    boundaries and parts, oversized) answer a JSON 400, 401 or 413, never a 500."""
    if multipart and content_type.startswith("multipart/form-data; boundary=zz"):
        body = (b"--zz\r\ncontent-disposition: form-data; name=RecordingSid\r\n\r\n" + body
                + b"\r\n--zz\r\ncontent-disposition: form-data; name=f; filename=x\r\n\r\n"
                + body + b"\r\n--zz--\r\n")
    [answer] = hostile.exchange(laml_request(LAML_PATH, body, "bm90LWEtc2lnbmF0dXJl",
                                             content_type=content_type))
    assert answer.status in (400, 401, 413), str(answer)



#: Keys and values of forms with repeated keys (the first sorts before "a"; "é" after "z").
FORM_KEYS = st.sampled_from(["a", "b", "A", "RecordingSid", "é", "a b"])
FORM_VALUES = st.sampled_from(["", "1", "2", "10", "x y", "é", "+1", "a&b"])


@given(form=st.lists(st.tuples(FORM_KEYS, FORM_VALUES), max_size=6),
       signer=st.sampled_from(["twilio", "in_order"]),
       port=st.sampled_from(["", ":443", ":80", ":8443"]))
def test_signalwire_signatures_match_twilio_validator(hostile: Hostile,
                                                      form: list[tuple[str, str]],
                                                      signer: str, port: str) -> None:
    """A SignalWire callback (repeated keys, any order, the URL signed with or without a
    port) is accepted exactly when twilio-python's ``RequestValidator`` accepts it."""
    validator = RequestValidator(LAML_KEY)
    url = LAML_BASE + LAML_PATH
    signed_url = LAML_BASE + port + LAML_PATH
    if signer == "twilio":
        signature = validator.compute_signature(signed_url, MultiDict(form))
    else:  # the values in the order sent (SignalWire's SDK): differs where a key repeats
        signature = laml_signature_in_order(signed_url, form)
    accepted = validator.validate(url, MultiDict(form), signature)
    [answer] = hostile.exchange(laml_request(LAML_PATH, urlencode(form).encode(), signature))
    assert answer.status == (200 if accepted else 401), str(answer)


def laml_signature_in_order(url: str, form: list[tuple[str, str]]) -> str:
    data = url + "".join(k + v for k, v in sorted(form, key=lambda kv: kv[0]))
    digest = hmac.new(LAML_KEY.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()
