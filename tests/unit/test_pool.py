"""Pool on the fake connector: FIFO, timeouts, drain, reset hygiene, health checks, circuit, lifetimes."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from poolwarden import BackendDown, LeaseEnded, PoolClosed, PoolOverloaded, PoolTimeout, Unavailable, unwrap
from poolwarden.pool import Pool
from poolwarden.testing import FakeConnector, FakeDisconnect, FakeQueryError, assert_no_leases, fake_pool

# -- helpers shared by the test_pool*.py modules ------------------------------------------------

MakePool = Callable[..., Pool[Any]]


def check_sizes(pool: Pool[Any]) -> Any:
    """Assert the size bookkeeping adds up and stays within bounds; return the stats snapshot."""
    s = pool.stats()
    assert s.size == s.idle + s.in_use + s.connecting, s
    assert s.size <= s.max_size, s
    return s


def assert_quiet(pool: Pool[Any]) -> None:
    """Nothing lent, nobody waiting, sizes consistent, no leases reported."""
    s = check_sizes(pool)
    assert s.in_use == 0, s
    assert s.waiting == 0, s
    assert_no_leases(pool)


async def settle(rounds: int = 10) -> None:
    """Let every ready task run a few steps."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def _acquire(pool: Pool[Any], timeout: float | None = None) -> Any:
    return await pool.acquire(timeout=timeout)


def acquire_task(pool: Pool[Any], timeout: float | None = None) -> asyncio.Task[Any]:
    """``pool.acquire()`` in a task of its own (a handle, or the acquire's exception)."""
    return asyncio.create_task(_acquire(pool, timeout))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "poolwarden.event", None) == name]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    """Build fake pools named "db" and close them all at the end of the test."""
    pools: list[Pool[Any]] = []

    def make(connector: FakeConnector | None = None, **settings: Any) -> Pool[Any]:
        settings.setdefault("drain_timeout", 1.0)  # a failed test must not hang its teardown
        pool = fake_pool("db", connector or FakeConnector(), **settings)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


# -- basics ---------------------------------------------------------------------------------------


async def test_acquire_release_reuses_the_same_connection(make_pool: MakePool) -> None:
    """A released connection is lent again to the next caller instead of opening a new one."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=2)
    await pool.open()
    async with pool.acquire() as conn:
        assert await conn.execute("SELECT 1") == "OK"
        first = conn.id
    async with pool.acquire() as conn:
        assert conn.id == first
    assert connector.connects == 1
    s = pool.stats()
    assert (s.acquired, s.released) == (2, 2)
    assert_quiet(pool)


async def test_acquire_before_open_raises_pool_closed(make_pool: MakePool) -> None:
    """A pool that was never opened refuses to lend with PoolClosed naming the resource."""
    pool = make_pool()
    with pytest.raises(PoolClosed, match="db"):
        await pool.acquire()


# -- FIFO ----------------------------------------------------------------------------------------


async def test_waiters_are_served_in_arrival_order(make_pool: MakePool) -> None:
    """With one connection, queued callers get it strictly in the order they asked."""
    pool = make_pool(min_size=1, max_size=1, acquire_timeout=5)
    await pool.open()
    order: list[int] = []

    async def user(i: int) -> None:
        async with pool.acquire():
            order.append(i)
            await asyncio.sleep(0)

    holder = await pool.acquire()
    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(user(i)))
        await settle(3)
        assert pool.stats().waiting == i + 1
    await pool.release(holder)
    await asyncio.gather(*tasks)
    assert order == list(range(6))
    assert_quiet(pool)


async def test_waiter_whose_connection_fails_its_check_keeps_its_place(make_pool: MakePool) -> None:
    """A waiter handed a connection that then fails its pre-lend check queues again at the front,
    ahead of callers that came after it."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, acquire_timeout=5)
    await pool.open()
    order: list[int] = []

    async def user(i: int) -> None:
        async with pool.acquire():
            order.append(i)
            await asyncio.sleep(0)

    holder = await pool.acquire()
    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(user(i)))
        await settle(3)
    unwrap(holder).closed = True  # dies during the lease, seen when the waiter checks it
    await pool.release(holder)  # goes to waiter 0, whose check finds it dead
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert pool.stats().discarded.get("disconnect") == 1
    assert_quiet(pool)


