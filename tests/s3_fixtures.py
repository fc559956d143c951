"""pytest fixtures for S3 tests: one moto server per session, a fresh bucket per test, a
fault-injecting proxy in front of the server and recsink processes storing to the bucket.
Import them into a conftest.py to use them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.s3support import (
    MotoServer,
    S3Client,
    TcpProxy,
    empty_and_delete_bucket,
    moto_server,
    s3_client,
    s3_config,
)

if TYPE_CHECKING:
    from tests.conftest import RunningServer


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """The session's moto server (or the endpoint in ``$S3_ENDPOINT_URL``); never reset here."""
    with moto_server() as server:
        yield server


@pytest.fixture
def s3(moto: MotoServer) -> S3Client:
    """A sync boto3 S3 client on the moto server, for inspecting what the code under test did."""
    return s3_client(moto.url)


@pytest.fixture
def bucket(s3: S3Client) -> Iterator[str]:
    """A fresh, uniquely named bucket, emptied (objects and pending uploads) and deleted after."""
    name = f"rec-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    empty_and_delete_bucket(s3, name)


@pytest.fixture
def s3_proxy(moto: MotoServer) -> Iterator[TcpProxy]:
    """A started TcpProxy in front of the moto server (use ``s3_proxy.url`` as the endpoint)."""
    with TcpProxy((moto.host, moto.port)) as proxy:
        yield proxy


@pytest.fixture
def s3_server(
    start_server: Callable[..., RunningServer], bucket: str, moto: MotoServer, tmp_path: Path,
) -> Callable[..., RunningServer]:
    """``s3_server(name="server", endpoint=None, **s3_settings)``: a recsink process storing
    to the test's bucket (spool in its own working directory)."""

    def start(name: str = "server", endpoint: str | None = None, **s3: Any) -> RunningServer:
        spool = str(tmp_path / name / "spool")
        config = s3_config(bucket, endpoint or moto.url, spool_dir=spool, **s3)
        return start_server(name, **config)

    return start
