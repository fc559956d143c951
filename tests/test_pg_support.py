"""The PostgreSQL test infrastructure (tests/pg_support.py, tests/pg_fixtures.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

# The fixtures, until tests/conftest.py imports them (then this import can go: while both
# do, this module has its own session-scoped server, a second private cluster in that mode).
from tests.pg_support import PostgresServer, postgres_server

#: Database names the parametrized runs of test_pg_dsn_is_a_fresh_database were given.
SEEN_DATABASES: set[str] = set()


def user_relations(conn: psycopg.Connection[TupleRow]) -> int:
    """How many tables, views, sequences, ... exist outside the system schemas."""
    row = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg_toast%'").fetchone()
    assert row is not None
    return int(row[0])


def database_exists(server: PostgresServer, name: str) -> bool:
    """True when the server has a database ``name``."""
    with server.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                           (name,)).fetchone()
    assert row is not None
    return bool(row[0] == 1)


@pytest.mark.parametrize("run", ["first", "second"])
def test_pg_dsn_is_a_fresh_database(pg_dsn: str, run: str) -> None:
    """Each test's pg_dsn is its own empty, writable database: what another test wrote is
    not there, and no two tests get the same name."""
    name = conninfo_to_dict(pg_dsn)["dbname"]
    assert isinstance(name, str)
    assert re.fullmatch(r"rs_[0-9a-f]{12}", name)
    assert name not in SEEN_DATABASES
    SEEN_DATABASES.add(name)
    with psycopg.connect(pg_dsn) as conn:
        assert user_relations(conn) == 0
        conn.execute("CREATE TABLE marker (run text PRIMARY KEY)")
        conn.execute("INSERT INTO marker VALUES (%s)", (run,))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT run FROM marker").fetchall() == [(run,)]
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)


def test_drop_database_ends_open_sessions(postgres: PostgresServer) -> None:
    """drop_database removes a database even while a session is still connected to it, and
    refuses a database create_database did not make."""
    dsn = postgres.create_database()
    name = conninfo_to_dict(dsn)["dbname"]
    assert isinstance(name, str)
    assert database_exists(postgres, name)
    with psycopg.connect(dsn) as conn:
        postgres.drop_database(dsn)
        assert not database_exists(postgres, name)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(ValueError, match="not a database create_database made"):
        postgres.drop_database(postgres.admin_dsn)


def test_private_cluster_starts_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """With RECSINK_TEST_POSTGRES=private, postgres_server() starts its own cluster on a port
    other than 5432 that answers queries, and on exit its postmaster is gone and its
    directory removed."""
    monkeypatch.delenv("RECSINK_TEST_POSTGRES_URL", raising=False)
    monkeypatch.setenv("RECSINK_TEST_POSTGRES", "private")
    with postgres_server() as server:
        assert server.private
        pid, directory = server.pid, server.directory
        assert pid is not None
        assert directory is not None
        assert Path(f"/proc/{pid}").exists()
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
        port = conninfo_to_dict(server.admin_dsn)["port"]
        assert str(port) != "5432"
        with psycopg.connect(server.admin_dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        dsn = server.create_database()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (
                conninfo_to_dict(dsn)["dbname"],)
        server.drop_database(dsn)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not directory.exists()
