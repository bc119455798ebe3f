"""Bounds that hold when the network stalls (issue 9 items 5 and 9), through the TCP fault proxy.

* the pre-lend ping runs in a task of the pool's own: ``acquire_timeout`` and an outer
  ``wait_for`` hold even when psycopg's cancel protocol would keep a cancelled ping for seconds;
* a caller cancelled during that ping does not cost the pool its (healthy) connection;
* a lease cancelled on a stalled backend ends at once: its reset goes on alone, bounded by
  ``reset_timeout``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from poolwarden import PoolTimeout, Warden
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.postgres

DRIVERS = [pytest.param("postgresql", id="asyncpg"), pytest.param("postgresql+psycopg", id="psycopg")]


def _url(proxy: FaultProxy, postgres_url: str, scheme: str) -> str:
    return proxy.url_for(postgres_url).replace("postgresql", scheme, 1)


@pytest.mark.parametrize("scheme", DRIVERS)
async def test_acquire_timeout_holds_while_the_pre_lend_ping_is_black_holed(
    pg_proxy: FaultProxy, postgres_url: str, scheme: str
) -> None:
    """acquire_timeout=1 on a black-holed connection due a check raises PoolTimeout after about 1 s
    (psycopg took 11 s: its cancel protocol ran in the caller's task)."""
    db = Warden().pool("db", _url(pg_proxy, postgres_url, scheme), min_size=1, max_size=1,
                       check_after_idle=0, connect_timeout=2, acquire_timeout=1)
    async with db:
        pg_proxy.blackhole(True)
        start = time.monotonic()
        with pytest.raises(PoolTimeout):
            await db.acquire()
        assert time.monotonic() - start < 1.3
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(db.acquire(), 0.1)
        assert time.monotonic() - start < 0.3
        pg_proxy.blackhole(False)
        await pg_proxy.cut()
        async with db.acquire(timeout=5) as conn:  # the stalled one was cut, a new one serves
            await conn.execute("SELECT 1")


@pytest.mark.parametrize("scheme", DRIVERS)
async def test_acquires_cancelled_during_their_ping_keep_the_connection(
    pg_proxy: FaultProxy, postgres_url: str, scheme: str
) -> None:
    """With 50 ms of latency, 20 acquires cancelled mid-ping return at once and discard nothing:
    the pool still has its one connection, no reconnect churn."""
    db = Warden().pool("db", _url(pg_proxy, postgres_url, scheme), min_size=1, max_size=1,
                       check_after_idle=0, acquire_timeout=5)
    async with db:
        pg_proxy.set_latency(0.05)
        async def take() -> None:
            await db.release(await db.acquire())

        for _ in range(20):
            task = asyncio.create_task(take())
            await asyncio.sleep(0.01)
            start = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - start < 0.03
            await asyncio.sleep(0.15)  # the orphaned ping ends and gives the connection back
        stats = db.stats()
        assert stats.discarded == {}
        assert stats.connect_time.count == 1  # never reconnected


@pytest.mark.parametrize("scheme", DRIVERS)
async def test_a_lease_cancelled_on_a_stalled_backend_ends_at_once(
    pg_proxy: FaultProxy, postgres_url: str, scheme: str
) -> None:
    """``asyncio.timeout(0.5)`` around a lease whose query stalls raises after 0.5 s, not 0.5 s plus
    reset_timeout: the reset is bounded on its own, and the connection is then discarded."""
    db = Warden().pool("db", _url(pg_proxy, postgres_url, scheme), min_size=1, max_size=1,
                       reset_timeout=2, connect_timeout=2)
    async with db:
        pg_proxy.blackhole(True)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5), db.acquire() as conn:
                await conn.execute("SELECT 1")
        # psycopg: its cancel protocol, bounded at 2 x 0.5 s by the connector, then the connection closes
        assert time.monotonic() - start < (0.8 if scheme == "postgresql" else 1.8)
        await asyncio.sleep(2.5)  # reset_timeout passes: the stalled connection is discarded
        # asyncpg: the reset timed out; psycopg: the cancel closed the connection (see its connector)
        assert sum(db.stats().discarded.values()) == 1
        pg_proxy.blackhole(False)
        async with db.acquire(timeout=5) as conn:
            await conn.execute("SELECT 1")
