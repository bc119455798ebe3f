"""Typing checks, run by mypy --strict (not by pytest): the public API keeps the driver's types."""

from __future__ import annotations

from typing import Any, assert_type

from poolwarden import (
    BackendDown,
    Pool,
    PoolConfig,
    PoolStats,
    PoolTimeout,
    Resource,
    Unavailable,
    Warden,
    unwrap,
)
from poolwarden.observe.leaks import LeaseInfo
from poolwarden.testing import FakeConnection, FakeConnector


async def pool_is_generic_in_the_connection() -> None:
    pool = Pool("db", FakeConnector(), PoolConfig(max_size=2))
    assert_type(pool, Pool[FakeConnection])
    async with pool:
        async with pool.acquire() as conn:
            assert_type(conn, FakeConnection)
            assert_type(await conn.execute("SELECT 1"), str)
        held = await pool.acquire()
        assert_type(held, FakeConnection)
        await pool.release(held)
        assert_type(unwrap(held), Any)
        assert_type(pool.stats(), PoolStats)
        assert_type(pool.leases(), list[LeaseInfo])
    assert_type(await pool.close(), list[LeaseInfo])


def warden_resources_are_pools() -> None:
    warden = Warden()
    db = warden.pool("db", "sqlite:///:memory:")
    assert_type(db, Resource[Any])
    assert isinstance(db, Pool)
    assert_type(warden.stats(), dict[str, PoolStats])


def errors_carry_their_data(exc: Unavailable) -> float:
    if isinstance(exc, PoolTimeout):
        assert isinstance(exc, TimeoutError)
    if isinstance(exc, BackendDown):
        assert_type(exc.resource, str | None)
    return exc.retry_after
