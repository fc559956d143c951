"""pytest fixtures for a real PostgreSQL (tests/pg_support.py): ``postgres``, the session's
server, and ``pg_dsn``, a fresh database for one test. tests/conftest.py imports them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg_support import PostgresServer, PostgresUnavailable, postgres_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL: $RECSINK_TEST_POSTGRES_URL, the machine's, or a private one."""
    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> Iterator[str]:
    """The DSN of an empty database made for this test and dropped after it."""
    dsn = postgres.create_database()
    try:
        yield dsn
    finally:
        postgres.drop_database(dsn)
