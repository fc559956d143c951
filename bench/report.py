"""The harness's output: one markdown table of every measured row, the ratios between
recsink and its anchors row by row (and between recsink on a PostgreSQL catalog and on
SQLite), and the issues' targets with the measured value against each threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.common import KiB, MiB
from bench.loadgen import Load

# Server names, as the table shows them.
DD_FSYNC = "dd conv=fsync"
DD = "dd"
RS_FSYNC = "recsink disk, fsync on"
#: The same on a PostgreSQL catalog (``catalog.url``) instead of SQLite.
RS_FSYNC_PG = "recsink disk, fsync on, PostgreSQL catalog"
RS_NOFSYNC = "recsink disk, fsync off"
NGINX = "nginx WebDAV PUT"
PLAIN_MOTO = "aiobotocore -> moto"
RS_MOTO = "recsink S3 -> moto"
PLAIN_NULL = "aiobotocore -> discard S3"
RS_NULL = "recsink S3 -> discard S3"
RS_SINCH = "recsink Sinch events"
RS_SINCH_PG = "recsink Sinch events, PostgreSQL catalog"
RS_SINCH_UVLOOP = "recsink Sinch events, uvloop"


@dataclass(frozen=True)
class Row:
    """One row of the plan: ``count`` uploads of ``size`` bytes (or ``count`` events) at
    ``concurrency``."""

    key: str
    count: int
    size: int
    concurrency: int
    events: bool = False

    @property
    def label(self) -> str:
        if self.events:
            return f"{self.count} events, c{self.concurrency}"
        return f"{self.count} x {size_label(self.size)}, c{self.concurrency}"


def size_label(size: int) -> str:
    for unit, name in ((1024 * MiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit:
            value = size / unit
            return f"{value:.0f} {name}" if value == int(value) else f"{value:.1f} {name}"
    return f"{size} B"


@dataclass
class Result:
    """One server's run of one row."""

    row: Row
    server: str
    load: Load | None = None
    peak_kib: int | None = None  # recsink's peak RSS during the row
    start_kib: int | None = None  # and its RSS when the row started (after the warm-up)
    server_cpu: float | None = None
    client_cpu: float | None = None
    problems: list[str] = field(default_factory=list)
    skipped: str = ""
    #: The machine's 1-minute load average when the row ended (it is shared).
    load1: float | None = None

    @property
    def mib_per_s(self) -> float:
        return self.load.mib_per_s if self.load else math.nan

    @property
    def verified(self) -> bool:
        return self.load is not None and not self.problems


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _rss(r: Result) -> str:
    if not r.peak_kib:
        return "-"
    start = f" ({r.start_kib / 1024:.1f})" if r.start_kib else ""
    return f"{r.peak_kib / 1024:.1f}{start}"


#: The table's order of servers within a row (disk group, S3 group, Sinch).
SERVERS = [DD_FSYNC, RS_FSYNC, RS_FSYNC_PG, DD, NGINX, RS_NOFSYNC, PLAIN_MOTO, RS_MOTO,
           PLAIN_NULL, RS_NULL, RS_SINCH, RS_SINCH_UVLOOP, RS_SINCH_PG]


def results_table(results: list[Result]) -> list[str]:
    """The results, grouped by row (in run order), servers in :data:`SERVERS` order."""
    rows = list(dict.fromkeys(r.row for r in results))

    def place(r: Result) -> tuple[int, int, int]:
        server = SERVERS.index(r.server)
        group = (0 if server < SERVERS.index(PLAIN_MOTO) else
                 1 if server < SERVERS.index(RS_SINCH) else 2)
        return group, rows.index(r.row), server

    results = sorted(results, key=place)
    lines = [
        "| row | server | MiB/s | uploads/s or events/s | p50 ms | p99 ms "
        "| recsink peak RSS MiB (at start) "
        "| server CPU s | client CPU s | load 1m | verified |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.row.label} | {r.server} | | | | | | | | | skipped: {r.skipped} |")
            continue
        load = r.load
        verdict = "yes" if r.verified else f"**NO** ({len(r.problems)} problems)"
        lines.append(
            f"| {r.row.label} | {r.server} "
            f"| {'-' if r.row.events or not load else _num(load.mib_per_s)} "
            f"| {_num(load.per_s if load else None)} "
            f"| {_num(load.percentile_ms(0.5) if load else None)} "
            f"| {_num(load.percentile_ms(0.99) if load else None)} "
            f"| {_rss(r)} "
            f"| {_num(r.server_cpu, 2)} | {_num(r.client_cpu, 2)} | {_num(r.load1)} "
            f"| {verdict} |")
    return lines


class Results:
    """Lookup of results by row key and server."""

    def __init__(self, results: list[Result]) -> None:
        self.by = {(r.row.key, r.server): r for r in results if not r.skipped and r.load}
        self.rows = list(dict.fromkeys(r.row for r in results))

    def get(self, row_key: str, server: str) -> Result | None:
        return self.by.get((row_key, server))

    def ratio(self, row_key: str, server: str, anchor: str) -> float | None:
        a, b = self.get(row_key, server), self.get(row_key, anchor)
        if a is None or b is None or not b.mib_per_s:
            return None
        return a.mib_per_s / b.mib_per_s


RATIOS = [(RS_FSYNC, DD_FSYNC), (RS_NOFSYNC, NGINX), (RS_NOFSYNC, DD), (RS_MOTO, PLAIN_MOTO),
          (RS_NULL, PLAIN_NULL), (RS_FSYNC_PG, RS_FSYNC)]


