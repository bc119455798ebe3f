"""Real faults against real servers: killed backends (idle and mid-query), a black-holed or slow
network, a backend that comes up late, and expire() under load. No mock stands in for a database."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncmy
import asyncpg
import pytest

from poolwarden import DSN, BackendDown, PoolTimeout, Resource, Unavailable, Warden
from tests.support.faultproxy import FaultProxy

_monotonic = time.monotonic


# -- helpers -------------------------------------------------------------------------------------


def _app_name() -> str:
    """A distinct application_name, so pg_stat_activity shows this test's pool and nothing else."""
    return f"lg-res-{uuid.uuid4().hex[:12]}"


def _pg_pool(url: str, app: str | None = None, **settings: Any) -> Resource[Any]:
    if app is not None:
        settings["options"] = {"server_settings": {"application_name": app}}
    return Warden().pool("db", url, **settings)


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms; fail naming ``what`` if it is not true within ``timeout``."""
    deadline = _monotonic() + timeout
    while not await condition():
        if _monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def _server_count(admin: asyncpg.Connection, app: str) -> int:
    count: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
    return count


async def _settled(pool: Resource[Any], admin: asyncpg.Connection, app: str) -> bool:
    """The pool is at rest and the server counts exactly the pool's connections."""
    stats = pool.stats()
    return (stats.connecting == 0 and stats.in_use == 0 and stats.idle == stats.size
            and await _server_count(admin, app) == stats.size)


async def _pg_pids(pool: Resource[Any]) -> list[int]:
    """The server pid of every pooled connection: hold all of them at once and ask each."""
    async with contextlib.AsyncExitStack() as stack:
        handles = [await stack.enter_async_context(pool.acquire()) for _ in range(pool.stats().max_size)]
        return [h.get_server_pid() for h in handles]


async def _select_one_load(pool: Resource[Any], workers: int, each: int) -> list[BaseException]:
    """``workers`` concurrent loops of acquire + SELECT 1; returns every failure."""
    failures: list[BaseException] = []

    async def worker() -> None:
        for _ in range(each):
            try:
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SELECT 1") == 1
            except Exception as exc:
                failures.append(exc)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return failures


@pytest.fixture
async def pg_admin(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection (no pool, no proxy) to watch and kill the pool's backends."""
    conn = await asyncpg.connect(postgres_url, timeout=5)
    try:
        yield conn
    finally:
        await conn.close(timeout=2)


@pytest.fixture
async def mysql_admin(mysql_url: str) -> AsyncIterator[asyncmy.Connection]:
    dsn = DSN(mysql_url)
    conn = await asyncmy.connect(host=dsn.host or "127.0.0.1", port=dsn.port or 3306, user=dsn.username,
                                 password=dsn.password or "", database=dsn.database or None,
                                 autocommit=True)
    try:
        yield conn
    finally:
        await conn.ensure_closed()


# -- killed backends -----------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("check_after_idle", [1.0, None], ids=["default-idle-check", "never-ping"])
async def test_pg_terminated_idle_backends_are_never_lent(
    postgres_url: str, pg_admin: asyncpg.Connection, check_after_idle: float | None
) -> None:
    """After pg_terminate_backend of every idle pooled backend, the next 1,000 requests all succeed."""
    app = _app_name()
    db = _pg_pool(postgres_url, app, min_size=10, max_size=10, check_after_idle=check_after_idle)
    async with asyncio.timeout(20), db:
        pids = await _pg_pids(db)
        assert len(set(pids)) == 10

        killed = await pg_admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid = ANY($1::int[])", pids)
        assert killed == 10
        # Only what the client can know: the backends are gone (so their FIN is on its way to us).
        await _until(lambda: _has_none(pg_admin, pids), 5, "terminated backends to exit")
        await asyncio.sleep(0.05)

        # Well within check_after_idle of their last use: no ping is due, the pool must see it.
        failures = await _select_one_load(db, workers=50, each=20)

        assert failures == []
        stats = db.stats()
        assert stats.discarded.get("disconnect") == 10
        assert stats.pings_failed == 0  # found dead without any I/O
        await _until(lambda: _settled(db, pg_admin, app), 5, "pool and server to agree")


async def _has_none(admin: asyncpg.Connection, pids: list[int]) -> bool:
    n: int = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids)
    return n == 0


