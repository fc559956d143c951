"""What the benchmark scripts share: process memory and CPU from ``/proc``, an RSS sampler,
WAV headers, Kazoo path-A request heads, the machine's description, and starting a real
``recsink serve`` process on loopback (through :func:`tests.conftest.start_server_process`).

Used by :mod:`bench.s3_rss`, :mod:`bench.utf8_parser` and the comparative harness
(``python -m bench``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
#: The Kazoo account every benchmark upload belongs to.
ACCOUNT = "3a1b2c3d4e5f60718293a4b5c6d7e8f9"
HOST = "127.0.0.1"
#: Block size of generated bodies.
BLOCK = MiB
REPO = Path(__file__).resolve().parents[1]


# -- /proc ---------------------------------------------------------------------------------


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


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. nginx's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


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


# -- recordings and requests ---------------------------------------------------------------


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


def kazoo_target(call_id: str, recording_id: str, ext: str = "wav") -> str:
    """A Kazoo path-A upload target (specs/kazoo.md §2.1) under the default ``/kazoo``."""
    return (f"/kazoo/call_recording_{call_id}.{ext}?call_id={call_id}"
            f"&recording_id={recording_id}&account_id={ACCOUNT}")


def put_head(target: str, size: int, content_type: str = "audio/wav",
             connection: str = "keep-alive") -> bytes:
    """The head of a raw PUT with a Content-Length, as a PBX sends it."""
    return (f"PUT {target} HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {size}\r\nconnection: {connection}\r\n\r\n").encode()


# -- the machine ---------------------------------------------------------------------------


def tree_state() -> str:
    """HEAD of the repository, plus a hash of the uncommitted diff of recsink/ if any."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], capture_output=True, check=False,  # noqa: S603, S607
                              cwd=REPO).stdout.decode().strip()
    head, diff = git("rev-parse", "--short", "HEAD"), git("diff", "HEAD", "--", "recsink")
    return f"{head}+dirty:{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else head


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """``<fstype> (<device> on <mount point>)`` of the filesystem holding ``path``."""
    path = path.resolve()
    best: tuple[str, str, str] = ("?", "?", "/")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if path.is_relative_to(mount) and len(mount) >= len(best[2]):
                best = (fstype, device, mount)
    return f"{best[0]} ({best[1]} on {best[2]})"


def machine_lines(workdir: Path) -> list[str]:
    """The machine a run happened on, as markdown list items."""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- machine: {os.cpu_count()} cores, {cpu_model()}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- temp dir: {workdir} on {filesystem_of(workdir)}",
        f"- load average at start (1/5/15 min): {load}",
        f"- recsink tree: {tree_state()}",
    ]


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM a process we started (by its pid), SIGKILL it if it does not exit."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_recsink(workdir: Path, config: dict[str, Any], attempts: int = 3) -> Any:
    """A real ``recsink serve`` process on a free loopback port for ``config`` (a dict as
    :func:`tests.conftest.base_config` makes). The port is chosen here, so that the log
    level may hide ``server.listening``; returns a :class:`tests.conftest.RunningServer`."""
    from tests.conftest import merge, start_server_process

    for attempt in range(1, attempts + 1):
        port = free_port()
        try:
            return start_server_process(workdir, merge(config, {"server": {"port": port}}),
                                        timeout=60)
        except AssertionError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def log(tag: str, msg: str) -> None:
    """Progress on stderr (reports go to stdout)."""
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)
