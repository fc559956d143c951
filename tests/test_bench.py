"""The comparative benchmark harness (``python -m bench``, README "Benchmarks") at a tiny
scale, so that it never rots: every group runs against real processes on loopback (the
PostgreSQL catalog rows on tests/pg_support.py's server, as the PostgreSQL tests do), every
row is verified, and the report comes out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

GROUP_SERVERS = {
    "disk": ["dd conv=fsync", "recsink disk, fsync on |", "recsink disk, fsync on, PostgreSQL "
             "catalog |", "dd |", "recsink disk, fsync off"],
    "s3": ["aiobotocore -> moto", "recsink S3 -> moto", "aiobotocore -> discard S3",
           "recsink S3 -> discard S3"],
    "sinch": ["recsink Sinch events |", "recsink Sinch events, PostgreSQL catalog |"],
}
#: Rows on the PostgreSQL catalog: the 10 MiB concurrency-32 disk row, both Sinch rows.
PG_ROWS = 3


def test_harness_runs_every_group_verified_and_prints_the_table(tmp_path: Path) -> None:
    """``python -m bench --scale 0.01`` exits 0 with every row verified, prints the results,
    ratios and targets tables (nginx's rows skipped with a note where nginx is missing;
    the PostgreSQL catalog rows measured, never skipped), reports the PostgreSQL targets,
    writes the same report to ``--output`` and removes its temporary directory."""
    output = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "0.01", "--output", str(output),
         "--workdir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = done.stdout
    assert "| row | server | MiB/s |" in report
    assert "### Throughput ratios, recsink / anchor (same run)" in report
    assert "### Targets" in report
    section = report.split("### Results")[1].split("###")[0]
    rows = [line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| row ", "|---"))]
    table = "\n".join(rows)
    for servers in GROUP_SERVERS.values():
        for server in servers:
            assert f"| {server}" in table, server
    measured = [line for line in rows if "skipped:" not in line]
    assert len(measured) >= 40 + PG_ROWS, table
    assert all(line.rstrip().endswith("| yes |") for line in measured), table
    pg_rows = [line for line in measured if ", PostgreSQL catalog |" in line]
    assert len(pg_rows) == PG_ROWS, table
    assert "- PostgreSQL catalog: " in report
    targets = report.split("### Targets")[1].split("###")[0]
    for target in ("Sinch events/s at c32, PostgreSQL catalog",
                   "Sinch p99 latency at c32, PostgreSQL catalog",
                   "disk, fsync on, 10 MiB c32: PostgreSQL catalog / SQLite catalog"):
        line = next(t for t in targets.splitlines() if t.startswith(f"| {target} |"))
        assert "not measured" not in line, line
    if shutil.which("nginx"):
        assert "| nginx WebDAV PUT |" in table
        assert "skipped" not in table
    else:
        assert "nginx anchor skipped: nginx is not installed" in report
    assert output.read_text(encoding="utf-8").strip() == report.strip()
    assert list((tmp_path / "work").iterdir()) == []


def test_ui_search_bench_runs_at_a_tiny_scale(tmp_path: Path) -> None:
    """``python -m bench.ui_search --rows 2000`` fills a catalog, runs every typical
    search and prints its table (the million-row numbers are in bench/RESULTS.md)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.ui_search", "--rows", "2000", "--repeat", "1",
         "--path", str(tmp_path / "catalog.db")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2,000 recordings filled" in done.stdout
    assert "| call id | 1 |" in done.stdout
    assert done.stdout.count("\n| ") == 11
