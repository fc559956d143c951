"""S3 storage end to end: real ``recsink serve`` processes, a real moto S3 server over HTTP
(and a TCP proxy in front of it to take S3 away), real recordings."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from recsink.storage.s3client import Destination
from tests.conftest import (
    CORPUS,
    FIXTURES,
    TESTBODY,
    RssSampler,
    RunningServer,
    api_get,
    exchange,
    kazoo_put,
    make_wav,
    merge,
    path_a,
    read_status,
    wait_for,
    wav_stream,
)
from tests.s3support import (
    MotoServer,
    S3Client,
    TcpProxy,
    all_objects,
    head_metadata,
    list_multipart_uploads,
    object_sha256,
    recordings,
    s3_config,
)

MiB = 1024 * 1024
ACCOUNT = "3a1b2c3d4e5f60718293a4b5c6d7e8f9"


def test_corpus_and_fixtures_round_trip_through_s3(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, tmp_path: Path,
) -> None:
    """Every corpus recording (or the committed fixtures) uploaded as Kazoo does lands in
    the bucket byte-identical with its metadata, and GET returns it from S3."""
    server = s3_server()
    if (CORPUS / "MANIFEST.tsv").exists():
        with (CORPUS / "MANIFEST.tsv").open() as fh:
            cases = [(CORPUS / row["path"], row["sha256"]) for row in
                     csv.DictReader(fh, delimiter="\t")]
    else:
        cases = [(p, hashlib.sha256(p.read_bytes()).hexdigest())
                 for p in sorted(FIXTURES.glob("*.mp3"))]
    for n, (path, sha256) in enumerate(cases):
        body = path.read_bytes()
        target = path_a(f"corpus-{n}", f"202611-{n:032x}", path.suffix[1:])
        reply = exchange(server.port, kazoo_put(target, len(body)) + body)
        assert reply.status == 201, (path, reply.body)
        record = reply.json()
        key = record["storage_url"].removeprefix(f"s3://{bucket}/")
        assert object_sha256(s3, bucket, key) == sha256, path
        meta = head_metadata(s3, bucket, key)
        assert (meta["call-id"], meta["recording-id"], meta["recsink-id"]) == (
            f"corpus-{n}", f"202611-{n:032x}", record["id"])
        assert record["sha256"] == sha256, path
        if len(body) < 8 * MiB:  # one PutObject carries the facts known at the end too
            assert (meta["sha256"], meta["duration-ms"]) == (sha256, str(record["duration_ms"]))
        else:  # a multipart object carries what was known when it was created
            assert "sha256" not in meta
        got = exchange(server.port, f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        assert got.body == body, path
    assert len(recordings(s3, bucket)) == len(cases)
    assert list_multipart_uploads(s3, bucket) == []


def test_300_mib_recording_streams_in_bounded_memory(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str,
) -> None:
    """A generated 300 MiB recording goes up as a multipart upload, byte-identical, its
    sha256 and duration in its record (the object is never copied onto itself to carry
    them), while recsink's memory stays bounded."""
    server = s3_server()
    size = 300 * MiB
    digest = hashlib.sha256()
    baseline = server.rss_kib()
    with RssSampler(server) as rss, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(kazoo_put(path_a("big", "202611-" + "b" * 32), size))
        for block in wav_stream(size):
            digest.update(block)
            sock.sendall(block)
        sock.settimeout(120)
        assert read_status(sock) == 201
    [(key, stored_size)] = recordings(s3, bucket).items()
    assert stored_size == size
    assert object_sha256(s3, bucket, key) == digest.hexdigest()
    [record] = api_get(server, "/v1/recordings?call_id=big")["recordings"]
    assert record["sha256"] == digest.hexdigest()
    assert record["duration_ms"] == (size - 44) * 1000 // 16000
    assert head_metadata(s3, bucket, key)["recsink-id"] == record["id"]
    assert list_multipart_uploads(s3, bucket) == []
    # the part pool (40 MiB) plus request buffers: flat, far from the 300 MiB body
    assert rss.peak_kib - baseline < 100 * 1024, (baseline, rss.peak_kib)


