"""Uploads through the real app (``create_app``) on the aiohttp test server: responses,
records, files, and that bad input loses nothing and leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests import kazoo_wire as wire
from tests.conftest import ACCOUNT, FIXTURES, TESTBODY, make_wav, stored_files

Client = TestClient[Any, Any]
PATH_A = "/kazoo/call_recording_c1%40pbx.mp3"


def root_of(client: Client) -> Path:
    from recsink import state

    return client.app[state.SETTINGS].storage.disk.root


RID = "202403-00000000000000000000000000000001"


def query(recording_id: str | None = RID, **extra: str) -> dict[str, str]:
    q = {"call_id": "c1@pbx", "account_id": ACCOUNT, "start": "63877471200",
         "duration_ms": "1000", **extra}
    if recording_id:
        q["recording_id"] = recording_id
    return q


async def records(client: Client, **params: str) -> list[dict[str, Any]]:
    reply = await client.get("/v1/recordings", params=params)
    assert reply.status == 200
    found: list[dict[str, Any]] = (await reply.json())["recordings"]
    return found


async def test_put_and_post_raw_bodies_are_stored(client: Client) -> None:
    """PUT and POST of raw audio answer 201 with the record and store the exact bytes."""
    wav = make_wav(1.0)
    put = await client.put(PATH_A, data=wav, params=query("202403-" + "a" * 32),
                           headers={"Content-Type": "audio/wav"})
    post = await client.post(PATH_A, data=TESTBODY, params=query("202403-" + "b" * 32),
                             headers={"Content-Type": "audio/mpeg"})
    assert (put.status, post.status) == (201, 201)
    wav_record, mp3_record = await put.json(), await post.json()
    assert (wav_record["format"], wav_record["media_type"]) == ("wav", "audio/wav")
    assert (wav_record["duration_ms"], wav_record["sample_rate"], wav_record["channels"]) == (
        1000, 8000, 1)
    assert wav_record["sha256"] == hashlib.sha256(wav).hexdigest()
    assert mp3_record["format"] == "mp3"
    assert sorted(p.read_bytes() for p in stored_files(root_of(client))) == sorted([wav, TESTBODY])


async def test_repeat_answers_200_and_writes_nothing(client: Client) -> None:
    """A repeat of a stored recording id answers 200 with the existing record, unread."""
    first = await client.put(PATH_A, data=TESTBODY, params=query())
    files = stored_files(root_of(client))
    again = await client.put(PATH_A, data=b"different bytes entirely", params=query())
    assert (first.status, again.status) == (201, 200)
    assert (await again.json())["id"] == (await first.json())["id"]
    assert stored_files(root_of(client)) == files
    assert files[0].read_bytes() == TESTBODY


async def test_same_call_different_content_is_a_second_recording(client: Client) -> None:
    """Without a recording id, the same call id with other bytes is kept as a second
    recording (path C); the same bytes again are a duplicate."""
    one, two = make_wav(0.5, freq=440), make_wav(0.5, freq=880)
    replies = [await client.put("/kazoo/leg-1.wav", data=body) for body in (one, two, one)]
    assert [r.status for r in replies] == [201, 201, 200]
    bodies = [await r.json() for r in replies]
    assert bodies[0]["id"] != bodies[1]["id"]
    assert bodies[2]["id"] == bodies[0]["id"]
    assert sorted(p.read_bytes() for p in stored_files(root_of(client))) == sorted([one, two])
    assert {r["call_id"] for r in await records(client, call_id="leg-1")} == {"leg-1"}


async def test_concurrent_duplicates_store_one_copy(client: Client) -> None:
    """Twenty concurrent uploads of one recording id end as one file: one 201, the rest 200."""
    wav = make_wav(0.3)
    replies = await asyncio.gather(
        *[client.put(PATH_A, data=wav, params=query()) for _ in range(20)])
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] * 19 + [201]
    assert len({(await r.json())["id"] for r in replies}) == 1
    assert [p.read_bytes() for p in stored_files(root_of(client))] == [wav]
    assert not list((root_of(client) / ".staging").iterdir())


async def test_concurrent_duplicates_without_recording_id_store_one_copy(client: Client) -> None:
    """Concurrent identical path-C uploads (keyed by call id and sha256) store one copy."""
    wav = make_wav(0.3)
    replies = await asyncio.gather(*[client.put("/kazoo/c9.wav", data=wav) for _ in range(10)])
    assert sorted(r.status for r in replies) == [200] * 9 + [201]
    assert len(stored_files(root_of(client))) == 1
    assert len(await records(client, call_id="c9")) == 1


async def test_not_audio_is_415_and_keeps_nothing(client: Client) -> None:
    """A body that is not WAV or MP3 (whatever its Content-Type) answers 415 with a JSON
    error; no file, no staging leftover, no record."""
    for body in (b"<html>not a recording</html>", b"", b"RIFF\x00\x00\x00\x00AVI LIST"):
        reply = await client.put(PATH_A, data=body, params=query(),
                                 headers={"Content-Type": "audio/mpeg"})
        assert reply.status == 415
        error = await reply.json()
        assert error["error"] == "unsupported_format"
        assert error["detail"]
    assert stored_files(root_of(client)) == []
    assert not list((root_of(client) / ".staging").iterdir())
    assert await records(client) == []


async def test_probe_text_is_only_accepted_as_a_storage_plan_probe(client: Client) -> None:
    """Kazoo's credentials probe text is stored on a storage-plan path under its probe name,
    and refused (415) anywhere else."""
    ok = await client.put(wire.EX6_PATH, data=wire.PROBE_CONTENT)
    assert ok.status == 201
    record = await ok.json()
    assert (record["format"], record["media_type"]) == ("txt", "text/plain")
    elsewhere = await client.put(PATH_A, data=wire.PROBE_CONTENT, params=query())
    assert elsewhere.status == 415


async def test_declared_length_over_cap_is_413_before_reading(make_client: Any) -> None:
    """A Content-Length over ``ingest.max_bytes`` answers 413 and nothing is kept."""
    client = await make_client(ingest={"max_bytes": 1000})
    reply = await client.put(PATH_A, data=TESTBODY, params=query())
    assert reply.status == 413
    assert (await reply.json())["error"] == "too_large"
    assert stored_files(root_of(client)) == []
    assert await records(client) == []


async def test_streamed_body_over_cap_is_413_and_failed(make_client: Any) -> None:
    """A chunked body (no Content-Length) that grows past the cap answers 413; the record is
    ``failed``, no file and no staging leftover remain."""
    client = await make_client(ingest={"max_bytes": 200_000, "chunk_size": 65536})

    async def body() -> AsyncIterator[bytes]:
        yield TESTBODY
        for _ in range(10):
            yield bytes(50_000)

    reply = await client.put(PATH_A, data=body(), params=query())
    assert reply.status == 413
    assert stored_files(root_of(client)) == []
    assert not list((root_of(client) / ".staging").iterdir())
    [record] = await records(client)
    assert (record["status"], record["error"]) == ("failed", "too_large")


async def test_content_md5_is_checked(client: Client) -> None:
    """A matching Content-MD5 is accepted; a wrong one answers 400, fails the record and
    keeps no file."""
    good = base64.b64encode(hashlib.md5(TESTBODY).digest()).decode()
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    wrong = await client.put(PATH_A, data=TESTBODY, params=query("202403-" + "1" * 32),
                             headers={"Content-MD5": bad})
    assert wrong.status == 400
    assert (await wrong.json())["error"] == "content_md5_mismatch"
    assert stored_files(root_of(client)) == []
    right = await client.put(PATH_A, data=TESTBODY, params=query("202403-" + "2" * 32),
                             headers={"Content-MD5": good})
    assert right.status == 201
    malformed = await client.put(PATH_A, data=TESTBODY, params=query("202403-" + "3" * 32),
                                 headers={"Content-MD5": "not-md5"})
    assert (malformed.status, (await malformed.json())["error"]) == (400, "bad_content_md5")


async def test_silent_body_times_out_with_408(make_client: Any) -> None:
    """A body that stops arriving for ``server.body_idle_timeout`` answers 408 and keeps
    nothing."""
    client = await make_client(server={"body_idle_timeout": 0.3})

    async def stalls() -> AsyncIterator[bytes]:
        yield TESTBODY
        await asyncio.sleep(2)
        yield TESTBODY

    reply = await client.put(PATH_A, data=stalls(), params=query())
    assert reply.status == 408
    assert (await reply.json())["error"] == "body_timeout"
    assert stored_files(root_of(client)) == []


async def test_truncated_multipart_is_400_and_keeps_nothing(client: Client) -> None:
    """A multipart body that ends before its closing boundary answers 400 ``bad_multipart``."""
    body = wire.multipart_body(TESTBODY)
    body = body[: body.index(b"\r\n--" + wire.BOUNDARY + b"--")]
    reply = await client.post(wire.EX4_PATH, data=body, headers={
        "Content-Type": "multipart/form-data; boundary=" + wire.BOUNDARY.decode()})
    assert reply.status == 400
    assert (await reply.json())["error"] == "bad_multipart"
    assert stored_files(root_of(client)) == []


async def test_multipart_without_media_or_with_bad_json_is_400(client: Client) -> None:
    """A multipart body with only the JSON part, or a JSON part that is not an object, is 400."""
    ctype = {"Content-Type": "multipart/form-data; boundary=" + wire.BOUNDARY.decode()}
    only_json = (b"\r\n--" + wire.BOUNDARY + b"\r\ncontent-disposition: form-data; name=x\r\n"
                 b"content-type: application/json\r\n\r\n{}\r\n--" + wire.BOUNDARY + b"--")
    reply = await client.post(wire.EX4_PATH, data=only_json, headers=ctype)
    assert (reply.status, (await reply.json())["error"]) == (400, "bad_multipart")
    bad_json = wire.multipart_body(TESTBODY, meta=b"[1, 2]")
    reply = await client.post(wire.EX4_PATH, data=bad_json, headers=ctype)
    assert (reply.status, (await reply.json())["error"]) == (400, "bad_metadata")


async def test_legacy_multipart_mixed_without_boundary_is_explained(client: Client) -> None:
    """Kazoo 4.3.17-4.3.20's boundary-less multipart/mixed answers 400 saying what to do."""
    reply = await client.post(wire.EX4_PATH, data=b"whatever",
                              headers={"Content-Type": "multipart/mixed"})
    error = await reply.json()
    assert (reply.status, error["error"]) == (400, "bad_multipart")
    assert "send_multipart" in error["detail"]


