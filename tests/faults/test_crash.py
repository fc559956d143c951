"""kill -9 of recsink in the middle of 64 concurrent uploads, then a restart: on disk and on
S3 (moto), what was acknowledged is intact and nothing else is left behind."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import Reply
from tests.faults.support import (
    Backend,
    BucketStore,
    DiskStore,
    MiB,
    Upload,
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
from tests.s3support import list_multipart_uploads

UPLOADS = 64


@dataclass
class Crash:
    """A backend to crash, and uploads to keep half-sent until the kill."""

    backend: Backend
    held: list[Upload]
    #: Body bytes each held upload sends before it waits.
    held_cut: int
    #: True once every held upload is under way in storage.
    held_visible: Callable[[], bool]
    settings: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def crash(backend: Backend) -> Crash:
    """Held uploads mid-staging (disk: 8 of 96 kB, 70 kB sent) or mid-multipart (S3: 4 of
    12 MiB, 6 MiB sent, so one part is up)."""
    rng = random.Random(backend.kind)
    store = backend.store
    if isinstance(store, DiskStore):
        held = tone_uploads("held", 8, rng, seconds=(6.0, 6.0))
        return Crash(backend, held, 70_000, lambda: len(store.leftovers()) >= len(held),
                     {"ingest": {"chunk_size": 65536}})
    assert isinstance(store, BucketStore)
    held = [Upload(f"held{n}", f"202611-held{n:04d}" if n % 2 == 0 else None,
                   noise_wav(12 * MiB, rng)) for n in range(4)]
    return Crash(backend, held, 6 * MiB,
                 lambda: len(list_multipart_uploads(store.s3, store.bucket)) >= len(held))


async def test_kill_9_during_64_uploads_then_restart(crash: Crash) -> None:
    """kill -9 while 64 uploads run (some answered, some mid-body, some held mid-staging or
    mid-multipart): after the restart every upload answered 2xx is stored intact, nothing
    partial is visible, the start-up sweep left no staging file and no incomplete multipart
    upload, interrupted records are failed, and the catalog agrees with storage; the PBX's
    retries then store every other recording exactly once."""
    seed = fault_seed()
    rng = random.Random(seed)
    server, held, store = crash.backend.start(**crash.settings), crash.held, crash.backend.store
    paced = tone_uploads("up", UPLOADS - len(held), rng, seconds=(0.5, 4.0))
    plan = [(rng.uniform(0, 1.5), rng.uniform(0.005, 0.05)) for _ in paced]

    release, broken = asyncio.Event(), list[str]()
    holding = [asyncio.create_task(upload(server.port, item, cut=crash.held_cut,
                                          release=release, broken=broken)) for item in held]
    await until(lambda: crash.held_visible() or broken, server,
                what="the held uploads under way in storage")
    assert not broken, f"a held upload ended before the kill: {broken}"
    answered = 0

    async def send(item: Upload, delay: float, pause: float) -> Reply | None:
        nonlocal answered
        await asyncio.sleep(delay)
        reply = await upload(server.port, item, pieces=4, pause=pause)
        answered += reply is not None
        return reply

    sending = [asyncio.create_task(send(item, *p)) for item, p in zip(paced, plan, strict=True)]
    while answered < len(paced) * 0.4:
        await asyncio.sleep(0.01)
    server.proc.kill()
    server.proc.wait()
    release.set()
    replies = dict(zip([*held, *paced], await asyncio.gather(*holding, *sending), strict=True))

    why = f"seed {seed}"
    assert all(replies[item] is None for item in held), why
    statuses = {reply.status for reply in replies.values() if reply is not None}
    assert statuses <= {201}, (why, statuses)
    acknowledged = [item for item, reply in replies.items() if reply is not None]
    unanswered = [item for item, reply in replies.items() if reply is None]
    assert unanswered, f"{why}: every upload finished before the kill; nothing was tested"

    restarted = await asyncio.to_thread(crash.backend.start, **crash.settings)
    [ready] = restarted.events("storage.ready")
    assert ready["recovered_failed"] >= len(held), (why, ready)
    if isinstance(store, DiskStore):
        assert ready["staging_swept"] >= len(held), (why, ready)
    fds = fd_baseline(restarted, store)
    objects = await asyncio.to_thread(
        check_invariants, restarted, store, acknowledged=acknowledged, fds=fds,
        why=f"{why}, after the restart")
    stored_before = {o.sha256 for o in objects}
    assert not stored_before & {item.sha256 for item in held}, why
    print(f"{len(acknowledged)} answered 201 before the kill, {len(unanswered)} cut off "
          f"({len(stored_before) - len(acknowledged)} of them committed unanswered); "
          f"restart: {ready['staging_swept']} staging files swept, "
          f"{ready['recovered_completed']} records completed, "
          f"{ready['recovered_failed']} failed")

    # The PBX retries everything it got no answer for.
    retried = await bounded((deliver(restarted.port, item) for item in unanswered), 16)
    for item, reply in zip(unanswered, retried, strict=True):
        # 200 exactly when the killed process had committed it without answering.
        expected = 200 if item.sha256 in stored_before else 201
        assert reply.status == expected, (why, item.call_id, reply.status, reply.body)
    objects = await asyncio.to_thread(
        check_invariants, restarted, store, acknowledged=replies, fds=fds,
        why=f"{why}, after the retries")
    assert len(objects) == UPLOADS, why
