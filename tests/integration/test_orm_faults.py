"""Faults under SQLAlchemy on poolwarden's pool, against the real PostgreSQL: a cancellation storm
through AsyncSession and pg_terminate_backend under ORM load."""

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from poolwarden import Warden
from poolwarden.orm import AsyncSQLAlchemy

pytestmark = pytest.mark.postgres


def _orm(postgres_url: str, app: str, **settings: Any) -> AsyncSQLAlchemy:
    url = postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    settings["options"] = {"server_settings": {"application_name": app}}
    # first come, first served: these tests are about dead and cancelled connections, not shedding
    settings.setdefault("adaptive_queue", False)
    return Warden().sqlalchemy("db", url, **settings)


@pytest.fixture
async def pg_admin(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection (no pool) to watch and kill the pool's backends."""
    conn = await asyncpg.connect(postgres_url, timeout=5)
    try:
        yield conn
    finally:
        await conn.close(timeout=2)


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def _server(admin: asyncpg.Connection, app: str) -> tuple[int, int]:
    row = await admin.fetchrow(
        "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%') "
        "FROM pg_stat_activity WHERE application_name = $1", app)
    assert row is not None
    return int(row[0]), int(row[1])


async def _settled(orm: AsyncSQLAlchemy, admin: asyncpg.Connection, app: str) -> bool:
    stats = orm.stats()
    total, in_tx = await _server(admin, app)
    return (stats.in_use == 0 and stats.connecting == 0 and stats.idle == stats.size
            and total == stats.size and in_tx == 0)


@pytest.mark.slow
async def test_cancellation_storm_through_async_session(
        postgres_url: str, pg_admin: asyncpg.Connection) -> None:
    """Sessions and engine connections cancelled mid-query and timed out around: zero leases, server
    count == pool size, none idle in transaction, and the pool still serves."""
    app = f"pw-orm-storm-{uuid.uuid4().hex[:8]}"
    orm = _orm(postgres_url, app, min_size=10, max_size=10)
    rng = random.Random(7)

    async def request(i: int) -> None:
        if i % 3 == 0:  # the engine used directly: SQLAlchemy takes and ends the lease itself
            async with orm.engine.begin() as conn:
                await conn.execute(text("SELECT pg_sleep(:t)"), {"t": rng.uniform(0.0, 0.03)})
                await conn.execute(text("SELECT pg_sleep(:t)"), {"t": rng.uniform(0.0, 0.03)})
            return
        async with orm.session_scope(transaction=bool(i % 2)) as s:
            await s.execute(text("SELECT pg_sleep(:t)"), {"t": rng.uniform(0.0, 0.03)})
            if i % 2:
                await s.execute(text("CREATE TEMP TABLE IF NOT EXISTS storm (x int)"))
                await s.execute(text("INSERT INTO storm VALUES (1)"))
            await s.execute(text("SELECT pg_sleep(:t)"), {"t": rng.uniform(0.0, 0.03)})

    async def timed(i: int) -> None:
        try:
            async with asyncio.timeout(rng.uniform(0.0, 0.05)):
                await request(i)
        except TimeoutError:
            pass

    async with asyncio.timeout(60), orm:
        for _ in range(5):
            tasks = [asyncio.create_task(timed(i)) for i in range(100)]
            tasks += [asyncio.create_task(request(i)) for i in range(100)]
            await asyncio.sleep(0.02)
            for task in tasks[100:]:
                if rng.random() < 0.7:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await _until(lambda: _settled(orm, pg_admin, app), 10, "zero leases, server count == pool size")
        assert orm.leases() == []
        async with orm.session_scope() as s:
            assert (await s.scalar(text("SELECT 1"))) == 1


async def test_terminated_idle_backends_are_never_lent_to_a_session(
        postgres_url: str, pg_admin: asyncpg.Connection) -> None:
    """After pg_terminate_backend of every pooled backend, 500 ORM requests all succeed."""
    app = f"pw-orm-term-{uuid.uuid4().hex[:8]}"
    orm = _orm(postgres_url, app, min_size=10, max_size=10, check_after_idle=None)
    async with asyncio.timeout(30), orm:
        await _until(lambda: _settled(orm, pg_admin, app), 5, "pool filled")
        killed = await pg_admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1", app)
        assert killed == 10
        await _until(lambda: _gone(pg_admin, app), 5, "terminated backends to exit")
        await asyncio.sleep(0.05)
        failures: list[BaseException] = []

        async def worker() -> None:
            for _ in range(10):
                try:
                    async with orm.session_scope() as s:
                        assert (await s.scalar(text("SELECT 1"))) == 1
                except Exception as exc:
                    failures.append(exc)
        await asyncio.gather(*(worker() for _ in range(50)))
        assert failures == []
        assert orm.stats().discarded.get("disconnect") == 10
        await _until(lambda: _settled(orm, pg_admin, app), 5, "pool and server to agree")


async def _gone(admin: asyncpg.Connection, app: str) -> bool:
    return (await _server(admin, app))[0] == 0


@pytest.mark.slow
async def test_terminate_under_load_fails_only_requests_in_flight(
        postgres_url: str, pg_admin: asyncpg.Connection) -> None:
    """Backends killed mid-query fail only the requests using them; SQLAlchemy's invalidation
    discards them in poolwarden, and every request that starts later succeeds."""
    app = f"pw-orm-load-{uuid.uuid4().hex[:8]}"
    orm = _orm(postgres_url, app, min_size=5, max_size=5)
    results: list[tuple[float, BaseException | None]] = []
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with orm.session_scope() as s:
                    await s.execute(text("SELECT pg_sleep(0.1)"))
                results.append((started, None))
            except Exception as exc:
                results.append((started, exc))

    async with asyncio.timeout(30), orm:
        tasks = [asyncio.create_task(worker()) for _ in range(10)]
        try:
            await asyncio.sleep(0.5)
            killed = 0
            for _ in range(40):  # a loaded machine may catch every backend between two queries
                killed = await pg_admin.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ("
                    "  SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'"
                    "  AND query LIKE '%pg_sleep%' LIMIT 3) s", app)
                if killed:
                    break
                await asyncio.sleep(0.05)
            killed_by = time.monotonic()  # a request that started before this may be on a killed backend
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        failures = [(started, exc) for started, exc in results if exc is not None]
        assert killed >= 1
        # a backend whose query ended just before the kill dies idle: found at its next lend, no failure
        assert 1 <= len(failures) <= killed, failures
        assert all(started < killed_by for started, _ in failures)
        for _, exc in failures:  # SQLAlchemy saw the disconnect (and poolwarden discarded the connection)
            assert isinstance(exc, DBAPIError), repr(exc)
            assert exc.connection_invalidated, repr(exc)
        assert len([r for r in results if r[0] > killed_by]) > 20
        assert orm.stats().discarded.get("disconnect") == killed
        await _until(lambda: _settled(orm, pg_admin, app), 5, "pool size == server connections")


async def test_sessions_behind_pgbouncer_in_transaction_mode(pgbouncer_url: str) -> None:
    """pgbouncer=True: SQLAlchemy's asyncpg wrapper prepares no statement that outlives its
    transaction, so concurrent sessions through PgBouncer's transaction mode never collide."""
    url = pgbouncer_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    orm = Warden().sqlalchemy("db", url, max_size=8, pgbouncer=True, adaptive_queue=False)

    async def work(i: int) -> None:
        for _ in range(10):
            async with orm.session_scope(transaction=True) as s:
                assert (await s.scalar(text("SELECT CAST(:i AS int)"), {"i": i})) == i
                assert (await s.scalar(text("SELECT CAST(:i AS int) + 1"), {"i": i})) == i + 1

    async with asyncio.timeout(60), orm:
        await asyncio.gather(*(work(i) for i in range(20)))
        assert orm.leases() == []
