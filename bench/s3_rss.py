"""Peak RSS of a recsink server while it streams large concurrent uploads to S3.

recsink's S3 backend (:mod:`recsink.storage.s3`) cuts each upload into multipart parts held
in one shared pool of part buffers bounded by ``storage.s3.max_buffer_bytes``. This script
measures what that means for the whole server process: it starts ``moto_server`` and a real
``recsink serve`` process on 127.0.0.1 (``storage.backend = "s3"``), records the server's
RSS at idle after one small warm-up upload, then sends ``--uploads`` concurrent Kazoo path-A
PUTs of ``--size-mib`` MiB each (RIFF/WAVE bodies generated 1 MiB at a time, hashed while
sent) over raw sockets, sampling the server's VmRSS every 20 ms. Afterwards it checks every
object in the bucket against the sent SHA-256 and that no multipart upload is left open, and
prints a markdown report. Run from the repository root::

    .venv/bin/python -m bench.s3_rss [--uploads 4] [--size-mib 300]

Exit status 1 when an upload was not answered 201 or verification failed; the RSS figure is
reported against ``--limit-mib`` (200) but never fails the run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    MiB,
    RssSampler,
    kazoo_target,
    proc_status_kib,
    put_head,
    reset_hwm,
    tree_state,
    wav_blocks,
)
from recsink.config import S3Settings
from tests.conftest import base_config, merge, start_server_process
from tests.s3support import (
    MotoServer,
    all_objects,
    list_multipart_uploads,
    object_sha256,
    s3_client,
)

BUCKET = "bench-rss"


@dataclass
class Upload:
    """One PUT and its outcome."""

    call_id: str
    size: int
    seed: int
    status: int = 0
    sha256: str = ""
    error: str = ""
    body: bytes = field(default=b"", repr=False)


def put_recording(port: int, up: Upload, timeout: float = 900) -> Upload:
    """Send ``up`` as a Kazoo path-A PUT on a fresh connection; fill in status and hash."""
    head = put_head(kazoo_target(up.call_id, f"202611-{uuid.uuid4().hex}"), up.size,
                    connection="close")
    digest = hashlib.sha256()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(head)
            try:
                for block in wav_blocks(up.size, up.seed):
                    sock.sendall(block)
                    digest.update(block)
            except OSError as exc:  # the server may have answered early; read it below
                up.error = f"send: {exc}"
            response = http.client.HTTPResponse(sock, method="PUT")
            response.begin()
            up.status, up.body = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        up.error = up.error or f"{type(exc).__name__}: {exc}"
    up.sha256 = digest.hexdigest()
    return up


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; the S3 ones default to recsink's own defaults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--uploads", type=int, default=4, help="concurrent uploads (4)")
    p.add_argument("--size-mib", type=int, default=300, help="size of each upload (300)")
    p.add_argument("--part-size-mib", type=int, help="storage.s3.part_size (recsink default)")
    p.add_argument("--parts-in-flight", type=int, help="storage.s3.parts_in_flight (default)")
    p.add_argument("--max-buffer-mib", type=int, help="storage.s3.max_buffer_bytes (default)")
    p.add_argument("--limit-mib", type=float, default=200, help="RSS requirement (200)")
    p.add_argument("--interval-ms", type=float, default=20, help="RSS sampling period (20)")
    return p.parse_args(argv)


def log(msg: str) -> None:
    """Progress on stderr (the report goes to stdout)."""
    print(f"[s3_rss] {msg}", file=sys.stderr, flush=True)


def mib(kib: float | None) -> str:
    """KiB as MiB with one decimal."""
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def run(args: argparse.Namespace) -> int:
    """Start moto and recsink, upload, sample, verify, print the report; the exit status."""
    overrides: dict[str, int] = {}
    if args.part_size_mib is not None:
        overrides["part_size"] = args.part_size_mib * MiB
    if args.parts_in_flight is not None:
        overrides["parts_in_flight"] = args.parts_in_flight
    if args.max_buffer_mib is not None:
        overrides["max_buffer_bytes"] = args.max_buffer_mib * MiB
    s3set = S3Settings(**overrides)  # validates, and gives recsink's defaults for the rest
    size = args.size_mib * MiB

    workdir = Path(tempfile.mkdtemp(prefix="s3_rss-"))
    moto: MotoServer | None = None
    server = None
    try:
        moto = MotoServer(log_dir=workdir)
        s3 = s3_client(moto.url)
        s3.create_bucket(Bucket=BUCKET)
        config = merge(base_config(workdir), {"storage": {"backend": "s3", "s3": {
            "url": f"s3://{BUCKET}/bench", "endpoint_url": moto.url,
            "credentials": "testing:testing:us-east-1",
            "spool_dir": str(workdir / "spool"), **overrides}}})
        if size > 1024 * MiB:  # over ingest.max_bytes' default
            config["ingest"] = {"max_bytes": size}
        server = start_server_process(workdir / "recsink", config)
        pid = server.proc.pid
        log(f"moto {moto.url} (pid {moto.pid}), recsink port {server.port} (pid {pid})")

        warm = put_recording(server.port, Upload("bench-warmup", MiB, seed=0))
        if warm.status != 201:
            raise RuntimeError(f"warm-up answered {warm.status} {warm.error} {warm.body!r}")
        time.sleep(1.0)
        idle = int(statistics.median(proc_status_kib(pid, "VmRSS") or 0 for _ in range(5)))
        hwm_reset = reset_hwm(pid)
        moto_idle = proc_status_kib(moto.pid, "VmRSS") if moto.pid else None

        uploads = [Upload(f"bench-{i}-{uuid.uuid4().hex[:8]}", size, seed=i + 1)
                   for i in range(args.uploads)]
        pids = {"recsink": pid} | ({"moto": moto.pid} if moto.pid else {})
        sampler = RssSampler(pids, args.interval_ms / 1000)
        log(f"idle RSS {mib(idle)} MiB; sending {args.uploads} x {args.size_mib} MiB")
        sampler.start()
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.uploads) as pool:
            done = list(pool.map(lambda u: put_recording(server.port, u), uploads))
        wall = time.monotonic() - start
        time.sleep(0.2)
        sampler.stop()
        hwm = proc_status_kib(pid, "VmHWM")
        after = proc_status_kib(pid, "VmRSS")
        moto_hwm = proc_status_kib(moto.pid, "VmHWM") if moto.pid else None
        log(f"uploads done in {wall:.1f} s; verifying")

        problems = [f"{u.call_id}: {u.status} {u.error} {u.body[:200]!r}"
                    for u in done if u.status != 201 or u.error]
        objects = {k: n for k, n in all_objects(s3, BUCKET).items() if k.endswith(".wav")}
        expected = sorted([warm.sha256] + [u.sha256 for u in done])
        got = sorted(object_sha256(s3, BUCKET, key) for key in objects)
        if got != expected:
            problems.append(f"bucket .wav objects {sorted(objects.items())} do not match the "
                            f"{len(expected)} bodies sent (sha256 {got} vs {expected})")
        pending = list_multipart_uploads(s3, BUCKET)
        if pending:
            problems.append(f"{len(pending)} multipart uploads left open")

        peak_t, peak = sampler.peak("recsink")
        total = size * args.uploads
        verdict = ("under" if peak < args.limit_mib * 1024 and (hwm or 0) < args.limit_mib * 1024
                   else "**NOT under**")
        pool_count = s3set.max_buffer_bytes // s3set.part_size
        cmd = shlex.join([".venv/bin/python", "-m", "bench.s3_rss", *sys.argv[1:]])
        lines = [
            f"### {args.uploads} x {args.size_mib} MiB concurrent uploads to S3 (moto)",
            "",
            f"`{cmd}`",
            "",
            f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}; recsink tree {tree_state()}",
            "",
            "| | |",
            "|---|---|",
            f"| part size / parts in flight | {s3set.part_size / MiB:g} MiB / "
            f"{s3set.parts_in_flight} |",
            f"| max_buffer_bytes (pool) | {s3set.max_buffer_bytes / MiB:g} MiB "
            f"({pool_count} buffers) |",
            f"| uploads | {args.uploads} x {args.size_mib} MiB = {total / MiB:g} MiB |",
            f"| wall time / throughput | {wall:.1f} s / {total / MiB / wall:.0f} MiB/s |",
            f"| recsink RSS idle (after warm-up) | {mib(idle)} MiB |",
            f"| recsink RSS median during uploads | {mib(sampler.median('recsink'))} MiB |",
            f"| **recsink peak RSS (sampled every {args.interval_ms:g} ms, "
            f"{len(sampler.samples['recsink'])} samples)** | **{mib(peak)} MiB** "
            f"(at {peak_t:.1f} s) |",
            f"| recsink VmHWM{' (reset after idle)' if hwm_reset else ' (process lifetime)'}"
            f" | {mib(hwm)} MiB |",
            "| recsink peak RSS per quarter of the upload time | "
            + " / ".join(mib(q) for q in sampler.quarters("recsink", wall)) + " MiB |",
            f"| recsink RSS after uploads | {mib(after)} MiB |",
            f"| peak - idle | {mib(peak - idle)} MiB |",
            f"| moto RSS idle / peak sampled / VmHWM | {mib(moto_idle)} / "
            f"{mib(sampler.peak('moto')[1] if moto.pid else None)} / {mib(moto_hwm)} MiB |",
            f"| verification | {'OK' if not problems else 'FAILED'}: {len(got)} objects "
            f"(incl. warm-up), sha256 {'match' if got == expected else 'MISMATCH'}, "
            f"{len(pending)} open multipart uploads |",
            "",
            f"Verdict: peak RSS {mib(max(peak, hwm or 0))} MiB is {verdict} "
            f"{args.limit_mib:g} MiB.",
        ]
        print("\n".join(lines))
        for problem in problems:
            print(f"\nPROBLEM: {problem}")
        if problems:
            log(f"moto log tail:\n{moto.log_tail(60)}")
            log("recsink log tail:\n" + "\n".join(
                server.log_path.read_text(errors="replace").splitlines()[-20:]))
        return 1 if problems else 0
    finally:
        if server is not None:
            try:
                server.stop()
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(10)
        if moto is not None:
            moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m bench.s3_rss [options]``."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
