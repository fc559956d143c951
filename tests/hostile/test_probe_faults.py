"""The Kazoo GET/HEAD probe under storage faults, with pipelined requests, against real
``recsink serve`` processes (disk storage; S3 through a proxy that goes down): whatever the
fault, every response on the wire is well framed, the pipelined requests behind a failed
probe are all answered, no error text ever appears inside a 200 body, and a 200 carries the
recording's exact bytes."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import (
    ACCOUNT,
    RunningServer,
    base_config,
    make_wav,
    merge,
    start_server_process,
)
from tests.hostile.support import BASIC, Answer, Hostile, check_answer, converse, request, scaled
from tests.s3support import MotoServer, TcpProxy, empty_and_delete_bucket, s3_client, s3_config

DISK_FAULTS = ["missing", "truncated", "directory", "unreadable", "none"]
BODY = make_wav(0.1)


@pytest.fixture(scope="module")
def s3_target(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory,
              ) -> Iterator[tuple[RunningServer, TcpProxy]]:
    """A recsink process storing to a fresh bucket through a TcpProxy (stopped by pid)."""
    client = s3_client(moto.url)
    bucket = f"probe-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    workdir = tmp_path_factory.mktemp("probe-s3")
    with TcpProxy((moto.host, moto.port)) as proxy:
        config = merge(base_config(workdir), s3_config(
            bucket, proxy.url, spool_dir=str(workdir / "spool"), max_attempts=1,
            unreachable_hold=0.1))
        server = start_server_process(workdir, config)
        try:
            yield server, proxy
        finally:
            server.stop()
    empty_and_delete_bucket(client, bucket)


def probes(first: str, target: str, extra: int, headers: str) -> bytes:
    """``first`` (GET or HEAD) on ``target``, ``extra`` pipelined GETs on it, then a
    ``/healthz`` that closes the connection."""
    out = f"{first} {target} HTTP/1.1\r\nhost: x\r\n{headers}\r\n".encode()
    out += f"GET {target} HTTP/1.1\r\nhost: x\r\n{headers}\r\n".encode() * extra
    return out + b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


def check_probe_answers(answers: list[Answer], expected: int, body: bytes) -> None:
    """The invariant: all ``expected`` answers arrived whole (``converse`` refuses a cut
    one), the last is /healthz, every error is JSON, and a 200 to a GET is the recording."""
    assert len(answers) == expected, [str(a) for a in answers]
    *probe_answers, health = answers
    assert json.loads(health.body) == {"status": "ok"}, str(health)
    for answer in probe_answers:
        check_answer(answer)
        assert answer.status in (200, 503), str(answer)
        assert answer.header("x-content-type-options") == "nosniff", str(answer)
        if answer.status == 200 and not answer.to_head:
            assert b"HTTP/1." not in answer.body, str(answer)
            assert answer.body == body, str(answer)


def stored(record: dict[str, Any]) -> Path:
    return Path(unquote(urlsplit(record["storage_url"]).path))


def apply(fault: str, path: Path, cut: int) -> None:
    if fault == "missing":
        path.unlink()
    elif fault == "truncated":
        os.truncate(path, min(cut, path.stat().st_size - 1))
    elif fault == "directory":
        path.unlink()
        path.mkdir()
    elif fault == "unreadable":
        path.chmod(0)


@given(fault=st.sampled_from(DISK_FAULTS), first=st.sampled_from(["GET", "HEAD"]),
       extra=st.integers(0, 2), cut=st.integers(0, len(BODY)))
@scaled(0.3)
def test_disk_faults_under_the_probe(hostile: Hostile, fault: str, first: str, extra: int,
                                     cut: int) -> None:
    """A probe of a recording whose file is missing, truncated, replaced by a directory or
    unreadable (skipped as root, which reads anything), pipelined: well-framed JSON 503s,
    every pipelined request answered, never error text inside a 200."""
    if fault == "unreadable" and os.geteuid() == 0:
        fault = "none"  # root reads a file whatever its mode
    uid = uuid.uuid4().hex[:12]
    target = f"/kazoo/{ACCOUNT}/r-{uid}/{uid}.wav"
    [answer] = hostile.exchange(request("PUT", target, BODY, headers=[
        ("host", "x"), ("authorization", BASIC)], content_type="audio/wav"))
    assert answer.status == 201, str(answer)
    path = stored(json.loads(answer.body))
    apply(fault, path, cut)
    try:
        answers = converse(hostile.port, probes(first, target, extra,
                                                f"authorization: {BASIC}\r\n"), extra + 2)
        check_probe_answers(answers, extra + 2, BODY)
        if fault != "none":
            assert {a.status for a in answers[:-1]} == {503}, [str(a) for a in answers]
    finally:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)  # the storage check allows only intact files
        hostile.verified.pop(path, None)
    hostile.check_alive()
    hostile.check_storage()


@given(down=st.booleans(), first=st.sampled_from(["GET", "HEAD"]), extra=st.integers(0, 2))
@scaled(0.1)
def test_s3_down_under_the_probe(s3_target: tuple[RunningServer, TcpProxy], down: bool,
                                 first: str, extra: int) -> None:
    """A probe of an S3-stored recording while S3 is unreachable, pipelined: well-framed
    JSON 503s and every pipelined request answered; with S3 up, the exact bytes."""
    server, proxy = s3_target
    uid = uuid.uuid4().hex[:12]
    target = f"/kazoo/{ACCOUNT}/r-{uid}/{uid}.wav"
    [answer] = converse(server.port, request("PUT", target, BODY, content_type="audio/wav"))
    assert answer.status == 201, str(answer)
    in_s3 = json.loads(answer.body)["shipping"] is None
    if down:
        proxy.down()
    try:
        answers = converse(server.port, probes(first, target, extra, ""), extra + 2)
    finally:
        proxy.up()
    check_probe_answers(answers, extra + 2, BODY)
    if down and in_s3:
        assert {a.status for a in answers[:-1]} == {503}, [str(a) for a in answers]
    if not down:
        assert {a.status for a in answers[:-1]} == {200}, [str(a) for a in answers]