async def test_returned_connection_goes_to_oldest_waiter_not_a_newcomer(make_pool: MakePool) -> None:
    """A caller that acquires in the same instant a connection is returned queues behind the waiters."""
    pool = make_pool(min_size=1, max_size=1, acquire_timeout=5)
    await pool.open()
    order: list[str] = []

    async def waiter(i: int) -> None:
        async with pool.acquire():
            order.append(f"w{i}")
            await asyncio.sleep(0)

    holder = await pool.acquire()
    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(waiter(i)))
        await settle(3)
    assert pool.stats().waiting == 3

    async def return_then_acquire() -> None:
        await pool.release(holder)  # no await suspends between the return and the newcomer's acquire
        async with pool.acquire():
            order.append("newcomer")

    await asyncio.gather(return_then_acquire(), *tasks)
    assert order == ["w0", "w1", "w2", "newcomer"]
    assert_quiet(pool)


# -- timeouts and overload ------------------------------------------------------------------------


async def test_acquire_timeout_raises_pool_timeout_with_sizes(make_pool: MakePool) -> None:
    """A caller that waits acquire_timeout gets PoolTimeout (a TimeoutError) naming the resource and sizes."""
    pool = make_pool(min_size=1, max_size=1, acquire_timeout=0.05)
    await pool.open()
    holder = await pool.acquire()
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire()
    elapsed = time.monotonic() - start
    assert 0.04 <= elapsed < 1.0
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, Unavailable)
    assert err.resource == "db"
    assert err.retry_after > 0
    message = str(err)
    assert message.startswith("db:")
    for part in ("0.05s", "size=1", "in_use=1", "idle=0", "max_size=1"):
        assert part in message
    assert pool.stats().timeouts == 1
    assert pool.stats().waiting == 0
    await pool.release(holder)
    assert_quiet(pool)


async def test_per_call_timeout_overrides_acquire_timeout(make_pool: MakePool) -> None:
    """``acquire(timeout=...)`` bounds this one wait instead of the configured acquire_timeout."""
    pool = make_pool(min_size=1, max_size=1, acquire_timeout=10)
    await pool.open()
    holder = await pool.acquire()
    start = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"0\.03s"):
        await pool.acquire(timeout=0.03)
    assert time.monotonic() - start < 1.0
    await pool.release(holder)


async def test_max_waiting_refuses_at_once(make_pool: MakePool) -> None:
    """When max_waiting callers already queue, the next one gets PoolOverloaded without waiting."""
    pool = make_pool(min_size=1, max_size=1, max_waiting=2, acquire_timeout=5)
    await pool.open()
    holder = await pool.acquire()
    queued = [acquire_task(pool) for _ in range(2)]
    await settle()
    assert pool.stats().waiting == 2
    start = time.monotonic()
    with pytest.raises(PoolOverloaded, match="max_waiting=2") as info:
        await pool.acquire()
    assert time.monotonic() - start < 0.5
    assert info.value.retry_after > 0
    assert info.value.resource == "db"
    assert pool.stats().overloaded == 1
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)
    await pool.release(holder)
    assert_quiet(pool)


# -- close and drain ------------------------------------------------------------------------------


async def test_close_drains_then_reports_the_lease_still_out(make_pool: MakePool) -> None:
    """Close refuses new and waiting callers, closes a lease returned during the drain, waits
    drain_timeout for the rest, reports it and leaves no connection open on the server."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=2, max_size=2, drain_timeout=0.3, acquire_timeout=5)
    await pool.open()
    kept = await pool.acquire()
    returned = await pool.acquire()
    waiter = acquire_task(pool)
    await settle()
    assert pool.stats().waiting == 1

    start = time.monotonic()
    closing = asyncio.create_task(pool.close())
    await settle()
    with pytest.raises(PoolClosed, match="db"):
        await waiter
    with pytest.raises(PoolClosed, match="db"):
        await pool.acquire()
    raw = unwrap(returned)
    await pool.release(returned)
    await wait_until(lambda: raw.closed)
    assert not closing.done()

    abandoned = await closing
    elapsed = time.monotonic() - start
    assert elapsed >= 0.28
    assert len(abandoned) == 1
    assert abandoned[0].resource == "db"
    assert abandoned[0].held_seconds >= 0.28
    assert connector.open_connections == []
    assert pool.state == "closed"
    s = pool.stats()
    assert s.in_use == 0
    assert s.discarded.get("drain") == 1
    await pool.release(kept)  # returning an abandoned lease late is harmless
    with pytest.raises(PoolClosed):
        await pool.acquire()


async def test_a_lease_abandoned_at_drain_is_detached(make_pool: MakePool) -> None:
    """The holder of a lease that drain gave up on gets LeaseEnded on its next call, not the driver's
    error from a closed connection."""
    pool = make_pool(min_size=1, max_size=1, drain_timeout=0.05)
    await pool.open()
    kept = await pool.acquire()
    assert await kept.execute("SELECT 1") == "OK"
    abandoned = await pool.close()
    assert len(abandoned) == 1
    with pytest.raises(LeaseEnded, match="db"):
        await kept.execute("SELECT 1")


async def test_close_returns_as_soon_as_the_last_lease_comes_back(make_pool: MakePool) -> None:
    """Close does not sit out the whole drain_timeout once every lease has been returned."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, drain_timeout=5)
    await pool.open()
    conn = await pool.acquire()
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0.02)
    start = time.monotonic()
    await pool.release(conn)
    assert await closing == []
    assert time.monotonic() - start < 1.0
    assert connector.open_connections == []


