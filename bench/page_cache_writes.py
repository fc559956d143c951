"""CPU cost of buffered writes into the page cache, by write() size.

Writes 200 files of 10 MiB (2000 MiB) with ``write()`` calls of each ``--sizes`` KiB from
one reused page-aligned buffer, no fsync, and prints the wall throughput and the process's
CPU seconds per size; each size runs ``--rounds`` times, interleaved, in a temporary
directory under ``--dir``. Why recsink's buffered writes use 256 KiB calls: on the benchmark
machine 1 MiB calls varied eightfold from run to run (bench/RESULTS.md). Run from the
repository root::

    .venv/bin/python -m bench.page_cache_writes [--sizes 64 256 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import tempfile
import time
from pathlib import Path

FILES = 200
FILE_BYTES = 10 * 1024 * 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_round(directory: Path, size: int) -> tuple[float, float]:
    """MiB/s and CPU seconds for FILES files written ``size`` bytes per call."""
    buffer = mmap.mmap(-1, size)
    buffer.write(os.urandom(size))
    started, cpu = time.perf_counter(), cpu_seconds()
    for n in range(FILES):
        fd = os.open(directory / f"f{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(FILE_BYTES // size):
                os.write(fd, buffer)
        finally:
            os.close(fd)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    for n in range(FILES):
        (directory / f"f{n}").unlink()
    return FILES * FILE_BYTES / 2**20 / elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024],
                        help="write() sizes, KiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    print("| write() size | MiB/s | CPU s per 2000 MiB |\n|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for _ in range(args.rounds):
            for kib in args.sizes:
                rate, cpu = one_round(Path(tmp), kib * 1024)
                print(f"| {kib} KiB | {rate:,.0f} | {cpu:.2f} |", flush=True)


if __name__ == "__main__":
    main()
