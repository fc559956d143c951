"""The comparative benchmark: recsink against its anchors on loopback, in one run, one table.

``python -m bench`` (or ``bash bench/run``, which also installs what it needs) runs three
groups, each server a real process on 127.0.0.1 started and stopped here by its pid:

* **disk**: recsink (fsync on, fsync off) against ``dd`` of the same bytes (with and
  without ``conv=fsync``, as many at a time as the row's concurrency) and nginx's WebDAV
  PUT (:mod:`bench.anchors`); on the 10 MiB concurrency-32 row also recsink with fsync on
  and a PostgreSQL catalog, against the same on SQLite;
* **s3**: recsink to a moto server against a plain aiobotocore upload of the same files to
  the same moto, and both to a discard-everything S3 stand-in (:mod:`bench.s3_discard`);
* **sinch**: signed Sinch notify events (:mod:`bench.sinch_events`), on a SQLite catalog and
  on a PostgreSQL one.

Rows: 200 x 10 MiB at concurrency 1, 8, 32, 128; 20 x 100 MiB at concurrency 4; 4 x 1 GiB at
concurrency 4 (recsink only: does its peak RSS stay flat as the size grows?); 5000 events at
concurrency 1 and 32. ``--scale`` multiplies counts and sizes. Every row is verified
(:mod:`bench.verify`); the exit status is 1 when any verification failed.

The PostgreSQL is :func:`tests.pg_support.postgres_server`'s (``RECSINK_TEST_POSTGRES_URL``,
else the machine's server on 127.0.0.1:5432 if it answers, else a private cluster started
for the run and stopped at its end), started on first use; every PostgreSQL row gets a
database of its own, created empty before the row's recsink starts and dropped after it
stops. Without one, those rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import anchors, loadgen, verify
from bench.bodies import MIN_SIZE, Body, make_bodies
from bench.common import GiB, MiB, log, machine_lines, put_head
from bench.loadgen import Load, Request
from bench.recsink_runs import (
    S3_CREDENTIALS,
    Meter,
    disk_config,
    s3_config,
    sinch_config,
    start,
    upload_requests,
)
from bench.report import (
    DD,
    DD_FSYNC,
    NGINX,
    PLAIN_MOTO,
    PLAIN_NULL,
    RS_FSYNC,
    RS_FSYNC_PG,
    RS_MOTO,
    RS_NOFSYNC,
    RS_NULL,
    RS_SINCH,
    RS_SINCH_PG,
    RS_SINCH_UVLOOP,
    Result,
    Results,
    Row,
    ratios_table,
    results_table,
    targets,
    targets_table,
)
from bench.s3_discard import DiscardS3
from bench.sinch_events import call_jobs, new_application, verify_catalog
from recsink.config import S3Settings, mask_dsn
from tests.conftest import RunningServer, merge
from tests.pg_support import PostgresServer, PostgresUnavailable, postgres_server
from tests.s3support import MotoServer, s3_client

GROUPS = ("disk", "s3", "sinch")
BUCKET = "bench"
#: Body sets: (name, uploads, bytes) at scale 1.
SIZES = {"10m": 10 * MiB, "100m": 100 * MiB, "1g": 1 * GiB}
#: The upload row that also runs recsink (fsync on) on a PostgreSQL catalog.
PG_DISK_ROW = "10m-c32"


@dataclass(frozen=True)
class Plan:
    uploads: list[Row]
    events: list[Row]


def make_plan(scale: float) -> Plan:
    """The issue's rows, counts and sizes multiplied by ``scale`` (at least 2 uploads of
    at least 4 KiB, 2 events)."""
    def count(n: int) -> int:
        return max(2, round(n * scale))

    def size(key: str) -> int:
        return max(MIN_SIZE, int(SIZES[key] * scale) // 4096 * 4096)

    uploads = [Row(f"10m-c{c}", count(200), size("10m"), c) for c in (1, 8, 32, 128)]
    uploads += [Row("100m-c4", count(20), size("100m"), 4), Row("1g-c4", count(4), size("1g"), 4)]
    events = [Row(f"sinch-c{c}", max(2, round(5000 * scale) // 2 * 2), 0, c, events=True)
              for c in (1, 32)]
    return Plan(uploads, events)


def stop_server(server: RunningServer) -> None:
    """Stop a recsink process this harness started, by its pid."""
    try:
        server.stop(60)
    except Exception:
        server.proc.kill()
        server.proc.wait(10)


class Harness:
    def __init__(self, workdir: Path, plan: Plan) -> None:
        self.workdir = workdir
        self.plan = plan
        self.results: list[Result] = []
        self.notes: list[str] = []
        self._bodies: dict[str, list[Body]] = {}
        self._warm: Body | None = None
        #: What lasts the whole run (the PostgreSQL server once started), closed by run().
        self._lasting = contextlib.ExitStack()
        self._pg: PostgresServer | None = None
        self._pg_missing: str | None = None
        #: The PostgreSQL used, as report lines (empty when no row used one).
        self.pg_lines: list[str] = []

    # -- bodies ------------------------------------------------------------------------------

    def bodies(self, row: Row) -> list[Body]:
        """The row's bodies (each size's set is generated once, for its largest row)."""
        name = row.key.split("-")[0]
        if name not in self._bodies:
            rows = [r for r in self.plan.uploads if r.key.startswith(name + "-")]
            count = max(r.count for r in rows)
            log("bench", f"writing {count} bodies of {row.size} bytes")
            seed = (list(SIZES).index(name) + 1) * 100_000
            self._bodies[name] = make_bodies(self.workdir / "bodies", name, count, row.size,
                                             seed)
        return self._bodies[name][:row.count]

    def warm_up(self, server: RunningServer) -> None:
        """One small upload before the timed row (imports, connections, the catalog)."""
        if self._warm is None:
            self._warm = make_bodies(self.workdir / "bodies", "warm-up", 1, MIN_SIZE, seed=7)[0]
        [request] = upload_requests([self._warm], "warm-up")
        load = loadgen.run(server.port, [[request]], 1, timeout=120)
        if load.replies[0].status != 201:
            raise RuntimeError(f"warm-up upload to {server.base} answered "
                               f"{load.replies[0].status} {load.replies[0].error} "
                               f"{load.replies[0].body[:300]!r}")

    @contextlib.contextmanager
    def recsink(self, name: str, config: Callable[[Path], dict[str, Any]],
                warm_up: Callable[[RunningServer], None]) -> Iterator[RunningServer]:
        """A fresh ``recsink serve`` for one row (so that its peak RSS is the row's own), in
        ``<temp dir>/<name>``, warmed up by ``warm_up`` (which also removes what it stored),
        stopped by its pid afterwards."""
        workdir = self.workdir / name
        server = start(workdir, config(workdir))
        try:
            warm_up(server)
            yield server
        finally:
            stop_server(server)

    # -- PostgreSQL ----------------------------------------------------------------------

    def postgres(self) -> PostgresServer | None:
        """The run's PostgreSQL (see the module docstring), started on first use; None, with
        a note, when there is none."""
        if self._pg is None and self._pg_missing is None:
            try:
                self._pg = self._lasting.enter_context(postgres_server())
            except PostgresUnavailable as exc:
                self._pg_missing = str(exc).splitlines()[0]
                self.notes.append(f"PostgreSQL catalog rows skipped: {exc}")
                return None
            self.pg_lines = [self.describe_postgres(self._pg)]
            log("bench", self.pg_lines[0].removeprefix("- "))
        return self._pg

    @staticmethod
    def describe_postgres(pg: PostgresServer) -> str:
        """The server as a report line: where it comes from, its version and durability."""
        with pg.connect() as conn:
            show = {name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                    for name in ("server_version", "fsync", "synchronous_commit",
                                 "shared_buffers", "max_connections")}
        origin = (f"a private cluster started for the run (postmaster pid {pg.pid})"
                  if pg.private else "a server already running, shared with other work")
        return (f"- PostgreSQL catalog: {mask_dsn(pg.admin_dsn)}, {origin}: PostgreSQL "
                f"{show['server_version']}, fsync {show['fsync']}, synchronous_commit "
                f"{show['synchronous_commit']}, shared_buffers {show['shared_buffers']}, "
                f"max_connections {show['max_connections']}; a fresh database per row, "
                "recsink's default pool (catalog.pool_size 10)")

    @contextlib.contextmanager
    def pg_database(self) -> Iterator[str]:
        """An empty database for one row (its DSN), dropped afterwards."""
        pg = self.postgres()
        assert pg is not None
        dsn = pg.create_database()
        try:
            yield dsn
        finally:
            pg.drop_database(dsn)

    def pg_skipped(self, row: Row, server: str) -> bool:
        """True (and the row recorded as skipped) when there is no PostgreSQL."""
        if self.postgres() is not None:
            return False
        self.results.append(Result(row, server, skipped=f"no PostgreSQL: {self._pg_missing}"))
        return True

    def add(self, result: Result) -> None:
        result.load1 = os.getloadavg()[0]
        self.results.append(result)
        load = result.load
        if load is not None:
            log("bench", f"{result.row.label:>24} | {result.server:<26} | "
                f"{load.mib_per_s:8.1f} MiB/s | {load.per_s:8.1f}/s | "
                f"{'ok' if not result.problems else 'PROBLEMS: ' + '; '.join(result.problems)}")

    # -- rows --------------------------------------------------------------------------------

    def recsink_row(self, row: Row, server: RunningServer, name: str,
                    jobs: list[list[Request]] | list[tuple[Request, Request]],
                    check: Callable[[Load], list[str]]) -> None:
        with Meter(server.proc.pid) as meter:
            load = loadgen.run(server.port, jobs, row.concurrency)
        self.add(Result(row, name, load, meter.result.peak_kib, meter.result.idle_kib,
                        meter.result.cpu_s, load.client_cpu, check(load)))

    def recsink_disk(self, row: Row, fsync: bool, postgres: bool = False) -> None:
        """recsink to disk, its catalog in SQLite or (``postgres``) in a fresh PostgreSQL
        database."""
        name = RS_FSYNC_PG if postgres else RS_FSYNC if fsync else RS_NOFSYNC
        if postgres and self.pg_skipped(row, name):
            return
        bodies = self.bodies(row)
        by_path = {b.path: b for b in bodies}

        def warm_up(server: RunningServer) -> None:
            self.warm_up(server)
            verify.remove_stored(server.root)

        with contextlib.ExitStack() as stack:
            url = stack.enter_context(self.pg_database()) if postgres else None
            server = stack.enter_context(self.recsink(
                f"recsink-fsync-{'on' if fsync else 'off'}{'-pg' if postgres else ''}-{row.key}",
                lambda workdir: disk_config(workdir, fsync, url), warm_up))
            self.recsink_row(row, server, name,
                             [[r] for r in upload_requests(bodies, row.key)],
                             lambda load: verify.recsink_disk(load, by_path, server.root))

    def dd(self, row: Row, fsync: bool) -> None:
        bodies = self.bodies(row)
        target = self.workdir / "dd"
        with Meter(None):
            load = anchors.run_dd(bodies, row.concurrency, fsync, target)
        problems = verify.plain_files(load, {b.path: b for b in bodies},
                                      lambda r: target / r.request.tag, target, None,
                                      frozenset({0}))
        self.add(Result(row, DD_FSYNC if fsync else DD, load, server_cpu=load.client_cpu,
                        problems=problems))

    def nginx(self, row: Row, nginx: anchors.Nginx | None, missing: str | None) -> None:
        if nginx is None:
            self.results.append(Result(row, NGINX, skipped=missing or "not started"))
            return
        bodies = self.bodies(row)
        requests = [[Request(f"{row.key}-{i:04d}", put_head(f"/{row.key}-{i:04d}.wav", b.size),
                             b.path, b.size)] for i, b in enumerate(bodies)]
        cpu = nginx.cpu()
        with Meter(None):
            load = loadgen.run(nginx.port, requests, row.concurrency)
        problems = verify.plain_files(load, {b.path: b for b in bodies},
                                      lambda r: nginx.root / f"{r.request.tag}.wav",
                                      nginx.root, nginx.body_temp, frozenset({201}))
        self.add(Result(row, NGINX, load, server_cpu=nginx.cpu() - cpu,
                        client_cpu=load.client_cpu, problems=problems))

    # -- groups ------------------------------------------------------------------------------

    @staticmethod
    def order(index: int, names: list[str]) -> list[str]:
        """The servers of row ``index`` in the order they run: forward for even rows,
        reversed for odd ones, so that no server always runs first or last."""
        return names if index % 2 == 0 else names[::-1]

    def disk(self, stack: contextlib.ExitStack) -> None:
        missing = anchors.nginx_missing()
        nginx = None
        if missing is None:
            nginx = anchors.Nginx(self.workdir / "nginx").start()
            stack.callback(nginx.stop)
        else:
            self.notes.append(f"nginx anchor skipped: {missing}")
        log("bench", f"disk: nginx pid {nginx.proc.pid if nginx and nginx.proc else '-'}")
        steps: dict[str, Callable[[Row], None]] = {
            DD_FSYNC: lambda row: self.dd(row, fsync=True),
            RS_FSYNC: lambda row: self.recsink_disk(row, fsync=True),
            RS_FSYNC_PG: lambda row: self.recsink_disk(row, fsync=True, postgres=True),
            DD: lambda row: self.dd(row, fsync=False),
            NGINX: lambda row: self.nginx(row, nginx, missing),
            RS_NOFSYNC: lambda row: self.recsink_disk(row, fsync=False),
        }
        for index, row in enumerate(self.plan.uploads):
            if row.key == "1g-c4":
                names = [RS_FSYNC, RS_NOFSYNC]
            else:  # the PostgreSQL catalog on one row, right after the same on SQLite
                names = [n for n in steps if n != RS_FSYNC_PG or row.key == PG_DISK_ROW]
            for name in self.order(index, names):
                steps[name](row)

    def s3(self, stack: contextlib.ExitStack) -> None:
        moto = MotoServer(log_dir=self.workdir)
        stack.callback(moto.stop)
        s3 = s3_client(moto.url)
        s3.create_bucket(Bucket=BUCKET)
        standin = DiscardS3(self.workdir / "s3_discard.log")
        stack.callback(standin.stop)
        standin.create_bucket(BUCKET)
        log("bench", f"s3: moto pid {moto.pid}, stand-in pid {standin.proc.pid}")
        part = S3Settings().part_size

        def reset_moto() -> None:
            moto.reset()
            s3.create_bucket(Bucket=BUCKET)

        def plain(row: Row, endpoint: str, name: str,
                  check: Callable[[Load, dict[str, loadgen.Reply]], list[str]]) -> None:
            bodies = self.bodies(row)
            uploads = [(b, f"plain/{row.key}-{i:04d}.wav") for i, b in enumerate(bodies)]
            settings = S3Settings(url=f"s3://{BUCKET}/plain", endpoint_url=endpoint,
                                  credentials=S3_CREDENTIALS)
            with Meter(None):
                load = anchors.plain_s3_upload(settings, BUCKET, uploads, row.concurrency)
            keys = {r.request.tag: r for r in load.replies}
            self.add(Result(row, name, load, client_cpu=load.client_cpu,
                            problems=check(load, keys)))

        def recsink(row: Row, endpoint: str, name: str, reset: Callable[[], None],
                    check: Callable[[Load, verify.Catalog], list[str]]) -> None:
            """recsink's row, then ``check`` with the catalog's records of its uploads, read
            through the recsink process's API before it stops."""
            def warm_up(server: RunningServer) -> None:
                self.warm_up(server)
                reset()

            with self.recsink(f"recsink-s3-{'moto' if endpoint == moto.url else 'discard'}-"
                              f"{row.key}", lambda workdir: s3_config(
                                  workdir, endpoint, BUCKET, "recsink"), warm_up) as server:
                self.recsink_row(
                    row, server, name, [[r] for r in upload_requests(self.bodies(row), row.key)],
                    lambda load: check(load, verify.catalog_records(
                        server.base, (r.request.tag for r in load.replies))))

        def one_row(index: int, row: Row) -> None:
            by_path = {b.path: b for b in self.bodies(row)}
            steps: dict[str, Callable[[], None]] = {
                PLAIN_MOTO: lambda: plain(row, moto.url, PLAIN_MOTO, lambda load, keys: (
                    verify.moto(s3, BUCKET, "plain/", keys, by_path, load, frozenset({200})))),
                RS_MOTO: lambda: recsink(row, moto.url, RS_MOTO, reset_moto, lambda load, cat: (
                    verify.moto(s3, BUCKET, "recsink/", verify.s3_keys(load, BUCKET), by_path,
                                load, frozenset({201}), catalog=cat))),
                PLAIN_NULL: lambda: plain(row, standin.url, PLAIN_NULL, lambda load, keys: (
                    verify.standin(standin.objects(), BUCKET, "plain", keys, by_path, load,
                                   frozenset({200}), part))),
                RS_NULL: lambda: recsink(row, standin.url, RS_NULL, standin.reset,
                                         lambda load, cat: verify.standin(
                                             standin.objects(), BUCKET, "recsink",
                                             verify.s3_keys(load, BUCKET), by_path, load,
                                             frozenset({201}), part, catalog=cat)),
            }
            # moto keeps every object in memory: no 4 x 1 GiB there
            names = [RS_NULL] if row.key == "1g-c4" else list(steps)
            for name in self.order(index, names):
                steps[name]()
                reset_moto()
                standin.reset()

        for index, row in enumerate(self.plan.uploads):
            one_row(index, row)

    def sinch(self, stack: contextlib.ExitStack) -> None:
        key, secret = new_application()

        def warm_up(server: RunningServer) -> None:
            warm = loadgen.run(server.port, call_jobs(key, secret, "warm-up", 2), 1,
                               timeout=120)
            if warm.unexpected(frozenset({200})):
                raise RuntimeError(f"warm-up events answered {[r.status for r in warm.replies]}")

        def one(row: Row, name: str) -> None:
            """The row on a SQLite catalog, on a fresh PostgreSQL database
            (:data:`RS_SINCH_PG`), or on SQLite under uvloop (:data:`RS_SINCH_UVLOOP`)."""
            postgres = name == RS_SINCH_PG
            if postgres and self.pg_skipped(row, name):
                return
            loop = "uvloop" if name == RS_SINCH_UVLOOP else "asyncio"
            jobs = call_jobs(key, secret, row.key, row.count)
            with contextlib.ExitStack() as stack:
                url = stack.enter_context(self.pg_database()) if postgres else None
                server = stack.enter_context(self.recsink(
                    f"recsink-sinch{'-pg' if postgres else ''}-{loop}-{row.key}",
                    lambda workdir: merge(sinch_config(workdir, key, secret, url),
                                          {"server": {"event_loop": loop}}), warm_up))
                catalog: Path | str = url or Path(server.config["catalog"]["path"])

                def check(load: Load) -> list[str]:
                    return (verify.statuses(load, frozenset({200}))
                            + verify_catalog(catalog, jobs))

                self.recsink_row(row, server, name, jobs, check)

        for index, row in enumerate(self.plan.events):
            for name in self.order(index, [RS_SINCH, RS_SINCH_UVLOOP, RS_SINCH_PG]):
                one(row, name)

    def run(self, groups: list[str]) -> None:
        with self._lasting:  # stops a private PostgreSQL cluster, if one was started
            for group in groups:
                log("bench", f"group {group}")
                try:
                    with contextlib.ExitStack() as stack:
                        getattr(self, group)(stack)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    self.notes.append(f"group {group} failed: {type(exc).__name__}: {exc}")
                    log("bench", traceback.format_exc())


# -- the command -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply counts and sizes (e.g. 0.05 for a quick run; default 1)")
    p.add_argument("--only", action="append", choices=GROUPS,
                   help="run only this group (repeatable; default: all)")
    p.add_argument("--row", action="append", dest="rows",
                   help="run only this row (repeatable): 10m-c1, 10m-c8, 10m-c32, 10m-c128, "
                        "100m-c4, 1g-c4, sinch-c1, sinch-c32; default: all")
    p.add_argument("--output", type=Path, help="also write the report (markdown) here")
    p.add_argument("--workdir", type=Path,
                   help="where the temporary directory goes (bodies and storage; default: "
                        "the system's temp dir). Put it on the filesystem you want measured.")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.scale <= 0:
        p.error("--scale must be > 0")
    return args


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every process started is stopped."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


LEGEND = [
    "MiB/s = body bytes / wall time of the row (first request sent to last answer); "
    "p50/p99 = per-request latency (dd: per process); recsink peak RSS = VmHWM of the row's "
    "own recsink process (a fresh one per row, after one warm-up upload; VmHWM reset before "
    "the row) or the highest 50 ms sample, with its RSS when the row started in brackets; "
    "servers run in turn, in the order listed for even rows and reversed for odd ones; "
    "server CPU = user + system "
    "seconds of recsink, of nginx's master and workers, or of the dd processes, during the "
    "row; client CPU = the load generator's (for aiobotocore rows: the plain uploader's); "
    "load 1m = the machine's 1-minute load average as the row ended (2 cores, shared)."]


def report(args: argparse.Namespace, argv: list[str], harness: Harness, machine: list[str],
           wall: float) -> list[str]:
    results = Results(harness.results)
    lines = ["## recsink comparative benchmark", "",
             f"- command: `{shlex.join(['python', '-m', 'bench', *argv])}`",
             f"- scale: {args.scale:g}" + ("" if args.scale == 1 else
                                          " (not the issue's figures: use scale 1 for those)"),
             *machine, *harness.pg_lines,
             "- load average at end (1/5/15 min): "
             + " / ".join(f"{x:.2f}" for x in os.getloadavg()),
             f"- wall time: {wall:.0f} s", "",
             "### Results", "", *results_table(harness.results), "", *LEGEND, ""]
    ratios = ratios_table(results)
    if ratios:
        lines += ["### Throughput ratios, recsink / anchor (same run)", "", *ratios, ""]
    lines += ["### Targets", "", *targets_table(targets(results)), ""]
    problems = [r for r in harness.results if r.problems]
    if harness.notes or problems:
        lines += ["### Notes", ""]
        lines += [f"- {note}" for note in harness.notes]
        for r in problems:
            lines += [f"- {r.row.label}, {r.server}: " + "; ".join(r.problems)]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m bench [--scale S] [--only GROUP] [--output FILE] [--keep]``."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="recsink-bench-", dir=args.workdir))
    machine = machine_lines(workdir)
    plan = make_plan(args.scale)
    if args.rows:
        plan = Plan([r for r in plan.uploads if r.key in args.rows],
                    [r for r in plan.events if r.key in args.rows])
    harness = Harness(workdir, plan)
    started = time.monotonic()
    try:
        with sigterm_interrupts():
            harness.run(list(dict.fromkeys(args.only or GROUPS)))
    except KeyboardInterrupt:
        log("bench", "interrupted: everything started was stopped")
        return 130
    finally:
        if args.keep:
            log("bench", f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    lines = report(args, argv, harness, machine, time.monotonic() - started)
    text = "\n".join(lines)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
        log("bench", f"report written to {args.output}")
    failed = any(r.problems for r in harness.results) or any(
        n.startswith("group ") for n in harness.notes)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
