"""Nothing made from a handle outlives its lease, on the real servers: prepared statements, cursors
and transactions end with ``LeaseEnded``; asyncpg callbacks are removed at release and receive the
handle; a session switched out of autocommit comes back in autocommit; a handle passes asyncpg's own
``isinstance`` check as asyncpg's pool proxy does.

Every pool has one connection (``max_size=1``), so the next lease is on the same server session and
a stale object that still worked would run inside that next borrower's work.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncmy
import asyncpg
import psycopg
import pytest

from poolwarden import LeaseEnded, Pool, Warden, unwrap


async def _count_pg(url: str, table: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


@pytest.fixture
async def pg_table(postgres_url: str) -> AsyncIterator[str]:
    table = f"lg_lease_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"CREATE TABLE {table} (id int)")
    try:
        yield table
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


@pytest.fixture
async def my_table(mysql_url: str) -> AsyncIterator[str]:
    table = f"lg_lease_{uuid.uuid4().hex[:10]}"
    db = Warden().pool("setup", mysql_url, min_size=1, max_size=1)
    async with db, db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(f"CREATE TABLE {table} (id int) ENGINE=InnoDB")
    try:
        yield table
    finally:
        async with db, db.acquire() as conn, conn.cursor() as cur:
            await cur.execute(f"DROP TABLE IF EXISTS {table}")


def one(url: str) -> Pool[Any]:
    return Warden().pool("db", url, min_size=1, max_size=1)


# -- asyncpg -------------------------------------------------------------------------------------------


async def test_asyncpg_prepared_statement_cursor_and_transaction_end_with_the_lease(
        postgres_url: str, pg_table: str) -> None:
    """A PreparedStatement, a Cursor and a Transaction made in lease 1 raise LeaseEnded in lease 2,
    whose own transaction is left untouched."""
    async with one(postgres_url) as db:
        async with db.acquire() as conn:
            stmt = await conn.prepare(f"INSERT INTO {pg_table} VALUES ($1)")
            assert await stmt.fetchval(1) is None  # usable during the lease
            tx = conn.transaction()
            await tx.start()
            cursor = await conn.cursor("SELECT generate_series(1, 10)")
            assert await cursor.fetch(2) == [(1,), (2,)]
            rows = [r[0] async for r in conn.cursor("SELECT generate_series(1, 3)")]
            assert rows == [1, 2, 3]
            await tx.commit()
            tx2 = conn.transaction()
            await tx2.start()
        async with db.acquire() as conn2, conn2.transaction():
            stale = (lambda: stmt.fetchval(2), lambda: cursor.fetch(1), tx2.commit, tx2.rollback)
            for use in stale:
                with pytest.raises(LeaseEnded, match=r"^db: "):
                    await use()
            with pytest.raises(LeaseEnded):
                stmt.cursor()
            await conn2.execute(f"INSERT INTO {pg_table} VALUES (3)")
        assert await _count_pg(postgres_url, pg_table) == 2  # lease 1's row and lease 2's own


async def test_asyncpg_handle_passes_isinstance_as_the_pool_proxy_does(postgres_url: str) -> None:
    """isinstance(handle, asyncpg.Connection) holds, as it does for asyncpg's own pool proxy."""
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as proxy:
            assert isinstance(proxy, asyncpg.Connection)
    finally:
        await pool.close()
    async with one(postgres_url) as db, db.acquire() as conn:
        assert isinstance(conn, asyncpg.Connection)
        assert await conn.fetchval("SELECT 1") == 1