# -- reset hygiene ---------------------------------------------------------------------------------


async def test_open_transaction_is_rolled_back_before_reuse(make_pool: MakePool) -> None:
    """A connection returned inside a transaction is rolled back before anyone else gets it."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1)
    await pool.open()
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
        assert conn.in_tx
    assert connector.rollbacks == 1
    async with pool.acquire() as conn:
        assert not conn.in_tx
    assert pool.stats().discarded == {}
    assert_quiet(pool)


async def test_clean_connection_costs_no_round_trip_on_release(make_pool: MakePool) -> None:
    """Returning a connection outside any transaction does no rollback, reset or ping."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, check_after_idle=1.0)
    await pool.open()
    for _ in range(5):
        async with pool.acquire() as conn:
            await conn.execute("SELECT 1")
    assert (connector.rollbacks, connector.resets, connector.pings) == (0, 0, 0)
    assert unwrap(await pool.acquire()).queries == 5


async def test_full_reset_runs_on_every_release(make_pool: MakePool) -> None:
    """With reset="full" the connector's full reset runs on each release, clean or not."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, reset="full")
    await pool.open()
    for _ in range(3):
        async with pool.acquire() as conn:
            await conn.execute("SELECT 1")
    assert connector.resets == 3
    assert_quiet(pool)


@pytest.mark.parametrize(("reset", "survives"), [("default", True), ("full", False)])
async def test_session_state_survives_only_the_default_reset(
    make_pool: MakePool, reset: str, survives: bool
) -> None:
    """A SET made by one lease is still there for the next with the default reset, gone with full."""
    pool = make_pool(min_size=1, max_size=1, reset=reset)
    await pool.open()
    async with pool.acquire() as conn:
        await conn.execute("SET search_path = app")
    async with pool.acquire() as conn:
        assert ("search_path" in conn.session) is survives


# -- a lost handle ---------------------------------------------------------------------------------


async def test_garbage_collected_handle_gives_its_slot_back(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    """A handle dropped without release is recovered: the slot serves a waiter and leak.lost is logged."""
    caplog.set_level(logging.WARNING, logger="poolwarden")
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, acquire_timeout=2)
    await pool.open()
    handle = await pool.acquire()
    raw = unwrap(handle)

    async def wait_for_one() -> int:
        async with pool.acquire() as conn:
            return int(conn.id)

    waiter = asyncio.create_task(wait_for_one())
    await settle()
    assert pool.stats().waiting == 1
    del handle
    gc.collect()
    served = await asyncio.wait_for(waiter, 1.0)
    assert served != raw.id
    assert raw.closed
    assert pool.stats().discarded.get("lost") == 1
    lost = events(caplog, "leak.lost")
    assert len(lost) == 1
    assert "garbage collected without release" in lost[0].getMessage()
    await wait_until(lambda: pool.stats().size == 1)
    assert_quiet(pool)


# -- disconnects and health checks ---------------------------------------------------------------


async def test_lease_ending_with_a_disconnect_discards_the_connection(make_pool: MakePool) -> None:
    """An exception that means "connection gone" ends the lease by discarding the connection."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    seen: list[Any] = []

    async def endpoint() -> None:
        async with pool.acquire() as conn:
            seen.append(unwrap(conn))
            raise FakeDisconnect("server closed the connection")

    with pytest.raises(FakeDisconnect):
        await endpoint()
    raw = seen[0]
    assert raw.closed
    assert pool.stats().discarded == {"disconnect": 1}
    async with pool.acquire() as conn:
        assert conn.id != raw.id
    assert_quiet(pool)


