"""Sinch notify events and SignalWire RecordingStatusCallbacks against real ``recsink serve``
processes: the test vectors of specs/callbacks.md §E, refusals, status transitions and media
pulls from a real moto S3 server and a real local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import http.server
import ipaddress
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from recsink.config import ConfigError, load_settings
from recsink.egress import is_public
from recsink.sources.laml import signature as laml_signature
from recsink.sources.sinch import ReplayCache
from recsink.sources.sinch import signature as sinch_signature
from tests.azure_support import ACCOUNT, KEY, Azurite
from tests.conftest import (
    CORPUS,
    FIXTURES,
    RunningServer,
    api_get,
    exchange,
    make_wav,
    stored_files,
    wait_for,
)
from tests.s3support import MotoServer, S3Client, TcpProxy

# specs/callbacks.md §A.6 and §B.4
S1 = dict(key="669E367E-6BBA-48AB-AF15-266871C28135", secret="BeIukql3pTKJ8RGL5zo0DA==",
          content_type="application/json", timestamp="2014-09-24T10:59:41Z",
          path="/sinch/callback/ace",
          body=b'{"event":"ace","callid":"822aa4b7-05b4-4d83-87c7-1f835ee0b6f6_257",'
               b'"timestamp":"2014-09-24T10:59:41Z","version":1}',
          authorization="application 669E367E-6BBA-48AB-AF15-266871C28135:"
                        "Tg6fMyo8mj9pYfWQ9ssbx3Tc1BNC87IEygAfLbJqZb4=")
S2 = dict(key="my-key-id", secret="bXkta2V5LXNlY3JldA==",
          content_type="application/json; charset=UTF-8", timestamp="2023-11-22T09:10:11.999Z",
          path="/path/pathParamValue",
          body=b'{"identity":{"type":"number","endpoint":"+33444555666"},"method":"sms"}',
          authorization="Application my-key-id:QP3OzQZVzRZAEev6DBLvJkgpiqyZPuXYsc7oyjUV0K8=")
S4 = dict(key="f00dcafe-abba-c0de-1dea-dabb1ed4caf3",
          secret="cmVjb3JkaW5nLXNpbmstdGVzdC1zZWNyZXQ=",
          content_type="application/json; charset=utf-8",
          timestamp="2024-06-06T17:40:00.1234567Z", path="/sinch/voice/callback",
          body=b'{"event":"notify","callid":"33dd8e62-0ac6-4e0c-a89f-36d121f861f9","version":1,'
               b'"type":"recording_available","destination":'
               b'"s3://my-bucket/voice-recordings/my-recording.mp3"}',
          authorization="Application f00dcafe-abba-c0de-1dea-dabb1ed4caf3:"
                        "9P45joU0TAdgYgjg0Yk/aaYtYY4VggdlzZpb7DbGjq0=")
S5 = dict(key=S4["key"], secret=S4["secret"], content_type="application/json",
          timestamp="2024-06-06T17:39:58Z", path="/sinch/voice/callback",
          body=b'{"event":"notify","callid":"33dd8e62-0ac6-4e0c-a89f-36d121f861f9","version":1,'
               b'"type":"recording_finished"}',
          authorization="application f00dcafe-abba-c0de-1dea-dabb1ed4caf3:"
                        "3XVE1xws5k+FoZKtQmZ/4RUt9w5gdvcOnj+UlPEce/o=")
T1 = dict(key="12345", base="https://mycompany.com", path="/myapp.php",
          target="/myapp.php?foo=1&bar=2",
          params=[("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"),
                  ("Digits", "1234"), ("From", "+14158675309"), ("To", "+18005551212")],
          signature="RSOYDt4T1cUTdK1PDd93/VVr8B8=")
SID = "b3877c40-da60-4998-90ad-b792e984re01"
T2 = dict(key="PSK_recording_sink_test_key_0123456789", base="https://sink.example.com",
          path="/signalwire/recording-status",
          target="/signalwire/recording-status?tenant=acme",
          params=[("AccountSid", "b3877c40-da60-4998-90ad-b792e98472af"),
                  ("CallSid", "b3877c40-da60-4998-90ad-b792e98472ca"),
                  ("RecordingSid", SID),
                  ("RecordingUrl", "https://example.signalwire.com/api/laml/2010-04-01/Accounts/"
                   f"b3877c40-da60-4998-90ad-b792e98472af/Recordings/{SID}"),
                  ("RecordingStatus", "completed"), ("RecordingDuration", "94"),
                  ("RecordingChannels", "1"), ("RecordingSource", "RecordVerb")],
          signature="+CbpJr1MSNJCL2OyLCl6hiJwrXY=")
EVER = 10.0**11  # a timestamp window wide enough for the vectors' historic x-timestamps


def sinch_request(vector: dict[str, Any], **changes: Any) -> bytes:
    """A Sinch callback as the platform sends it; ``changes`` overrides parts of it."""
    v = {**vector, **changes}
    head = (f"POST {v['path']} HTTP/1.1\r\nhost: sink.example.com\r\n"
            f"content-type: {v['content_type']}\r\nx-timestamp: {v['timestamp']}\r\n"
            f"authorization: {v['authorization']}\r\ncontent-length: {len(v['body'])}\r\n\r\n")
    return head.encode() + v["body"]


def signed_sinch(body: bytes, path: str = "/sinch/voice",
                 content_type: str = "application/json") -> bytes:
    """A freshly signed Sinch notify event with S-4's application."""
    timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    sig = sinch_signature(S4["secret"], "POST", body, content_type, timestamp, path)
    return sinch_request({**S4, "path": path, "body": body, "content_type": content_type,
                          "timestamp": timestamp,
                          "authorization": f"application {S4['key']}:{sig}"})