@pytest.mark.mysql
async def test_mariadb_killed_idle_connections_are_never_lent(
    mysql_url: str, mysql_admin: asyncmy.Connection
) -> None:
    """After KILL of every idle pooled MariaDB connection, the next 1,000 requests all succeed."""
    db = Warden().pool("db", mysql_url, min_size=10, max_size=10, check_after_idle=None)

    async def select_one(conn: Any) -> Any:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1")
            return (await cur.fetchone())[0]

    async def processlist(ids: list[int]) -> int:
        async with mysql_admin.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID IN "
                              f"({','.join(map(str, ids))})")
            return int((await cur.fetchone())[0])

    async with asyncio.timeout(20), db:
        async with contextlib.AsyncExitStack() as stack:
            ids = [(await stack.enter_async_context(db.acquire())).thread_id() for _ in range(10)]
        assert len(set(ids)) == 10
        async with mysql_admin.cursor() as cur:
            for ident in ids:
                await cur.execute(f"KILL CONNECTION {ident}")
        await _until(lambda: _eq(processlist(ids), 0), 5, "killed connections to leave the processlist")
        await asyncio.sleep(0.05)

        failures: list[BaseException] = []

        async def worker() -> None:
            for _ in range(20):
                try:
                    async with db.acquire() as conn:
                        assert await select_one(conn) == 1
                except Exception as exc:
                    failures.append(exc)

        await asyncio.gather(*(worker() for _ in range(50)))

        assert failures == []
        assert db.stats().discarded.get("disconnect") == 10
        assert db.stats().pings_failed == 0


async def _eq(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


@pytest.mark.postgres
async def test_pg_backends_killed_mid_query_fail_only_their_requests(
    postgres_url: str, pg_admin: asyncpg.Connection
) -> None:
    """Backends killed mid-query fail exactly their own requests with the driver's disconnect error;
    every later request succeeds and the pool's size matches the server's count."""
    app = _app_name()
    db = _pg_pool(postgres_url, app, min_size=2, max_size=10)
    results: list[tuple[float, BaseException | None]] = []
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            started = _monotonic()
            try:
                async with db.acquire() as conn:
                    await conn.fetchval("SELECT pg_sleep(0.15)")
                results.append((started, None))
            except Exception as exc:
                results.append((started, exc))

    async with asyncio.timeout(20), db:
        tasks = [asyncio.create_task(worker()) for _ in range(20)]
        try:
            await asyncio.sleep(0.5)  # the pool has grown to max_size, every backend busy
            killed_at = _monotonic()
            killed = await pg_admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ("
                "  SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'"
                "  AND query LIKE '%pg_sleep%' LIMIT 5) s", app)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

        failures = [(started, exc) for started, exc in results if exc is not None]
        assert killed == 5
        assert len(failures) == killed, failures
        for started, exc in failures:
            assert started < killed_at  # it was in flight when its backend died
            assert isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError)), repr(exc)
            assert db.connector.is_disconnect(exc), repr(exc)
        later = [r for r in results if r[0] > killed_at]
        assert len(later) > 50
        assert db.stats().discarded.get("disconnect") == 5

        assert await _select_one_load(db, workers=20, each=10) == []
        await _until(lambda: _settled(db, pg_admin, app), 5, "pool size == server connections")