def test_part_buffers_cut_short_are_reused_without_stale_bytes(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str,
) -> None:
    """Uploads one after another through a two-buffer pool, each ending in a short part,
    land byte-identical: a buffer a last part cut short serves later parts, full or short,
    with none of its earlier bytes."""
    server = s3_server(part_size=5 * MiB, max_buffer_bytes=10 * MiB)
    sizes = [7 * MiB + 11, 13 * MiB, 11 * MiB + 3, 5 * MiB + 1, 4 * MiB, 12 * MiB]
    expected = {}
    for n, size in enumerate(sizes):
        digest = hashlib.sha256()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(kazoo_put(path_a(f"reuse-{n}", f"202611-{n:032x}"), size))
            for block in wav_stream(size, seed=n):
                digest.update(block)
                sock.sendall(block)
            sock.settimeout(60)
            assert read_status(sock) == 201
        expected[n] = (size, digest.hexdigest())
    stored = recordings(s3, bucket)
    assert sorted(stored.values()) == sorted(sizes)
    for key, size in stored.items():
        [n] = [n for n, (s, _) in expected.items() if s == size]
        assert object_sha256(s3, bucket, key) == expected[n][1], key
    assert list_multipart_uploads(s3, bucket) == []


def test_a_body_of_exactly_one_part_is_one_putobject(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str,
) -> None:
    """A body of exactly ``part_size`` bytes goes up in one PutObject (its object carries the
    sha256 known only at the end, which a multipart object cannot), one byte more as a
    multipart upload of two parts."""
    server = s3_server(part_size=5 * MiB)
    digests = {}
    for name, size in (("one-part", 5 * MiB), ("two-parts", 5 * MiB + 1)):
        digest = hashlib.sha256()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(kazoo_put(path_a(name, "202611-" + name[0] * 32), size))
            for block in wav_stream(size):
                digest.update(block)
                sock.sendall(block)
            sock.settimeout(60)
            assert read_status(sock) == 201
        digests[name] = digest.hexdigest()
        [record] = api_get(server, f"/v1/recordings?call_id={name}")["recordings"]
        key = record["storage_url"].removeprefix(f"s3://{bucket}/")
        assert object_sha256(s3, bucket, key) == digests[name]
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        meta = head_metadata(s3, bucket, key)
        if name == "one-part":
            assert "-" not in etag
            assert meta["sha256"] == digests[name]
        else:
            assert etag.endswith("-2")
            assert "sha256" not in meta
    assert list_multipart_uploads(s3, bucket) == []


def test_disconnect_halfway_leaves_no_object_and_no_upload(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str,
) -> None:
    """A client that disconnects halfway through a multipart upload leaves no object and no
    incomplete multipart upload (ListMultipartUploads)."""
    server = s3_server(part_size=5 * MiB)
    size = 60 * MiB
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(kazoo_put(path_a("gone", "202611-" + "e" * 32), size))
        sent = 0
        for block in wav_stream(size):
            sock.sendall(block)
            sent += len(block)
            if sent >= size // 2:
                break
        wait_for(lambda: list_multipart_uploads(s3, bucket))  # parts are going up
    failed = wait_for(lambda: server.events("upload.failed"))
    assert failed[0]["error"] == "client_disconnected"
    wait_for(lambda: not list_multipart_uploads(s3, bucket))
    assert all_objects(s3, bucket) == {}