def laml_request(vector: dict[str, Any], signature: str | None = None,
                 method: str = "POST") -> bytes:
    if method == "GET":
        target = vector["target"]
        return (f"GET {target} HTTP/1.1\r\nhost: x\r\n"
                f"x-signalwire-signature: {signature or vector['signature']}\r\n\r\n").encode()
    body = urlencode(vector["params"]).encode()
    return (f"POST {vector['target']} HTTP/1.1\r\nhost: x\r\n"
            f"content-type: application/x-www-form-urlencoded\r\n"
            f"x-signalwire-signature: {signature or vector['signature']}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def sinch_config(vector: dict[str, Any], **sinch: Any) -> dict[str, Any]:
    return {"sinch": {"path": vector["path"], "timestamp_window": EVER,
                      "applications": [{"key": vector["key"], "secret": vector["secret"]}],
                      **sinch}}


def laml_config(vector: dict[str, Any], **laml: Any) -> dict[str, Any]:
    return {"laml": {"path": vector["path"], "signing_key": vector["key"],
                     "public_base_url": vector["base"], **laml}}


@pytest.mark.parametrize("vector", [S1, S2, S4, S5], ids=["S-1", "S-2", "S-4", "S-5"])
def test_sinch_vectors_are_accepted(start_server: Callable[..., RunningServer],
                                    vector: dict[str, Any]) -> None:
    """Sinch's published and our own signed callbacks (§A.6) are accepted: 200, empty body."""
    server = start_server(**sinch_config(vector))
    reply = exchange(server.port, sinch_request(vector))
    assert (reply.status, reply.body) == (200, b"")


def test_sinch_negative_cases_are_refused(start_server: Callable[..., RunningServer]) -> None:
    """A tampered body byte, another Content-Type, a query on the path, a wrong or unknown
    key, a stale timestamp, a bad scheme and a missing header are all refused with 401; the
    refusal is logged without the secret."""
    server = start_server(**sinch_config(S4, timestamp_window=900.0))
    fresh = datetime.now(UTC).isoformat().replace("+00:00", "Z")

    def signed(**parts: Any) -> dict[str, Any]:
        v = {**S4, "timestamp": fresh, **parts}
        sig = sinch_signature(S4["secret"], "POST", v["body"], v["content_type"],
                              v["timestamp"], v["path"])
        return {**v, "authorization": f"Application {S4['key']}:{sig}"}

    good = signed()
    assert exchange(server.port, sinch_request(good)).status == 200
    # a query beside a signature over the bare path is fine: only the path is signed
    assert exchange(server.port, sinch_request(good, path=S4["path"] + "?x=1")).status == 200
    stale = (datetime.now(UTC) - timedelta(minutes=16)).isoformat()
    cases = {
        "tampered body": sinch_request(good, body=good["body"].replace(b"mp3", b"wav")),
        "other content type": sinch_request(good, content_type="application/json"),
        # the canonical resource is the path alone: a signature over path?query is wrong
        "query in the signed path": sinch_request(signed(path=S4["path"] + "?x=1")),
        "wrong key": sinch_request(good, authorization=good["authorization"].replace(
            S4["key"], "00000000-abba-c0de-1dea-dabb1ed4caf3")),
        "stale timestamp": sinch_request(signed(timestamp=stale)),
        "bad scheme": sinch_request(good, authorization=good["authorization"].replace(
            "Application", "Bearer")),
        "no signature": sinch_request(good, authorization="application " + S4["key"]),
    }
    for name, request in cases.items():
        reply = exchange(server.port, request)
        assert reply.status == 401, name
        assert reply.json()["error"] == "bad_signature", name
    server.stop()
    text = server.log_path.read_text()
    assert text.count('"callback.rejected"') == len(cases)
    assert S4["secret"] not in text


def test_sinch_service_scheme_is_accepted(start_server: Callable[..., RunningServer]) -> None:
    """Voice API 2.0's ``service <key>:<signature>`` scheme verifies like ``application``."""
    server = start_server(**sinch_config(S4))
    service = sinch_request(S4, authorization=S4["authorization"].replace(
        "Application", "service"))
    assert exchange(server.port, service).status == 200


@pytest.mark.parametrize("vector", [T1, T2], ids=["T-1", "T-2"])
def test_signalwire_vectors_are_accepted(start_server: Callable[..., RunningServer],
                                         vector: dict[str, Any]) -> None:
    """The Twilio/SignalWire vectors (§B.4) are accepted over real HTTP: 200."""
    server = start_server(**laml_config(vector))
    assert exchange(server.port, laml_request(vector)).status == 200


def test_signalwire_port_quirk_get_variant_and_refusals(
    start_server: Callable[..., RunningServer],
) -> None:
    """A signature made over the URL with an explicit :443 is accepted (T-2p), the GET
    variant is accepted (T-3), ``X-Twilio-Signature`` works; a wrong signature, a tampered
    parameter or a missing header is refused with 401."""
    server = start_server(**laml_config(T2))
    assert exchange(server.port, laml_request(T2, "8imoqiueAsfm9ell0xXikSRIFA0=")).status == 200
    get_target = T2["target"] + "&" + urlencode(T2["params"])
    get = laml_request({**T2, "target": get_target}, "kH2t88Z6OSkoWOAqhGumELMUvc0=", "GET")
    assert exchange(server.port, get).status == 200
    twilio = laml_request(T2).replace(b"x-signalwire-signature", b"X-Twilio-Signature")
    assert exchange(server.port, twilio).status == 200
    tampered = laml_request({**T2, "params": [*T2["params"][:-1], ("RecordingSource", "x")]})
    for request in (laml_request(T2, "AAAAAAAAAAAAAAAAAAAAAAAAAAA="), tampered,
                    laml_request(T2).replace(b"x-signalwire-signature", b"x-other")):
        assert exchange(server.port, request).status == 401


def test_signalwire_statuses_map_and_never_go_back(
    start_server: Callable[..., RunningServer],
) -> None:
    """``in-progress`` → recording, ``completed`` → completed with the call's facts; a late
    ``in-progress`` or a repeat changes nothing; ``absent`` → discarded, ``failed`` →
    failed; one record per RecordingSid."""
    server = start_server(**laml_config(T2))

    def send(sid: str, status: str) -> None:
        params = [(k, sid if k == "RecordingSid" else status if k == "RecordingStatus" else v)
                  for k, v in T2["params"]]
        vector = {**T2, "params": params}
        sig = laml_signature(T2["key"], T2["base"] + T2["target"], params)
        assert exchange(server.port, laml_request(vector, sig)).status == 200

    def record(sid: str) -> dict[str, Any]:
        found: dict[str, Any] = api_get(server, f"/v1/recordings/{sid}")
        return found

    send("R1", "in-progress")
    assert record("R1")["status"] == "recording"
    send("R1", "completed")
    send("R1", "in-progress")
    send("R1", "completed")
    r1 = record("R1")
    assert (r1["status"], r1["duration_ms"], r1["channels"], r1["call_id"],
            r1["account_id"]) == ("completed", 94000, 1, "b3877c40-da60-4998-90ad-b792e98472ca",
                                  "b3877c40-da60-4998-90ad-b792e98472af")
    assert r1["metadata"]["RecordingSource"] == "RecordVerb"
    assert "RecordingUrl" not in r1["metadata"]
    send("R2", "absent")
    send("R3", "failed")
    assert (record("R2")["status"], record("R3")["status"]) == ("discarded", "failed")
    assert len(api_get(server, "/v1/recordings?call_id=b3877c40-da60-4998-90ad-b792e98472ca")[
        "recordings"]) == 3


def test_signalwire_counts_that_are_not_decimal_are_left_unknown(
    start_server: Callable[..., RunningServer],
) -> None:
    """A signed callback whose RecordingDuration / RecordingChannels are not decimal digits
    ("²" passes str.isdigit but not int()) is stored with those facts unknown, not a 500."""
    server = start_server(**laml_config(T2))
    params = [(k, "\u00b2" if k in ("RecordingDuration", "RecordingChannels") else v)
              for k, v in T2["params"]]
    sig = laml_signature(T2["key"], T2["base"] + T2["target"], params)
    assert exchange(server.port, laml_request({**T2, "params": params}, sig)).status == 200
    found = api_get(server, f"/v1/recordings/{SID}")
    assert (found["status"], found["duration_ms"], found["channels"]) == ("completed", None, None)


def test_sinch_events_track_status_and_ignore_unknown_types(
    start_server: Callable[..., RunningServer],
) -> None:
    """``recording_finished`` → uploading; ``recording_available`` → completed with its
    destination; repeats and out-of-order events end the same way; unknown notify types
    (``transcription_available``, ``amd``) answer 200 and change nothing; ``callId`` works."""
    server = start_server(sinch={"applications": [{"key": S4["key"], "secret": S4["secret"]}]})

    def notify(call: str, kind: str, destination: str | None = None, field: str = "callid") -> None:
        body = (f'{{"event":"notify","{field}":"{call}","version":1,"type":"{kind}"'
                + (f',"destination":"{destination}"' if destination else "") + "}").encode()
        assert exchange(server.port, signed_sinch(body)).status == 200

    notify("c1", "recording_finished")
    assert api_get(server, "/v1/recordings?call_id=c1")["recordings"][0]["status"] == "uploading"
    for _ in range(2):
        notify("c1", "recording_available", "s3://b/c1.mp3")
    notify("c1", "recording_finished")
    notify("c2", "recording_available", "azure://acct/rec/c2.mp3", field="callId")
    notify("c2", "recording_finished")
    notify("c2", "transcription_available", "azure://acct/rec/c2.json")
    notify("c2", "amd")
    for call, destination in (("c1", "s3://b/c1.mp3"), ("c2", "azure://acct/rec/c2.mp3")):
        [record] = api_get(server, f"/v1/recordings?call_id={call}")["recordings"]
        assert (record["status"], record["storage_url"], record["source"]) == (
            "completed", destination, "sinch")
    assert server.events("sinch.event_ignored")


def test_sinch_second_destination_of_a_call_is_a_second_recording(
    start_server: Callable[..., RunningServer],
) -> None:
    """A call whose ``recording_available`` names a second destination gets a second record;
    repeats of either event change neither, whatever their order."""
    server = start_server(sinch={"applications": [{"key": S4["key"], "secret": S4["secret"]}]})
    for destination in ("s3://b/c3-a.mp3", "s3://b/c3-b.mp3", "s3://b/c3-a.mp3",
                        "s3://b/c3-b.mp3"):
        body = ('{"event":"notify","callid":"c3","version":1,"type":"recording_available",'
                f'"destination":"{destination}"}}').encode()
        assert exchange(server.port, signed_sinch(body)).status == 200
    records = api_get(server, "/v1/recordings?call_id=c3")["recordings"]
    assert sorted((r["status"], r["storage_url"]) for r in records) == [
        ("completed", "s3://b/c3-a.mp3"), ("completed", "s3://b/c3-b.mp3")]


# -- callback bodies, timestamps, replays, repeated keys (issue 11) --------------------------

CALLBACK_CAP = 64 * 1024


@pytest.mark.parametrize("source", ["sinch", "laml"])
def test_chunked_callback_body_is_refused_at_the_cap(
    start_server: Callable[..., RunningServer], source: str,
) -> None:
    """A chunked 1 MiB callback body is refused with 413 ``too_large`` as soon as it passes
    64 KiB: the answer comes while 959 of its 1024 chunks are still unsent."""
    server = start_server(server={"body_idle_timeout": 5.0}, **sinch_config(S4),
                          **laml_config(T2))
    path, content_type = ((S4["path"], "application/json") if source == "sinch"
                          else (T2["target"], "application/x-www-form-urlencoded"))
    head = (f"POST {path} HTTP/1.1\r\nhost: sink.example.com\r\n"
            f"content-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n").encode()
    chunk = b"400\r\n" + b"a" * 1024 + b"\r\n"  # 1 KiB of body per chunk
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + chunk * 65)  # 65 KiB of the 1 MiB body; the rest is never sent
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        answer = json.loads(response.read())
    assert (response.status, answer["error"]) == (413, "too_large")