async def test_traversal_in_names_stays_inside_the_root(client: Client, tmp_path: Path) -> None:
    """``../`` in the file name, call id and account id never writes outside the root."""
    hostile = [
        ("/kazoo/..%2F..%2F..%2Fescape.wav", {}),
        ("/kazoo/call_recording_..%2F..%2Fx.wav",
         {"account_id": "../../../../tmp", "recording_id": "../../etc/passwd"}),
        ("/kazoo/.../%2E%2E%2Fescape2.wav", {"call_id": "../../c"}),
    ]
    for path, params in hostile:
        reply = await client.put(path, data=make_wav(0.2), params=params)
        assert reply.status == 201, await reply.text()
    root = root_of(client).resolve()
    files = stored_files(root)
    assert len(files) == 3
    for f in files:
        assert f.resolve().is_relative_to(root)
        assert ".." not in f.relative_to(root).parts
    outside = [p for p in tmp_path.rglob("*")
               if p.is_file() and not p.resolve().is_relative_to(root)]
    assert {p.name for p in outside} <= {"recsink.db", "recsink.db-wal", "recsink.db-shm"}


async def test_existing_object_is_never_overwritten(client: Client) -> None:
    """When the object name is taken by other content, the recording gets the next variant
    name and the existing file is untouched."""
    target = root_of(client) / ACCOUNT / "2024" / "03" / "12"
    target.mkdir(parents=True)
    (target / "202403-00000000000000000000000000000001.mp3").write_bytes(b"precious")
    reply = await client.put(PATH_A, data=TESTBODY, params=query())
    assert reply.status == 201
    assert (target / "202403-00000000000000000000000000000001.mp3").read_bytes() == b"precious"
    assert (target / "202403-00000000000000000000000000000001~2.mp3").read_bytes() == TESTBODY
    assert (await reply.json())["storage_url"].endswith("~2.mp3")


