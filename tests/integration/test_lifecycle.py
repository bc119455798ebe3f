"""Open, close and re-open on real servers under cancellation (issue 9 items 1-4, issue 7 item 3).

Connections are counted on a private PostgreSQL (tests/support/private_pg.py), so the count is
exact: nothing else talks to that server. Each cancellation test loops over the cancellation points
(cancel after 0, 1, 2... loop turns) as the acquire cancel tests do.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import anyio
import asyncpg
import pytest

from poolwarden import BackendDown, LeaseEnded, PoolClosed, Warden
from poolwarden.warden import Resource
from tests.support.cancel import cancel_after
from tests.support.private_pg import PrivatePostgres

pytestmark = pytest.mark.postgres

DRIVERS = [pytest.param("postgresql", id="asyncpg"), pytest.param("postgresql+psycopg", id="psycopg")]


def _url(pg: PrivatePostgres, scheme: str) -> str:
    return pg.url.replace("postgresql", scheme, 1)


async def _server_connections(pg: PrivatePostgres) -> int:
    conn = await asyncpg.connect(pg.url)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid()"))
    finally:
        await conn.close()


async def _assert_no_connections(pg: PrivatePostgres, timeout: float = 3.0) -> None:
    """The server sees no client connection within ``timeout`` (a terminated socket takes a moment)."""
    deadline = time.monotonic() + timeout
    while (count := await _server_connections(pg)) != 0:
        assert time.monotonic() < deadline, f"{count} connection(s) still open on the server"
        await asyncio.sleep(0.05)


def _pool(url: str, **settings: Any) -> Resource[Any]:
    settings = {"min_size": 3, "max_size": 3, "drain_timeout": 0.5, "connect_timeout": 2, **settings}
    return Warden().pool("db", url, **settings)


@pytest.mark.parametrize("scheme", DRIVERS)
async def test_cancelled_close_at_every_await_ends_closed_with_no_connection(
    private_pg: PrivatePostgres, scheme: str
) -> None:
    """close() cancelled after 0..N loop turns (a lease out, idle connections, closes in flight)
    leaves a closed pool, the lease ended, and no connection on the server (issue 9.1)."""
    url = _url(private_pg, scheme)
    for turns in range(1, 14):  # after 0 turns the task never started: close() did not run at all
        pool = _pool(url)
        await pool.open()
        lease = await pool.acquire()
        await cancel_after(turns, pool.close())
        assert pool.state == "closed", turns
        assert await pool.close() == []  # a later close has nothing left to do
        with pytest.raises(LeaseEnded):
            await lease.execute("SELECT 1")
        await _assert_no_connections(private_pg)


async def test_close_under_a_zero_deadline_scope_does_not_cancel_the_caller(
    private_pg: PrivatePostgres,
) -> None:
    """``anyio.move_on_after(0)`` around close(): the scope absorbs its own cancellation, the caller
    goes on, and the pool is closed with nothing left on the server (issue 9.1)."""
    pool = _pool(private_pg.url)
    await pool.open()
    with anyio.move_on_after(0) as scope:
        await pool.close()
    assert scope.cancelled_caught
    await asyncio.sleep(0)  # the caller was not cancelled: it still runs
    assert pool.state == "closed"
    await _assert_no_connections(private_pg)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", DRIVERS)
async def test_cancelled_open_leaves_nothing_behind_when_the_backend_returns(
    private_pg: PrivatePostgres, scheme: str
) -> None:
    """open() (and a Warden's start-up) cancelled at any point while the backend refuses leaves a
    closed pool: when the server comes back, nobody connects to it (issue 9.2)."""
    url = _url(private_pg, scheme)
    await private_pg.astop()
    pools = []
    for turns in [*range(1, 6), 20, 60]:
        pool = _pool(url, startup_timeout=30, backoff_initial=0.01, backoff_max=0.05, probe_interval=0.05)
        pools.append(pool)
        assert await cancel_after(turns, pool.open())
        assert pool.state == "closed", turns
    warden = Warden()
    warden.pool("db", url, min_size=2, startup_timeout=30, backoff_initial=0.01, backoff_max=0.05)
    starting = asyncio.create_task(warden.open())
    await asyncio.sleep(0.2)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert warden["db"].state == "closed"
    await private_pg.astart()
    await asyncio.sleep(0.5)  # several probe and backoff intervals
    await _assert_no_connections(private_pg, timeout=0.1)
    # and each of them opens again, now that the server is there
    for pool in pools[:2]:
        await pool.open()
        async with pool.acquire() as conn:
            await conn.execute("SELECT 1")
        await pool.close()
    await _assert_no_connections(private_pg)


async def test_open_that_gives_up_at_startup_timeout_is_closed_and_can_open_again(
    private_pg: PrivatePostgres,
) -> None:
    """BackendDown from open() leaves the pool closed (no retry loop left running) and a later
    open() succeeds once the server is back."""
    await private_pg.astop()
    pool = _pool(private_pg.url, startup_timeout=0.3, backoff_initial=0.01, backoff_max=0.05,
                 probe_interval=0.05)
    with pytest.raises(BackendDown):
        await pool.open()
    assert pool.state == "closed"
    await private_pg.astart()
    await asyncio.sleep(0.3)
    await _assert_no_connections(private_pg, timeout=0.1)
    await pool.open()
    assert pool.ready
    await pool.close()


@pytest.mark.parametrize("scheme", DRIVERS)
async def test_concurrent_closes_wait_for_the_same_drain(private_pg: PrivatePostgres, scheme: str) -> None:
    """A second close() during the first one's drain waits for it and reports the same abandoned
    lease, instead of returning at once with nothing (issue 9.3)."""
    pool = _pool(_url(private_pg, scheme), drain_timeout=0.3)
    await pool.open()
    lease = await pool.acquire()
    start = time.monotonic()
    first = asyncio.create_task(pool.close())
    await asyncio.sleep(0.05)
    second = asyncio.create_task(pool.close())
    third = asyncio.create_task(pool.close())
    await asyncio.sleep(0.05)
    assert not second.done()
    results = await asyncio.gather(first, second, third)
    assert time.monotonic() - start >= 0.3
    assert [len(r) for r in results] == [1, 1, 1]
    assert results[0] == results[1] == results[2]
    assert pool.state == "closed"
    with pytest.raises(LeaseEnded):
        await lease.execute("SELECT 1")
    await _assert_no_connections(private_pg)


async def test_cancelled_second_close_does_not_cancel_the_first(private_pg: PrivatePostgres) -> None:
    """Cancelling a caller that waits on another's close() leaves that close() to finish gracefully."""
    pool = _pool(private_pg.url, drain_timeout=2)
    await pool.open()
    lease = await pool.acquire()
    first = asyncio.create_task(pool.close())
    await asyncio.sleep(0.02)
    second = asyncio.create_task(pool.close())
    await asyncio.sleep(0.02)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert not first.done()
    await pool.release(lease)  # the first close() was still draining, and now ends cleanly
    assert await asyncio.wait_for(first, 1) == []
    await _assert_no_connections(private_pg)


async def test_handle_collected_on_another_thread_gives_its_slot_back(private_pg: PrivatePostgres) -> None:
    """A lost handle in a reference cycle collected by ``gc.collect()`` in a worker thread still
    returns its slot: a max_size=1 pool serves again (issue 9.4)."""
    pool = _pool(private_pg.url, min_size=1, max_size=1)
    await pool.open()
    gc.disable()
    try:
        lease = await pool.acquire()

        class Cycle:
            pass

        holder = Cycle()
        holder.me = holder  # type: ignore[attr-defined]
        holder.conn = lease  # type: ignore[attr-defined]
        del holder, lease
        await asyncio.to_thread(gc.collect)
    finally:
        gc.enable()
    async with pool.acquire(timeout=2) as conn:
        assert await conn.fetchval("SELECT 1") == 1
    assert pool.stats().discarded.get("lost") == 1
    await pool.close()


@pytest.mark.slow
async def test_one_pool_serves_a_hundred_lifespans_in_a_row(private_pg: PrivatePostgres) -> None:
    """The same pool (and its dependencies) opened and closed by 100 lifespans in a row serves in
    each and leaves no connection on the server (issue 7.3)."""
    warden = Warden()
    db = warden.pool("db", private_pg.url, min_size=2, max_size=4)
    for _ in range(100):
        async with warden.lifespan(None), db.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        assert db.state == "closed"
    stats = db.stats()
    assert stats.acquired >= 100
    await _assert_no_connections(private_pg)
    with pytest.raises(PoolClosed):
        await db.acquire()


def test_a_pool_reopens_on_each_new_event_loop(private_pg: PrivatePostgres) -> None:
    """One pool opened by lifespans on different event loops (a TestClient per test runs its own)
    serves in each: nothing of the last run is bound to the old loop."""
    db = Warden().pool("db", private_pg.url, min_size=1, max_size=2)

    async def run() -> int:
        async with db, db.acquire() as conn:
            return int(await conn.fetchval("SELECT 41 + 1"))

    for _ in range(3):
        assert asyncio.run(run()) == 42
    assert asyncio.run(_server_connections(private_pg)) == 0


# -- MariaDB (asyncmy) and SQLite (aiosqlite) ------------------------------------------------------


@pytest.mark.mysql
async def test_mariadb_cancelled_close_at_every_await_ends_closed_with_no_connection() -> None:
    """The cancelled-close loop on a private MariaDB, connections counted in its process list."""
    import asyncmy

    from tests.support.private_pg import private_mariadb

    with private_mariadb() as my:

        async def connections() -> int:
            admin = await asyncmy.connect(host="127.0.0.1", port=my.port, user="root")
            try:
                async with admin.cursor() as cur:
                    await cur.execute("SELECT count(*) FROM information_schema.processlist "
                                      "WHERE command <> 'Daemon' AND id <> connection_id()")
                    row = await cur.fetchone()
                    return int(row[0])
            finally:
                admin.close()

        for turns in range(1, 12):
            pool = _pool(my.url)
            await pool.open()
            lease = await pool.acquire()
            await cancel_after(turns, pool.close())
            assert pool.state == "closed", turns
            with pytest.raises(LeaseEnded):
                await lease.cursor()
        deadline = time.monotonic() + 3
        while (count := await connections()) != 0:
            assert time.monotonic() < deadline, f"{count} connection(s) still open on MariaDB"
            await asyncio.sleep(0.05)


async def test_sqlite_cancelled_close_at_every_await_stops_every_worker_thread(tmp_path: Any) -> None:
    """The cancelled-close loop on SQLite: every aiosqlite worker thread ends (none keeps the
    process alive), the pool is closed."""
    import threading

    before = threading.active_count()
    for turns in range(1, 12):
        pool = _pool(f"sqlite:///{tmp_path / 'x.db'}")
        await pool.open()
        lease = await pool.acquire()
        await cancel_after(turns, pool.close())
        assert pool.state == "closed", turns
        with pytest.raises(LeaseEnded):
            await lease.execute("SELECT 1")
    deadline = time.monotonic() + 3
    while threading.active_count() > before:
        assert time.monotonic() < deadline, "aiosqlite worker threads left running"
        await asyncio.sleep(0.05)


async def test_a_cancelled_warden_close_closes_every_resource(private_pg: PrivatePostgres) -> None:
    """Cancelling the lifespan's shutdown while the last-declared pool drains ends that pool at once
    and every resource after it too: nothing stays open, nothing stays connected."""
    warden = Warden()
    first = warden.pool("first", private_pg.url, min_size=2, max_size=2)
    second = warden.pool("second", private_pg.url, min_size=2, max_size=2, drain_timeout=5)
    await warden.open()
    lease = await second.acquire()  # the drain of "second" (closed first) waits for it
    assert await cancel_after(20, warden.close())
    assert (first.state, second.state) == ("closed", "closed")
    with pytest.raises(LeaseEnded):
        await lease.execute("SELECT 1")
    await _assert_no_connections(private_pg)
