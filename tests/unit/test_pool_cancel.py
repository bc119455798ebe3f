"""Cancellation at every await of the pool: no lease, slot or connection is ever lost."""

from __future__ import annotations

import asyncio
import time

import pytest

from poolwarden import LeaseEnded, PoolClosed, PoolTimeout, unwrap
from poolwarden.testing import FakeConnector
from tests.unit.test_pool import MakePool, acquire_task, assert_quiet, make_pool, settle, wait_until

__all__ = ["make_pool"]  # the fixture, imported for pytest


async def test_cancelled_waiter_leaves_the_queue(make_pool: MakePool) -> None:
    """A waiter cancelled in the queue is removed from it and loses no slot."""
    pool = make_pool(min_size=1, max_size=1, acquire_timeout=5)
    await pool.open()
    holder = await pool.acquire()
    waiter = acquire_task(pool)
    await settle()
    assert pool.stats().waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.stats().waiting == 0
    await pool.release(holder)
    async with pool.acquire(timeout=0.5) as conn:
        assert await conn.execute() == "OK"
    assert_quiet(pool)
    s = pool.stats()
    assert (s.size, s.idle) == (1, 1)


async def test_waiter_cancelled_after_the_hand_off_passes_it_on(make_pool: MakePool) -> None:
    """A waiter granted a connection but cancelled before it ran hands the connection to the next waiter."""
    pool = make_pool(min_size=1, max_size=1, acquire_timeout=5)
    await pool.open()
    holder = await pool.acquire()
    first = acquire_task(pool)
    await settle()
    second = acquire_task(pool)
    await settle()
    assert pool.stats().waiting == 2

    await pool.release(holder)  # resolves the first waiter's future without suspending
    s = pool.stats()
    assert (s.waiting, s.in_use) == (1, 1)  # granted to the first waiter, which has not run yet
    first.cancel()

    handle = await asyncio.wait_for(second, 1.0)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await handle.execute() == "OK"
    await pool.release(handle)
    assert_quiet(pool)
    assert pool.stats().size == 1


async def test_close_while_a_connect_hangs(make_pool: MakePool) -> None:
    """Closing a pool whose connect hangs fails the waiting caller with PoolClosed and stops the connect."""
    connector = FakeConnector(hang_connect=True)
    pool = make_pool(connector, min_size=1, max_size=1, acquire_timeout=5, connect_timeout=10)
    await pool.open(wait=False)
    waiter = acquire_task(pool)
    await settle()
    assert pool.stats().connecting == 1
    start = time.monotonic()
    assert await pool.close() == []
    assert time.monotonic() - start < 1.0
    with pytest.raises(PoolClosed):
        await waiter
    s = pool.stats()
    assert (s.connecting, s.size, s.waiting) == (0, 0, 0)
    assert_quiet(pool)
    assert connector.open_connections == []


async def test_cancelled_acquire_lets_its_connect_finish_into_idle(make_pool: MakePool) -> None:
    """An acquire cancelled while the connect it asked for runs leaves that connection idle, slot intact."""
    connector = FakeConnector(connect_delay=0.05)
    pool = make_pool(connector, min_size=0, max_size=1, acquire_timeout=5)
    await pool.open(wait=False)
    waiter = acquire_task(pool)
    await asyncio.sleep(0.01)
    assert pool.stats().connecting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await wait_until(lambda: pool.stats().idle == 1)
    assert_quiet(pool)
    async with pool.acquire(timeout=0.5):
        pass
    assert connector.connects == 1


async def test_acquire_timeout_during_a_slow_connect_keeps_the_connection(make_pool: MakePool) -> None:
    """A caller timing out while its connect is slow gets PoolTimeout; the connect still lands in idle."""
    connector = FakeConnector(connect_delay=0.08)
    pool = make_pool(connector, min_size=0, max_size=1)
    await pool.open(wait=False)
    with pytest.raises(PoolTimeout):
        await pool.acquire(timeout=0.02)
    await wait_until(lambda: pool.stats().idle == 1)
    assert_quiet(pool)
    assert connector.connects == 1


async def test_cancel_during_the_pre_lend_ping_keeps_the_healthy_connection(make_pool: MakePool) -> None:
    """An acquire cancelled while its connection is pinged returns at once; the ping finishes on its
    own and the healthy connection goes back to the pool instead of being thrown away (issue 9.9)."""
    connector = FakeConnector(ping_delay=0.2)
    pool = make_pool(connector, min_size=1, max_size=1, check_after_idle=0, acquire_timeout=5)
    await pool.open()
    first = connector.connections[0]
    waiter = acquire_task(pool)
    await wait_until(lambda: connector.pings == 1)
    assert pool.stats().in_use == 1  # counted while the pool pings it
    start = time.monotonic()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert time.monotonic() - start < 0.1  # the caller did not wait for the ping
    await wait_until(lambda: pool.stats().idle == 1)
    assert not first.closed
    assert pool.stats().discarded == {}
    assert_quiet(pool)
    connector.ping_delay = 0
    async with pool.acquire(timeout=1) as conn:
        assert conn.id == first.id
    assert connector.connects == 1


