"""The fault shim itself (faultshim.c, LD_PRELOADed into real child Python processes): each
rule fires exactly where and as often as it says, and nowhere else."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.shim import BAD_RULE_STATUS, build_shim, shim_env

#: Seconds before a hung child is killed (a safety net, never a synchronisation).
DEADLINE = 60

#: Child prelude: ``attempt(fn, *args)`` runs one call and says 0 or the errno it failed with.
PRELUDE = """\
import errno, json, os, sys, threading

def attempt(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return 0
"""


def child_env(so: Path, **rules: str) -> dict[str, str]:
    """The environment of a child with the shim loaded under ``rules``."""
    return {**os.environ, **shim_env(so, **rules)}


def run_child(so: Path, code: str, *args: str | Path, cwd: Path | None = None,
              **rules: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (after PRELUDE) in a child Python with the shim and ``rules``."""
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *map(str, args)],
        env=child_env(so, **rules), cwd=cwd, capture_output=True, text=True, check=False,
        timeout=DEADLINE,
    )


def result(done: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a child printed as its last stdout line (failing with its output if none)."""
    assert done.returncode == 0, f"child exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return json.loads(done.stdout.splitlines()[-1])


def shim_lines(stderr: str) -> list[str]:
    """The lines the shim wrote to a child's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("faultshim:")]


@pytest.fixture
def linkdir(tmp_path: Path) -> Path:
    """A directory holding a one-link file ``src`` to make links to."""
    d = (tmp_path / "rec").resolve()
    d.mkdir()
    (d / "src").write_bytes(b"recording")
    return d


@pytest.fixture
def watchdog() -> Iterator[list[subprocess.Popen[str]]]:
    """Popen children appended here are killed if still running after DEADLINE seconds."""
    children: list[subprocess.Popen[str]] = []

    def kill_all() -> None:
        for child in children:
            child.kill()

    timer = threading.Timer(DEADLINE, kill_all)
    timer.start()
    yield children
    timer.cancel()
    for child in children:
        child.kill()
        child.wait()


# -- loading --------------------------------------------------------------------------------


def test_compiles_without_warnings(fault_shim: Path, tmp_path: Path) -> None:
    """faultshim.c compiles with -Wall -Wextra -Werror."""
    assert build_shim(tmp_path, "-Wall", "-Wextra", "-Werror").is_file()


def test_inert_without_rules(fault_shim: Path, linkdir: Path) -> None:
    """Loaded with no rule set, the shim changes no call's result and writes nothing."""
    done = run_child(fault_shim, """
        d = sys.argv[1]
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        out = {
            "loaded": "faultshim.so" in open("/proc/self/maps").read(),
            "fsync": attempt(os.fsync, fd),
            "fdatasync": attempt(os.fdatasync, fd),
            "link": attempt(os.link, f"{d}/src", f"{d}/a"),
            "linkat": attempt(os.link, "src", "b", src_dir_fd=fd, dst_dir_fd=fd),
            "rename": attempt(os.rename, f"{d}/a", f"{d}/c"),
            "renameat": attempt(os.rename, "b", "e", src_dir_fd=fd, dst_dir_fd=fd),
            "exists": attempt(os.link, f"{d}/src", f"{d}/c"),
        }
        print(json.dumps(out))
    """, linkdir)
    assert result(done) == {"loaded": True, "fsync": 0, "fdatasync": 0, "link": 0, "linkat": 0,
                            "rename": 0, "renameat": 0, "exists": errno.EEXIST}
    assert done.stderr == ""
    assert sorted(p.name for p in linkdir.iterdir()) == ["c", "e", "src"]


@pytest.mark.parametrize("rule", [{"link": "dst:explode"}, {"link": ":kill"},
                                  {"link": "dst:fail:0"}, {"fsync_dir": "no-colon"},
                                  {"rename": "dst:pause="}])
def test_bad_rule_exits(fault_shim: Path, rule: dict[str, str]) -> None:
    """A malformed rule stops the process at start-up with status 86 and a faultshim line."""
    done = subprocess.run([sys.executable, "-c", "print('ran')"], env=child_env(fault_shim, **rule),
                          capture_output=True, text=True, check=False, timeout=DEADLINE)
    assert done.returncode == BAD_RULE_STATUS
    assert done.stdout == ""
    [line] = shim_lines(done.stderr)
    assert "bad RECSINK_FAULT_" in line


def test_shim_env_rejects_unknown_rule(fault_shim: Path) -> None:
    """shim_env refuses a rule keyword it does not know instead of ignoring it."""
    with pytest.raises(TypeError, match="links"):
        shim_env(fault_shim, links="dst:kill")


def test_shim_env_clears_unused_rules(fault_shim: Path) -> None:
    """shim_env sets every RECSINK_FAULT_* variable, unused ones empty, and preloads the .so."""
    env = shim_env(fault_shim, link="dst:kill")
    assert env["LD_PRELOAD"].split()[0] == str(fault_shim)
    assert env["RECSINK_FAULT_LINK"] == "dst:kill"
    assert env["RECSINK_FAULT_FSYNC_DIR"] == env["RECSINK_FAULT_RENAME"] == ""


# -- fsync of directories -------------------------------------------------------------------


def test_dir_fsync_fails_under_prefix_while_trigger_exists(fault_shim: Path,
                                                           tmp_path: Path) -> None:
    """fsync/fdatasync of a directory under the prefix fail with EIO only while the trigger
    exists; other directories, files and SQLite's fsyncs are untouched."""
    base = tmp_path.resolve()
    under, other, trigger = base / "under", base / "other", base / "trigger"
    (under / "sub").mkdir(parents=True)
    other.mkdir()
    done = run_child(fault_shim, """
        import sqlite3
        under, other, trigger = sys.argv[1:]

        def sync(path, fn=os.fsync, flags=os.O_RDONLY):
            fd = os.open(path, flags)
            try:
                return attempt(fn, fd)
            finally:
                os.close(fd)

        def probe():
            return {
                "dir": sync(under),
                "dir_fdatasync": sync(under, os.fdatasync),
                "subdir": sync(f"{under}/sub"),
                "other_dir": sync(other),
                "file": sync(f"{under}/file", flags=os.O_WRONLY | os.O_CREAT),
                "file_fdatasync": sync(f"{under}/file", os.fdatasync, os.O_WRONLY),
            }

        out = {"before": probe()}
        open(trigger, "w").close()
        out["during"] = probe()
        db = sqlite3.connect(f"{under}/catalog.sqlite")
        db.execute("pragma synchronous = full")
        with db:
            db.execute("create table t (x)")
            db.execute("insert into t values (1)")
        out["sqlite"] = db.execute("select x from t").fetchall()
        db.close()
        os.unlink(trigger)
        out["after"] = probe()
        print(json.dumps(out))
    """, under, other, trigger, fsync_dir=f"{trigger}:{under}")
    fine = {"dir": 0, "dir_fdatasync": 0, "subdir": 0, "other_dir": 0, "file": 0,
            "file_fdatasync": 0}
    out = result(done)
    assert out["before"] == out["after"] == fine
    assert out["during"] == {**fine, "dir": errno.EIO, "dir_fdatasync": errno.EIO,
                             "subdir": errno.EIO}
    assert out["sqlite"] == [[1]]
    lines = shim_lines(done.stderr)
    assert lines, done.stderr
    assert all(f" of directory {under}" in line and "fails with EIO" in line for line in lines)
    # The three failures of "during"; SQLite may add directory fsyncs of its own (it ignores
    # their result), never a file's.
    assert sum(line.endswith(f"directory {under}/sub fails with EIO") for line in lines) == 1
    assert any(line.split(": ")[2].startswith("fdatasync(") for line in lines)


# -- link ----------------------------------------------------------------------------------

#: How a child makes the link ``dst`` to ``src`` in the directory argv[1] (its cwd), and the
#: libc entry point that form reaches.
LINK_FORMS = {
    "absolute": ("os.link(f'{d}/src', f'{d}/dst')", "link"),
    "relative": ("os.link('src', 'dst')", "link"),
    "dir_fd": ("os.link('src', 'dst', src_dir_fd=dfd, dst_dir_fd=dfd)", "linkat"),
    "no_follow": ("os.link('src', 'dst', follow_symlinks=False)", "linkat"),
}


def link_code(form: str, after: str = "") -> str:
    """Child code that links ``dst`` by ``form``, then runs ``after``."""
    return (f"d = sys.argv[1]\ndfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)\n"
            f"{LINK_FORMS[form][0]}\n{after}")


@pytest.mark.parametrize("form", LINK_FORMS)
def test_link_kill(fault_shim: Path, linkdir: Path, form: str) -> None:
    """kill: the child dies of SIGKILL right after the matching link, which exists."""
    done = run_child(fault_shim, link_code(form, "print('after')\nopen('marker', 'w').close()"),
                     linkdir, cwd=linkdir, link="rec/dst:kill")
    assert done.returncode == -signal.SIGKILL
    assert (linkdir / "dst").samefile(linkdir / "src")
    assert done.stdout == ""
    assert not (linkdir / "marker").exists()
    entry = LINK_FORMS[form][1]
    assert shim_lines(done.stderr)[-1].endswith(f": {entry} {linkdir}/dst: SIGKILL")


@pytest.mark.parametrize("form", LINK_FORMS)
def test_link_fail(fault_shim: Path, linkdir: Path, form: str) -> None:
    """fail: os.link raises OSError(EIO) and the new path does not exist."""
    code = (f"d = sys.argv[1]\ndfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)\n"
            f"print(json.dumps(attempt(lambda: {LINK_FORMS[form][0]})))\n")
    done = run_child(fault_shim, code, linkdir, cwd=linkdir, link="rec/dst:fail")
    assert result(done) == errno.EIO
    assert not (linkdir / "dst").exists()
    assert (linkdir / "src").stat().st_nlink == 1
    [line] = shim_lines(done.stderr)
    assert line.endswith(f": {LINK_FORMS[form][1]} {linkdir}/dst: undone, fails with EIO")


@pytest.mark.parametrize("form", ["absolute", "dir_fd"])
def test_link_pause(fault_shim: Path, linkdir: Path, form: str,
                    watchdog: list[subprocess.Popen[str]]) -> None:
    """pause: after the link the child writes <file>.reached and waits until the test removes
    <file>, then completes."""
    pause = linkdir.parent / "pause"
    pause.touch()
    child = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + link_code(form, "open('marker', 'w').close()"),
         str(linkdir)],
        env=child_env(fault_shim, link=f"rec/dst:pause={pause}"), cwd=linkdir,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog.append(child)
    assert child.stderr is not None
    first = child.stderr.readline()  # the shim says "paused" once .reached is in place
    assert first.startswith("faultshim:"), first
    assert first.rstrip().endswith(f"paused while {pause} exists"), first
    reached = Path(f"{pause}.reached")
    assert reached.read_text() == f"{linkdir}/dst"
    assert (linkdir / "dst").samefile(linkdir / "src")
    assert child.poll() is None
    assert not (linkdir / "marker").exists()
    pause.unlink()
    _, stderr = child.communicate(timeout=DEADLINE)
    assert child.returncode == 0, first + stderr
    assert (linkdir / "marker").exists()
    assert [line.rsplit(": ", 1)[1] for line in shim_lines(stderr)] == ["resumed"]


