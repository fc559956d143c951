"""A fleet: three real ``recsink serve`` processes sharing one real PostgreSQL catalog and one
moto bucket. Stored once, read everywhere, worked on once, and taken over when an instance
dies, whichever instance each request reaches."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import tomli_w

from recsink.sources.laml import signature as laml_signature
from tests.conftest import (
    RunningServer,
    api_get,
    base_config,
    exchange,
    kazoo_put,
    make_wav,
    merge,
    path_a,
    wait_for,
    wav_stream,
)
from tests.s3support import (
    MotoServer,
    S3Client,
    TcpProxy,
    list_multipart_uploads,
    object_sha256,
    recordings,
    s3_config,
)
from tests.test_callbacks import S4, MediaServer, signed_sinch

MiB = 1024 * 1024
Fleet = Callable[..., list[RunningServer]]


def fleet_config(workdir: Path, dsn: str, bucket: str, endpoint: str,
                 **sections: Any) -> dict[str, Any]:
    """One instance's settings: the shared catalog and bucket, its own spool."""
    config = merge(base_config(workdir), s3_config(
        bucket, endpoint, spool_dir=str(workdir / "spool"), part_size=5 * MiB))
    return merge(config, merge({"catalog": {"url": dsn}}, sections))


@pytest.fixture
def fleet(start_server: Callable[..., RunningServer], pg_dsn: str, moto: MotoServer,
          bucket: str, tmp_path: Path) -> Fleet:
    """``fleet(n, **sections)``: ``n`` recsink processes on the test's PostgreSQL database
    and bucket (named a, b, c, …; stopped by pid at the end)."""

    def start(n: int = 3, endpoint: str | None = None, **sections: Any) -> list[RunningServer]:
        servers = []
        for name in "abcdefgh"[:n]:
            config = fleet_config(tmp_path / name, pg_dsn, bucket, endpoint or moto.url,
                                  **sections)
            servers.append(start_server(name, **config))
        return servers

    return start


async def put(session: aiohttp.ClientSession, server: RunningServer, target: str,
              body: bytes, attempts: int = 40) -> int:
    """PUT as Kazoo does: again after a 503 (honouring nothing but a short pause)."""
    for _ in range(attempts):
        async with session.put(server.base + target, data=body,
                               headers={"content-type": "audio/wav"}) as reply:
            if reply.status != 503:
                return reply.status
            assert reply.headers["Retry-After"]
        await asyncio.sleep(0.5)
    return 503


@pytest.mark.parametrize("target", [path_a("race", "202611-" + "f" * 32),
                                    "/kazoo/race-by-content.wav"],
                         ids=["recording-id", "content"])