async def test_acquire_timeout_holds_while_the_pre_lend_ping_stalls(make_pool: MakePool) -> None:
    """A stalled pre-lend ping cannot stretch acquire_timeout (psycopg's cancel protocol did, issue
    9.5): PoolTimeout comes on time, and the stalled connection is cut after connect_timeout."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, check_after_idle=0, connect_timeout=0.3)
    await pool.open()
    first = connector.connections[0]
    connector.hang_ping = True
    start = time.monotonic()
    with pytest.raises(PoolTimeout):
        await pool.acquire(timeout=0.1)
    assert time.monotonic() - start < 0.2
    await wait_until(lambda: first.closed)  # terminated at connect_timeout, then replaced
    connector.hang_ping = False
    await wait_until(lambda: pool.stats().idle == 1)
    assert pool.stats().discarded == {"ping_failed": 1}
    assert_quiet(pool)


async def test_cancelled_release_still_finishes_the_rollback(make_pool: MakePool) -> None:
    """Cancelling the task that is rolling back on release does not cancel the rollback: the
    connection comes back clean."""
    connector = FakeConnector(query_delay=0.05)
    pool = make_pool(connector, min_size=1, max_size=1)
    await pool.open()
    conn = await pool.acquire()
    raw = unwrap(conn)
    await conn.execute("BEGIN")
    releasing = asyncio.create_task(pool.release(conn))
    await wait_until(lambda: connector.rollbacks == 1)
    assert raw.busy  # the ROLLBACK is on the wire
    releasing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await releasing
    await wait_until(lambda: pool.stats().idle == 1)
    assert not raw.in_tx
    assert not raw.closed
    assert pool.stats().discarded == {}
    assert_quiet(pool)
    async with pool.acquire() as again:
        assert again.id == raw.id


async def test_cancelled_body_in_a_transaction_is_rolled_back_and_rechecked(make_pool: MakePool) -> None:
    """A task cancelled inside ``async with acquire()`` returns its connection rolled back and pinged."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1)
    await pool.open()
    started = asyncio.Event()

    async def endpoint() -> None:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(endpoint())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert connector.rollbacks == 1
    assert connector.pings == 1
    await wait_until(lambda: pool.stats().idle == 1)
    assert pool.stats().discarded == {}
    assert_quiet(pool)


async def test_hanging_cleanup_after_a_cancel_is_bounded_by_reset_timeout(make_pool: MakePool) -> None:
    """If the post-cancel check hangs, reset_timeout bounds it and the connection is discarded, not
    lost; the cancelled caller itself leaves at once (issue 9.9: it never waits for the reset)."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, reset_timeout=0.05)
    await pool.open()
    started = asyncio.Event()

    async def endpoint() -> None:
        async with pool.acquire():
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(endpoint())
    await started.wait()
    connector.hang_ping = True
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 0.04  # the cancelled caller does not wait for the reset
    await wait_until(lambda: pool.stats().discarded == {"reset_failed": 1})
    connector.hang_ping = False
    await wait_until(lambda: pool.stats().idle == 1)
    assert_quiet(pool)


async def test_keepalive_cancelled_by_close_loses_nothing(make_pool: MakePool) -> None:
    """Closing while a background keepalive ping hangs terminates that connection and leaves none open."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, keepalive_interval=0.02)
    await pool.open()
    connector.hang_ping = True
    await wait_until(lambda: connector.pings >= 1)
    start = time.monotonic()
    assert await pool.close() == []
    assert time.monotonic() - start < 0.5
    s = pool.stats()
    assert (s.in_use, s.idle, s.connecting) == (0, 0, 0)
    assert connector.open_connections == []


async def test_close_is_bounded_by_drain_timeout_plus_reset_timeout(make_pool: MakePool) -> None:
    """A lease never returned and graceful closes that hang: close() still returns within
    drain_timeout + min(drain_timeout, reset_timeout), with every connection terminated."""
    connector = FakeConnector(close_delay=60)
    pool = make_pool(connector, min_size=3, max_size=3, drain_timeout=0.2, reset_timeout=0.1)
    await pool.open()
    held = await pool.acquire()
    start = time.monotonic()
    abandoned = await pool.close()
    took = time.monotonic() - start
    assert 0.2 <= took < 0.2 + 0.1 + 0.1, took
    assert len(abandoned) == 1
    assert connector.open_connections == []
    assert pool.state == "closed"
    with pytest.raises(LeaseEnded):
        await held.execute()


async def test_two_closes_and_a_cancelled_third_share_one_drain(make_pool: MakePool) -> None:
    """Concurrent closes wait for the same drain and report the same lease; cancelling one waiting
    caller changes nothing for the others."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=2, max_size=2, drain_timeout=0.2)
    await pool.open()
    held = await pool.acquire()
    first, second, third = (asyncio.create_task(pool.close()) for _ in range(3))
    await asyncio.sleep(0.05)
    third.cancel()
    results = await asyncio.gather(first, second, third, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert results[0] == results[1]
    assert len(results[0]) == 1  # type: ignore[arg-type]
    assert connector.open_connections == []
    with pytest.raises(LeaseEnded):
        await held.execute()
