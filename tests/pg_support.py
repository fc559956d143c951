"""A real PostgreSQL for the tests, whether or not one already runs on the machine.

``postgres_server()`` picks, in order:

a. ``RECSINK_TEST_POSTGRES_URL``: a DSN for a server the tests may create databases on;
b. the machine's server at ``postgresql://postgres@127.0.0.1:5432/test``, if it answers
   (skipped when ``RECSINK_TEST_POSTGRES=private``);
c. a private cluster it initialises in a temporary directory and starts on a free loopback
   port, from the PostgreSQL binaries in ``PATH`` or ``/usr/lib/postgresql/*/bin`` (newest
   version). As root, initdb and the server run as the ``postgres`` OS user (initdb refuses
   root), through ``runuser``. The cluster is stopped by its postmaster's pid, and its
   directory removed, when the context exits.

Each test gets a database of its own (``create_database``), dropped afterwards
(``drop_database``); a server it did not start is never stopped or reconfigured.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

#: The machine's server, used when it answers (selection step b).
MACHINE_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: Names of the databases ``create_database`` makes; ``drop_database`` drops no other.
DATABASE_NAME = re.compile(r"rs_[0-9a-f]{12}")
#: How long a private cluster may take to accept a connection.
START_TIMEOUT = 60.0
#: How long a private cluster may take to shut down (fast mode) before it is killed.
STOP_TIMEOUT = 30.0
INSTALL_HINT = (
    "no PostgreSQL server answers on 127.0.0.1:5432 and no PostgreSQL binaries (initdb, "
    "postgres) were found in PATH or /usr/lib/postgresql/*/bin to start a private one. "
    "Install them with `apt-get install postgresql` (Debian/Ubuntu; the tests start their "
    "own cluster, Debian's need not run), or point RECSINK_TEST_POSTGRES_URL at a server "
    "where the tests may create databases."
)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started for the tests."""


class PostgresServer:
    """A PostgreSQL server the tests may create databases on.

    ``pid`` and ``directory`` are set only for a private cluster this module started;
    ``stop()`` does nothing for any other server."""

    def __init__(
        self,
        admin_dsn: str,
        *,
        proc: subprocess.Popen[bytes] | None = None,
        pid: int | None = None,
        directory: Path | None = None,
    ) -> None:
        self.admin_dsn = admin_dsn
        self.pid = pid
        self.directory = directory
        self._proc = proc

    @property
    def private(self) -> bool:
        """True for a cluster this module started (and will stop)."""
        return self._proc is not None

    def __repr__(self) -> str:
        return f"PostgresServer({self.admin_dsn!r}, pid={self.pid})"

    def connect(self, dsn: str | None = None) -> psycopg.Connection[TupleRow]:
        """An autocommit connection to ``dsn`` (default: the admin DSN)."""
        return psycopg.connect(dsn or self.admin_dsn, autocommit=True, connect_timeout=10)

    def create_database(self) -> str:
        """Create an empty database ``rs_<12 hex>`` and return its DSN. It is made from
        template0, so nothing added to template1 leaks in and a session left on template1
        cannot make CREATE DATABASE fail."""
        name = f"rs_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'")
                         .format(sql.Identifier(name)))
        return with_dbname(self.admin_dsn, name)

    def drop_database(self, dsn: str) -> None:
        """Drop a database ``create_database`` made, ending any session still on it."""
        name = conninfo_to_dict(dsn).get("dbname")
        if not isinstance(name, str) or not DATABASE_NAME.fullmatch(name):
            raise ValueError(f"not a database create_database made: {dsn!r}")
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop a private cluster (fast shutdown: SIGINT to its postmaster, then SIGQUIT
        and SIGKILL to its process group past STOP_TIMEOUT) and remove its directory. Does
        nothing for a server this module did not start; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            _stop_cluster(proc, self.pid)
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)


def with_dbname(dsn: str, dbname: str) -> str:
    """``dsn`` with its database replaced by ``dbname`` (a URL stays a URL)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    return make_conninfo(dsn, dbname=dbname)


def answers(dsn: str, timeout: int = 2) -> bool:
    """True when a server accepts a connection on ``dsn`` within ``timeout`` seconds."""
    try:
        with psycopg.connect(dsn, connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the tests (see the module's docstring for the order)."""
    url = os.environ.get("RECSINK_TEST_POSTGRES_URL", "").strip()
    if url:
        yield PostgresServer(url)
        return
    mode = os.environ.get("RECSINK_TEST_POSTGRES", "").strip()
    if mode not in ("", "private"):
        raise PostgresUnavailable(
            f"RECSINK_TEST_POSTGRES={mode!r}: the only value it takes is 'private'")
    if mode != "private" and answers(MACHINE_DSN):
        yield PostgresServer(MACHINE_DSN)
        return
    server = start_private_cluster()
    try:
        yield server
    finally:
        server.stop()


# -- a private cluster ---------------------------------------------------------------

