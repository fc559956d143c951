"""A real ``recsink serve`` process under duplicates, disconnects, oversized bodies, restarts
and real recordings, driven over loopback sockets."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

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
    path_a,
    read_status,
    stored_files,
    stream_until_answered,
    wait_for,
)

MiB = 1024 * 1024


@pytest.fixture
def server(start_server: Any) -> RunningServer:
    running: RunningServer = start_server()
    return running


async def test_fifty_concurrent_uploads_of_one_recording_leave_one_file(
    server: RunningServer,
) -> None:
    """50 concurrent uploads of one recording: all answered 2xx, exactly one 201, one file."""
    wav = make_wav(2.0)
    url = server.base + path_a("dup%40pbx", "202403-" + "d" * 32, "wav")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def put() -> int:
            async with session.put(url, data=wav, headers={"content-type": "audio/wav"}) as r:
                return r.status

        statuses = await asyncio.gather(*[put() for _ in range(50)])
    assert sorted(statuses) == [200] * 49 + [201]
    assert [f.read_bytes() for f in stored_files(server.root)] == [wav]
    assert not list((server.root / ".staging").iterdir())


def test_client_disconnect_halfway_leaves_nothing(server: RunningServer) -> None:
    """A client that sends half its body and disconnects leaves no file and no staging
    leftover; its record ends ``failed`` and the failure is logged."""
    body = make_wav(10.0)  # 160 KB
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(kazoo_put(path_a("gone", "202403-" + "e" * 32, "wav"), len(body)))
        sock.sendall(body[: len(body) // 2])
        time.sleep(0.2)
    failed = wait_for(lambda: server.events("upload.failed"))
    assert failed[0]["error"] == "client_disconnected"
    assert failed[0]["bytes"] == len(body) // 2
    assert stored_files(server.root) == []
    assert not list((server.root / ".staging").iterdir())
    [record] = api_get(server, "/v1/recordings?call_id=gone")[
        "recordings"]
    assert (record["status"], record["error"]) == ("failed", "client_disconnected")
    # The PBX's retry then succeeds.
    retry = exchange(server.port, kazoo_put(path_a("gone", "202403-" + "e" * 32, "wav"),
                                            len(body)) + body)
    assert retry.status == 201
    assert retry.json()["attempts"] == 2


def test_body_shorter_than_content_length_commits_nothing(server: RunningServer) -> None:
    """A body that ends (half-close) before its Content-Length is not committed."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        head = kazoo_put(path_a("short", None, "mp3"), len(TESTBODY) + 500, "audio/mpeg")
        sock.sendall(head + TESTBODY)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        sock.recv(4096)
    wait_for(lambda: server.events("upload.failed"))
    assert stored_files(server.root) == []
    assert not list((server.root / ".staging").iterdir())


def test_two_gib_against_a_100_mib_cap_is_413_with_flat_memory(start_server: Any) -> None:
    """A declared 2 GiB body against a 100 MiB cap is refused with 413 before it is read; a
    chunked body streamed past the cap is refused once it crosses it; the server's memory
    stays flat throughout."""
    server = start_server(ingest={"max_bytes": 100 * MiB})
    baseline = server.rss_kib()
    block = bytes(MiB)
    with RssSampler(server) as rss:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            head = kazoo_put(path_a("huge", None, "mp3"), 2 * 1024 * MiB, "audio/mpeg")
            sock.sendall(head + TESTBODY)
            sock.settimeout(10)
            assert read_status(sock) == 413

        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"PUT /kazoo/huge-chunked.mp3 HTTP/1.1\r\nhost: x\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            first = TESTBODY + bytes(MiB - len(TESTBODY))
            chunks = (b"%x\r\n%s\r\n" % (MiB, first if i == 0 else block) for i in range(300))
            sent = stream_until_answered(sock, chunks)
            sock.settimeout(10)
            assert read_status(sock) == 413
    assert 100 * MiB <= sent < 200 * MiB
    assert rss.peak_kib - baseline < 40 * 1024, (baseline, rss.peak_kib)
    assert stored_files(server.root) == []
    assert not list((server.root / ".staging").iterdir())


