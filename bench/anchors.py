"""What recsink's numbers are compared with, run on the same bodies in the same run.

* :class:`Nginx`: nginx with the WebDAV module accepting PUT to disk (``dav_methods PUT``,
  ``client_body_temp_path`` on the same filesystem as its root, ``client_body_buffer_size
  256k``, 2 workers), from a generated ``nginx.conf`` in a temporary directory, on a free
  loopback port, started and stopped by its pid. nginx does not fsync.
* :func:`run_dd`: the physical limit, ``dd if=<body> of=<target> bs=1M`` with and without
  ``conv=fsync``, N processes at a time for a row of concurrency N.
* :func:`plain_s3_upload`: a plain aiobotocore upload of the same files to the same S3
  endpoint, with recsink's own client configuration (:func:`recsink.storage.s3client.
  open_client`), the same part size, parts in flight per upload and part-buffer bound, and
  the same concurrency; only the upload itself: no HeadObject for a free key (recsink makes
  one per upload) and no catalog.
"""

from __future__ import annotations

import asyncio
import io
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.bodies import Body
from bench.common import HOST, child_pids, free_port, process_cpu, stop_process
from bench.loadgen import Load, Reply, Request
from recsink.config import S3Settings
from recsink.storage.s3client import open_client

# -- nginx ---------------------------------------------------------------------------------

NGINX_CONF = """\
{user}worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    client_body_buffer_size 256k;
    client_max_body_size 0;
    keepalive_requests 100000;
    server {{
        listen {host}:{port};
        root {root};
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


def nginx_missing() -> str | None:
    """Why the nginx anchor cannot run here (no ``nginx``, or one without the WebDAV
    module), or None when it can."""
    exe = shutil.which("nginx")
    if exe is None:
        return "nginx is not installed"
    done = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False)  # noqa: S603
    if "http_dav_module" not in done.stderr + done.stdout:
        return f"{exe} has no http_dav_module (nginx -V)"
    return None


class Nginx:
    """An nginx master (and its 2 workers) storing PUT bodies under ``root``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.root = directory / "root"
        self.body_temp = directory / "client_body_temp"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 20) -> Nginx:
        exe = shutil.which("nginx")
        assert exe is not None
        for path in (self.root, self.body_temp):
            path.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.directory / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(user=user, dir=self.directory, host=HOST,
                                          port=self.port, root=self.root))
        with (self.directory / "stderr.log").open("wb") as err:
            self.proc = subprocess.Popen(  # noqa: S603
                [exe, "-p", str(self.directory), "-e", str(self.directory / "error.log"),
                 "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: "
                                   + (self.directory / "stderr.log").read_text()
                                   + (self.directory / "error.log").read_text())
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                if len(child_pids(self.proc.pid)) >= 2:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def cpu(self) -> float:
        """CPU seconds of the master and its workers."""
        assert self.proc is not None
        pids = [self.proc.pid, *child_pids(self.proc.pid)]
        return sum(process_cpu(pid) or 0.0 for pid in pids)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # SIGTERM to the master: it stops its workers


# -- dd ------------------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_dd(bodies: Sequence[Body], concurrency: int, fsync: bool, target: Path) -> Load:
    """Copy every body into ``target`` with ``dd bs=1M`` (``conv=fsync`` when ``fsync``),
    ``concurrency`` processes at a time. Each reply's status is dd's exit code; the
    load's ``client_cpu`` is the CPU the dd processes used."""
    target.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("dd") or "dd"
    replies = [Reply(Request(body.path.name, b"", body.path, body.size)) for body in bodies]
    lock = threading.Lock()

    def copy(reply: Reply) -> None:
        assert reply.request.path is not None
        argv = [exe, f"if={reply.request.path}", f"of={target / reply.request.tag}", "bs=1M",
                "status=none", *(["conv=fsync"] if fsync else [])]
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False)  # noqa: S603
        with lock:
            reply.seconds = time.perf_counter() - started
            reply.status = done.returncode
            reply.error = done.stderr.decode(errors="replace")

    cpu = _children_cpu()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(copy, replies))
    wall = time.perf_counter() - started
    return Load(replies, wall, _children_cpu() - cpu)


# -- plain aiobotocore ---------------------------------------------------------------------


async def _plain(settings: S3Settings, bucket: str, uploads: Sequence[tuple[Body, str]],
                 concurrency: int) -> Load:
    part = settings.part_size
    buffers = asyncio.Semaphore(settings.max_buffer_bytes // part)
    uploads_slots = asyncio.Semaphore(concurrency)
    replies = [Reply(Request(key, b"", body.path, body.size)) for body, key in uploads]

    async with open_client(settings) as client:
        s3: Any = client

        async def read(fd: int, offset: int) -> io.BytesIO:
            return io.BytesIO(await asyncio.to_thread(os.pread, fd, part, offset))

        async def send_part(fd: int, key: str, upload_id: str, number: int,
                            slots: asyncio.Semaphore) -> dict[str, Any]:
            try:
                data = await read(fd, (number - 1) * part)
                response = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                                PartNumber=number, Body=data)
                return {"PartNumber": number, "ETag": response["ETag"]}
            finally:
                buffers.release()
                slots.release()

        async def one(body: Body, key: str) -> None:
            fd = os.open(body.path, os.O_RDONLY)
            try:
                if body.size <= part:
                    async with buffers:
                        await s3.put_object(Bucket=bucket, Key=key, Body=await read(fd, 0),
                                            ContentType="audio/wav")
                    return
                created = await s3.create_multipart_upload(Bucket=bucket, Key=key,
                                                           ContentType="audio/wav")
                upload_id = created["UploadId"]
                slots = asyncio.Semaphore(settings.parts_in_flight)
                tasks = []
                for number in range(1, -(-body.size // part) + 1):
                    await slots.acquire()
                    await buffers.acquire()
                    tasks.append(asyncio.create_task(
                        send_part(fd, key, upload_id, number, slots)))
                parts = await asyncio.gather(*tasks)
                await s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": list(parts)})
            finally:
                os.close(fd)

        async def timed(reply: Reply, body: Body, key: str) -> None:
            async with uploads_slots:
                started = time.perf_counter()
                try:
                    await one(body, key)
                    reply.status = 200
                except Exception as exc:
                    reply.error = f"{type(exc).__name__}: {exc}"
                reply.seconds = time.perf_counter() - started

        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(timed(reply, body, key)
                               for reply, (body, key) in zip(replies, uploads, strict=True)))
        wall = time.perf_counter() - started
    return Load(replies, wall, time.process_time() - cpu)


def plain_s3_upload(settings: S3Settings, bucket: str, uploads: Sequence[tuple[Body, str]],
                    concurrency: int) -> Load:
    """Upload each ``(body, key)`` to ``bucket`` (see the module docstring); a reply's
    status is 200 when its upload completed."""
    return asyncio.run(_plain(settings, bucket, uploads, concurrency))