async def test_asyncpg_listeners_end_with_the_lease_and_receive_the_handle(postgres_url: str) -> None:
    """A notification or log listener added in lease 1 gets the handle, and hears nothing of lease 2:
    the pool removes the callbacks and the LISTEN at release, as asyncpg's pool does."""
    channel = f"lg_{uuid.uuid4().hex[:8]}"
    heard: list[tuple[Any, str]] = []
    logs: list[Any] = []

    def on_notify(conn: Any, pid: int, chan: str, payload: str) -> None:
        heard.append((conn, payload))

    async def on_log(conn: Any, message: Any) -> None:
        logs.append(conn)

    async with one(postgres_url) as db:
        async with db.acquire() as conn:
            await conn.add_listener(channel, on_notify)
            conn.add_log_listener(on_log)
            await conn.execute(f"NOTIFY {channel}, 'one'")
            await conn.execute("DO $$ BEGIN RAISE NOTICE 'one'; END $$")
            for _ in range(100):
                if heard and logs:
                    break
                await asyncio.sleep(0.01)
            assert heard == [(conn, "one")]  # the handle, never the driver's connection
            assert logs == [conn]
            first = unwrap(conn)
        async with db.acquire() as conn2:
            assert unwrap(conn2) is first  # the same session
            assert await conn2.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
            await conn2.execute(f"LISTEN {channel}")
            await conn2.execute(f"NOTIFY {channel}, 'two'")
            await conn2.execute("DO $$ BEGIN RAISE NOTICE 'two'; END $$")
            await asyncio.sleep(0.1)
            await conn2.execute(f"UNLISTEN {channel}")
        assert heard == [(conn, "one")]
        assert len(logs) == 1


async def test_asyncpg_dropped_handle_with_a_listener_still_gives_its_slot_back(postgres_url: str) -> None:
    """A handle dropped without release while a listener holds a callback to it is still collected:
    its slot comes back and the next acquire gets the connection, listener removed."""
    channel = f"lg_{uuid.uuid4().hex[:8]}"
    async with Warden().pool("db", postgres_url, min_size=1, max_size=1, acquire_timeout=2) as db:
        conn = await db.acquire()
        await conn.add_listener(channel, lambda *args: None)
        del conn
        gc.collect()
        for _ in range(100):
            if db.stats().in_use == 0:
                break
            await asyncio.sleep(0.01)
        async with db.acquire() as again:
            assert await again.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0


async def test_asyncpg_listener_removed_through_the_handle(postgres_url: str) -> None:
    """remove_listener with the callback given to add_listener finds it (the wrapper compares equal)."""
    channel = f"lg_{uuid.uuid4().hex[:8]}"

    def on_notify(conn: Any, pid: int, chan: str, payload: str) -> None:
        pass

    async with one(postgres_url) as db, db.acquire() as conn:
        await conn.add_listener(channel, on_notify)
        await conn.remove_listener(channel, on_notify)
        assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0


# -- psycopg -------------------------------------------------------------------------------------------


async def test_psycopg_cursors_end_with_the_lease(postgres_url: str, pg_table: str) -> None:
    """conn.cursor() and the cursor conn.execute() returns raise LeaseEnded after release; the next
    borrower's transaction gets none of their statements."""
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    async with one(url) as db:
        async with db.acquire() as conn:
            cur = conn.cursor()
            assert cur.connection is conn  # the handle, not the driver's connection
            await cur.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
            executed = await conn.execute("SELECT 2")
            assert await executed.fetchone() == (2,)
            async with conn.cursor() as managed:
                assert (await (await managed.execute("SELECT 3")).fetchone()) == (3,)
                rows = [row async for row in await managed.execute("SELECT generate_series(1, 2)")]
                assert rows == [(1,), (2,)]
        async with db.acquire() as conn2, conn2.transaction():
            for stale in (cur, executed):
                with pytest.raises(LeaseEnded, match=r"^db: "):
                    await stale.execute(f"INSERT INTO {pg_table} VALUES (1)")
            await conn2.execute(f"INSERT INTO {pg_table} VALUES (2)")
        assert await _count_pg(postgres_url, pg_table) == 1


async def test_psycopg_notify_and_notice_handlers_end_with_the_lease(postgres_url: str) -> None:
    """Handlers added in lease 1 hear nothing of lease 2, whose session listens on no channel."""
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    channel = f"lg_{uuid.uuid4().hex[:8]}"
    heard: list[str] = []
    async with one(url) as db:
        async with db.acquire() as conn:
            conn.add_notify_handler(lambda n: heard.append(n.payload))
            conn.add_notice_handler(lambda d: heard.append(str(d.message_primary)))
            await conn.execute(f"LISTEN {channel}")
            await conn.execute(f"NOTIFY {channel}, 'one'")
            await conn.execute("DO $$ BEGIN RAISE NOTICE 'one'; END $$")
            assert heard == ["one", "one"]
        async with db.acquire() as conn2:
            listening = await conn2.execute("SELECT count(*) FROM pg_listening_channels()")
            assert await listening.fetchone() == (0,)
            await conn2.execute(f"LISTEN {channel}")
            await conn2.execute(f"NOTIFY {channel}, 'two'")
            await conn2.execute("DO $$ BEGIN RAISE NOTICE 'two'; END $$")
            await conn2.execute(f"UNLISTEN {channel}")
        assert heard == ["one", "one"]