@pytest.mark.parametrize("source", ["sinch", "laml"])
def test_callback_content_length_over_the_cap_is_refused_unread(
    start_server: Callable[..., RunningServer], source: str,
) -> None:
    """A callback announcing a Content-Length over 64 KiB is refused with 413 before any of
    its body is sent."""
    server = start_server(**sinch_config(S4), **laml_config(T2))
    path = S4["path"] if source == "sinch" else T2["target"]
    head = (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {1024 * 1024}\r\n\r\n").encode()
    reply = exchange(server.port, head)
    assert (reply.status, reply.json()["error"]) == (413, "too_large")


def sinch_at(timestamp: datetime, body: bytes) -> bytes:
    """S-4's application signing ``body`` at ``timestamp``."""
    stamp = timestamp.isoformat().replace("+00:00", "Z")
    sig = sinch_signature(S4["secret"], "POST", body, S4["content_type"], stamp, S4["path"])
    return sinch_request({**S4, "body": body, "timestamp": stamp,
                          "authorization": f"application {S4['key']}:{sig}"})


def test_sinch_timestamp_in_the_future_is_refused(
    start_server: Callable[..., RunningServer],
) -> None:
    """An ``x-timestamp`` more than ``sinch.timestamp_future`` (60 s) ahead of now is
    refused with 401 ``bad_signature`` saying so, even inside ``timestamp_window``; 20 s
    ahead (a clock running a little fast) is accepted."""
    server = start_server(**sinch_config(S4, timestamp_window=900.0))
    body = S5["body"]
    now = datetime.now(UTC)
    ahead = exchange(server.port, sinch_at(now + timedelta(seconds=120), body))
    assert (ahead.status, ahead.json()["error"]) == (401, "bad_signature")
    assert "in the future" in ahead.json()["detail"]
    assert exchange(server.port, sinch_at(now + timedelta(seconds=20), body)).status == 200


def test_sinch_replay_is_answered_without_effect(
    start_server: Callable[..., RunningServer],
) -> None:
    """A signed callback sent again inside the window is answered 200, logged
    ``sinch.replayed`` and not applied again; the same event signed anew is applied."""
    server = start_server(**sinch_config(S4, timestamp_window=900.0))
    now = datetime.now(UTC)
    finished = sinch_at(now, S5["body"])
    available = sinch_at(now, S4["body"])
    for request in (finished, available, finished, available):
        assert exchange(server.port, request).status == 200
    assert exchange(server.port, sinch_at(now - timedelta(seconds=1), S5["body"])).status == 200
    replays = server.events("sinch.replayed")
    assert len(replays) == 2
    assert [len(server.events(f"sinch.{kind}")) for kind in (
        "recording_finished", "recording_available")] == [2, 1]
    [record] = api_get(server, "/v1/recordings?call_id=33dd8e62-0ac6-4e0c-a89f-36d121f861f9")[
        "recordings"]
    assert record["status"] == "completed"


def test_sinch_replay_cache_is_bounded() -> None:
    """The replay cache forgets a signature ``ttl`` seconds after it was first seen, and
    holds at most ``size`` of them (the oldest go first)."""
    clock = [0.0]
    cache = ReplayCache(ttl=10.0, size=3, clock=lambda: clock[0])
    assert [cache.claim(t) for t in (b"a", b"a", b"b", b"c")] == [True, False, True, True]
    assert cache.claim(b"d")  # full: "a" goes
    assert (cache.claim(b"a"), cache.claim(b"c")) == (True, False)
    clock[0] = 10.0
    assert cache.claim(b"c")


def signalwire_in_order(key: str, url: str, params: list[tuple[str, str]]) -> str:
    """A signature over the values of a repeated key in the order sent, not de-duplicated
    (SignalWire's SDK validator; twilio-python sorts and de-duplicates them)."""
    data = url + "".join(k + v for k, v in sorted(params, key=lambda kv: kv[0]))
    return base64.b64encode(hmac.new(key.encode(), data.encode(), hashlib.sha1).digest()).decode()


REPEATED_FORMS = [
    [("a", "1"), ("a", "2"), ("b", "3")],
    [("a", "2"), ("a", "1"), ("b", "3")],
    [("b", "3"), ("a", "1"), ("a", "1")],
    [("a", "x"), ("a", ""), ("a", "x"), ("RecordingSid", "R")],
]


def test_signalwire_repeated_keys_match_twilio_validator(
    start_server: Callable[..., RunningServer],
) -> None:
    """Forms with a repeated key (``a=2&a=1&b=3``, ``a=1&a=1``, …) are accepted exactly when
    twilio-python's ``RequestValidator`` accepts the signature: its own (values sorted and
    de-duplicated) yes, one over the values in the order sent only where that is the same."""
    server = start_server(**laml_config(T2))
    url = T2["base"] + T2["target"]
    validator = RequestValidator(T2["key"])
    verdicts = []
    for form in REPEATED_FORMS:
        for sig in (validator.compute_signature(url, MultiDict(form)),
                    signalwire_in_order(T2["key"], url, form)):
            accepted = validator.validate(url, MultiDict(form), sig)
            reply = exchange(server.port, laml_request({**T2, "params": form}, sig))
            assert reply.status == (200 if accepted else 401), (form, sig)
            verdicts.append(accepted)
    assert verdicts.count(False) == 3  # the in-order signatures of forms 2, 3 and 4


@pytest.mark.parametrize("base", ["https://sink.example.com", "https://sink.example.com:8443",
                                  "http://sink.example.com"])
def test_signalwire_ports_match_twilio_validator(
    start_server: Callable[..., RunningServer], base: str,
) -> None:
    """A signature over the public URL with its port, without it, with the default port or
    with another port is accepted exactly when twilio-python's ``RequestValidator`` accepts
    it (it tries the URL without its port, and with its port or the default one)."""
    server = start_server(**laml_config({**T2, "base": base}))
    url = base + T2["target"]
    validator = RequestValidator(T2["key"])
    form = MultiDict(T2["params"])
    host = base.rsplit(":", 1)[0] if base.count(":") == 2 else base
    verdicts = []
    for signed_url in (url, host + T2["target"], f"{host}:443{T2['target']}",
                       f"{host}:80{T2['target']}", f"{host}:8443{T2['target']}",
                       f"{host}:9443{T2['target']}"):
        sig = validator.compute_signature(signed_url, form)
        accepted = validator.validate(url, form, sig)
        reply = exchange(server.port, laml_request(T2, sig))
        assert reply.status == (200 if accepted else 401), signed_url
        verdicts.append(accepted)
    assert verdicts.count(True) == 3  # the URL as called is one of the other two


# -- media pulls ----------------------------------------------------------------------------


def test_sinch_pull_from_s3_in_either_order(
    start_server: Callable[..., RunningServer], moto: MotoServer, s3: S3Client, bucket: str,
) -> None:
    """With pulling on, ``recording_finished`` + ``recording_available`` naming an s3://
    object end with that object copied byte-identical into recsink's storage and the record
    ``completed``; sending the pair again, or in reverse order, ends the same way."""
    mp3 = (FIXTURES / "01-vm-and.mp3").read_bytes()
    s3.put_object(Bucket=bucket, Key="voice-recordings/one.mp3", Body=mp3)
    s3.put_object(Bucket=bucket, Key="voice-recordings/two.mp3", Body=mp3 + b"\0")
    server = start_server(
        sinch={"pull": True, "applications": [{"key": S4["key"], "secret": S4["secret"]}]},
        fetch={"backoff": 0.2, "buckets": [{"url": f"s3://{bucket}", "endpoint_url": moto.url,
                                            "credentials": "testing:testing:us-east-1"}]})

    def notify(call: str, kind: str, name: str | None = None) -> None:
        destination = f',"destination":"s3://{bucket}/voice-recordings/{name}"' if name else ""
        body = (f'{{"event":"notify","callid":"{call}","version":1,"type":"{kind}"'
                f"{destination}}}").encode()
        assert exchange(server.port, signed_sinch(body)).status == 200

    def completed(call: str) -> dict[str, Any] | None:
        found = api_get(server, f"/v1/recordings?call_id={call}")["recordings"]
        return found[0] if found and found[0]["status"] == "completed" else None

    for _ in range(2):
        notify("in-order", "recording_finished")
        notify("in-order", "recording_available", "one.mp3")
        notify("reversed", "recording_available", "two.mp3")
        notify("reversed", "recording_finished")
    first = wait_for(lambda: completed("in-order"))
    second = wait_for(lambda: completed("reversed"))
    assert first["sha256"] == hashlib.sha256(mp3).hexdigest()
    assert second["sha256"] == hashlib.sha256(mp3 + b"\0").hexdigest()
    assert first["pull"]["state"] == "done"
    assert first["metadata"]["destination"] == f"s3://{bucket}/voice-recordings/one.mp3"
    assert first["duration_ms"] == 936
    assert sorted(p.read_bytes() for p in stored_files(server.root)) == [mp3, mp3 + b"\0"]
    for call in ("in-order", "reversed"):
        assert len(api_get(server, f"/v1/recordings?call_id={call}")["recordings"]) == 1


def test_sinch_pull_from_azure(
    start_server: Callable[..., RunningServer], azurite: Azurite,
) -> None:
    """An ``azure://<account>/<container>/<blob>`` destination is pulled with the configured
    account key; another account is refused for lack of credentials, and another container
    of the account when ``fetch.allow`` lists the account's containers."""
    from azure.storage.blob import BlobServiceClient

    wav = make_wav(2.0)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container(f"rec-{uuid.uuid4().hex[:8]}")
    container.upload_blob("calls/a.wav", wav)
    other = service.create_container(f"other-{uuid.uuid4().hex[:8]}")
    other.upload_blob("calls/a.wav", wav)
    server = start_server(
        sinch={"pull": True, "applications": [{"key": S4["key"], "secret": S4["secret"]}]},
        fetch={"backoff": 0.1, "max_attempts": 2,
               "allow": [f"azure://{ACCOUNT}/{container.container_name}"],
               "azure": [{"account": ACCOUNT, "account_key": KEY,
                          "endpoint_url": azurite.endpoint}]})
    for call, location in (("az", f"{ACCOUNT}/{container.container_name}"),
                           ("az-unknown", f"someoneelse/{container.container_name}"),
                           ("az-other", f"{ACCOUNT}/{other.container_name}")):
        body = (f'{{"event":"notify","callid":"{call}","version":1,'
                f'"type":"recording_available","destination":'
                f'"azure://{location}/calls/a.wav"}}').encode()
        assert exchange(server.port, signed_sinch(body)).status == 200
    done = wait_for(lambda: (r := api_get(server, "/v1/recordings?call_id=az")["recordings"][0])[
        "status"] == "completed" and r)
    assert done["sha256"] == hashlib.sha256(wav).hexdigest()
    for call, reason in (("az-unknown", "no [[fetch.azure]] credentials"),
                         ("az-other", "is not in fetch.allow")):
        failed = wait_for(lambda c=call: (r := api_get(server, f"/v1/recordings?call_id={c}")[
            "recordings"][0])["status"] == "failed" and r)
        assert failed["pull"]["error"].startswith("pull_refused: ")
        assert reason in failed["error"]
    assert [p.read_bytes() for p in stored_files(server.root)] == [wav]


#: ``fetch.allow`` for pulls from the local media servers below (loopback is refused
#: unless listed).
LOOPBACK = ["127.0.0.1/32"]


class MediaServer(http.server.ThreadingHTTPServer):
    """A local HTTP server for RecordingUrl pulls: answers 500 (with ``error_body``)
    ``failures`` times, then the file; counts requests. With ``redirect`` set it answers
    every request with a 302 to it; with ``trickle`` it sends the file, then one more byte
    every ``trickle`` seconds until closed (a tarpit)."""

    def __init__(self, body: bytes, failures: int = 0, *, error_body: bytes = b"",
                 redirect: str | None = None, trickle: float | None = None) -> None:
        self.body, self.failures, self.requests = body, failures, 0
        self.error_body, self.redirect, self.trickle = error_body, redirect, trickle
        self.closing = threading.Event()
        super().__init__(("127.0.0.1", 0), _MediaHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()
        self.thread.join()


class _MediaHandler(http.server.BaseHTTPRequestHandler):
    server: MediaServer

    def do_GET(self) -> None:
        self.server.requests += 1
        if self.server.redirect is not None:
            self.send_response(302)
            self.send_header("Location", self.server.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.server.requests <= self.server.failures:
            self.send_response(500)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(self.server.error_body)))
            self.end_headers()
            self.wfile.write(self.server.error_body)
            return
        if not urlsplit(self.path).path.endswith(".wav"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        more = 10**6 if self.server.trickle else 0
        self.send_header("Content-Length", str(len(self.server.body) + more))
        self.end_headers()
        self.wfile.write(self.server.body)
        if self.server.trickle:
            self.wfile.flush()
            # the tarpit's pace, not a test's synchronisation: a byte per interval until closed
            while not self.server.closing.wait(self.server.trickle):
                try:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                except OSError:  # recsink gave up
                    return

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def media() -> Iterator[Callable[..., MediaServer]]:
    servers: list[MediaServer] = []

    def start(body: bytes, failures: int = 0, **options: Any) -> MediaServer:
        servers.append(MediaServer(body, failures, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def completed_callback(recording_url: str, sid: str = SID) -> bytes:
    params = [(k, recording_url if k == "RecordingUrl" else sid if k == "RecordingSid" else v)
              for k, v in T2["params"]]
    sig = laml_signature(T2["key"], T2["base"] + T2["target"], params)
    return laml_request({**T2, "params": params}, sig)


def corpus_wav() -> bytes:
    """A corpus recording when the corpus is here, else a generated one."""
    path = CORPUS / "wav" / "05-to-call-this-number.wav"
    return path.read_bytes() if path.exists() else make_wav(1.5)


def test_signalwire_pull_survives_server_errors(
    start_server: Callable[..., RunningServer], media: Callable[..., MediaServer],
) -> None:
    """A signed ``completed`` callback whose RecordingUrl serves a recording (after three
    500s) ends with that file stored byte-identical and the record ``completed``."""
    wav = corpus_wav()
    source = media(wav, failures=3)
    server = start_server(**laml_config(T2, pull=True),
                          fetch={"backoff": 0.2, "allow": LOOPBACK})
    assert exchange(server.port, completed_callback(f"{source.url}/rec/{SID}")).status == 200
    record = wait_for(lambda: (r := api_get(server, f"/v1/recordings/{SID}"))["status"]
                      == "completed" and r, timeout=30)
    assert source.requests == 4
    assert record["sha256"] == hashlib.sha256(wav).hexdigest()
    assert record["pull"] == {"state": "done", "attempts": 4, "next_attempt_at": None,
                              "error": None}
    assert [p.read_bytes() for p in stored_files(server.root)] == [wav]
    assert len(server.events("pull.retry")) == 3
    assert f"/rec/{SID}" not in server.log_path.read_text()  # media URLs are secrets


def test_signalwire_pull_that_never_answers_fails_with_the_reason(
    start_server: Callable[..., RunningServer], media: Callable[..., MediaServer],
) -> None:
    """When RecordingUrl never answers, the pull gives up after ``fetch.max_attempts`` and
    the record ends ``failed`` with the reason; nothing is stored."""
    silent = media(b"")
    with TcpProxy(("127.0.0.1", silent.server_address[1])) as stalled:
        stalled.stall()
        server = start_server(**laml_config(T2, pull=True),
                              fetch={"backoff": 0.1, "max_attempts": 3, "idle_timeout": 0.5,
                                     "connect_timeout": 0.5, "allow": LOOPBACK})
        assert exchange(server.port, completed_callback(f"{stalled.url}/rec/{SID}")).status == 200
        record = wait_for(lambda: (r := api_get(server, f"/v1/recordings/{SID}"))["status"]
                          == "failed" and r, timeout=30)
    assert record["pull"]["state"] == "failed"
    assert record["pull"]["attempts"] == 3
    assert record["error"].startswith("pull failed")
    assert "127.0.0.1" in record["error"]
    assert stored_files(server.root) == []


def test_pending_pulls_survive_a_restart(
    start_server: Callable[..., RunningServer], media: Callable[..., MediaServer],
) -> None:
    """A pull still pending when recsink stops is picked up again after a restart."""
    wav = make_wav(1.0)
    source = media(wav, failures=10**6)  # failing for now
    server = start_server(**laml_config(T2, pull=True),
                          fetch={"backoff": 0.2, "allow": LOOPBACK})
    assert exchange(server.port, completed_callback(f"{source.url}/rec/{SID}")).status == 200
    wait_for(lambda: server.events("pull.retry"))
    server.stop()
    source.failures = 0
    restarted = start_server(**laml_config(T2, pull=True),
                             fetch={"backoff": 0.2, "allow": LOOPBACK})
    wait_for(lambda: api_get(restarted, f"/v1/recordings/{SID}")["status"] == "completed",
             timeout=30)
    assert [p.read_bytes() for p in stored_files(restarted.root)] == [wav]


# -- where pulls may go (fetch.allow, recsink/egress.py) ------------------------------------


def pull_settled(server: RunningServer, sid: str = SID) -> dict[str, Any] | None:
    """The record once its pull is over (completed or failed), else None."""
    record: dict[str, Any] = api_get(server, f"/v1/recordings/{sid}")
    return record if record.get("pull", {}).get("state") in ("done", "failed") else None


@pytest.mark.parametrize(("host", "allow"), [
    ("127.0.0.1", []), ("localhost", []), ("localhost", ["localhost"]),
    ("127.0.0.1", ["10.0.0.0/8", "media.example.com"]),
], ids=["loopback-address", "name-of-loopback", "listed-name-of-loopback", "not-listed"])
def test_pull_to_a_private_address_is_refused_before_any_request(
    start_server: Callable[..., RunningServer], media: Callable[..., MediaServer],
    host: str, allow: list[str],
) -> None:
    """A signed callback whose RecordingUrl is a loopback address, or a name resolving to
    one (checked after DNS), is refused unless a listed network covers it: the server there
    gets no request, the record ends ``failed`` at once with ``pull_refused`` and no
    retries, and neither the API nor the log shows the URL's path or query."""
    source = media(make_wav(1.0))
    server = start_server(**laml_config(T2, pull=True), fetch={"backoff": 0.1, "allow": allow})
    port = source.server_address[1]
    url = f"http://{host}:{port}/rec/{SID}.wav?Signature=SeCrEtSiG"
    assert exchange(server.port, completed_callback(url)).status == 200
    record = wait_for(lambda: source.requests or pull_settled(server))
    assert source.requests == 0
    assert record["status"] == "failed"
    assert record["pull"]["attempts"] == 1
    assert record["pull"]["error"].startswith("pull_refused: ")
    assert host in record["error"]
    [refusal] = server.events("pull.refused")
    assert refusal["location"] == f"http://{host}"
    assert not server.events("pull.retry")
    for text in (str(record), server.log_path.read_text()):
        assert "SeCrEtSiG" not in text
        assert "/rec/" not in text


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/x.wav", "http://localhost:{port}/x.wav",
    "http://[::ffff:127.0.0.1]:{port}/x.wav", "file:///etc/passwd",
], ids=["other-port", "name", "ipv4-mapped", "file"])
def test_redirect_to_a_disallowed_location_is_refused(
    start_server: Callable[..., RunningServer], media: Callable[..., MediaServer], target: str,
) -> None:
    """A redirect from an allowed ``host:port`` to a location ``fetch.allow`` does not
    cover is refused before it is followed: the second server gets no request."""
    wav = make_wav(1.0)
    inner = media(wav)
    outer = media(b"", redirect=target.format(port=inner.server_address[1]))
    server = start_server(**laml_config(T2, pull=True),
                          fetch={"backoff": 0.1,
                                 "allow": [f"127.0.0.1:{outer.server_address[1]}"]})
    assert exchange(server.port, completed_callback(f"{outer.url}/rec/{SID}.wav")).status == 200
    record = wait_for(lambda: inner.requests or pull_settled(server))
    assert (inner.requests, outer.requests) == (0, 1)
    assert record["status"] == "failed"
    assert record["pull"]["error"].startswith("pull_refused: ")
    assert stored_files(server.root) == []


def test_redirect_within_the_allowed_hosts_is_followed(
    start_server: Callable[..., RunningServer], media: Callable[..., MediaServer],
) -> None:
    """A redirect to a location ``fetch.allow`` covers (SignalWire's media URLs redirect
    once) is followed, and the recording is stored."""
    wav = make_wav(1.0)
    inner = media(wav)
    outer = media(b"", redirect=f"{inner.url}/signed/media.wav?X-Amz-Signature=abc")
    server = start_server(**laml_config(T2, pull=True), fetch={"allow": LOOPBACK})
    assert exchange(server.port, completed_callback(f"{outer.url}/rec/{SID}")).status == 200
    record = wait_for(lambda: pull_settled(server))
    assert (record["status"], record["sha256"]) == ("completed", hashlib.sha256(wav).hexdigest())
    assert (outer.requests, inner.requests) == (1, 1)


MARKER = b"ZQXJ7K9W-VPLMQ4RT-XYGH2N"


@pytest.mark.parametrize("answer", ["500", "200-not-audio"])
def test_pull_errors_never_show_what_the_source_answered(
    start_server: Callable[..., RunningServer], media: Callable[..., MediaServer], answer: str,
) -> None:
    """The reason a pull failed, as ``/v1/recordings/{id}`` and the log show it, gives the
    status or a generic reason, never bytes of the source's answer (a 500's body, or the
    start of a 200 that is not audio)."""
    source = (media(b"", failures=10**6, error_body=MARKER) if answer == "500"
              else media(MARKER + b" " * 64))
    server = start_server(**laml_config(T2, pull=True),
                          fetch={"backoff": 0.1, "max_attempts": 2, "allow": LOOPBACK})
    assert exchange(server.port, completed_callback(f"{source.url}/rec/{SID}.wav")).status == 200
    record = wait_for(lambda: pull_settled(server))
    assert record["status"] == "failed"
    expected = "HTTP 500" if answer == "500" else "unsupported_format"
    assert expected in record["pull"]["error"]
    shown = exchange(server.port, f"GET /v1/recordings/{SID} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    for text in (shown.body, server.log_path.read_bytes()):
        for start in range(len(MARKER) - 3):  # no four bytes of it, in any form
            assert MARKER[start:start + 4] not in text
            assert repr(MARKER[start:start + 4])[2:-1].encode() not in text


def test_pull_that_trickles_past_the_deadline_fails_and_keeps_nothing(
    start_server: Callable[..., RunningServer], media: Callable[..., MediaServer],
) -> None:
    """A source that keeps sending a byte every half second (well inside the idle timeout)
    holds a pull no longer than ``fetch.deadline``: the attempt fails with
    ``pull_deadline`` and nothing of it is kept."""
    source = media(make_wav(1.0)[:44], trickle=0.5)  # a WAV head, then a byte at a time
    server = start_server(**laml_config(T2, pull=True),
                          fetch={"max_attempts": 1, "idle_timeout": 30, "deadline": 2,
                                 "allow": LOOPBACK})
    assert exchange(server.port, completed_callback(f"{source.url}/rec/{SID}.wav")).status == 200
    record = wait_for(lambda: pull_settled(server), timeout=30)
    assert record["status"] == "failed"
    assert record["pull"]["error"].startswith("pull_deadline: ")
    assert [p for p in server.root.rglob("*") if p.is_file()] == []


def test_bucket_not_named_by_the_operator_is_never_read_with_recsinks_credentials(
    start_server: Callable[..., RunningServer], media: Callable[..., MediaServer],
    moto: MotoServer, s3: S3Client, bucket: str, tmp_path: Path,
) -> None:
    """An ``s3://`` destination whose bucket is neither in ``fetch.buckets`` nor in
    ``fetch.allow`` is refused without a request to S3, although recsink holds AWS
    credentials (the AWS chain, here pointed at a counting server); a bucket listed in
    ``fetch.allow`` is read with them."""
    mp3 = (FIXTURES / "01-vm-and.mp3").read_bytes()
    s3.put_object(Bucket=bucket, Key="voice/allowed.mp3", Body=mp3)
    counting = media(b"")
    chain = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
             "AWS_CONFIG_FILE": str(tmp_path / "none"),
             "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    sinch = {"pull": True, "applications": [{"key": S4["key"], "secret": S4["secret"]}]}

    def notify(server: RunningServer, call: str, destination: str) -> dict[str, Any]:
        body = (f'{{"event":"notify","callid":"{call}","version":1,'
                f'"type":"recording_available","destination":"{destination}"}}').encode()
        assert exchange(server.port, signed_sinch(body)).status == 200

        def settled() -> dict[str, Any] | None:
            [record] = api_get(server, f"/v1/recordings?call_id={call}")["recordings"]
            return record if record["pull"]["state"] in ("done", "failed") else None

        return wait_for(lambda: counting.requests or settled())

    refusing = start_server("refusing", env={**chain, "AWS_ENDPOINT_URL": counting.url},
                            sinch=sinch, fetch={"backoff": 0.1})
    record = notify(refusing, "victim", "s3://someone-elses-bucket/secret.mp3")
    assert counting.requests == 0
    assert record["status"] == "failed"
    assert record["pull"]["error"].startswith("pull_refused: ")
    assert "fetch.allow" in record["pull"]["error"]

    allowing = start_server("allowing", env={**chain, "AWS_ENDPOINT_URL": moto.url},
                            sinch=sinch, fetch={"allow": [f"s3://{bucket}"]})
    record = notify(allowing, "allowed", f"s3://{bucket}/voice/allowed.mp3")
    assert (record["status"], record["sha256"]) == ("completed", hashlib.sha256(mp3).hexdigest())


@pytest.mark.parametrize(("entry", "complaint"), [
    ("10.0.0.1/8", "host bits set"), ("http://media.example.com", "unknown scheme"),
    ("s3://bucket/key", "s3://bucket"), ("azure://account", "azure://account/container"),
    ("media.example.com:99999", "port"), ("media example.com", "not a host name"),
])
def test_bad_fetch_allow_entries_are_refused_at_load(tmp_path: Path, entry: str,
                                                    complaint: str) -> None:
    """A ``fetch.allow`` entry that is no host, host:port, network or bucket stops the
    configuration from loading, naming the key, the entry and what is wrong."""
    path = tmp_path / "recsink.toml"
    path.write_text(f"[fetch]\nallow = [\"127.0.0.1/32\", {entry!r}]\n".replace("'", '"'))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: fetch.allow: ")
    assert entry in message
    assert complaint in message


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False),
    ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("255.255.255.255", False), ("::1", False), ("::", False),
    ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:169.254.169.254", False), ("64:ff9b::a00:1", False), ("2002:7f00:1::1", False),
    ("ff0e::1", False),
])
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    """Loopback, private, link-local, CGNAT, unspecified, multicast and reserved addresses,
    and IPv6 forms of them (IPv4-mapped, NAT64, 6to4), are not public."""
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("recording_url", [
    "http://media.example.com:99999/Accounts/PRIVATE-PATH/Recordings/RE1?Sig=PRIVATE-QUERY",
    "http://user:PRIVATE-PASSWORD@media.example.com:0x/Recordings/PRIVATE-PATH",
    "https://media.example.com/Recordings/PRIVATE PATH?Sig=PRIVATE-QUERY",
    "http://user:PRIVATE-PASSWORD@[::1/PRIVATE-PATH?Sig=PRIVATE-QUERY",
], ids=["bad-port", "bad-host", "space", "unclosed-ipv6"])
def test_a_failed_pull_never_shows_its_media_url(
    start_server: Callable[..., RunningServer], recording_url: str,
) -> None:
    """A RecordingUrl the pull cannot even request fails the record with a reason that
    shows no part of the URL but its scheme and host: not in the API's errors, not in the
    log (SignalWire media URLs open without authentication)."""
    server = start_server(**laml_config(T2, pull=True), fetch={"max_attempts": 1})
    assert exchange(server.port, completed_callback(recording_url)).status == 200
    record = wait_for(lambda: (r := api_get(server, f"/v1/recordings/{SID}"))["status"]
                      == "failed" and r, timeout=30)
    shown = json.dumps(record) + server.log_path.read_text(encoding="utf-8")
    assert record["pull"]["error"], record
    for private in ("PRIVATE-PATH", "PRIVATE PATH", "PRIVATE-QUERY", "PRIVATE-PASSWORD"):
        assert private not in shown, (private, record["pull"]["error"])