async def test_get_probe_returns_exact_bytes_and_404s_unknown(client: Client) -> None:
    """GET and HEAD on an upload path return its bytes; unknown paths answer 404 JSON."""
    mp3 = (FIXTURES / "01-vm-and.mp3").read_bytes()
    assert (await client.put(PATH_A, data=mp3, params=query())).status == 201
    got = await client.get(PATH_A, params={"recording_id": query()["recording_id"]})
    assert (got.status, await got.read()) == (200, mp3)
    by_call = await client.get(PATH_A)
    assert await by_call.read() == mp3
    head = await client.head(PATH_A)
    assert (head.status, head.headers["Content-Length"]) == (200, str(len(mp3)))
    missing = await client.get("/kazoo/call_recording_nobody.mp3")
    assert (missing.status, (await missing.json())["error"]) == (404, "not_found")


async def test_unknown_routes_and_methods_answer_json(client: Client) -> None:
    """404 and 405 come back as JSON error bodies too."""
    missing = await client.get("/nowhere")
    assert (missing.status, (await missing.json())["error"]) == (404, "not_found")
    method = await client.delete("/kazoo/x.mp3")
    assert method.status == 405
    assert (await method.json())["error"] == "method_not_allowed"


async def test_too_short_recordings_are_discarded(make_client: Any) -> None:
    """With ``ingest.min_duration_ms``, a shorter recording answers 200, is ``discarded``,
    keeps no file, and its repeat is a duplicate."""
    client = await make_client(ingest={"min_duration_ms": 2000})
    reply = await client.put(PATH_A, data=make_wav(0.5), params=query())
    record = await reply.json()
    assert (reply.status, record["status"], record["duration_ms"]) == (200, "discarded", 500)
    assert stored_files(root_of(client)) == []
    again = await client.put(PATH_A, data=make_wav(0.5), params=query())
    assert (again.status, (await again.json())["id"]) == (200, record["id"])
    long = await client.put(PATH_A, data=make_wav(2.5), params=query("202403-" + "f" * 32))
    assert long.status == 201