async def test_psycopg_autocommit_switch_is_restored_by_the_default_reset(
        postgres_url: str, pg_table: str) -> None:
    """A lease that turns autocommit off hands the next borrower an autocommit session, whose write
    is kept (it used to be rolled back at that borrower's release)."""
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    async with one(url) as db:
        async with db.acquire() as conn:
            await conn.set_autocommit(False)
            await conn.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE)
            await conn.execute("SELECT 1")
        async with db.acquire() as conn:
            assert conn.autocommit is True
            assert conn.isolation_level is None
            await conn.execute(f"INSERT INTO {pg_table} VALUES (1)")
        async with db.acquire():
            pass
        assert await _count_pg(postgres_url, pg_table) == 1


# -- aiosqlite -----------------------------------------------------------------------------------------


async def test_aiosqlite_cursors_end_with_the_lease(sqlite_url: str) -> None:
    """A cursor from conn.cursor() or conn.execute() raises LeaseEnded after release and writes
    nothing into the next borrower's transaction."""
    async with one(sqlite_url) as db:
        async with db.acquire() as conn:
            await conn.execute("CREATE TABLE t (id INTEGER)")
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
            made = await conn.cursor()
            await made.execute("SELECT 2")
            assert await made.fetchall() == [(2,)]
            async with conn.execute("SELECT 3") as managed:
                assert await managed.fetchone() == (3,)
        async with db.acquire() as conn2:
            await conn2.execute("BEGIN")
            for stale in (cur, made):
                with pytest.raises(LeaseEnded, match=r"^db: "):
                    await stale.execute("INSERT INTO t VALUES (1)")
            await conn2.execute("INSERT INTO t VALUES (2)")
            await conn2.execute("ROLLBACK")
            assert await conn2.execute_fetchall("SELECT count(*) FROM t") == [(0,)]


# -- asyncmy (MariaDB) ---------------------------------------------------------------------------------


async def test_asyncmy_cursors_end_with_the_lease(mysql_url: str, my_table: str) -> None:
    """An asyncmy cursor made in lease 1 raises LeaseEnded in lease 2."""
    async with one(mysql_url) as db:
        async with db.acquire() as conn:
            cur = conn.cursor()
            await cur.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
            async with conn.cursor() as managed:
                await managed.execute("SELECT 2")
                assert await managed.fetchone() == (2,)
        async with db.acquire() as conn2:
            await conn2.begin()
            with pytest.raises(LeaseEnded, match=r"^db: "):
                await cur.execute(f"INSERT INTO {my_table} VALUES (1)")
            async with conn2.cursor() as own:
                await own.execute(f"INSERT INTO {my_table} VALUES (2)")
            await conn2.rollback()
        async with db.acquire() as conn3, conn3.cursor() as check:
            await check.execute(f"SELECT count(*) FROM {my_table}")
            assert await check.fetchone() == (0,)


async def test_asyncmy_autocommit_switch_is_restored_by_the_default_reset(
        mysql_url: str, my_table: str) -> None:
    """A lease that turns autocommit off hands the next borrower an autocommit session."""
    async with one(mysql_url) as db:
        async with db.acquire() as conn:
            await conn.autocommit(False)
            assert conn.get_autocommit() is False
        async with db.acquire() as conn:
            assert conn.get_autocommit() is True
            async with conn.cursor() as cur:
                await cur.execute(f"INSERT INTO {my_table} VALUES (1)")
        other = await asyncmy.connect(**_mysql_params(mysql_url))
        try:
            async with other.cursor() as cur:
                await cur.execute(f"SELECT count(*) FROM {my_table}")
                assert await cur.fetchone() == (1,)
        finally:
            other.close()


def _mysql_params(url: str) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return {"host": parts.hostname, "port": parts.port or 3306, "user": parts.username or "root",
            "password": parts.password or "", "database": parts.path.lstrip("/")}
