"""Fixtures of the fault tests: a recsink process on either backend, with its storage as the
invariant checks see it (tests/conftest.py's fixtures apply here too)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, merge
from tests.faults.support import S3_SETTINGS, Backend, BucketStore, DiskStore
from tests.s3support import MotoServer, S3Client, s3_config


@pytest.fixture(params=["disk", "s3"])
def backend(request: pytest.FixtureRequest, start_server: Callable[..., RunningServer],
            tmp_path: Path) -> Backend:
    """recsink storing on disk, or on S3 (the session's moto server, a fresh bucket)."""
    workdir = tmp_path / "server"  # start_server's default working directory
    if request.param == "disk":
        return Backend("disk", start_server, DiskStore(workdir / "recordings"))
    moto: MotoServer = request.getfixturevalue("moto")
    s3: S3Client = request.getfixturevalue("s3")
    bucket: str = request.getfixturevalue("bucket")
    spool = workdir / "spool"

    def start(**sections: Any) -> RunningServer:
        config = s3_config(bucket, moto.url, spool_dir=str(spool), **S3_SETTINGS)
        return start_server(**merge(config, sections))

    return Backend("s3", start, BucketStore(s3, bucket, spool, moto.port))