async def test_recording_api_lists_and_gets(client: Client) -> None:
    """``/v1/recordings`` filters by call id; ``/v1/recordings/{id}`` finds a record by
    recsink id or by the sender's recording id."""
    created = await (await client.put(PATH_A, data=TESTBODY, params=query())).json()
    listed = await records(client, call_id="c1@pbx")
    assert [r["id"] for r in listed] == [created["id"]]
    assert await records(client, call_id="someone-else") == []
    for key in (created["id"], created["recording_id"]):
        one = await client.get(f"/v1/recordings/{key}")
        assert (await one.json())["sha256"] == hashlib.sha256(TESTBODY).hexdigest()
    assert (await client.get("/v1/recordings/rec_missing")).status == 404
    assert (await client.get("/v1/recordings", params={"status": "bogus"})).status == 400


async def test_health_readiness_and_metrics(client: Client) -> None:
    """/healthz and /readyz answer 200 on a working instance; /metrics counts uploads."""
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert (ready.status, (await ready.json())["status"]) == (200, "ready")
    await client.put(PATH_A, data=TESTBODY, params=query())
    await client.put(PATH_A, data=TESTBODY, params=query())
    text = await (await client.get("/metrics")).text()
    assert 'recsink_uploads_total{result="stored",source="kazoo"} 1.0' in text
    assert 'recsink_uploads_total{result="duplicate",source="kazoo"} 1.0' in text
    assert f'recsink_received_bytes_total{{source="kazoo"}} {float(len(TESTBODY))}' in text


async def test_request_id_is_echoed(client: Client) -> None:
    """A sane X-Request-ID is echoed back; otherwise recsink makes one."""
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = await client.get("/healthz", headers={"X-Request-ID": "bad id\u00e9"})
    assert len(made.headers["X-Request-ID"]) == 16