def ratios_table(results: Results) -> list[str]:
    """Throughput ratios recsink / anchor (and recsink on the PostgreSQL catalog / on
    SQLite), for every row that has both."""
    pairs = [(s, a) for s, a in RATIOS
             if any(results.ratio(row.key, s, a) is not None for row in results.rows)]
    if not pairs:
        return []
    lines = ["| row | " + " | ".join(f"{s} / {a}" for s, a in pairs) + " |",
             "|---|" + "---:|" * len(pairs)]
    for row in results.rows:
        values = [results.ratio(row.key, s, a) for s, a in pairs]
        if any(v is not None for v in values):
            lines.append(f"| {row.label} | " + " | ".join(_num(v, 2) for v in values) + " |")
    return lines


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    threshold: str
    met: bool | None  # None: not measured


def targets(results: Results) -> list[Target]:
    """The issues' targets, measured in this run: issue 6's as issue 16 restated them (S3
    against both stand-ins, CPU beside nginx's, 150 MiB on S3), then the PostgreSQL
    catalog's (Sinch events, and disk uploads against the same row on SQLite)."""
    out: list[Target] = []

    def ratio_target(name: str, row: str, server: str, anchor: str, least: float) -> None:
        value = results.ratio(row, server, anchor)
        out.append(Target(name, "-" if value is None else f"{value:.2f}",
                          f">= {least:g}", None if value is None else value >= least))

    ratio_target("disk, fsync on: recsink / dd conv=fsync, 10 MiB c32", "10m-c32",
                 RS_FSYNC, DD_FSYNC, 0.8)
    ratio_target("disk, fsync off: recsink / nginx, 10 MiB c32", "10m-c32",
                 RS_NOFSYNC, NGINX, 0.5)
    ratio_target("S3: recsink / plain aiobotocore, same moto, 10 MiB c32", "10m-c32",
                 RS_MOTO, PLAIN_MOTO, 0.9)
    ratio_target("S3: recsink / plain aiobotocore, same discard stand-in, 10 MiB c32",
                 "10m-c32", RS_NULL, PLAIN_NULL, 0.9)
    # Issue 16: CPU seconds for the same bytes, beside nginx's, on every disk row.
    for row in ("10m-c1", "10m-c8", "10m-c32", "10m-c128", "100m-c4"):
        nginx = results.get(row, NGINX)
        for server in (RS_FSYNC, RS_NOFSYNC):
            r = results.get(row, server)
            if r is None or nginx is None or not r.server_cpu or not nginx.server_cpu:
                continue
            times = r.server_cpu / nginx.server_cpu
            out.append(Target(f"CPU s, {server} / nginx, {r.row.label}",
                              f"{times:.2f} ({r.server_cpu:.2f} / {nginx.server_cpu:.2f} s)",
                              "<= 2", times <= 2))
    for server, most in ((RS_FSYNC, 100), (RS_NOFSYNC, 100), (RS_MOTO, 150), (RS_NULL, 150)):
        r = results.get("10m-c128", server)
        peak = r.peak_kib / 1024 if r and r.peak_kib else None
        out.append(Target(f"peak RSS at 128 concurrent 10 MiB uploads, {server}",
                          "-" if peak is None else f"{peak:.1f} MiB", f"<= {most} MiB",
                          None if peak is None else peak <= most))
    for server in (RS_FSYNC, RS_NOFSYNC, RS_NULL):
        small, large = results.get("100m-c4", server), results.get("1g-c4", server)
        if small and large and small.peak_kib and large.peak_kib:
            growth = large.peak_kib / small.peak_kib
            out.append(Target(
                f"peak RSS flat as size grows, {server}: {large.row.label} / {small.row.label}",
                f"{growth:.2f} ({large.peak_kib / 1024:.1f} / {small.peak_kib / 1024:.1f} MiB)",
                "<= 1.10", growth <= 1.10))
        else:
            out.append(Target(f"peak RSS flat as size grows, {server}", "-", "<= 1.10", None))

    def sinch_targets(server: str, label: str, least_rate: float, most_p99: float) -> None:
        sinch = results.get("sinch-c32", server)
        rate = sinch.load.per_s if sinch and sinch.load else None
        p99 = sinch.load.percentile_ms(0.99) if sinch and sinch.load else None
        out.append(Target(f"Sinch events/s at c32{label}", _num(rate, 0), f">= {least_rate:g}",
                          None if rate is None else rate >= least_rate))
        out.append(Target(f"Sinch p99 latency at c32{label}",
                          "-" if p99 is None else f"{p99:.1f} ms", f"<= {most_p99:g} ms",
                          None if p99 is None else p99 <= most_p99))

    sinch_targets(RS_SINCH, "", 3000, 20)
    sinch_targets(RS_SINCH_UVLOOP, ", uvloop (server.event_loop)", 3000, 20)
    sinch_targets(RS_SINCH_PG, ", PostgreSQL catalog", 2000, 30)
    ratio_target("disk, fsync on, 10 MiB c32: PostgreSQL catalog / SQLite catalog",
                 "10m-c32", RS_FSYNC_PG, RS_FSYNC, 0.9)
    return out


def targets_table(found: list[Target]) -> list[str]:
    def verdict(met: bool | None) -> str:
        return "not measured" if met is None else ("met" if met else "**not met**")

    lines = ["| target | measured | threshold | |", "|---|---:|---:|---|"]
    lines += [f"| {t.name} | {t.measured} | {t.threshold} | {verdict(t.met)} |" for t in found]
    return lines