def test_s3_down_then_back_nothing_acknowledged_is_lost(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, s3_proxy: TcpProxy,
) -> None:
    """With S3 unreachable, uploads are spooled (fsynced), acknowledged and served from the
    spool; the spool survives a restart; when S3 answers again the shipper moves every
    acknowledged recording into the bucket byte-identical and empties the spool."""
    server = s3_server("node", endpoint=s3_proxy.url)
    bodies = {f"rec{n}": make_wav(0.5 + n / 10, freq=300 + 50 * n) for n in range(6)}

    def send(server: RunningServer, name: str) -> dict[str, Any]:
        body = bodies[name]
        reply = exchange(server.port, kazoo_put(path_a(name, f"202611-{name}"), len(body))
                         + body)
        assert reply.status == 201, reply.body
        record: dict[str, Any] = reply.json()
        return record

    assert send(server, "rec0")["storage_url"].startswith("s3://")
    s3_proxy.down()
    spooled = [send(server, name) for name in ("rec1", "rec2", "rec3")]
    for record in spooled:
        assert record["storage_url"].startswith("file://")
        assert record["shipping"]["state"] == "pending"
    assert server.events("s3.unreachable")
    ready = exchange(server.port, b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert ready.status == 503
    assert "storage" in ready.json()["problems"]  # why: in the log, for strangers
    assert "s3" in server.events("ready.unavailable")[-1]["problems"]["storage"].lower()
    probe = exchange(server.port, f"GET {path_a('rec1', '202611-rec1')} HTTP/1.1\r\n"
                                  "host: x\r\n\r\n".encode())
    assert (probe.status, probe.body) == (200, bodies["rec1"])

    server.stop()  # the spool survives a restart
    server = s3_server("node", endpoint=s3_proxy.url)
    assert send(server, "rec4")["shipping"]["state"] == "pending"
    s3_proxy.up()
    send(server, "rec5")

    def shipped() -> bool:
        found = [api_get(server, f"/v1/recordings?call_id={name}")["recordings"]
                 for name in bodies]
        return all(r and r[0]["storage_url"].startswith("s3://") for r in found)

    wait_for(shipped, timeout=30)
    assert exchange(server.port, b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n").status == 200
    objects = recordings(s3, bucket)
    assert len(objects) == len(bodies)
    stored = {object_sha256(s3, bucket, k) for k in objects}
    assert stored == {hashlib.sha256(b).hexdigest() for b in bodies.values()}
    spool = server.workdir / "spool" / "recordings"
    assert [p for p in spool.rglob("*") if p.is_file()] == []
    for name in ("rec1", "rec4"):
        [record] = api_get(server, f"/v1/recordings?call_id={name}")["recordings"]
        assert record["shipping"]["state"] == "shipped"


@pytest.mark.parametrize("size", [200_000, 12 * MiB], ids=["single-put", "multipart"])
def test_s3_lost_before_the_first_part_diverts_to_the_spool(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, s3_proxy: TcpProxy,
    size: int,
) -> None:
    """When S3 stops answering after an upload began but before any of its bytes were
    sent, the recording goes to the spool instead: acknowledged 201, then shipped intact."""
    server = s3_server(endpoint=s3_proxy.url, part_size=5 * MiB)
    body = b"".join(wav_stream(size, seed=size))
    target = path_a("late", "202611-" + "a" * 32)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(kazoo_put(target, size) + body[:4096])
        wait_for(lambda: api_get(server, "/v1/recordings?call_id=late")["recordings"])
        s3_proxy.down()
        sock.sendall(body[4096:])
        sock.settimeout(60)
        assert read_status(sock) == 201
    [record] = api_get(server, "/v1/recordings?call_id=late")["recordings"]
    assert record["shipping"]["state"] == "pending"
    s3_proxy.up()
    wait_for(lambda: api_get(server, "/v1/recordings?call_id=late")["recordings"][0][
        "storage_url"].startswith("s3://"), timeout=30)
    [key] = recordings(s3, bucket)
    assert object_sha256(s3, bucket, key) == hashlib.sha256(body).hexdigest()
    wait_for(lambda: not list_multipart_uploads(s3, bucket), timeout=30)


def test_an_object_appearing_at_the_key_meanwhile_is_never_overwritten(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str,
) -> None:
    """An object written at the upload's key by someone else while the recording uploads
    (outside recsink) is never overwritten: the upload answers 503 and aborts its multipart
    upload, and the PBX's retry stores the recording under the next free name."""
    server = s3_server(part_size=5 * MiB)
    size = 12 * MiB
    body = b"".join(wav_stream(size, seed=7))
    target = path_a("twin", "202611-" + "7" * 32)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(kazoo_put(target, size) + body[:6 * MiB])
        [upload] = wait_for(lambda: list_multipart_uploads(s3, bucket))
        s3.put_object(Bucket=bucket, Key=upload["Key"], Body=b"someone else's")
        sock.sendall(body[6 * MiB:])
        sock.settimeout(60)
        assert read_status(sock) == 503
    assert list_multipart_uploads(s3, bucket) == []
    retry = exchange(server.port, kazoo_put(target, size) + body)
    assert retry.status == 201, retry.body
    key = retry.json()["storage_url"].removeprefix(f"s3://{bucket}/")
    assert key == upload["Key"].replace(".wav", "~2.wav")
    assert object_sha256(s3, bucket, key) == hashlib.sha256(body).hexdigest()
    assert s3.get_object(Bucket=bucket, Key=upload["Key"])["Body"].read() == b"someone else's"


def test_mid_stream_failure_answers_503_and_leaves_nothing(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, s3_proxy: TcpProxy,
) -> None:
    """When S3 goes away after parts of a direct upload were sent, the upload answers 503
    with Retry-After, the record is failed, nothing is visible, and the multipart upload is
    aborted once S3 is back."""
    server = s3_server(endpoint=s3_proxy.url, part_size=5 * MiB)
    size = 80 * MiB
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(kazoo_put(path_a("cut", "202611-" + "d" * 32), size))
        blocks = wav_stream(size)
        for _ in range(20):
            sock.sendall(next(blocks))
        wait_for(lambda: list_multipart_uploads(s3, bucket))
        s3_proxy.down()
        sock.settimeout(60)
        try:
            for block in blocks:
                sock.sendall(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = read_status(sock)
    assert status == 503
    [failed] = server.events("upload.failed")
    assert failed["error"] == "storage_unavailable"
    s3_proxy.up()
    wait_for(lambda: not list_multipart_uploads(s3, bucket), timeout=30)
    assert not all_objects(s3, bucket)
    [record] = api_get(server, "/v1/recordings?call_id=cut")["recordings"]
    assert record["status"] == "failed"


def test_reindex_rebuilds_a_catalog_from_the_bucket(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, moto: MotoServer,
    tmp_path: Path,
) -> None:
    """``recsink reindex`` on an empty catalog adds every stored recording from its object
    metadata, recomputing from the object itself what a multipart object's metadata lacks
    (sha256, duration); a second run changes nothing; the instance then serves them."""
    first = s3_server("a", part_size=5 * MiB)
    large = b"".join(wav_stream(6 * MiB, seed=6))
    for n, (body, ext) in enumerate(((TESTBODY, "mp3"), (make_wav(1.0), "wav"),
                                     (large, "wav"))):
        reply = exchange(first.port, kazoo_put(path_a(f"re{n}", f"202611-re{n}", ext),
                                                 len(body)) + body)
        assert reply.status == 201
        assert (n < 2) == ("sha256" in head_metadata(
            s3, bucket, reply.json()["storage_url"].removeprefix(f"s3://{bucket}/")))
    workdir = tmp_path / "b"  # what s3_server("b") will use: its catalog and spool
    workdir.mkdir()
    config = merge({"catalog": {"path": str(workdir / "recsink.db")}},
                   s3_config(bucket, moto.url, spool_dir=str(workdir / "spool")))
    (workdir / "reindex.toml").write_text(tomli_w.dumps(config))
    command = [sys.executable, "-m", "recsink", "reindex", "--config", "reindex.toml"]
    runs = [json.loads(subprocess.run(command, cwd=workdir, capture_output=True, text=True,
                                      check=True, timeout=60).stdout) for _ in range(2)]
    assert runs[0] == {"seen": 3, "added": 3, "completed": 0, "unchanged": 0, "recomputed": 1}
    assert runs[1] == {"seen": 3, "added": 0, "completed": 0, "unchanged": 3, "recomputed": 0}

    second = s3_server("b")
    [record] = api_get(second, "/v1/recordings?call_id=re1")["recordings"]
    assert (record["status"], record["format"], record["duration_ms"]) == (
        "completed", "wav", 1000)
    got = exchange(second.port,
                   f"GET {path_a('re1', '202611-re1')} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    assert got.body == make_wav(1.0)
    again = exchange(second.port, kazoo_put(path_a("re1", "202611-re1"), 16044)
                     + make_wav(1.0))
    assert again.status == 200
    [rebuilt] = api_get(second, "/v1/recordings?call_id=re2")["recordings"]
    [original] = api_get(first, "/v1/recordings?call_id=re2")["recordings"]
    assert rebuilt["sha256"] == hashlib.sha256(large).hexdigest()
    assert {k: rebuilt[k] for k in ("id", "duration_ms", "byte_size", "sample_rate",
                                    "channels")} == {
        k: original[k] for k in ("id", "duration_ms", "byte_size", "sample_rate", "channels")}


def test_destination_and_gcs_preconditions(moto: MotoServer, bucket: str) -> None:
    """s3:// and gs:// destinations split into bucket and prefix; on gs:// the client sends
    Google's generation preconditions instead of S3's If-None-Match."""
    assert Destination.parse("s3://bucket/a/b/") == Destination("s3", "bucket", "a/b")
    assert Destination.parse("gs://bucket").object_key("x.wav") == "x.wav"
    assert Destination.parse("s3://b/p").url("k.mp3") == "s3://b/p/k.mp3"

    from recsink.config import S3Settings
    from recsink.storage.s3client import open_client

    seen: list[dict[str, str]] = []

    async def put() -> None:
        settings = S3Settings(url=f"gs://{bucket}/calls", endpoint_url=moto.url,
                              credentials="testing:testing:auto")
        async with open_client(settings) as client:
            client.meta.events.register(
                "before-send.s3", lambda request, **_: seen.append(dict(request.headers)))
            await client.put_object(Bucket=bucket, Key="calls/x", Body=b"x", IfNoneMatch="*")

    asyncio.run(put())
    headers = {k.lower(): v.decode() if isinstance(v, bytes) else v
               for k, v in seen[-1].items()}
    assert headers["x-goog-if-generation-match"] == "0"
    assert "if-none-match" not in headers


@pytest.mark.parametrize("attempts", [1, 3])
async def test_max_attempts_counts_every_attempt(aiohttp_server: Any, attempts: int) -> None:
    """``storage.s3.max_attempts`` is the number of attempts in all, the first included:
    against an S3 stand-in that always answers 503 SlowDown, 1 makes exactly one request
    (no retry) and 3 make three."""
    from aiohttp import web

    from recsink.config import S3Settings
    from recsink.storage.s3client import open_client

    seen: list[str] = []

    async def slow_down(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.Response(status=503, content_type="application/xml", text=(
            "<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
            "</Message></Error>"))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow_down)
    server = await aiohttp_server(app)
    settings = S3Settings(url="s3://bucket/calls", endpoint_url=str(server.make_url("")),
                          credentials="testing:testing:us-east-1", max_attempts=attempts)
    async with open_client(settings) as client:
        with pytest.raises(Exception, match="SlowDown"):
            await client.put_object(Bucket="bucket", Key="calls/x.wav", Body=b"x")
    assert seen == ["PUT /bucket/calls/x.wav"] * attempts