@pytest.mark.postgres
async def test_pg_survivors_of_a_kill_are_pinged_once_not_at_every_lend(
    postgres_url: str, pg_admin: asyncpg.Connection
) -> None:
    """After one backend dies, each older connection is pinged once before its next lend, not forever."""
    app = _app_name()
    db = _pg_pool(postgres_url, app, min_size=5, max_size=5, check_after_idle=None,
                  keepalive_interval=None)
    async with asyncio.timeout(20), db:
        pids = await _pg_pids(db)
        pings = 0
        real_ping = db.connector.ping

        async def counting_ping(conn: Any) -> None:
            nonlocal pings
            pings += 1
            await real_ping(conn)

        db.connector.ping = counting_ping  # type: ignore[method-assign]
        await pg_admin.execute("SELECT pg_terminate_backend($1)", pids[0])
        await _until(lambda: _has_none(pg_admin, pids[:1]), 5, "the backend to exit")
        await asyncio.sleep(0.05)

        assert await _select_one_load(db, workers=5, each=100) == []

        assert db.stats().discarded.get("disconnect") == 1
        assert pings <= 4  # the four survivors at most once each: not one round trip per lend


@pytest.mark.postgres
async def test_pg_lease_cancelled_before_its_begin_leaves_no_transaction_behind(postgres_url: str) -> None:
    """A lease cancelled while its BEGIN waited behind an earlier cancelled query hands the next
    borrower a connection whose transaction() works."""
    db = _pg_pool(postgres_url, min_size=1, max_size=1)
    async with asyncio.timeout(10), db:
        async with db.acquire() as conn:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.005):  # the endpoint gives up on its own query...
                    await conn.fetchval("SELECT pg_sleep(0.5)")
        # ...and returns normally, so asyncpg is still cancelling that query on the server.

        async def transaction_endpoint() -> None:
            async with db.acquire() as conn, conn.transaction():
                await conn.fetchval("SELECT 1")

        task = asyncio.create_task(transaction_endpoint())
        for _ in range(3):
            await asyncio.sleep(0)  # the BEGIN now waits for that cancellation to finish
        task.cancel()  # the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task

        async with db.acquire() as conn:
            try:
                async with conn.transaction():
                    assert await conn.fetchval("SELECT 1") == 1
            except asyncpg.NoActiveSQLTransactionError as exc:
                pytest.fail("the connection came back with the cancelled lease's transaction still "
                            f"registered in asyncpg (Connection._top_xact), so BEGIN became: {exc}")
            assert not conn.is_in_transaction()


# -- the network: black hole, latency, refused connects ------------------------------------------


@pytest.mark.postgres
async def test_blackhole_acquire_times_out_then_recovers(postgres_url: str, pg_proxy: FaultProxy) -> None:
    """With the network black-holed, acquire (pinging) fails within acquire_timeout, and serves again
    once the network heals."""
    db = _pg_pool(pg_proxy.url_for(postgres_url), min_size=1, max_size=2, check_after_idle=0,
                  acquire_timeout=0.5, connect_timeout=0.5, backoff_max=0.2, keepalive_interval=None)
    async with asyncio.timeout(20), db:
        async with db.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        pg_proxy.blackhole()

        errors: list[BaseException] = []
        for _ in range(4):
            started = _monotonic()
            with pytest.raises(Unavailable) as info:
                async with db.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            assert _monotonic() - started < 0.5 + 0.2
            errors.append(info.value)
        assert isinstance(errors[0], PoolTimeout)  # the ping hung, and was given up on
        assert db.stats().timeouts >= 1

        pg_proxy.blackhole(False)
        healed = _monotonic()

        async def serves() -> bool:
            try:
                async with db.acquire(timeout=1) as conn:
                    return bool(await conn.fetchval("SELECT 1") == 1)
            except Unavailable:
                return False

        await _until(serves, 5, "the pool to serve after the network healed")
        assert _monotonic() - healed < 2.0
        assert await _select_one_load(db, workers=4, each=10) == []


