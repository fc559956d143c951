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
import contextlib
import hashlib
import http.client
import os
import platform
import random
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from recsink.config import S3Settings
from tests.conftest import base_config, merge, start_server_process
from tests.s3support import (
    MotoServer,
    all_objects,
    list_multipart_uploads,
    object_sha256,
    s3_client,
)

MiB = 1024 * 1024
BLOCK = MiB
ACCOUNT = "3a1b2c3d4e5f60718293a4b5c6d7e8f9"
BUCKET = "bench-rss"


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of ``/proc/<pid>/status``; None if gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def reset_hwm(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (``clear_refs`` 5); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler(threading.Thread):
    """Samples VmRSS of some processes every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, pids: dict[str, int], interval: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids = pids
        self.interval = interval
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop_event.is_set():
            now = time.monotonic() - start
            for name, pid in self.pids.items():
                rss = proc_status_kib(pid, "VmRSS")
                if rss is not None:
                    self.samples[name].append((now, rss))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def peak(self, name: str) -> tuple[float, int]:
        """(seconds into sampling, KiB) of the highest sample."""
        return max(self.samples[name], key=lambda s: s[1], default=(0.0, 0))

    def quarters(self, name: str, until: float) -> list[int]:
        """Highest sample in each quarter of ``[0, until]`` seconds (KiB)."""
        peaks = [0, 0, 0, 0]
        for t, rss in self.samples[name]:
            q = min(3, int(4 * t / until)) if until > 0 else 0
            peaks[q] = max(peaks[q], rss)
        return peaks

    def median(self, name: str) -> int:
        """Median sample (KiB)."""
        return int(statistics.median(rss for _, rss in self.samples[name] or [(0.0, 0)]))


def wav_header(size: int) -> bytes:
    """44-byte RIFF/WAVE header for a ``size``-byte file of 16-bit mono 8 kHz PCM."""
    rate, channels, width = 8000, 1, 2
    return (b"RIFF" + struct.pack("<I", size - 8) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate,
                                    rate * channels * width, channels * width, width * 8)
            + b"data" + struct.pack("<I", size - 44))


def wav_blocks(size: int, seed: int) -> Iterator[bytes]:
    """Yield a ``size``-byte WAV file in 1 MiB blocks: the header, then noise PCM whose
    blocks are rotations of one seeded 1 MiB block (so every block differs)."""
    base = random.Random(seed).randbytes(BLOCK)  # noqa: S311 - filler, not crypto
    head = wav_header(size)
    sent, index = 0, 0
    while sent < size:
        shift = (index * 4099 + 1) % BLOCK
        block = base[shift:] + base[:shift]
        if index == 0:
            block = head + block[len(head):]
        block = block[:size - sent]
        yield block
        sent += len(block)
        index += 1


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
    rid = f"202611-{uuid.uuid4().hex}"
    target = (f"/kazoo/call_recording_{up.call_id}.wav?call_id={up.call_id}"
              f"&recording_id={rid}&account_id={ACCOUNT}")
    head = (f"PUT {target} HTTP/1.1\r\ncontent-type: audio/wav\r\n"
            f"content-length: {up.size}\r\nhost: x\r\nconnection: close\r\n\r\n").encode()
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


def tree_state() -> str:
    """HEAD of the repository, plus a hash of the uncommitted diff of recsink/ if any."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], capture_output=True, check=False,  # noqa: S603, S607
                              cwd=Path(__file__).resolve().parents[1]).stdout.decode().strip()
    head, diff = git("rev-parse", "--short", "HEAD"), git("diff", "HEAD", "--", "recsink")
    return f"{head}+dirty:{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else head


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
