"""What does parsing request heads in pure Python cost recsink in upload throughput?

recsink serves with :class:`recsink.server.RecsinkAppRunner`, whose connections parse
request heads with aiohttp's pure-Python parser (``HttpRequestParserPy``) so that Kazoo's raw
UTF-8 query strings are accepted; aiohttp's default C parser (llhttp) answers them 400.
This script measures both runners on the real app (``recsink.app.create_app``), each
server in its own process, with a raw-socket load generator in this process that sends
Kazoo path-A PUTs byte for byte as Kazoo's httpc does.

Run from the repository root::

    .venv/bin/python -m bench.utf8_parser

Every scenario runs against a fresh server (fresh temporary storage root and catalog) for
each runner; rounds alternate the runner order (ABBA) and the table shows the median of the
rounds. ``--help`` lists the knobs (counts, repeats, the fsync pass).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

import aiohttp
from aiohttp import web

from bench.common import ACCOUNT, HOST, KiB, MiB, process_cpu

Runner = Literal["stock", "recsink"]
RUNNERS: tuple[Runner, ...] = ("stock", "recsink")
RUNNER_TITLES: dict[Runner, str] = {
    "stock": "C parser (stock)",
    "recsink": "pure-Python head parser (recsink)",
}

MP3_HEAD = b"ID3\x04\x00\x00\x00\x00\x00\x00"
#: Scenarios writing at least this much get an untimed lead-in run (see run_pass).
LEAD_IN_BYTES = 64 * MiB


# --------------------------------------------------------------------------- server process


def _settings_dict(workdir: Path, fsync: bool) -> dict[str, object]:
    return {
        "server": {"host": HOST, "port": 0},
        "storage": {"disk": {"root": str(workdir / "recordings"), "fsync": fsync}},
        "catalog": {"path": str(workdir / "recsink.db")},
        "log": {"level": "warning"},
    }


async def _serve(runner_kind: Runner, workdir: Path, fsync: bool, conn: Connection) -> None:
    from recsink.app import create_app
    from recsink.config import Settings
    from recsink.server import RecsinkAppRunner

    settings = Settings(**_settings_dict(workdir, fsync))  # type: ignore[arg-type]
    app = create_app(settings)
    runner: web.AppRunner
    if runner_kind == "recsink":
        runner = RecsinkAppRunner(app, read_bufsize=settings.server.read_bufsize,
                                  read_buffer_bytes=settings.server.read_buffer_bytes,
                                  header_timeout=settings.server.header_timeout,
                                  access_log=None, handle_signals=False)
    else:
        runner = web.AppRunner(app, read_bufsize=settings.server.read_bufsize,
                               access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        conn.send(site.port)  # the bound port (we asked for 0)
        # Block (in a thread) until the parent says stop or goes away.
        with suppress(EOFError):
            await asyncio.to_thread(conn.recv)
    finally:
        await runner.cleanup()


def _server_main(runner_kind: Runner, workdir: str, fsync: bool, conn: Connection) -> None:
    """Entry point of a server process: serve until the parent sends anything on ``conn``."""
    from recsink import logs

    # Server log lines go to stderr, so stdout carries only the report.
    logs.configure("warning", stream=sys.stderr)
    asyncio.run(_serve(runner_kind, Path(workdir), fsync, conn))


@dataclass
class ServerHandle:
    port: int
    pid: int


@contextmanager
def server_process(runner_kind: Runner, fsync: bool) -> Iterator[ServerHandle]:
    """A recsink server in a child process on a fresh temporary directory; stopped (by its
    own pipe, then by its pid if it hangs) and the directory removed on exit."""
    ctx = multiprocessing.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="recsink-bench-")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_server_main, args=(runner_kind, workdir, fsync, child_end),
                       daemon=True)
    proc.start()
    child_end.close()
    try:
        if not parent_end.poll(60):
            raise RuntimeError(f"{runner_kind} server did not report its port")
        port = parent_end.recv()
        assert proc.pid is not None
        yield ServerHandle(port=port, pid=proc.pid)
    finally:
        with suppress(OSError):
            parent_end.send("stop")
        proc.join(30)
        if proc.is_alive():  # only ever this child, by its own handle
            proc.terminate()
            proc.join(10)
        parent_end.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- load generator


def make_body(size: int) -> bytes:
    """An MP3-ish body: an empty ID3v2 tag, then filler, ``size`` bytes in all."""
    filler = bytes(range(256)) * (size // 256 + 1)
    return (MP3_HEAD + filler)[:size]


def target(uniq: str, caller_id_name: str = "Alice%20Smith") -> str:
    """A Kazoo path-A upload target (specs/kazoo.md §9 example 1) for recording ``uniq``."""
    return (
        f"/kazoo/call_recording_{uniq}.mp3"
        "?from=%2B14155550100%40acme.sip.example.com&to=1002%40acme.sip.example.com"
        f"&caller_id_name={caller_id_name}&caller_id_number=%2B14155550100"
        f"&call_id={uniq}&account_id={ACCOUNT}&start=63877471200&duration_ms=65432"
        f"&recording_id=202403-{uniq}"
    )


def request_head(port: int, uniq: str, size: int, caller_id_name: str = "Alice%20Smith",
                 raw_name: bytes = b"") -> bytes:
    """The request line and headers as Kazoo 4.3's httpc sends them. ``raw_name`` (bytes)
    replaces the caller name verbatim, for the raw UTF-8 check."""
    line = f"PUT {target(uniq, caller_id_name)} HTTP/1.1\r\n".encode()
    if raw_name:
        line = line.replace(f"caller_id_name={caller_id_name}".encode(),
                            b"caller_id_name=" + raw_name)
    return (
        line
        + b"content-type: audio/mpeg\r\n"
        + f"content-length: {size}\r\n".encode()
        + b"te: \r\n"
        + f"host: {HOST}:{port}\r\n".encode()
        + b"connection: keep-alive\r\n"
        + b"\r\n"
    )


class Conn:
    """One keep-alive connection speaking just enough HTTP/1.1 for these uploads."""

    WRITE_CHUNK = 1 * MiB

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        return self.reader, self.writer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with suppress(OSError):
                await self.writer.wait_closed()
            self.reader = self.writer = None

    async def put(self, head: bytes, body: bytes) -> int:
        """Send one request; the reply's status code (the connection is reopened next time
        if the server closed it)."""
        reader, writer = await self._open()
        writer.write(head)
        view = memoryview(body)
        for start in range(0, len(view), self.WRITE_CHUNK):
            writer.write(view[start:start + self.WRITE_CHUNK])
            await writer.drain()
        await writer.drain()
        reply_head = await reader.readuntil(b"\r\n\r\n")
        lines = reply_head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for raw in lines[1:]:
            name, _, value = raw.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await reader.readexactly(length)
        if close:
            await self.close()
        return status


@dataclass
class Result:
    count: int
    size: int
    seconds: float
    statuses: dict[int, int] = field(default_factory=dict)
    #: CPU seconds (user + sys) the server process and this load generator spent in the
    #: timed window; server None where /proc is not available.
    server_cpu: float | None = None
    client_cpu: float = 0.0

    @property
    def failures(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 201)

    @property
    def rps(self) -> float:
        return self.count / self.seconds

    @property
    def mbps(self) -> float:
        return self.count * self.size / self.seconds / 1e6


class Uniq:
    """Distinct 32-hex ids, so no upload is a duplicate of another (across the whole run)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n:016x}"