def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: the one of ``initdb`` in PATH
    (symlinks resolved) if ``postgres`` is beside it, else the newest
    ``/usr/lib/postgresql/<version>/bin`` that has both."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in path.parent.name.split("."))

    installed = [path for path in Path("/usr/lib/postgresql").glob("*/bin")
                 if re.fullmatch(r"\d+(\.\d+)*", path.parent.name)]
    candidates += sorted(installed, key=version, reverse=True)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "postgres")):
            return directory
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_private_cluster() -> PostgresServer:
    """initdb a cluster in a new temporary directory and start it on a free port of
    127.0.0.1; return once it accepts connections. Raises PostgresUnavailable (with the
    server log's tail) if it cannot."""
    bindir = find_binaries()
    if bindir is None:
        raise PostgresUnavailable(INSTALL_HINT)
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        # initdb refuses to run as root; Debian's package creates the postgres user.
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root, and initdb refuses root, but there is no 'postgres' OS "
                "user to run the private cluster as (Debian's `apt-get install postgresql` "
                "creates it)") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and `runuser` (util-linux) is missing")
        as_user = [runuser, "-u", "postgres", "--"]
    directory = Path(tempfile.mkdtemp(prefix="recsink-pg-"))
    try:
        if owner is not None:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        data, sockets, log_path = directory / "data", directory / "sockets", directory / "log"
        sockets.mkdir()
        if owner is not None:
            os.chown(sockets, owner.pw_uid, owner.pw_gid)
        _initdb([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                 "-U", "postgres", "--no-sync", "-E", "UTF8", "--no-locale"], directory)
        deadline = time.monotonic() + START_TIMEOUT
        for _attempt in range(5):  # another process may take the free port before we bind
            port = free_port()
            command = [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                       "-c", "listen_addresses=127.0.0.1", "-k", str(sockets),
                       "-c", "fsync=on", "-c", "max_connections=200"]
            log_start = log_path.stat().st_size if log_path.exists() else 0
            with log_path.open("ab") as log:
                # A session of its own: the whole tree can be killed if shutdown hangs.
                proc = subprocess.Popen(command, cwd=directory, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            try:
                _wait_ready(proc, dsn, data, log_path, log_start, deadline)
            except _PortTaken:
                _stop_cluster(proc, None)
                continue
            except BaseException:
                _stop_cluster(proc, _postmaster_pid(data))
                raise
            pid = _postmaster_pid(data)
            return PostgresServer(dsn, proc=proc, pid=pid, directory=directory)
        raise PostgresUnavailable(f"no free port for PostgreSQL:\n{_tail(log_path)}")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _initdb(command: list[str], cwd: Path) -> None:
    """Run initdb (in a session of its own, so that a timeout kills runuser's child too)."""
    proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        output, _ = proc.communicate()
        raise PostgresUnavailable(
            f"initdb did not finish within {START_TIMEOUT:g} s:\n"
            f"{output.decode(errors='replace')}") from None
    except BaseException:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise PostgresUnavailable(
            f"initdb failed ({proc.returncode}):\n{output.decode(errors='replace')}")


class _PortTaken(Exception):
    """The port picked for the server was taken before it bound it."""


def _wait_ready(proc: subprocess.Popen[bytes], dsn: str, data: Path, log_path: Path,
                log_start: int, deadline: float) -> None:
    """Poll until ``dsn`` accepts a connection and the postmaster has written its pid;
    ``log_start`` is where this attempt's lines begin in the log."""
    while True:
        if proc.poll() is not None:
            log = _tail(log_path)
            with log_path.open("rb") as fh:
                fh.seek(log_start)
                this_attempt = fh.read().decode(errors="replace")
            if "Address already in use" in this_attempt:
                raise _PortTaken
            raise PostgresUnavailable(
                f"PostgreSQL exited with status {proc.returncode} while starting:\n{log}")
        if answers(dsn, timeout=2) and _postmaster_pid(data) is not None:
            return
        if time.monotonic() > deadline:
            raise PostgresUnavailable(
                f"PostgreSQL did not accept connections within {START_TIMEOUT:g} s:\n"
                f"{_tail(log_path)}")
        time.sleep(0.05)


def _postmaster_pid(data: Path) -> int | None:
    """The postmaster's pid from ``postmaster.pid`` (runuser forks, so it is not the pid of
    the process we started), or None before the file is written."""
    try:
        first = (data / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _alive(pid: int) -> bool:
    """True while a process ``pid`` exists (a zombie counts until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_cluster(proc: subprocess.Popen[bytes], pid: int | None) -> None:
    """Fast-shutdown the postmaster ``pid`` (SIGINT), wait for it and for ``proc`` (the
    runuser or postgres process started, leader of its own process group); past
    STOP_TIMEOUT, SIGQUIT then SIGKILL the group."""
    if pid is not None and proc.poll() is None and _alive(pid):
        os.kill(pid, signal.SIGINT)
    elif proc.poll() is None:
        _signal_group(proc, signal.SIGINT)
    for escalation in (signal.SIGQUIT, signal.SIGKILL):
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(proc, escalation)
        else:
            break
    proc.wait()
    if pid is not None:
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL postmaster {pid} outlived its shutdown")
            time.sleep(0.02)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of the server's log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])