@pytest.mark.postgres
async def test_blackhole_keepalive_pings_time_out_then_pool_recovers(
    postgres_url: str, pg_proxy: FaultProxy
) -> None:
    """Keepalive pings on a black-holed network give up after connect_timeout and discard their
    connections; once the stalled links are cut and the network heals, the pool serves again."""
    db = _pg_pool(pg_proxy.url_for(postgres_url), min_size=2, max_size=2, check_after_idle=None,
                  keepalive_interval=0.2, connect_timeout=0.3, backoff_max=0.2)
    async with asyncio.timeout(20), db:
        assert await _select_one_load(db, workers=2, each=2) == []
        pg_proxy.blackhole()
        blackholed = _monotonic()

        async def pings_failed() -> bool:
            return db.stats().pings_failed >= 2

        # each keepalive fires within 0.2 s (+ the housekeeping tick) and gives up after 0.3 s
        await _until(pings_failed, 2, "both keepalive pings to time out")
        assert _monotonic() - blackholed < 0.2 + 0.1 + 0.3 + 0.4
        assert "TimeoutError" in (db.stats().last_error or "")
        assert db.stats().discarded.get("ping_failed") == 2

        await pg_proxy.cut()  # the stalled links are reset...
        pg_proxy.blackhole(False)  # ...and the network heals
        healed = _monotonic()

        async def serves() -> bool:
            try:
                async with db.acquire(timeout=1) as conn:
                    return bool(await conn.fetchval("SELECT 1") == 1)
            except Unavailable:
                return False

        await _until(serves, 5, "the pool to serve after the network healed")
        assert _monotonic() - healed < 2.0


@pytest.mark.postgres
async def test_latency_pool_serves_and_connect_timeout_holds(postgres_url: str, pg_proxy: FaultProxy) -> None:
    """The pool serves (and connects) through 20 ms of latency; with latency above connect_timeout
    each connect gives up at connect_timeout, and the pool recovers when latency drops."""
    db = _pg_pool(pg_proxy.url_for(postgres_url), min_size=1, max_size=4, check_after_idle=None,
                  connect_timeout=0.4, backoff_max=0.2, acquire_timeout=5)
    attempts: list[tuple[float, BaseException | None]] = []
    real_connect = db.connector.connect

    async def timed_connect(timeout: float) -> Any:
        started = _monotonic()
        try:
            conn = await real_connect(timeout)
        except BaseException as exc:
            attempts.append((_monotonic() - started, exc))
            raise
        attempts.append((_monotonic() - started, None))
        return conn

    db.connector.connect = timed_connect  # type: ignore[method-assign]
    async with asyncio.timeout(20), db:
        pg_proxy.set_latency(0.02)
        started = _monotonic()
        assert await _select_one_load(db, workers=8, each=5) == []
        assert _monotonic() - started >= 0.04  # at least one round trip went through the delay
        assert db.stats().size == 4  # grown to max_size under latency

        pg_proxy.set_latency(1.0)  # one round trip now takes 2 s: no connect can finish in 0.4 s
        attempts.clear()
        db.expire()  # every idle connection goes; min_size needs a new one

        async def two_failed() -> bool:
            return sum(exc is not None for _, exc in attempts) >= 2

        await _until(two_failed, 5, "two connect attempts to time out")
        for seconds, exc in attempts:
            assert isinstance(exc, TimeoutError), repr(exc)
            assert 0.4 - 0.05 <= seconds < 0.4 + 0.15
        assert db.stats().connect_errors >= 2

        pg_proxy.set_latency(0)
        await _until(lambda: _true(db.ready and db.stats().idle >= 1), 5, "a connection after latency drops")
        assert await _select_one_load(db, workers=2, each=5) == []


async def _true(value: bool) -> bool:
    return value


async def _serves(pool: Resource[Any]) -> bool:
    async with pool.acquire(timeout=2) as conn:
        return bool(await conn.fetchval("SELECT 1") == 1)


