"""S3 unreachable for a while, twice, during concurrent uploads: nothing acknowledged is lost
(spooled, then shipped); what was refused is simply absent."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Reply, RunningServer, api_get
from tests.faults.support import (
    S3_SETTINGS,
    BucketStore,
    MiB,
    Upload,
    all_records,
    bounded,
    check_invariants,
    deliver,
    fault_seed,
    fd_baseline,
    noise_wav,
    tone_uploads,
    until,
    upload,
)
from tests.s3support import S3Client, TcpProxy, list_multipart_uploads


async def test_s3_outages_during_load_lose_nothing_acknowledged(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, s3_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    """48 concurrent uploads while a proxy cuts S3 off twice and brings it back: every
    upload answered 2xx ends up in the bucket byte-identical (spooled, then shipped) and the
    spool empties; the ones S3 failed mid-multipart are answered 503 with Retry-After and
    leave nothing in the bucket or the spool; the PBX's retries then store them."""
    seed = fault_seed()
    rng = random.Random(seed)
    why = f"seed {seed}"
    started = time.monotonic()
    server = s3_server(endpoint=s3_proxy.url, **S3_SETTINGS)
    store = BucketStore(s3, bucket, tmp_path / "server" / "spool", s3_proxy.port)
    warm = tone_uploads("warm", 1, rng)[0]
    assert (await upload(server.port, warm)) is not None
    fds = fd_baseline(server, store)

    # Three multipart uploads with a part up, held until S3 is gone: they must fail.
    big = [Upload(f"big{n}", f"202611-big{n:04d}" if n % 2 == 0 else None,
                  noise_wav(12 * MiB, rng)) for n in range(3)]
    release = asyncio.Event()
    holding = [asyncio.create_task(upload(server.port, item, cut=6 * MiB, release=release))
               for item in big]
    await until(lambda: len(list_multipart_uploads(s3, bucket)) >= len(big), server,
                what="the big uploads' first parts")

    small = tone_uploads("small", 45, rng)
    plan = [(rng.uniform(0, 4.0), rng.uniform(0.005, 0.05)) for _ in small]
    answered = 0

    async def send(item: Upload, delay: float, pause: float) -> Reply | None:
        nonlocal answered
        await asyncio.sleep(delay)
        reply = await upload(server.port, item, pieces=2, pause=pause)
        answered += 1
        return reply

    async def outages() -> None:
        for after, seconds in ((8, rng.uniform(0.5, 1.5)), (28, rng.uniform(0.5, 1.5))):
            while answered < after:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(s3_proxy.down)
            if not release.is_set():  # the first outage lasts until the big ones failed
                release.set()
                await asyncio.wait(holding)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(s3_proxy.up)

    sending = [asyncio.create_task(send(item, *p)) for item, p in zip(small, plan, strict=True)]
    *replies, _ = await asyncio.gather(*holding, *sending, outages())
    items = [*big, *small]
    acknowledged, refused = [], []
    for item, reply in zip(items, replies, strict=True):
        assert reply is not None, (why, item.call_id, "connection broke")
        if reply.status == 503:
            assert reply.json()["error"] == "storage_unavailable", (why, reply.body)
            assert int(reply.headers["retry-after"]) > 0, why
            refused.append(item)
        else:
            assert reply.status == 201, (why, item.call_id, reply.status, reply.body)
            acknowledged.append(item)
    assert set(big) <= set(refused), (why, [i.call_id for i in refused])
    spooled = [e for e in server.events("recording.stored") if e.get("spooled")]
    assert spooled, f"{why}: no upload went to the spool; the outages missed the load"

    def shipped() -> bool:
        return not [r for r in all_records(server)
                    if (r["shipping"] or {}).get("state") == "pending"]

    await until(shipped, server, timeout=60, what="the spool shipped")
    print(f"{len(acknowledged)} acknowledged ({len(spooled)} spooled, then shipped in "
          f"{time.monotonic() - started:.1f} s), {len(refused)} refused")
    objects = await asyncio.to_thread(
        check_invariants, server, store, acknowledged=[warm, *acknowledged], fds=fds,
        why=f"{why}, after the outages")
    assert all(o.url.startswith("s3://") for o in objects), (why, "the spool is not empty")
    stored = {o.sha256 for o in objects}
    for item in refused:
        assert item.sha256 not in stored, (why, item.call_id)
        [record] = api_get(server, f"/v1/recordings?call_id={item.call_id}")["recordings"]
        # (Its error reads "Unreachable", an exception's class name, not the answer's
        # "storage_unavailable": Ingestor._fail names non-HTTP errors by their type.)
        assert record["status"] == "failed", (why, record)
        assert record["error"], (why, record)
    for event in spooled:
        record = api_get(server, f"/v1/recordings/{event['id']}")
        assert record["shipping"]["state"] == "shipped", (why, record)

    retried = await bounded((deliver(server.port, item) for item in refused), 8)
    assert [r.status for r in retried] == [201] * len(refused), why
    objects = await asyncio.to_thread(
        check_invariants, server, store, acknowledged=[warm, *items], fds=fds,
        why=f"{why}, after the retries")
    assert len(objects) == len(items) + 1, why