async def load(port: int, server_pid: int, count: int, size: int, concurrency: int,
               uniq: Uniq, warmup: int) -> Result:
    """``count`` uploads of ``size`` bytes over ``concurrency`` keep-alive connections.
    Connections are opened and warmed up (``warmup`` small uploads each) before the clock
    starts."""
    body = make_body(size)
    small = make_body(1 * KiB)
    conns = [Conn(port) for _ in range(concurrency)]
    statuses: dict[int, int] = {}

    for conn in conns:
        for _ in range(warmup):
            status = await conn.put(request_head(port, uniq.next(), len(small)), small)
            if status != 201:
                raise RuntimeError(f"warm-up upload answered {status}")

    # Heads are built ahead so the timed loop spends client CPU on the wire, not on f-strings.
    heads = [request_head(port, uniq.next(), size) for _ in range(count)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for head in heads:
        queue.put_nowait(head)

    async def worker(conn: Conn) -> None:
        while True:
            try:
                head = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                status = await conn.put(head, body)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = -1
                await conn.close()
            statuses[status] = statuses.get(status, 0) + 1

    server_before = process_cpu(server_pid)
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    server_after = process_cpu(server_pid)
    server_cpu = (server_after - server_before
                  if server_before is not None and server_after is not None else None)
    for conn in conns:
        await conn.close()
    return Result(count=count, size=size, seconds=elapsed, statuses=statuses,
                  server_cpu=server_cpu, client_cpu=client_cpu)


async def utf8_check(port: int, uniq: Uniq) -> int:
    """Status of one upload whose request line holds raw UTF-8 (``caller_id_name=José``)."""
    body = make_body(1 * KiB)
    conn = Conn(port)
    try:
        return await conn.put(
            request_head(port, uniq.next(), len(body), raw_name="Jos\u00e9".encode()), body)
    except (OSError, asyncio.IncompleteReadError) as exc:
        print(f"  utf8 check: connection error {exc!r}", file=sys.stderr)
        return -1
    finally:
        await conn.close()


# --------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class Scenario:
    key: str
    count: int
    size: int
    concurrency: int
    unit: Literal["req/s", "MB/s"]

    @property
    def label(self) -> str:
        size = f"{self.size // MiB} MiB" if self.size >= MiB else f"{self.size // KiB} KiB"
        return f"({self.key}) {self.count} x {size}, concurrency {self.concurrency}"

    def value(self, result: Result) -> float:
        return result.rps if self.unit == "req/s" else result.mbps


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    return [
        Scenario("a", args.small_count, 1 * KiB, 8, "req/s"),
        Scenario("b", args.large_count, 10 * MiB, 8, "MB/s"),
        Scenario("c", args.serial_count, 10 * MiB, 1, "MB/s"),
    ]


def run_one(runner_kind: Runner, scenario: Scenario, fsync: bool, uniq: Uniq,
            warmup: int) -> Result:
    with server_process(runner_kind, fsync) as srv:
        result = asyncio.run(load(srv.port, srv.pid, scenario.count, scenario.size,
                                  scenario.concurrency, uniq, warmup))
    return result


@dataclass
class Samples:
    values: dict[tuple[str, bool, Runner], list[float]] = field(default_factory=dict)
    failures: dict[tuple[str, bool, Runner], int] = field(default_factory=dict)
    #: Server CPU milliseconds per upload, per round.
    server_cpu: dict[tuple[str, bool, Runner], list[float]] = field(default_factory=dict)

    def add(self, scenario: Scenario, fsync: bool, runner: Runner, result: Result) -> None:
        key = (scenario.key, fsync, runner)
        self.values.setdefault(key, []).append(scenario.value(result))
        if result.server_cpu is not None:
            self.server_cpu.setdefault(key, []).append(result.server_cpu / result.count * 1e3)
        self.failures[key] = self.failures.get(key, 0) + result.failures


def cpu_ms(cpu: float | None, result: Result) -> str:
    return "?" if cpu is None else f"{cpu / result.count * 1000:.2f}"


def run_pass(todo: list[Scenario], fsync: bool, repeats: int, samples: Samples, uniq: Uniq,
             warmup: int, lead_in: bool) -> None:
    """``repeats`` rounds of every scenario on both runners; the runner that goes first
    alternates (ABBA), so use an even ``repeats`` for a balanced order.

    With ``lead_in``, each pair of timed runs that writes a lot (>= LEAD_IN_BYTES) is
    preceded by one untimed run of the same scenario: on the VM this was written on,
    whichever run came first after a scenario switch was much slower (10 MiB x 200: ~430 vs
    ~630 MB/s, with 39 vs 24 ms server CPU per upload, for either runner), apparently because
    it had to take fresh memory for the page cache while the next run reused the pages the
    previous one had just freed. The lead-in takes that position."""
    total = repeats
    for rnd in range(repeats):
        order = RUNNERS if rnd % 2 == 0 else RUNNERS[::-1]
        for scenario in todo:
            runs: list[tuple[Runner, bool]] = [(r, True) for r in order]
            if lead_in and scenario.count * scenario.size >= LEAD_IN_BYTES:
                runs.insert(0, (order[1], False))
            for runner, timed in runs:
                result = run_one(runner, scenario, fsync, uniq, warmup)
                if timed:
                    samples.add(scenario, fsync, runner, result)
                else:
                    samples.failures[("lead-in", fsync, runner)] = (
                        samples.failures.get(("lead-in", fsync, runner), 0) + result.failures)
                bad = {s: n for s, n in result.statuses.items() if s != 201}
                tag = f"round {rnd + 1}/{total}" if timed else "lead-in    "
                print(f"  fsync={str(fsync).lower():5} {tag} "
                      f"{scenario.label:36} {runner:8} "
                      f"{scenario.value(result):9.1f} {scenario.unit} "
                      f"({result.seconds:.2f} s, CPU server {cpu_ms(result.server_cpu, result)}"
                      f" client {cpu_ms(result.client_cpu, result)} ms/upload)"
                      f"{f'  NON-201: {bad}' if bad else ''}",
                      file=sys.stderr, flush=True)


def check_utf8(uniq: Uniq) -> dict[Runner, int]:
    out: dict[Runner, int] = {}
    for runner in RUNNERS:
        with server_process(runner, fsync=False) as srv:
            out[runner] = asyncio.run(utf8_check(srv.port, uniq))
    return out


def parser_micro(n: int = 20000, rounds: int = 3) -> dict[Runner, float]:
    """Microseconds to parse one Kazoo upload (head + 1 KiB body) with a fresh parser of
    each kind, as recsink's connections build it (best of ``rounds``). The parser alone,
    no server: the floor of what the head parser can cost per upload."""
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy
    from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE

    classes: dict[Runner, type[HttpRequestParserPy]] = {
        "stock": HttpRequestParser, "recsink": HttpRequestParserPy}
    body = make_body(1 * KiB)
    data = request_head(8080, "0" * 32, len(body)) + body
    loop = asyncio.new_event_loop()
    out: dict[Runner, float] = {}
    try:
        protocol = BaseProtocol(loop)
        for runner, cls in classes.items():
            best = float("inf")
            for _ in range(rounds):
                started = time.perf_counter()
                for _ in range(n):
                    parser = cls(protocol, loop, 256 * KiB, max_line_size=8190,
                                 max_field_size=8190, max_headers=128,
                                 payload_exception=web.RequestPayloadError,
                                 max_msg_queue_size=MAX_MSG_QUEUE_SIZE)
                    messages, _, _ = parser.feed_data(data)
                    assert len(messages) == 1
                best = min(best, (time.perf_counter() - started) / n * 1e6)
            out[runner] = best
    finally:
        loop.close()
    return out


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def medians(
    todo: list[Scenario], values: dict[tuple[str, bool, Runner], list[float]],
    passes: list[tuple[bool, int]],
) -> Iterator[tuple[Scenario, bool, int, dict[str, float]]]:
    """(scenario, fsync, repeats, median per runner) for each pass and scenario that every
    runner has samples for, in table order."""
    for fsync, repeats in passes:
        for scenario in todo:
            vals = {r: values.get((scenario.key, fsync, r), []) for r in RUNNERS}
            if all(vals.values()):
                yield scenario, fsync, repeats, {r: statistics.median(v) for r, v in vals.items()}


def table(todo: list[Scenario], samples: Samples, passes: list[tuple[bool, int]]) -> list[str]:
    lines = [
        f"| scenario | {RUNNER_TITLES['stock']} | {RUNNER_TITLES['recsink']} "
        "| ratio (recsink / stock) |",
        "|---|---:|---:|---:|",
    ]
    for scenario, fsync, repeats, med in medians(todo, samples.values, passes):
        stat = f"median of {repeats}" if repeats > 1 else "1 run"
        label = f"{scenario.label}, fsync {'on' if fsync else 'off'} [{scenario.unit}, {stat}]"
        lines.append(f"| {label} | {fmt(med['stock'])} | {fmt(med['recsink'])} "
                     f"| {med['recsink'] / med['stock']:.2f} |")
    return lines


def cpu_table(todo: list[Scenario], samples: Samples,
              passes: list[tuple[bool, int]]) -> list[str]:
    """Server-process CPU per upload (user + sys, all threads), medians: the cost the head
    parser adds whatever the wall-clock throughput does."""
    lines = [
        "| scenario | server CPU ms/upload, stock | server CPU ms/upload, recsink | ratio |",
        "|---|---:|---:|---:|",
    ]
    for scenario, fsync, _, med in medians(todo, samples.server_cpu, passes):
        lines.append(f"| ({scenario.key}) fsync {'on' if fsync else 'off'} "
                     f"| {med['stock']:.2f} | {med['recsink']:.2f} "
                     f"| {med['recsink'] / med['stock']:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--small-count", type=int, default=2000, help="scenario a uploads")
    parser.add_argument("--large-count", type=int, default=200, help="scenario b uploads")
    parser.add_argument("--serial-count", type=int, default=50, help="scenario c uploads")
    parser.add_argument("--repeats", type=int, default=4,
                        help="rounds with fsync off (even: each runner goes first as often)")
    parser.add_argument("--fsync-repeats", type=int, default=2,
                        help="rounds with storage.disk.fsync on (0 to skip)")
    parser.add_argument("--no-lead-in", dest="lead_in", action="store_false",
                        help="skip the untimed run before each timed pair (see run_pass)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed 1 KiB uploads per connection before each timing")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    cmd = shlex.join([os.path.relpath(sys.executable), "-m", "bench.utf8_parser",
                      *sys.argv[1:]])
    uniq = Uniq()
    todo = scenarios(args)
    samples = Samples()

    print("raw UTF-8 check ...", file=sys.stderr, flush=True)
    checks = check_utf8(uniq)
    micro = parser_micro()
    passes: list[tuple[bool, int]] = [(False, args.repeats)]
    if args.fsync_repeats > 0:
        passes.append((True, args.fsync_repeats))
    for fsync, repeats in passes:
        run_pass(todo, fsync, repeats, samples, uniq, args.warmup, args.lead_in)
    total = time.perf_counter() - started

    ok = checks["stock"] == 400 and checks["recsink"] == 201
    failures = sum(samples.failures.values())
    print(f"- command: `{cmd}`")
    print(f"- machine: nproc={os.cpu_count()}, Python {platform.python_version()} "
          f"({platform.python_implementation()}), aiohttp {aiohttp.__version__}, "
          f"{platform.system()} {platform.release()} {platform.machine()}")
    print(f"- check: raw UTF-8 query (caller_id_name=Jos\\xc3\\xa9): stock -> "
          f"{checks['stock']}, recsink -> {checks['recsink']} "
          f"({'OK' if ok else 'UNEXPECTED'}: expected 400 / 201)")
    print(f"- check: non-201 replies across all uploads (timed and lead-in): {failures}")
    print(f"- parser alone (one Kazoo path-A head + 1 KiB body, fresh parser, best of 3 x "
          f"20000): C {micro['stock']:.1f} us, pure-Python {micro['recsink']:.1f} us "
          f"(+{micro['recsink'] - micro['stock']:.1f} us per upload)")
    print()
    print("\n".join(table(todo, samples, passes)))
    print()
    if samples.server_cpu:
        print("\n".join(cpu_table(todo, samples, passes)))
        print()
    print("samples (every round, in run order):")
    for fsync, _ in passes:
        for scenario in todo:
            for runner in RUNNERS:
                vals = samples.values.get((scenario.key, fsync, runner), [])
                cpu = samples.server_cpu.get((scenario.key, fsync, runner), [])
                print(f"- ({scenario.key}) fsync {'on' if fsync else 'off'}, {runner}: "
                      + ", ".join(fmt(v) for v in vals) + f" {scenario.unit}; server CPU "
                      + ", ".join(f"{c:.2f}" for c in cpu) + " ms/upload")
            pairs = zip(samples.values.get((scenario.key, fsync, "recsink"), []),
                        samples.values.get((scenario.key, fsync, "stock"), []), strict=True)
            ratios = [rec / stock for rec, stock in pairs]
            if ratios:
                print(f"- ({scenario.key}) fsync {'on' if fsync else 'off'}, recsink / stock "
                      "per round: " + ", ".join(f"{x:.2f}" for x in ratios)
                      + f" (median {statistics.median(ratios):.2f})")
    print()
    print(f"total wall time: {total:.0f} s")
    return 0 if ok and failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