@pytest.mark.postgres
async def test_startup_wait_blocks_until_backend_comes_up(postgres_url: str, pg_proxy: FaultProxy) -> None:
    """With startup="wait", open() keeps retrying a refusing backend and returns once it is up."""
    pg_proxy.refuse()
    db = _pg_pool(pg_proxy.url_for(postgres_url), min_size=2, startup="wait", startup_timeout=10,
                  backoff_max=0.3)
    opening = asyncio.create_task(db.open())
    try:
        await asyncio.sleep(2)
        assert not opening.done()
        assert db.stats().connect_errors >= 5
        pg_proxy.refuse(False)
        up = _monotonic()
        async with asyncio.timeout(5):
            await opening
        assert _monotonic() - up < 0.3 + 0.3  # within one probe interval
        assert db.ready
        assert await _serves(db)
    finally:
        opening.cancel()
        await db.close()


@pytest.mark.postgres
async def test_startup_lazy_returns_at_once_then_serves(postgres_url: str, pg_proxy: FaultProxy) -> None:
    """With startup="lazy", open() returns at once with the backend down, not ready, and the pool
    serves once the backend comes up."""
    pg_proxy.refuse()
    db = _pg_pool(pg_proxy.url_for(postgres_url), min_size=2, startup="lazy", backoff_max=0.3,
                  acquire_timeout=0.5)
    started = _monotonic()
    async with asyncio.timeout(20), db:
        assert _monotonic() - started < 0.1
        assert not db.ready
        with pytest.raises(Unavailable):
            await _serves(db)
        await asyncio.sleep(2)
        assert not db.ready
        with pytest.raises(BackendDown):  # the circuit has opened: refused at once
            await _serves(db)

        pg_proxy.refuse(False)
        up = _monotonic()
        await _until(lambda: _true(db.ready), 5, "the lazy pool to become ready")
        assert _monotonic() - up < 0.3 + 0.3
        assert await _serves(db)


@pytest.mark.postgres
async def test_startup_wait_times_out_with_backend_down(postgres_url: str, pg_proxy: FaultProxy) -> None:
    """With the backend down past startup_timeout, open() raises BackendDown naming the resource and
    the last cause, and the pool ends closed."""
    pg_proxy.refuse()
    db = Warden().pool("orders-db", pg_proxy.url_for(postgres_url), startup="wait",
                          startup_timeout=0.5, backoff_max=0.1)
    started = _monotonic()
    with pytest.raises(BackendDown) as info:
        await db.open()
    assert 0.5 <= _monotonic() - started < 0.5 + 0.3
    assert info.value.resource == "orders-db"
    assert "orders-db" in str(info.value)
    assert "ConnectionRefusedError" in str(info.value)
    assert db.state == "closed"


# -- lifecycle under load ------------------------------------------------------------------------


@pytest.mark.postgres
async def test_expire_under_load_replaces_every_connection(
    postgres_url: str, pg_admin: asyncpg.Connection
) -> None:
    """expire() under load replaces every connection (all server pids change) without failing a request."""
    app = _app_name()
    db = _pg_pool(postgres_url, app, min_size=5, max_size=5)
    failures: list[BaseException] = []
    seen: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            try:
                async with db.acquire() as conn:
                    pid = await conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.005)")
                seen.append((_monotonic(), pid))
            except Exception as exc:
                failures.append(exc)

    async def pids() -> set[int]:
        rows = await pg_admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", app)
        return {row["pid"] for row in rows}

    async with asyncio.timeout(20), db:
        tasks = [asyncio.create_task(worker()) for _ in range(12)]
        try:
            await asyncio.sleep(0.3)
            old = await pids()
            assert len(old) == 5
            db.expire()
            expired_at = _monotonic()

            async def all_new() -> bool:
                now = await pids()
                return len(now) == 5 and not now & old

            await _until(all_new, 5, "every connection to be replaced")
            replaced_at = _monotonic()
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

        assert failures == []
        assert db.stats().discarded.get("expired") == 5
        assert len([t for t, _ in seen if t > expired_at]) > 20
        assert not {pid for t, pid in seen if t > replaced_at} & old