async def test_ordinary_query_error_keeps_the_connection(make_pool: MakePool) -> None:
    """A query error is the caller's business: the connection goes back to the pool."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    seen: list[int] = []

    async def endpoint() -> None:
        async with pool.acquire() as conn:
            seen.append(conn.id)
            await conn.execute("FAIL")

    with pytest.raises(FakeQueryError, match="FAIL"):
        await endpoint()
    first = seen[0]
    async with pool.acquire() as conn:
        assert conn.id == first
    assert pool.stats().discarded == {}


async def test_disconnect_makes_older_connections_pinged_once(make_pool: MakePool) -> None:
    """After a disconnect every older connection is pinged before its next lend, newer ones are not,
    and a connection that passed that ping is not pinged again."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=3, max_size=3, check_after_idle=None)
    await pool.open()
    assert pool.stats().idle == 3
    with pytest.raises(FakeDisconnect):
        async with pool.acquire():
            raise FakeDisconnect("gone")
    await wait_until(lambda: pool.stats().idle == 3)  # the replacement was made after the disconnect
    newest = max(c.id for c in connector.open_connections)

    lent = [await pool.acquire() for _ in range(3)]
    assert connector.pings == 2
    assert newest in {c.id for c in lent}
    for conn in lent:
        await pool.release(conn)

    lent = [await pool.acquire() for _ in range(3)]
    assert connector.pings == 2
    for conn in lent:
        await pool.release(conn)
    assert_quiet(pool)


async def test_a_failed_ping_makes_older_fresh_connections_checked(make_pool: MakePool) -> None:
    """After one ping fails, a connection verified before it is pinged before its next lend even if it
    was just used, so its next caller never gets it dead."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=2, max_size=3, check_after_idle=0.05, acquire_timeout=1)
    await pool.open()
    await asyncio.sleep(0.08)  # both idle connections are now due a check
    held = await pool.acquire()  # pinged, fine
    connector.kill_all()  # the server restarts under both
    async with pool.acquire() as other:  # the idle one fails its ping and is replaced
        assert await other.execute() == "OK"
    assert pool.stats().pings_failed == 1
    await pool.release(held)  # its holder noticed nothing: it looks freshly used
    async with pool.acquire() as conn:
        assert await conn.execute() == "OK"
    assert pool.stats().pings_failed == 2
    assert_quiet(pool)


async def test_dead_connections_replaced_within_acquire(make_pool: MakePool) -> None:
    """After the server dropped every connection, each next acquire still gets a live one."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=3, max_size=3, check_after_idle=0, acquire_timeout=1)
    await pool.open()
    connector.kill_all()

    async def use() -> str:
        async with pool.acquire() as conn:
            return str(await conn.execute("SELECT 1"))

    assert await asyncio.gather(*(use() for _ in range(5))) == ["OK"] * 5
    s = pool.stats()
    assert s.discarded.get("ping_failed") == 3
    assert s.timeouts == 0
    assert all(not c.dead for c in connector.open_connections)
    assert_quiet(pool)


async def test_check_after_idle_pings_only_long_idle_connections(make_pool: MakePool) -> None:
    """A connection idle longer than check_after_idle is pinged before lending; a just-used one is not."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, check_after_idle=0.05)
    await pool.open()
    async with pool.acquire():
        pass
    async with pool.acquire():
        pass
    assert connector.pings == 0
    await asyncio.sleep(0.08)
    async with pool.acquire():
        pass
    assert connector.pings == 1
    async with pool.acquire():
        pass
    assert connector.pings == 1


async def test_failed_idle_check_is_replaced_transparently(make_pool: MakePool) -> None:
    """A connection that fails its pre-lend ping is discarded and the caller gets a fresh one."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, check_after_idle=0.01, acquire_timeout=1)
    await pool.open()
    first = connector.connections[0]
    first.dead = True
    await asyncio.sleep(0.02)
    async with pool.acquire() as conn:
        assert conn.id != first.id
    assert pool.stats().pings_failed == 1
    assert pool.stats().discarded == {"ping_failed": 1}


# -- circuit breaker -------------------------------------------------------------------------------