def test_large_upload_streams_in_flat_memory(server: RunningServer) -> None:
    """A 200 MiB upload is stored intact while the server's memory stays flat."""
    size = 200 * MiB
    digest = hashlib.sha256()
    baseline = server.rss_kib()
    with RssSampler(server) as rss, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(kazoo_put(path_a("big", "202403-" + "b" * 32, "mp3"), size, "audio/mpeg"))
        head = TESTBODY + bytes(MiB - len(TESTBODY))
        for i in range(size // MiB):
            block = head if i == 0 else bytes([i % 251]) * MiB
            digest.update(block)
            sock.sendall(block)
        sock.settimeout(60)
        assert read_status(sock) == 201
    [stored] = stored_files(server.root)
    assert stored.stat().st_size == size
    record = api_get(server, "/v1/recordings?call_id=big")[
        "recordings"][0]
    assert record["sha256"] == digest.hexdigest()
    assert rss.peak_kib - baseline < 40 * 1024, (baseline, rss.peak_kib)


def test_restart_sweeps_staging_and_fails_interrupted_upload(start_server: Any) -> None:
    """After a kill -9 mid-upload, a restart removes the staging leftover, marks the record
    ``failed`` (interrupted) and the PBX's retry stores the recording."""
    server = start_server(ingest={"chunk_size": 65536})
    body = make_wav(30.0)  # 480 KB
    target = path_a("crash", "202403-" + "c" * 32, "wav")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(kazoo_put(target, len(body)) + body[:200_000])
        wait_for(lambda: list((server.root / ".staging").iterdir()))
        server.proc.kill()
        server.proc.wait()
    assert len(list((server.root / ".staging").iterdir())) == 1

    restarted = start_server()  # same name: same working directory, storage and catalog
    [ready] = restarted.events("storage.ready")
    assert (ready["staging_swept"], ready["recovered_failed"]) == (1, 1)
    assert not list((restarted.root / ".staging").iterdir())
    [record] = api_get(restarted, "/v1/recordings?call_id=crash")["recordings"]
    assert (record["status"], record["error"]) == ("failed", "interrupted")
    assert exchange(restarted.port, kazoo_put(target, len(body)) + body).status == 201
    assert [f.read_bytes() for f in stored_files(restarted.root)] == [body]


def test_expect_100_continue(server: RunningServer) -> None:
    """``Expect: 100-continue`` (FreeSWITCH curl) gets 100 before the body, or a 413 before
    any of an oversized body is sent."""
    wav = make_wav(0.5)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(10)
        sock.sendall(kazoo_put("/kazoo/fs-call.wav", len(wav), "audio/x-wav",
                               b"expect: 100-continue\r\n"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(wav)
        assert read_status(sock) == 201
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(10)
        sock.sendall(kazoo_put("/kazoo/fs-big.wav", 5 * 1024 * 1024 * MiB, "audio/x-wav",
                               b"expect: 100-continue\r\n"))
        assert read_status(sock) == 413


def test_traversal_over_raw_socket_stays_inside_root(server: RunningServer) -> None:
    """Raw ``../`` segments and escaped slashes in names never leave the storage root."""
    wav = make_wav(0.2)
    for target in ("/kazoo/../../../../tmp/evil.wav",
                   "/kazoo/..%2F..%2F..%2F..%2Ftmp%2Fevil2.wav",
                   "/kazoo/call_recording_x.wav?account_id=..%2F..%2F..&recording_id=..%2F..%2Fy"):
        exchange(server.port, kazoo_put(target, len(wav), "audio/wav") + wav)
    root = server.root.resolve()
    for f in stored_files(server.workdir):
        if f.suffix == ".wav":
            assert f.resolve().is_relative_to(root)
    assert not Path("/tmp/evil.wav").exists()
    assert not Path("/tmp/evil2.wav").exists()


def manifest(root: Path) -> list[dict[str, str]]:
    with (root / "MANIFEST.tsv").open() as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def round_trip(server: RunningServer, path: Path, seconds: float, channels: int, rate: int,
               n: int) -> None:
    body = path.read_bytes()
    ext = path.suffix[1:]
    content_type = "audio/wav" if ext == "wav" else "audio/mpeg"
    call_id = f"corpus-{n}"
    target = path_a(call_id, f"202403-{n:032x}", ext)
    reply = exchange(server.port, kazoo_put(target, len(body), content_type) + body)
    assert reply.status == 201, (path, reply.body)
    record = reply.json()
    got = exchange(server.port, f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    assert got.body == body, path
    on_disk = Path(record["storage_url"].removeprefix("file://"))
    assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()
    assert (record["channels"], record["sample_rate"]) == (channels, rate), path
    # WAV durations are exact; an MP3's is its frame count, which the manifest's tool
    # rounds by at most one frame (72 ms at 8 kHz MPEG-2.5).
    tolerance = 1 if ext == "wav" else 72
    assert abs(record["duration_ms"] - seconds * 1000) <= tolerance, (path, record["duration_ms"])


def test_fixture_recordings_round_trip(server: RunningServer, tmp_path: Path) -> None:
    """Real MP3s and generated WAVs uploaded as Kazoo does come back byte-identical through
    GET and on disk, with their duration, sample rate and channels on the record."""
    cases = [(FIXTURES / "01-vm-and.mp3", 0.864, 1, 8000),
             (FIXTURES / "02-vm-first.mp3", 0.936, 1, 8000)]
    for seconds, rate, channels in ((1.5, 8000, 1), (2.0, 16000, 2)):
        wav = tmp_path / f"tone-{rate}-{channels}.wav"
        wav.write_bytes(make_wav(seconds, rate, channels))
        cases.append((wav, seconds, channels, rate))
    for n, (path, seconds, channels, rate) in enumerate(cases):
        round_trip(server, path, seconds, channels, rate, n)


@pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").exists(),
                    reason=f"speech corpus not found at {CORPUS} (set RECSINK_CORPUS)")
def test_corpus_round_trip(server: RunningServer) -> None:
    """Every corpus recording (wav and mp3) uploaded as Kazoo does comes back byte-identical
    through GET and on disk, with the manifest's duration, sample rate and channels."""
    rows = manifest(CORPUS)
    for n, row in enumerate(rows):
        path = CORPUS / row["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
        round_trip(server, path, float(row["seconds"]), int(row["channels"]), int(row["rate"]),
                   1000 + n)
    assert len(stored_files(server.root)) == len(rows)
