"""Fixtures shared by the integration tests: a fault-injecting TCP proxy in front of a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.faultproxy import FaultProxy, fault_proxy
from tests.support.private_pg import PrivatePostgres, private_postgres


@pytest.fixture
async def pg_proxy(postgres_url: str) -> AsyncIterator[FaultProxy]:
    """A started FaultProxy to the PostgreSQL server: connect to ``pg_proxy.url_for(postgres_url)``.

    Stopped at teardown, which resets every connection through it, whatever faults the test left on.
    """
    parts = urlsplit(postgres_url)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy


@pytest.fixture
async def mysql_proxy(mysql_url: str) -> AsyncIterator[FaultProxy]:
    """A started FaultProxy to the MariaDB/MySQL server, like ``pg_proxy``."""
    parts = urlsplit(mysql_url)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 3306) as proxy:
        yield proxy


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL on its own port, free to stop and start (``private_pg.stop()``,
    ``await private_pg.astart()``); deleted at teardown. See tests/support/private_pg.py."""
    with private_postgres() as pg:
        yield pg
