"""Sendbird Calls against real ``recsink serve`` processes, a local Sendbird stand-in speaking
the shapes of specs/sendbird.md over HTTP (tests/sendbird_standin.py) and a moto bucket as the
copy target: signed webhooks, polls, copies, reconcile, failures, 429s; and vector SB-1."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from recsink.headers import retry_after
from recsink.sources.sendbird import signature
from tests.conftest import (
    RunningServer,
    api_get,
    exchange,
    make_wav,
    merge,
    stored_files,
    wait_for,
)
from tests.s3support import MotoServer, S3Client, all_objects, s3_config
from tests.sendbird_standin import SendbirdStandIn

# specs/callbacks.md §C.4
SB1 = dict(token="0123456789abcdef0123456789abcdef01234567",
           body=b'{"category":"direct_call:end","occurred_at":1717695600000,'
                b'"application_id":"A1B2C3D4-0000-1111-2222-333344445555","direct_call":'
                b'{"call_id":"11111111-2222-3333-4444-555555555555","end_result":"completed"}}',
           signature="8c8b01908aca6ccb7587f566ac9a536c2bcd5d23f31a23406064b0eabf93ea2b")
TOKEN = SB1["token"]
APP = "A1B2C3D4-0000-1111-2222-333344445555"
COPY_KEYS = {"access_key": "sbcopyaccesskey", "secret_key": "sbcopysecretkey"}


@pytest.fixture
def standin(moto: MotoServer) -> Iterator[SendbirdStandIn]:
    """A Sendbird stand-in on 127.0.0.1 whose copies go to the moto server."""
    server = SendbirdStandIn(TOKEN, moto.url)
    yield server
    server.close()


def sendbird_config(standin: SendbirdStandIn, bucket: str | None, moto: MotoServer,
                    directory: str = "sendbird/", **sendbird: Any) -> dict[str, Any]:
    """``[sendbird]`` for the stand-in, polling fast, copying into ``bucket`` (none:
    no ``[sendbird.copy]``), reconciling only when a test asks."""
    section: dict[str, Any] = {"application_id": APP, "api_token": TOKEN,
                               "api_url": standin.url, "poll_backoff": 0.1,
                               "poll_backoff_max": 0.2, "reconcile_interval": 3600.0}
    if bucket is not None:
        section["copy"] = {"bucket": bucket, "region": "us-east-1", "directory": directory,
                           "endpoint_url": moto.url, **COPY_KEYS}
    return {"sendbird": {**section, **sendbird}}


def event(category: str, **target: str) -> bytes:
    """A webhook body (specs/sendbird.md §1 [I] shape)."""
    inner = ("direct_call", {"call_id": target["call_id"], "end_result": "completed"}) \
        if "call_id" in target else ("room", {"room_id": target["room_id"]})
    return json.dumps({"category": category, "occurred_at": 1717695600000,
                       "application_id": APP, inner[0]: inner[1]}).encode()


def post(server: RunningServer, body: bytes, sig: str | None = "sign") -> Any:
    """POST a webhook to ``/sendbird/calls`` (signed with the token unless ``sig`` is
    given; None: no signature header)."""
    header = "" if sig is None else \
        f"x-sendbird-signature: {signature(TOKEN, body) if sig == 'sign' else sig}\r\n"
    return exchange(server.port, (
        f"POST /sendbird/calls HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"{header}content-length: {len(body)}\r\n\r\n").encode() + body)


def record(server: RunningServer, recording_id: str, status: str | None = None) -> Any:
    """The record of a Sendbird recording (in ``status``, when given), else None."""
    found = api_get(server, f"/v1/recordings?recording_id={recording_id}")["recordings"]
    if found and (status is None or found[0]["status"] == status):
        return found[0]
    return None


def test_sb1_signature_vector() -> None:
    """The signature of vector SB-1 (specs/callbacks.md §C.4) is reproduced."""
    assert signature(SB1["token"], SB1["body"]) == SB1["signature"]


def test_direct_call_end_polls_through_statuses_copies_and_completes(
    start_server: Callable[..., RunningServer], standin: SendbirdStandIn, moto: MotoServer,
    s3: S3Client, bucket: str,
) -> None:
    """A signed ``direct_call:end`` is answered 200 with an empty body and leads to polls;
    the recording's record follows Sendbird's ``recording`` → ``uploading`` →
    ``completed``, is copied once into ``[sendbird.copy]`` and ends ``completed`` with the
    stand-in's exact bytes stored."""
    wav = make_wav(1.0)
    standin.add_call("call-1", {"rec-1": ("recording", wav)})
    server = start_server(**sendbird_config(standin, bucket, moto))
    answer = post(server, event("direct_call:end", call_id="call-1"))
    assert (answer.status, answer.body) == (200, b"")
    seen = [wait_for(lambda: record(server, "rec-1", "recording"))["status"]]
    standin.set_status("rec-1", "uploading")
    seen.append(wait_for(lambda: record(server, "rec-1", "uploading"))["status"])
    standin.set_status("rec-1", "completed")
    done = wait_for(lambda: record(server, "rec-1", "completed"))
    seen.append(done["status"])
    assert seen == ["recording", "uploading", "completed"]
    assert done["sha256"] == hashlib.sha256(wav).hexdigest()
    assert (done["source"], done["call_id"], done["duration_ms"]) == ("sendbird", "call-1", 1000)
    assert done["metadata"]["type"] == "direct_call"
    assert done["started_at"] is not None
    assert done["stopped_at"] is not None
    assert [p.read_bytes() for p in stored_files(server.root)] == [wav]
    [copy] = standin.seen("POST", "/v1/cloud-recordings/rec-1/copy")
    assert copy.body["bucket"] == bucket
    assert copy.body["recording_file_directory"] == "sendbird/"
    assert list(all_objects(s3, bucket)) == [copy_key(standin, "rec-1")]
    assert len(standin.seen("GET", "/v1/direct_calls/call-1")) >= 3
    assert COPY_KEYS["secret_key"] not in server.log_path.read_text()


