from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import pgbouncer
from tests.support.servers import MYSQL_URL, POSTGRES_URL, REDIS_URL, require


@pytest.fixture
def postgres_url() -> str:
    return require(POSTGRES_URL, "PostgreSQL")


@pytest.fixture
def mysql_url() -> str:
    return require(MYSQL_URL, "MariaDB/MySQL")


@pytest.fixture
def redis_url() -> str:
    return require(REDIS_URL, "Redis")


@pytest.fixture
def sqlite_url(tmp_path: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path}/poolwarden-test.db"  # type: ignore[operator]


@pytest.fixture(scope="session")
def pgbouncer_url() -> Iterator[str]:
    """Database ``test`` through a PgBouncer in transaction mode that scripts/pgbouncer starts, and
    stops again at the end of the session if this session started it."""
    started_here = not os.environ.get("POOLWARDEN_TEST_PGBOUNCER") and not pgbouncer.running()
    url = pgbouncer.ensure()
    yield url
    if started_here:
        pgbouncer.stop()