async def test_24_concurrent_uploads_over_three_instances_store_one_object(
    fleet: Fleet, s3: S3Client, bucket: str, target: str,
) -> None:
    """24 concurrent uploads of one recording spread over three instances, with a recording
    id and without one (deduped by call id and content): all answered 2xx, exactly one 201,
    one object in the bucket, one completed record."""
    servers = fleet(3)
    body = make_wav(3.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        statuses = await asyncio.gather(
            *[put(session, servers[n % 3], target, body) for n in range(24)])
    assert sorted(statuses) == [200] * 23 + [201], statuses
    [key] = recordings(s3, bucket)
    assert object_sha256(s3, bucket, key) == hashlib.sha256(body).hexdigest()
    call_id = "race" if "call_id=race" in target else "race-by-content"
    for server in servers:
        [record] = api_get(server, f"/v1/recordings?call_id={call_id}")["recordings"]
        assert record["status"] == "completed"


def test_every_instance_answers_the_same(fleet: Fleet) -> None:
    """A recording uploaded through one instance is served byte for byte by the GET probe
    of every instance, and /v1/recordings of every instance lists the same record."""
    servers = fleet(3)
    body = make_wav(1.0)
    target = path_a("everywhere", "202611-" + "e" * 32)
    stored = exchange(servers[0].port, kazoo_put(target, len(body)) + body)
    assert stored.status == 201
    for server in servers:
        probe = exchange(server.port, f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        assert (probe.status, probe.body) == (200, body)
        assert api_get(server, "/v1/recordings?call_id=everywhere")["recordings"] == [
            stored.json()]
        assert api_get(server, f"/v1/recordings/{stored.json()['id']}") == stored.json()


@pytest.mark.parametrize("order", ["finished-first", "available-first"])
def test_sinch_events_split_over_two_instances_make_one_record(fleet: Fleet,
                                                               order: str) -> None:
    """Sinch's recording_finished on one instance and recording_available on the other, in
    either order, leave one record, completed, with its destination."""
    servers = fleet(2, sinch={"applications": [{"key": S4["key"], "secret": S4["secret"]}]})
    call = f"split-{order}"
    finished = f'{{"event":"notify","callid":"{call}","version":1,"type":"recording_finished"}}'
    available = (f'{{"event":"notify","callid":"{call}","version":1,'
                 f'"type":"recording_available","destination":"s3://sinch-bucket/{call}.mp3"}}')
    events = [finished, available] if order == "finished-first" else [available, finished]
    for server, event in zip(servers, events, strict=True):
        assert exchange(server.port, signed_sinch(event.encode())).status == 200
    for server in servers:
        [record] = api_get(server, f"/v1/recordings?call_id={call}")["recordings"]
        assert (record["status"], record["storage_url"]) == (
            "completed", f"s3://sinch-bucket/{call}.mp3")


def test_signalwire_completed_on_three_instances_downloads_once(fleet: Fleet) -> None:
    """The same SignalWire ``completed`` callback delivered to all three instances queues one
    pull, run by one instance: the media is downloaded once and stored once."""
    wav = make_wav(2.0)
    media = MediaServer(wav)
    try:
        key, base = "PSK_fleet_test_key", "https://sink.example.com"
        servers = fleet(3, laml={"signing_key": key, "public_base_url": base, "pull": True},
                        fetch={"backoff": 0.2, "allow": ["127.0.0.1/32"]})
        params = [("AccountSid", "AC1"), ("CallSid", "CA-fleet"), ("RecordingSid", "RE-fleet"),
                  ("RecordingUrl", f"{media.url}/RE-fleet"), ("RecordingStatus", "completed"),
                  ("RecordingDuration", "2"), ("RecordingChannels", "1")]
        form = urlencode(params).encode()
        path = "/laml/recording-status"
        request = (f"POST {path} HTTP/1.1\r\nhost: x\r\n"
                   "content-type: application/x-www-form-urlencoded\r\n"
                   f"x-signalwire-signature: {laml_signature(key, base + path, params)}\r\n"
                   f"content-length: {len(form)}\r\n\r\n").encode() + form
        for server in servers:
            assert exchange(server.port, request).status == 200

        def completed() -> list[dict[str, Any]]:
            return [r for r in api_get(servers[0], "/v1/recordings?call_id=CA-fleet")[
                "recordings"] if r["status"] == "completed"]

        [record] = wait_for(completed, timeout=30)
        assert record["sha256"] == hashlib.sha256(wav).hexdigest()
        assert record["pull"]["state"] == "done"
        for server in servers:  # a repeat after the pull changes nothing
            assert exchange(server.port, request).status == 200
        assert media.requests == 1
        stored = [e for s in servers for e in s.events("pull.stored")]
        assert len(stored) == 1
    finally:
        media.close()


async def test_a_killed_instances_upload_is_taken_over(
    fleet: Fleet, s3: S3Client, bucket: str,
) -> None:
    """``kill -9`` of the instance receiving a 30 MiB upload (parts already in S3): the PBX's
    retry through another instance waits for the dead upload's lease, takes it over when it
    expires, aborts the dead instance's multipart upload and stores the recording once."""
    a, b = fleet(2, catalog={"lease_ttl": 3.0, "lease_wait": 1.0, "sweep_interval": 60.0})
    size = 30 * MiB
    body = b"".join(wav_stream(size, seed=30))
    target = path_a("killed", "202611-" + "9" * 32)
    with socket.create_connection(("127.0.0.1", a.port)) as sock:
        sock.sendall(kazoo_put(target, size) + body[:12 * MiB])
        [dead] = wait_for(lambda: list_multipart_uploads(s3, bucket))
        wait_for(lambda: api_get(b, "/v1/recordings?call_id=killed")["recordings"])
        a.proc.kill()
        a.proc.wait()
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        status = await put(session, b, target, body)
    assert status == 201
    assert time.monotonic() - started < 3.0 + 10  # within the lease time and a retry or two
    assert dead["UploadId"] not in {u["UploadId"] for u in list_multipart_uploads(s3, bucket)}
    assert list_multipart_uploads(s3, bucket) == []
    [key] = recordings(s3, bucket)
    assert object_sha256(s3, bucket, key) == hashlib.sha256(body).hexdigest()
    [record] = api_get(b, "/v1/recordings?call_id=killed")["recordings"]
    assert (record["status"], record["attempts"]) == ("completed", 2)
    assert b.events("recording.stored")


def test_three_instances_start_at_once_on_an_empty_database(
    pg_dsn: str, moto: MotoServer, bucket: str, tmp_path: Path,
) -> None:
    """Three processes started together on an empty PostgreSQL database all come up (the
    schema is created once, under a transaction-level lock) and store through each other's
    catalog rows."""
    procs, logs = [], []
    for name in "abc":
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "recsink.toml").write_text(tomli_w.dumps(
            fleet_config(workdir, pg_dsn, bucket, moto.url)))
        logs.append(workdir / "recsink.log")
    try:
        for log in logs:
            with log.open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "recsink", "serve", "--config", "recsink.toml"],
                    cwd=log.parent, stdout=out, stderr=subprocess.STDOUT))
        servers = []
        for proc, log in zip(procs, logs, strict=True):
            wait_for(lambda log=log, proc=proc: '"server.listening"' in log.read_text()
                     or proc.poll() is not None, timeout=60)
            assert proc.poll() is None, log.read_text()
            line = next(x for x in log.read_text().splitlines() if '"server.listening"' in x)
            servers.append(RunningServer(proc, int(line.split('"port": ')[1].split(",")[0]),
                                         log.parent, log))
        body = make_wav(0.5)
        target = path_a("together", "202611-together")
        statuses = [exchange(s.port, kazoo_put(target, len(body)) + body).status
                    for s in servers]
        assert statuses == [201, 200, 200]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def test_postgresql_down_answers_503_and_loses_nothing(
    start_server: Callable[..., RunningServer], pg_dsn: str, moto: MotoServer, bucket: str,
    tmp_path: Path,
) -> None:
    """While PostgreSQL cannot be reached, uploads answer 503 with Retry-After, /readyz says
    the catalog is why, and nothing is stored; once it is back, everything acknowledged
    before is still there and the PBX's retry stores the rest."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    parts = conninfo_to_dict(pg_dsn)
    with TcpProxy((str(parts.get("host", "127.0.0.1")), int(parts.get("port", 5432)))) as proxy:
        dsn = make_conninfo(pg_dsn, host="127.0.0.1", port=proxy.port)
        config = fleet_config(tmp_path / "a", dsn, bucket, moto.url,
                              catalog={"connect_timeout": 1.0})
        server = start_server("a", **config)
        before, during = make_wav(0.5, freq=300), make_wav(0.5, freq=500)
        first = path_a("before-outage", "202611-before")
        assert exchange(server.port, kazoo_put(first, len(before)) + before).status == 201
        proxy.down()
        second = path_a("during-outage", "202611-during")
        refused = exchange(server.port, kazoo_put(second, len(during)) + during)
        assert refused.status == 503
        assert refused.json()["error"] == "catalog_unavailable"
        assert int(refused.headers["retry-after"]) > 0
        ready = exchange(server.port, b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert ready.status == 503
        assert "catalog" in ready.json()["problems"]
        proxy.up()
        wait_for(lambda: exchange(
            server.port, b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n").status == 200)
        retried = exchange(server.port, kazoo_put(second, len(during)) + during)
        assert retried.status == 201
        for name in ("before-outage", "during-outage"):
            [record] = api_get(server, f"/v1/recordings?call_id={name}")["recordings"]
            assert record["status"] == "completed"


def test_a_recording_another_instance_is_receiving_waits_then_answers_503(
    fleet: Fleet, s3: S3Client, bucket: str,
) -> None:
    """While one instance is still receiving a recording, the same recording on another
    instance waits ``catalog.lease_wait`` seconds for it, then answers 503 with Retry-After
    (never a 200 for a recording that is not stored yet); once the first is stored, the
    copy answers 200 with its record."""
    first, second = fleet(2, catalog={"lease_wait": 0.5})
    body = make_wav(5.0)
    target = path_a("slow", "202611-" + "5" * 32)
    with socket.create_connection(("127.0.0.1", first.port)) as slow:
        slow.sendall(kazoo_put(target, len(body)) + body[:1000])
        wait_for(lambda: api_get(second, "/v1/recordings?call_id=slow")["recordings"])
        busy = exchange(second.port, kazoo_put(target, len(body)) + body)
        assert busy.status == 503
        assert busy.json()["error"] == "recording_busy"
        assert int(busy.headers["retry-after"]) > 0
        slow.sendall(body[1000:])
        slow.settimeout(30)
        assert slow.recv(12) == b"HTTP/1.1 201"
    again = exchange(second.port, kazoo_put(target, len(body)) + body)
    assert again.status == 200
    assert len(recordings(s3, bucket)) == 1


def test_the_catalog_password_never_reaches_the_log(
    start_server: Callable[..., RunningServer], pg_dsn: str, tmp_path: Path,
) -> None:
    """The password in ``catalog.url`` appears in no log line: not when recsink runs on it,
    not when PostgreSQL refuses it or cannot be reached (exit 1, saying why)."""
    from psycopg.conninfo import make_conninfo

    password = "Sup3r-Secret-Pa55"
    server = start_server(catalog={"url": make_conninfo(pg_dsn, password=password)})
    body = make_wav(0.5)
    assert exchange(server.port, kazoo_put(path_a("pw", "202611-pw"), len(body))
                    + body).status == 201
    server.stop()
    assert password not in server.log_path.read_text()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    config = tmp_path / "down.toml"
    config.write_text(tomli_w.dumps({"catalog": {
        "url": f"postgresql://recsink:{password}@127.0.0.1:{port}/recsink",
        "connect_timeout": 1.0}}))
    done = subprocess.run([sys.executable, "-m", "recsink", "serve", "--config", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "catalog_unavailable" in output or "cannot connect" in output
    assert "postgresql://recsink:***@127.0.0.1" in output
    assert password not in output