async def test_circuit_opens_fails_fast_and_closes_on_recovery(make_pool: MakePool) -> None:
    """After failure_threshold failed connects acquires fail at once with BackendDown, and the
    background probe closes the circuit once the backend answers again."""
    connector = FakeConnector(fail_connects=-1)
    pool = make_pool(connector, min_size=1, max_size=2, failure_threshold=3, acquire_timeout=5,
                     backoff_initial=0.01, backoff_max=0.05)
    await pool.open(wait=False)
    await wait_until(lambda: pool.stats().circuit == "open")
    assert connector.connects >= 3
    start = time.monotonic()
    with pytest.raises(BackendDown) as info:
        await pool.acquire()
    assert time.monotonic() - start < 0.5
    assert info.value.retry_after > 0
    assert info.value.resource == "db"
    assert "ConnectionRefusedError" in str(info.value)
    assert not pool.ready

    connector.fail_connects = 0
    await wait_until(lambda: pool.stats().circuit == "closed")
    async with pool.acquire(timeout=1) as conn:
        assert await conn.execute() == "OK"
    assert pool.ready
    assert_quiet(pool)


async def test_waiting_callers_get_backend_down_when_the_circuit_opens(make_pool: MakePool) -> None:
    """Callers already queued when the circuit opens are failed with BackendDown, not left to time out."""
    connector = FakeConnector(fail_connects=-1)
    pool = make_pool(connector, min_size=1, max_size=1, failure_threshold=3, acquire_timeout=5,
                     backoff_initial=0.02, backoff_max=0.04)
    await pool.open(wait=False)
    start = time.monotonic()
    waiters = [acquire_task(pool) for _ in range(3)]
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert time.monotonic() - start < 2.0
    assert all(isinstance(r, BackendDown) for r in results), results
    assert pool.stats().waiting == 0


async def test_backend_down_hints_a_positive_retry_after_while_a_probe_hangs(make_pool: MakePool) -> None:
    """Even while a probe is overdue or in flight, BackendDown tells clients to wait a while, not 0 s."""
    connector = FakeConnector(fail_connects=-1)
    pool = make_pool(connector, min_size=1, max_size=2, failure_threshold=2, connect_timeout=5,
                     backoff_initial=0.01, backoff_max=0.02)
    await pool.open(wait=False)
    await wait_until(lambda: pool.stats().circuit == "open")
    connector.hang_connect = True
    await asyncio.sleep(0.1)  # the next probe is due and now hangs in connect
    with pytest.raises(BackendDown) as info:
        await pool.acquire()
    assert info.value.retry_after > 0


# -- start-up --------------------------------------------------------------------------------------


async def test_open_wait_retries_until_the_backend_answers(make_pool: MakePool) -> None:
    """open(wait=True) keeps retrying failed connects and returns once min_size connections are up."""
    connector = FakeConnector(fail_connects=3)
    pool = make_pool(connector, min_size=1, max_size=2, backoff_initial=0.005, backoff_max=0.01,
                     startup_timeout=2)
    await pool.open(wait=True)
    assert pool.ready
    assert connector.connects >= 4
    assert pool.stats().connect_errors == 3


async def test_open_wait_gives_up_after_startup_timeout(make_pool: MakePool) -> None:
    """With a backend that never answers, open raises BackendDown after startup_timeout naming the
    resource and the last error, and the pool ends closed."""
    connector = FakeConnector(fail_connects=-1)
    pool = make_pool(connector, min_size=1, max_size=2, startup_timeout=0.2, backoff_initial=0.01,
                     backoff_max=0.02)
    start = time.monotonic()
    with pytest.raises(BackendDown) as info:
        await pool.open(wait=True)
    assert time.monotonic() - start >= 0.19
    message = str(info.value)
    assert message.startswith("db:")
    assert "startup_timeout=0.2" in message
    assert "last error: ConnectionRefusedError" in message  # the class: driver texts go to the log
    assert pool.state == "closed"
    assert pool.stats().connecting == 0


async def test_lazy_startup_returns_at_once_and_becomes_ready(make_pool: MakePool) -> None:
    """startup="lazy" opens without waiting: not ready at first, ready once connected."""
    pool = make_pool(FakeConnector(connect_delay=0.3), startup="lazy", min_size=1)
    start = time.monotonic()
    await pool.open()
    assert time.monotonic() - start < 0.2
    assert not pool.ready
    await wait_until(lambda: pool.ready)
    assert pool.stats().idle == 1