def test_link_fires_once_by_default(fault_shim: Path, linkdir: Path) -> None:
    """With no count the rule fires on the first matching link only; non-matching and failed
    links do not count, and later matching links are untouched."""
    (linkdir / "dst0").touch()
    done = run_child(fault_shim, """
        d = sys.argv[1]
        names = ["other", "dst0", "dst1", "dst2", "dst1", "dst3"]
        print(json.dumps([attempt(os.link, f"{d}/src", f"{d}/{n}") for n in names]))
    """, linkdir, link="rec/dst:fail")
    assert result(done) == [0, errno.EEXIST, errno.EIO, 0, 0, 0]
    assert len(shim_lines(done.stderr)) == 1


def test_link_count_fires_on_nth(fault_shim: Path, linkdir: Path) -> None:
    """<substring>:<action>:<n> fires on the n-th matching successful link only."""
    done = run_child(fault_shim, """
        d = sys.argv[1]
        print(json.dumps([attempt(os.link, f"{d}/src", f"{d}/dst{i}") for i in range(5)]))
    """, linkdir, link="rec/dst:fail:3")
    assert result(done) == [0, 0, errno.EIO, 0, 0]
    assert not (linkdir / "dst2").exists()


def test_link_fires_once_across_threads(fault_shim: Path, linkdir: Path) -> None:
    """Matching links racing in many threads make the once-only rule fire exactly once."""
    done = run_child(fault_shim, """
        d = sys.argv[1]
        threads, per_thread = 16, 32
        barrier = threading.Barrier(threads)
        results = [[] for _ in range(threads)]

        def work(t):
            barrier.wait()
            for i in range(per_thread):
                results[t].append(attempt(os.link, f"{d}/src", f"{d}/dst-{t}-{i}"))

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        print(json.dumps(sorted(r for rs in results for r in rs)))
    """, linkdir, link="rec/dst:fail")
    out = result(done)
    assert out.count(errno.EIO) == 1
    assert out.count(0) == len(out) - 1
    assert len(list(linkdir.glob("dst-*"))) == len(out) - 1