def s3_server_behind(s3_server: Callable[..., RunningServer], s3_proxy: TcpProxy,
                     ) -> RunningServer:
    """A server whose S3 requests go through ``s3_proxy``, time out after 1 s and are not
    retried (so a lost answer is seen as such)."""
    return s3_server(endpoint=s3_proxy.url, **{**S3_SETTINGS, "read_timeout": 1.0,
                                               "max_attempts": 1})


def _complete(data: bytes) -> bool:
    return b"</CompleteMultipartUpload>" in data


def _put_of(call_id: str) -> Callable[[bytes], bool]:
    """Matches the start of a PutObject request of the recording of ``call_id`` (its
    metadata names it)."""

    def match(data: bytes) -> bool:
        head = data.partition(b"\r\n\r\n")[0]
        request_line = head.split(b"\r\n", 1)[0]
        return (request_line.startswith(b"PUT ") and b"uploadId=" not in request_line
                and b"x-amz-meta-call-id: " + call_id.encode() in head.lower())

    return match


async def test_lost_answer_to_complete_multipart_leaves_no_orphan(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, s3_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    """When S3 completes a multipart upload but its answer never arrives and S3 stays away
    (so nothing can be checked), recsink answers 503 and keeps its intent; once S3 is back,
    the record is settled completed from the object, and the PBX's retry answers 200 with
    it: no object without a record, no second copy."""
    server = s3_server_behind(s3_server, s3_proxy)
    store = BucketStore(s3, bucket, tmp_path / "server" / "spool", s3_proxy.port)
    await asyncio.to_thread(s3_proxy.stall_after, _complete)
    item = Upload("lost", "202611-lost0001", noise_wav(11 * MiB, random.Random(11)))
    reply = await upload(server.port, item)
    assert reply is not None
    assert reply.status == 503, reply.body
    await asyncio.to_thread(s3_proxy.up)
    again = await deliver(server.port, item)
    assert again.status == 200, again.body
    [obj] = await asyncio.to_thread(check_invariants, server, store, acknowledged=[item])
    assert obj.url.endswith("/202611-lost0001.wav")  # the first attempt's object, no ~2


async def test_lost_answer_to_complete_multipart_is_recognised(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, s3_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    """When the answer to CompleteMultipartUpload is lost but S3 answers the next request,
    recsink finds that S3 completed its upload (the object carries its record id and size)
    and answers 201: stored once, nothing orphaned."""
    server = s3_server_behind(s3_server, s3_proxy)
    store = BucketStore(s3, bucket, tmp_path / "server" / "spool", s3_proxy.port)
    await asyncio.to_thread(s3_proxy.drop_answer_to, _complete)
    item = Upload("late", "202611-late0001", noise_wav(11 * MiB, random.Random(12)))
    reply = await upload(server.port, item)
    assert reply is not None
    assert reply.status == 201, reply.body
    await asyncio.to_thread(check_invariants, server, store, acknowledged=[item])


async def test_lost_answer_to_a_put_is_recognised(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, s3_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    """When the answer to a single-request PutObject is lost but S3 answers the next
    request, recsink finds its object and answers 201 without spooling a second copy."""
    server = s3_server_behind(s3_server, s3_proxy)
    store = BucketStore(s3, bucket, tmp_path / "server" / "spool", s3_proxy.port)
    item = Upload("putlost", "202611-putlost1", noise_wav(400_000, random.Random(13)))
    await asyncio.to_thread(s3_proxy.drop_answer_to, _put_of(item.call_id))
    reply = await upload(server.port, item)
    assert reply is not None
    assert reply.status == 201, reply.body
    assert reply.json()["storage_url"].startswith("s3://")
    await asyncio.to_thread(check_invariants, server, store, acknowledged=[item])


async def test_put_that_landed_before_s3_went_away_is_not_shipped_twice(
    s3_server: Callable[..., RunningServer], s3: S3Client, bucket: str, s3_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    """When S3 stores a PutObject and then goes away (the answer lost, and every request
    after it refused), the recording is kept in the spool and acknowledged; once S3 is back,
    the shipper finds that very object in S3 before storing anything: one object, the spool
    empties, no ``~2`` copy."""
    server = s3_server_behind(s3_server, s3_proxy)
    store = BucketStore(s3, bucket, tmp_path / "server" / "spool", s3_proxy.port)
    item = Upload("landed", "202611-landed01", noise_wav(400_000, random.Random(14)))
    await asyncio.to_thread(s3_proxy.down_after_answer_to, _put_of(item.call_id))
    reply = await upload(server.port, item)
    assert reply is not None
    assert reply.status == 201, reply.body
    assert reply.json()["shipping"]["state"] == "pending"
    await asyncio.to_thread(s3_proxy.up)

    def shipped() -> bool:
        [record] = all_records(server)
        return (record["shipping"] or {}).get("state") == "shipped"

    await until(shipped, server, what="the spooled copy shipped")
    [obj] = await asyncio.to_thread(check_invariants, server, store, acknowledged=[item])
    assert obj.url.endswith("/202611-landed01.wav")