async def test_min_size_zero_makes_one_trial_connection(make_pool: MakePool) -> None:
    """A pool with min_size=0 still proves the backend with one connection at open."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=0, max_size=2, startup_timeout=1)
    await pool.open(wait=True)
    assert pool.ready
    assert connector.connects == 1


# -- lifetimes, keepalive, expire, resize, pause --------------------------------------------------


async def test_max_lifetime_recycles_idle_connections(make_pool: MakePool) -> None:
    """Idle connections older than max_lifetime are replaced in the background."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=2, max_size=2, max_lifetime=0.05)
    await pool.open()
    first = {c.id for c in connector.connections}
    await wait_until(lambda: pool.stats().discarded.get("lifetime", 0) >= 2)
    await wait_until(lambda: pool.stats().idle == 2)
    assert first.isdisjoint(c.id for c in connector.open_connections)
    check_sizes(pool)


async def test_max_lifetime_never_yanks_a_lent_connection(make_pool: MakePool) -> None:
    """A lent connection past max_lifetime stays usable until release, then is retired for lifetime."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=2, max_lifetime=0.03)
    await pool.open()
    conn = await pool.acquire()
    raw = unwrap(conn)
    await asyncio.sleep(0.1)
    assert await conn.execute("SELECT 1") == "OK"
    assert not raw.closed
    before = pool.stats().discarded.get("lifetime", 0)
    await pool.release(conn)
    assert pool.stats().discarded.get("lifetime", 0) == before + 1
    await wait_until(lambda: raw.closed)


async def test_max_idle_closes_idle_connections_above_min_size(make_pool: MakePool) -> None:
    """Connections idle longer than max_idle are closed down to min_size, not below."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=4, max_idle=0.05, max_lifetime=None,
                     keepalive_interval=None)
    await pool.open()
    lent = [await pool.acquire() for _ in range(4)]
    for conn in lent:
        await pool.release(conn)
    assert pool.stats().idle == 4
    await wait_until(lambda: pool.stats().size == 1)
    await asyncio.sleep(0.1)
    s = check_sizes(pool)
    assert s.idle == 1
    assert s.discarded == {"idle": 3}


async def test_keepalive_pings_idle_connections_and_replaces_failures(make_pool: MakePool) -> None:
    """Idle connections are pinged every keepalive_interval; one failing its keepalive is replaced."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=2, max_size=2, keepalive_interval=0.03)
    await pool.open()
    await wait_until(lambda: connector.pings >= 4)
    assert pool.stats().discarded == {}
    connector.fail_pings = True
    await wait_until(lambda: pool.stats().discarded.get("ping_failed", 0) >= 2)
    connector.fail_pings = False
    await wait_until(lambda: pool.stats().idle == 2 and connector.connects >= 4)
    assert len(connector.open_connections) == 2
    check_sizes(pool)


async def test_expire_replaces_idle_now_and_lent_on_return(make_pool: MakePool) -> None:
    """expire() retires idle connections at once and lent ones when they come back."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=2, max_size=3)
    await pool.open()
    lent = await pool.acquire()
    lent_raw = unwrap(lent)
    old = {c.id for c in connector.connections}
    pool.expire()
    await wait_until(lambda: pool.stats().discarded.get("expired") == 1)
    assert await lent.execute("SELECT 1") == "OK"
    await pool.release(lent)
    assert pool.stats().discarded.get("expired") == 2
    await wait_until(lambda: lent_raw.closed and pool.stats().size == 2)
    assert old.isdisjoint(c.id for c in connector.open_connections)
    assert_quiet(pool)


async def test_resize_grows_and_shrinks(make_pool: MakePool) -> None:
    """resize() opens connections up to a new min_size and retires idle ones above a new max_size."""
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=2)
    await pool.open()
    pool.resize(3, 5)
    await wait_until(lambda: pool.stats().idle == 3)
    assert pool.stats().max_size == 5
    pool.resize(1, 1)
    s = check_sizes(pool)
    assert (s.size, s.max_size) == (1, 1)
    assert s.discarded == {"resized": 2}


async def test_resize_below_lent_connections_retires_them_on_return(make_pool: MakePool) -> None:
    """Shrinking max_size under lent connections closes the surplus as it comes back."""
    pool = make_pool(min_size=0, max_size=3)
    await pool.open()
    lent = [await pool.acquire() for _ in range(3)]
    pool.resize(0, 1)
    for conn in lent:
        await pool.release(conn)
        assert pool.stats().size <= max(1, sum(c._lg_conn is not None for c in lent))
    s = check_sizes(pool)
    assert s.size == 1
    assert s.discarded == {"resized": 2}


