"""Clients that go away at random points of 100 uploads: inside the request head, inside the
body (FIN or RST, or half-closed), right after the body before the answer."""

from __future__ import annotations

import random
from collections import defaultdict

from tests.faults.support import (
    POINTS,
    Backend,
    BucketStore,
    MiB,
    Upload,
    all_records,
    bounded,
    break_off,
    check_invariants,
    deliver,
    fault_seed,
    fd_baseline,
    noise_wav,
    tone_uploads,
    upload,
)

UPLOADS = 100
#: On S3, this many of the uploads are multipart-sized and cut after their first part.
MULTIPART = 4


async def test_random_disconnects_leave_nothing_partial(backend: Backend) -> None:
    """100 uploads whose clients go away at seeded random points: none cut short is stored,
    one whose body was complete is stored intact or not at all, every record settles
    (failed or completed), and nothing leaks (no staging file, open multipart upload,
    descriptor or upload in flight); the PBX's retries then store each exactly once."""
    seed = fault_seed()
    rng = random.Random(seed)
    server = backend.start(ingest={"chunk_size": 65536})
    store = backend.store
    warm = tone_uploads("warm", 1, rng)[0]
    assert (await upload(server.port, warm)) is not None
    fds = fd_baseline(server, store)

    uploads = tone_uploads("cut", UPLOADS, rng)
    plan = []
    for item in uploads:
        point = rng.choice(POINTS)
        if point == "inside_head":
            at = rng.randrange(1, len(item.head))
        elif point.startswith("after_body"):
            at = len(item.body)
        else:
            at = rng.randrange(len(item.body))
        plan.append((point, at))
    if isinstance(store, BucketStore):
        for n in range(MULTIPART):  # cut inside the body, after the first part went up
            uploads[n] = Upload(f"big{n}", uploads[n].recording_id, noise_wav(12 * MiB, rng))
            plan[n] = (rng.choice(["inside_body", "inside_body_rst"]),
                       rng.randrange(6 * MiB, 12 * MiB))
    replies = await bounded((break_off(server.port, item, *where)
                             for item, where in zip(uploads, plan, strict=True)), 12)

    why = f"seed {seed}"
    for item, (point, at), reply in zip(uploads, plan, replies, strict=True):
        if reply is not None:  # only a half-closed body is answered, with a client error
            assert point == "half_closed_body", (why, item.call_id, point, reply.status)
            assert 400 <= reply.status < 500, (why, item.call_id, at, reply.status, reply.body)
            assert set(reply.json()) == {"error", "detail"}, (why, reply.body)

    objects = check_invariants(server, store, acknowledged=[warm], fds=fds,
                               why=f"{why}, after the disconnects")
    stored = {o.sha256 for o in objects}
    statuses = defaultdict(set)
    for record in all_records(server):
        statuses[record["call_id"]].add(record["status"])
    for item, (point, at) in zip(uploads, plan, strict=True):
        where = (why, item.call_id, point, at, statuses[item.call_id])
        if point.startswith("after_body"):  # the whole body was sent: stored, or not at all
            if item.sha256 in stored:
                assert statuses[item.call_id] == {"completed"}, where
            else:
                assert statuses[item.call_id] <= {"failed"}, where
        else:
            assert item.sha256 not in stored, where
            assert statuses[item.call_id] <= {"failed"}, where
            if point == "inside_head":
                assert not statuses[item.call_id], where  # no request, no record

    # The PBX retries every one: 200 exactly for those stored despite the disconnect.
    retried = await bounded((deliver(server.port, item) for item in uploads), 12)
    for item, reply in zip(uploads, retried, strict=True):
        expected = 200 if item.sha256 in stored else 201
        assert reply.status == expected, (why, item.call_id, reply.status, reply.body)
    objects = check_invariants(server, store, acknowledged=[warm, *uploads], fds=fds,
                               why=f"{why}, after the retries")
    assert len(objects) == UPLOADS + 1, why
