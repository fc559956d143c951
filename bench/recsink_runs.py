"""recsink under test: one real ``recsink serve`` process per configuration (disk with fsync
on, disk with fsync off, S3 to moto, S3 to the discard stand-in, Sinch events; disk with
fsync on and Sinch events also on a PostgreSQL catalog), logging at ``warning`` (logging's
cost is measured elsewhere), and what each row costs it: peak RSS (VmHWM reset with
``clear_refs`` before the row, and sampled) and CPU seconds.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.bodies import Body
from bench.common import (
    RssSampler,
    kazoo_target,
    proc_status_kib,
    process_cpu,
    put_head,
    reset_hwm,
    start_recsink,
)
from bench.loadgen import Request
from tests.conftest import RunningServer, base_config, merge

S3_CREDENTIALS = "testing:testing:us-east-1"


def catalog_section(catalog_url: str | None) -> dict[str, Any]:
    """``[catalog] url`` for a PostgreSQL catalog (the pool and timeouts as recsink's
    defaults); nothing for SQLite under the row's directory (:func:`base_config`)."""
    return {"catalog": {"url": catalog_url}} if catalog_url else {}


def disk_config(workdir: Path, fsync: bool, catalog_url: str | None = None) -> dict[str, Any]:
    """Disk storage under ``workdir``, fsync on or off; the catalog in SQLite there, or in
    PostgreSQL at ``catalog_url``."""
    return merge(base_config(workdir), {"storage": {"disk": {"fsync": fsync}},
                                        "log": {"level": "warning"},
                                        **catalog_section(catalog_url)})


def s3_config(workdir: Path, endpoint: str, bucket: str, prefix: str) -> dict[str, Any]:
    """S3 storage in ``s3://<bucket>/<prefix>`` at ``endpoint``, recsink's S3 defaults
    otherwise (5 MiB parts, 4 in flight per upload, 40 MiB of part buffers)."""
    return merge(base_config(workdir), {
        "storage": {"backend": "s3", "s3": {
            "url": f"s3://{bucket}/{prefix}", "endpoint_url": endpoint,
            "credentials": S3_CREDENTIALS, "spool_dir": str(workdir / "spool")}},
        "log": {"level": "warning"}})


def sinch_config(workdir: Path, key: str, secret: str,
                 catalog_url: str | None = None) -> dict[str, Any]:
    """Disk storage with fsync (the default), Sinch signature checking on, no pulls: the
    catalog (SQLite, or PostgreSQL at ``catalog_url``) records ``recording_finished`` then
    ``recording_available`` durably."""
    return merge(base_config(workdir), {
        "sinch": {"applications": [{"key": key, "secret": secret}], "pull": False,
                  "verify_signatures": True},
        "log": {"level": "warning"}, **catalog_section(catalog_url)})


def start(workdir: Path, config: dict[str, Any]) -> RunningServer:
    """Start ``recsink serve`` on ``config`` (on a free port)."""
    server: RunningServer = start_recsink(workdir, config)
    return server


def upload_requests(bodies: list[Body], row: str) -> list[Request]:
    """One Kazoo path-A PUT per body, each with its own call id and recording id."""
    requests = []
    for i, body in enumerate(bodies):
        call_id = f"{row}-{i:04d}-{uuid.uuid4().hex[:8]}"
        head = put_head(kazoo_target(call_id, f"bench-{uuid.uuid4().hex}"), body.size)
        requests.append(Request(call_id, head, body.path, body.size))
    return requests


@dataclass
class Metered:
    """What a row cost a process: peak RSS (KiB) and CPU seconds."""

    peak_kib: int | None = None
    cpu_s: float | None = None
    idle_kib: int | None = None


class Meter:
    """``with Meter(pid) as m:`` around a timed row: flushes dirty pages first (not timed),
    resets VmHWM, samples RSS every 50 ms, and fills ``m.result``."""

    def __init__(self, pid: int | None, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.result = Metered()
        self._sampler: RssSampler | None = None
        self._cpu = 0.0
        self._hwm_reset = False

    def __enter__(self) -> Meter:
        os.sync()
        if self.pid is not None:
            self.result.idle_kib = proc_status_kib(self.pid, "VmRSS")
            self._hwm_reset = reset_hwm(self.pid)
            self._cpu = process_cpu(self.pid) or 0.0
            self._sampler = RssSampler({"p": self.pid}, self.interval)
            self._sampler.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.pid is None or self._sampler is None:
            return
        time.sleep(self.interval)
        self._sampler.stop()
        sampled = self._sampler.peak("p")[1]
        hwm = proc_status_kib(self.pid, "VmHWM") if self._hwm_reset else None
        self.result.peak_kib = max(sampled, hwm or 0) or None
        cpu = process_cpu(self.pid)
        self.result.cpu_s = None if cpu is None else cpu - self._cpu