async def test_resize_validates_like_the_config(make_pool: MakePool) -> None:
    """resize() rejects bounds with the same message as PoolConfig."""
    pool = make_pool(min_size=1, max_size=2)
    with pytest.raises(ValueError, match=r"max_size must be >= min_size \(got max_size=2, min_size=5\)"):
        pool.resize(5, 2)


async def test_pause_queues_callers_and_resume_serves_them_in_order(make_pool: MakePool) -> None:
    """While paused acquires wait; resume serves the queued callers first come, first served."""
    pool = make_pool(min_size=1, max_size=1, acquire_timeout=5)
    await pool.open()
    pool.pause()
    assert not pool.ready
    order: list[int] = []

    async def user(i: int) -> None:
        async with pool.acquire():
            order.append(i)
            await asyncio.sleep(0)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(user(i)))
        await settle(3)
    await asyncio.sleep(0.05)
    assert order == []
    assert pool.stats().waiting == 4
    pool.resume()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert pool.ready
    assert_quiet(pool)


async def test_paused_acquire_times_out(make_pool: MakePool) -> None:
    """A paused pool lends nothing, so a caller gets PoolTimeout after its timeout."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    pool.pause()
    with pytest.raises(PoolTimeout):
        await pool.acquire(timeout=0.03)
    pool.resume()
    async with pool.acquire(timeout=0.5):
        pass


# -- leak detection --------------------------------------------------------------------------------


async def test_leak_threshold_reports_the_acquiring_line(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease held past leak_threshold logs leak.suspected with the test's acquire line, then
    leak.returned when it comes back."""
    caplog.set_level(logging.WARNING, logger="poolwarden")
    pool = make_pool(min_size=1, max_size=1, leak_threshold=0.03)
    await pool.open()
    frame = inspect.currentframe()
    assert frame is not None
    line = frame.f_lineno + 1
    conn = await pool.acquire()
    await wait_until(lambda: bool(events(caplog, "leak.suspected")))
    suspected = events(caplog, "leak.suspected")
    assert len(suspected) == 1
    message = suspected[0].getMessage()
    assert f'{__file__}", line {line}, in test_leak_threshold_reports_the_acquiring_line' in message
    assert "leak_threshold=0.03" in message
    await pool.release(conn)
    assert len(events(caplog, "leak.returned")) == 1
    assert len(events(caplog, "leak.suspected")) == 1


async def test_a_slow_check_before_lending_is_not_reported_as_a_leak(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    """While the pool pings an idle connection for a new caller, neither leak detection nor leases()
    mistake it for the previous, long-finished lease."""
    caplog.set_level(logging.WARNING, logger="poolwarden")
    connector = FakeConnector()
    pool = make_pool(connector, min_size=1, max_size=1, leak_threshold=0.02, check_after_idle=0)
    await pool.open()
    async with pool.acquire():
        pass  # a first lease, returned at once
    await asyncio.sleep(0.05)  # long enough ago to look like a leak if it were still counted
    connector.ping_delay = 0.15
    task = acquire_task(pool)
    await wait_until(lambda: connector.pings == 1)
    assert pool.leases() == []
    conn = await task
    assert events(caplog, "leak.suspected") == []
    assert len(pool.leases()) == 1
    await pool.release(conn)


async def test_a_background_keepalive_is_not_a_lease(make_pool: MakePool) -> None:
    """A keepalive ping in flight is not reported by leases() or assert_no_leases."""
    connector = FakeConnector(hang_ping=True)
    pool = make_pool(connector, min_size=1, max_size=1, keepalive_interval=0.02)
    await pool.open()
    await wait_until(lambda: connector.pings == 1)
    assert pool.stats().in_use == 1  # the pool itself holds it while pinging
    assert pool.leases() == []
    assert_no_leases(pool)


async def test_no_stack_is_captured_without_leak_threshold(make_pool: MakePool) -> None:
    """Leak detection off means the hot path captures no acquisition stack."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    async with pool.acquire() as conn:
        assert conn._lg_rec.stack is None
    on = make_pool(min_size=1, max_size=1, leak_threshold=60)
    await on.open()
    async with on.acquire() as conn:
        assert conn._lg_rec.stack is not None