def copy_key(standin: SendbirdStandIn, recording_id: str) -> str:
    """The key the stand-in's copy API answered for ``recording_id``."""
    [copy] = [r for r in standin.requests
              if r.path == f"/v1/cloud-recordings/{recording_id}/copy" and r.status == 200]
    started = standin.recordings[recording_id].started_at
    stamp = datetime.fromtimestamp(started / 1000, UTC).strftime("%y%m%d_%H%M%S")
    return f"{copy.body.get('recording_file_directory', '')}{stamp}_{recording_id}.wav"


def test_group_call_recording_after_room_deletion_is_adopted_in_recsinks_own_bucket(
    start_server: Callable[..., RunningServer], standin: SendbirdStandIn, moto: MotoServer,
    s3: S3Client, bucket: str, tmp_path: Any,
) -> None:
    """A room's deletion leads to its recording arriving the same way; with the copy
    bucket and directory inside recsink's own S3 storage, the copied object is adopted where
    it is (its sha256 and facts read from it), the bucket holds it once, and ``recsink
    reindex`` adds no second record for it."""
    wav = make_wav(2.0)
    standin.add_room("room-1", {"rec-room": ("completed", wav)})
    config = merge(s3_config(bucket, moto.url, spool_dir=str(tmp_path / "spool")),
                   sendbird_config(standin, bucket, moto, directory="calls/sendbird/"))
    server = start_server(**config)
    assert post(server, event("room:delete", room_id="room-1")).status == 200
    done = wait_for(lambda: record(server, "rec-room", "completed"))
    key = copy_key(standin, "rec-room")
    assert key.startswith("calls/sendbird/")
    assert done["storage_url"] == f"s3://{bucket}/{key}"
    assert done["sha256"] == hashlib.sha256(wav).hexdigest()
    assert (done["call_id"], done["metadata"]["type"], done["duration_ms"]) == (
        "room-1", "room", 2000)
    assert all_objects(s3, bucket) == {key: len(wav)}
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == wav
    assert server.events("pull.adopted")
    # recsink reindex knows the adopted object (no recsink metadata) by its record's key.
    reindexed = subprocess.run(
        [sys.executable, "-m", "recsink", "reindex", "--config", "recsink.toml"],
        cwd=server.workdir, capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(reindexed.stdout) == {
        "seen": 1, "added": 0, "completed": 0, "unchanged": 1, "recomputed": 0}
    assert len(api_get(server, "/v1/recordings?call_id=room-1")["recordings"]) == 1


def test_webhook_resent_three_times_changes_nothing(
    start_server: Callable[..., RunningServer], standin: SendbirdStandIn, moto: MotoServer,
    s3: S3Client, bucket: str,
) -> None:
    """The same signed webhook sent four times (Sendbird's three resends) is answered 200
    each time, queues one poll, and ends as one record, one copy and one stored file."""
    wav = make_wav(0.5)
    standin.add_call("call-resent", {"rec-resent": ("completed", wav)})
    server = start_server(**sendbird_config(standin, bucket, moto))
    body = event("direct_call:end", call_id="call-resent")
    assert [post(server, body).status for _ in range(4)] == [200] * 4
    wait_for(lambda: record(server, "rec-resent", "completed"))
    hooks = wait_for(lambda: len(found := server.events("sendbird.webhook")) == 4 and found)
    assert [h["queued"] for h in hooks] == [True, False, False, False]
    assert len(api_get(server, "/v1/recordings?call_id=call-resent")["recordings"]) == 1
    assert len(standin.seen("POST", "/v1/cloud-recordings/rec-resent/copy")) == 1
    assert len(all_objects(s3, bucket)) == 1
    assert [p.read_bytes() for p in stored_files(server.root)] == [wav]


def test_bad_or_missing_signature_is_401_and_the_token_never_logged(
    start_server: Callable[..., RunningServer], standin: SendbirdStandIn, moto: MotoServer,
) -> None:
    """A webhook with a wrong, missing or other-token signature is refused 401
    ``bad_signature`` (JSON), queues nothing, and no log line holds the API token."""
    standin.add_call("call-forged", {"rec-forged": ("completed", make_wav(0.5))})
    server = start_server(**sendbird_config(standin, None, moto))
    body = event("direct_call:end", call_id="call-forged")
    other = hashlib.sha256(b"another token").hexdigest()[:40]
    for sig in ("0" * 64, None, signature(other, body), signature(TOKEN, body + b" ")):
        answer = post(server, body, sig)
        assert answer.status == 401
        assert answer.json()["error"] == "bad_signature"
    rejected = wait_for(lambda: len(found := server.events("callback.rejected")) == 4 and found)
    assert {line["source"] for line in rejected} == {"sendbird"}
    assert standin.requests == []
    assert TOKEN not in server.log_path.read_text()


def test_reconcile_finds_a_call_whose_webhook_never_arrived(
    start_server: Callable[..., RunningServer], standin: SendbirdStandIn, moto: MotoServer,
    bucket: str, pg_dsn: str,
) -> None:
    """With no webhook at all, the reconcile sweep (on PostgreSQL) lists the last window's
    calls page by page (``start_ts``/``end_ts``, ``next``) and polls the ended call whose
    recording it does not have: it ends ``completed``; a call still going is not polled."""
    wav = make_wav(0.5)
    standin.add_call("call-a", {})
    standin.add_call("call-b", {})
    standin.add_call("call-lost", {"rec-lost": ("completed", wav)})
    standin.add_call("call-going", {"rec-going": ("recording", wav)}, ended_at=0)
    server = start_server(catalog={"url": pg_dsn},
                          **sendbird_config(standin, bucket, moto, reconcile_interval=0.4,
                                            reconcile_window=600.0))
    done = wait_for(lambda: record(server, "rec-lost", "completed"), timeout=30)
    assert done["sha256"] == hashlib.sha256(wav).hexdigest()
    listings = standin.seen("GET", "/v1/direct_calls")
    assert all(int(r.query["end_ts"]) - int(r.query["start_ts"]) == 600 for r in listings)
    assert any(r.query.get("next") for r in listings)
    wait_for(lambda: server.events("sendbird.reconciled"))
    assert not standin.seen("GET", "/v1/direct_calls/call-going")
    assert record(server, "rec-going") is None


def test_recording_sendbird_reports_failed_ends_failed(
    start_server: Callable[..., RunningServer], standin: SendbirdStandIn, moto: MotoServer,
    bucket: str,
) -> None:
    """A recording Sendbird reports ``failed`` ends ``failed`` with the reason, and is never
    copied; its call's completed recording still arrives."""
    wav = make_wav(0.5)
    standin.add_call("call-f", {"rec-bad": ("failed", b""), "rec-good": ("completed", wav)})
    server = start_server(**sendbird_config(standin, bucket, moto))
    assert post(server, event("direct_call:end", call_id="call-f")).status == 200
    failed = wait_for(lambda: record(server, "rec-bad", "failed"))
    assert "sendbird reported the recording failed" in failed["error"]
    wait_for(lambda: record(server, "rec-good", "completed"))
    assert not standin.seen("POST", "/v1/cloud-recordings/rec-bad/copy")
    assert [p.read_bytes() for p in stored_files(server.root)] == [wav]


def test_429_retry_after_is_honoured(
    start_server: Callable[..., RunningServer], standin: SendbirdStandIn, moto: MotoServer,
) -> None:
    """After a 429 with ``Retry-After: 2`` the stand-in's next request comes no earlier than
    2 s later (although ``poll_backoff`` is 0.1 s); the poll then goes on. Without
    ``[sendbird.copy]`` the record ends ``completed`` at Sendbird with no ``storage_url``."""
    standin.add_call("call-429", {"rec-429": ("completed", make_wav(0.5))})
    standin.throttle(1, 2)
    server = start_server(**sendbird_config(standin, None, moto))
    assert post(server, event("direct_call:end", call_id="call-429")).status == 200
    done = wait_for(lambda: record(server, "rec-429", "completed"))
    throttled, after = standin.requests[:2]
    assert (throttled.status, after.status) == (429, 200)
    assert after.at - throttled.at >= 2.0
    assert done["storage_url"] is None
    assert done["sha256"] is None
    assert stored_files(server.root) == []


def test_recording_unsettled_after_poll_max_age_ends_failed(
    start_server: Callable[..., RunningServer], standin: SendbirdStandIn, moto: MotoServer,
) -> None:
    """A recording still ``recording`` at Sendbird ``poll_max_age`` seconds after its call
    ended is given up: polling stops and its record ends ``failed``
    (``sendbird_poll_expired``)."""
    standin.add_call("call-stuck", {"rec-stuck": ("recording", make_wav(0.5))})
    server = start_server(**sendbird_config(standin, None, moto, poll_max_age=0.5))
    assert post(server, event("direct_call:end", call_id="call-stuck")).status == 200
    failed = wait_for(lambda: record(server, "rec-stuck", "failed"))
    assert failed["error"].startswith("sendbird_poll_expired: ")
    [expired] = wait_for(lambda: server.events("sendbird.poll_expired"))
    assert expired["failed"] == 1


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    """``Retry-After`` is delay-seconds or an HTTP date (RFC 9110 §10.2.3); garbage is
    unknown."""
    now = datetime(2024, 6, 6, 17, 40, tzinfo=UTC)
    assert retry_after("7", now) == 7.0
    assert retry_after("Thu, 06 Jun 2024 17:40:30 GMT", now) == 30.0
    assert retry_after("Thu, 06 Jun 2024 17:39:00 GMT", now) == 0.0
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None


async def test_without_settings_the_route_is_not_served(
    make_client: Callable[..., Any],
) -> None:
    """Without ``sendbird.application_id`` and ``api_token`` the webhook route is 404."""
    client: TestClient[Any, Any] = await make_client()
    response = await client.post("/sendbird/calls", data=SB1["body"],
                                 headers={"x-sendbird-signature": SB1["signature"]})
    assert response.status == 404