# -- rename ---------------------------------------------------------------------------------

RENAME_FORMS = {
    "rename": ("os.rename(f'{d}/old', f'{d}/new')", "rename"),
    "replace": ("os.replace('old', 'new')", "rename"),
    "dir_fd": ("os.rename('old', 'new', src_dir_fd=dfd, dst_dir_fd=dfd)", "renameat"),
}


@pytest.mark.parametrize("form", RENAME_FORMS)
def test_rename_kill(fault_shim: Path, linkdir: Path, form: str) -> None:
    """rename kill: the child dies of SIGKILL right after the matching rename, which is done."""
    (linkdir / "old").write_bytes(b"old")
    code = (f"d = sys.argv[1]\ndfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)\n"
            f"{RENAME_FORMS[form][0]}\nprint('after')\n")
    done = run_child(fault_shim, code, linkdir, cwd=linkdir, rename="rec/new:kill")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == ""
    assert not (linkdir / "old").exists()
    assert (linkdir / "new").read_bytes() == b"old"
    assert shim_lines(done.stderr)[-1].endswith(
        f": {RENAME_FORMS[form][1]} {linkdir}/new: SIGKILL")


@pytest.mark.parametrize("form", RENAME_FORMS)
def test_rename_fail(fault_shim: Path, linkdir: Path, form: str) -> None:
    """rename fail: os.rename raises OSError(EIO) and both names are as they were."""
    (linkdir / "old").write_bytes(b"old")
    (linkdir / "new").write_bytes(b"new")
    code = (f"d = sys.argv[1]\ndfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)\n"
            f"first = attempt(lambda: {RENAME_FORMS[form][0]})\n"
            "state = {n: open(f'{d}/{n}').read() for n in ('old', 'new')}\n"
            f"second = attempt(lambda: {RENAME_FORMS[form][0]})\n"
            "print(json.dumps([first, state, second]))\n")
    done = run_child(fault_shim, code, linkdir, cwd=linkdir, rename="rec/new:fail")
    # Once only: the second rename goes through.
    assert result(done) == [errno.EIO, {"old": "old", "new": "new"}, 0]
    assert not (linkdir / "old").exists()
    assert (linkdir / "new").read_bytes() == b"old"
    [line] = shim_lines(done.stderr)
    assert line.endswith(f": {RENAME_FORMS[form][1]} {linkdir}/new: not done, fails with EIO")
