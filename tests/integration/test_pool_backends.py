"""The pool against every real backend: lend and return, rollback before reuse, session state and
reset, a burst of requests with errors and cancellations counted from the server's side, recycling.

Each test runs once per driver (asyncpg, psycopg, sqlite, mysql). Every pool is tagged so that the
server can count its connections: a PostgreSQL ``application_name``, a MariaDB user of its own, and
for SQLite (no server) the worker threads aiosqlite runs one per open connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncmy
import asyncpg
import psycopg
import pytest

from poolwarden import DSN, LeaseEnded, Pool, PoolConfig, Warden, unwrap
from poolwarden.connectors import connector_for


class Backend:
    """What differs between backends: the URL and tag, the SQL, and how the server is asked."""

    name: str
    server = True
    sleep_sql: str  # runs for about 50 ms: long enough to be cancelled half-way
    error_sql = "SELEC 1"  # a syntax error: the query's fault, not the connection's
    begin_sql = "BEGIN"
    ident_sql: str  # the server's own id for the session behind a connection
    # a session setting a borrower may change, and how to read it back
    set_sql: str
    get_sql: str
    query_error: type[BaseException]

    def __init__(self, url: str, tag: str, table: str) -> None:
        self.url = url
        self.tag = tag  # names this test's pool on the server
        self.table = table

    def pool(self, **settings: Any) -> Pool[Any]:
        return Warden().pool("db", self.url, **settings)

    async def setup(self) -> None:
        raise NotImplementedError

    async def teardown(self) -> None:
        raise NotImplementedError

    async def value(self, conn: Any, sql: str) -> Any:
        """The first column of the first row of ``sql``, run through the lent handle."""
        raise NotImplementedError

    async def execute(self, conn: Any, sql: str) -> None:
        await self.value(conn, sql)

    async def ident(self, conn: Any) -> Any:
        return await self.value(conn, self.ident_sql)

    async def outside_transaction(self, conn: Any) -> bool:
        """Whether the server (not the driver's bookkeeping) says no transaction is open."""
        raise NotImplementedError

    async def server_count(self) -> int:
        """The connections of this test's pool that the server sees."""
        raise NotImplementedError

    async def alive(self, idents: set[Any]) -> int:
        """How many of these sessions the server still has."""
        raise NotImplementedError

    async def committed_rows(self) -> int:
        """Rows in the test table as a connection outside the pool sees them."""
        raise NotImplementedError


class Asyncpg(Backend):
    name = "asyncpg"
    sleep_sql = "SELECT pg_sleep(0.05)"
    ident_sql = "SELECT pg_backend_pid()"
    set_sql = "SET statement_timeout = 54321"
    get_sql = "SELECT current_setting('statement_timeout')"
    query_error = asyncpg.PostgresError

    def __init__(self, url: str, tag: str, table: str) -> None:
        super().__init__(url, tag, table)
        self.admin_url = url

    def pool(self, **settings: Any) -> Pool[Any]:
        options = {"server_settings": {"application_name": self.tag}}
        return Warden().pool("db", self.url, options=options, **settings)

    async def setup(self) -> None:
        # a connection leaked in a transaction would block DROP TABLE forever: fail instead
        self.admin = await asyncpg.connect(self.admin_url, server_settings={"lock_timeout": "5s"})
        await self.admin.execute(f"CREATE TABLE {self.table} (id INTEGER)")

    async def teardown(self) -> None:
        try:
            await self.admin.execute(f"DROP TABLE IF EXISTS {self.table}")
        finally:
            await self.admin.close()

    async def value(self, conn: Any, sql: str) -> Any:
        return await conn.fetchval(sql)

    async def execute(self, conn: Any, sql: str) -> None:
        await conn.execute(sql)

    async def outside_transaction(self, conn: Any) -> bool:
        # No transaction id taken, and now() (the transaction's start) moves between statements.
        xid = await self.value(conn, "SELECT txid_current_if_assigned()")
        before = await self.value(conn, "SELECT now()")
        await asyncio.sleep(0.002)
        return xid is None and await self.value(conn, "SELECT now()") != before

    async def server_count(self) -> int:
        return int(await self.admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", self.tag))

    async def alive(self, idents: set[Any]) -> int:
        return int(await self.admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(idents)))

    async def committed_rows(self) -> int:
        return int(await self.admin.fetchval(f"SELECT count(*) FROM {self.table}"))


class Psycopg(Asyncpg):
    name = "psycopg"
    query_error = psycopg.Error

    def __init__(self, url: str, tag: str, table: str) -> None:
        scheme, _, rest = url.partition("://")
        super().__init__(f"{scheme}+psycopg://{rest}?application_name={tag}", tag, table)
        self.admin_url = url

    def pool(self, **settings: Any) -> Pool[Any]:
        return Backend.pool(self, **settings)

    async def value(self, conn: Any, sql: str) -> Any:
        cur = await conn.execute(sql)
        row = await cur.fetchone()
        return row[0]

    async def execute(self, conn: Any, sql: str) -> None:
        await conn.execute(sql)


def _aiosqlite_threads() -> set[threading.Thread]:
    # aiosqlite runs one worker thread per open connection, named after its target function.
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


class Sqlite(Backend):
    name = "sqlite"
    server = False
    # about 50 ms of work on aiosqlite's worker thread (SQLite has no sleep function)
    sleep_sql = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)"
                 " SELECT count(*) FROM c")
    begin_sql = "BEGIN IMMEDIATE"  # take the write lock now, so the busy timeout applies
    set_sql = "PRAGMA cache_size = -4321"
    get_sql = "PRAGMA cache_size"
    query_error = sqlite3.Error

    def __init__(self, url: str, tag: str, table: str) -> None:
        super().__init__(url, tag, table)
        self.path = url.removeprefix("sqlite:///")
        self.connector = connector_for(DSN(url), PoolConfig())

    async def setup(self) -> None:
        self.threads_before = _aiosqlite_threads()
        with sqlite3.connect(self.path) as admin:
            admin.execute(f"CREATE TABLE {self.table} (id INTEGER)")
        admin.close()

    async def teardown(self) -> None:
        pass  # the file lives in tmp_path

    async def value(self, conn: Any, sql: str) -> Any:
        async with conn.execute(sql) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def ident(self, conn: Any) -> Any:
        return unwrap(conn)  # the connection object itself: kept alive, so never confused

    async def outside_transaction(self, conn: Any) -> bool:
        return not conn.in_transaction  # sqlite3_get_autocommit(): the engine's own state

    async def server_count(self) -> int:
        return len(_aiosqlite_threads() - self.threads_before)  # not those of earlier tests

    async def alive(self, idents: set[Any]) -> int:
        return sum(not self.connector.is_closed(conn) for conn in idents)

    async def committed_rows(self) -> int:
        admin = sqlite3.connect(self.path)
        try:
            return int(admin.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])
        finally:
            admin.close()


class Mysql(Backend):
    name = "mysql"
    sleep_sql = "SELECT SLEEP(0.05)"
    ident_sql = "SELECT CONNECTION_ID()"
    set_sql = "SET @lg_v = 42"
    get_sql = "SELECT @lg_v"
    query_error = asyncmy.errors.MySQLError

    def __init__(self, url: str, tag: str, table: str) -> None:
        parts = urlsplit(url)
        self.admin_params = {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306,
                             "user": parts.username or "root", "password": parts.password or "",
                             "database": parts.path.lstrip("/") or "test", "autocommit": True}
        # the pool logs in as a user of its own, so the process list can tell its connections apart
        netloc = f"{tag}@{self.admin_params['host']}:{self.admin_params['port']}"
        super().__init__(urlunsplit((parts.scheme, netloc, parts.path, "", "")), tag, table)

    async def _admin(self, sql: str) -> Any:
        async with self.admin.cursor() as cur:
            await cur.execute(sql)
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def setup(self) -> None:
        self.admin = await asyncmy.connect(**self.admin_params)
        database = self.admin_params["database"]
        await self._admin("SET SESSION lock_wait_timeout = 5")  # as for PostgreSQL above
        await self._admin(f"CREATE USER '{self.tag}'@'%'")
        await self._admin(f"GRANT ALL ON `{database}`.* TO '{self.tag}'@'%'")
        await self._admin(f"CREATE TABLE {self.table} (id INTEGER) ENGINE=InnoDB")

    async def teardown(self) -> None:
        try:
            await self._admin(f"DROP TABLE IF EXISTS {self.table}")
            await self._admin(f"DROP USER IF EXISTS '{self.tag}'@'%'")
        finally:
            await self.admin.ensure_closed()

    async def value(self, conn: Any, sql: str) -> Any:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def outside_transaction(self, conn: Any) -> bool:
        return bool(await self.value(conn, "SELECT @@in_transaction") == 0)

    async def server_count(self) -> int:
        return int(await self._admin(
            f"SELECT count(*) FROM information_schema.processlist WHERE user = '{self.tag}'"))

    async def alive(self, idents: set[Any]) -> int:
        ids = ", ".join(str(int(i)) for i in idents) or "NULL"
        return int(await self._admin(
            f"SELECT count(*) FROM information_schema.processlist WHERE id IN ({ids})"))

    async def committed_rows(self) -> int:
        return int(await self._admin(f"SELECT count(*) FROM {self.table}"))


_KINDS: dict[str, tuple[type[Backend], str]] = {
    "asyncpg": (Asyncpg, "postgres_url"),
    "psycopg": (Psycopg, "postgres_url"),
    "sqlite": (Sqlite, "sqlite_url"),
    "mysql": (Mysql, "mysql_url"),
}


@pytest.fixture(params=list(_KINDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    kind, fixture = _KINDS[request.param]
    tag = f"lg_pb_{uuid.uuid4().hex[:10]}"
    instance = kind(request.getfixturevalue(fixture), tag, f"{tag}_t")
    await instance.setup()
    try:
        yield instance
    finally:
        await instance.teardown()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 2.0) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes (closes reach the server a little late)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def settled(backend: Backend, db: Pool[Any]) -> tuple[int, int]:
    """Wait until the server's count of the pool's connections matches the pool's own size."""

    async def check() -> bool:
        stats = db.stats()
        return stats.connecting == 0 and await backend.server_count() == stats.size

    await eventually(check)
    return await backend.server_count(), db.stats().size


# --- lend, query, return --------------------------------------------------------------------------


async def test_lend_query_return(backend: Backend) -> None:
    """A lent connection answers a query through its handle and comes back: acquired == released,
    none in use."""
    async with backend.pool(max_size=2) as db:
        for _ in range(3):
            async with db.acquire() as conn:
                assert await backend.value(conn, "SELECT 1") == 1
                assert db.stats().in_use == 1
        with pytest.raises(LeaseEnded):
            await backend.value(conn, "SELECT 1")
        stats = db.stats()
        assert stats.acquired == stats.released == 3
        assert stats.in_use == 0
        assert stats.idle == stats.size >= 1
        assert db.leases() == []


# --- transactions left behind ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["left-open", "failed-statement"])
async def test_transaction_rolled_back_before_reuse(backend: Backend, how: str) -> None:
    """A transaction a borrower left open (or broke with a failed statement) is rolled back before
    the connection is lent again."""
    async with backend.pool(max_size=1) as db:
        async with db.acquire() as conn:
            before = await backend.ident(conn)
        if how == "left-open":
            async with db.acquire() as conn:
                await backend.execute(conn, backend.begin_sql)
                await backend.execute(conn, f"INSERT INTO {backend.table} (id) VALUES (1)")
        else:
            async def broken() -> None:
                async with db.acquire() as conn:
                    await backend.execute(conn, backend.begin_sql)
                    await backend.execute(conn, f"INSERT INTO {backend.table} (id) VALUES (1)")
                    await backend.execute(conn, backend.error_sql)  # leaves the lease with the error

            with pytest.raises(backend.query_error):
                await broken()
        async with db.acquire() as conn:
            assert await backend.ident(conn) == before  # the same connection, rolled back not replaced
            assert await backend.outside_transaction(conn)
            # the same session would still see its own uncommitted row
            assert await backend.value(conn, f"SELECT count(*) FROM {backend.table}") == 0
        assert await backend.committed_rows() == 0
        stats = db.stats()
        assert stats.discarded == {}
        assert stats.in_use == 0


# --- session state and reset ----------------------------------------------------------------------


@pytest.mark.parametrize("reset", ["default", "full"])
async def test_session_setting_and_reset(backend: Backend, reset: str) -> None:
    """A session setting survives into the next lease with the default reset, and is undone by
    reset="full"."""
    async with backend.pool(max_size=1, reset=reset) as db:
        async with db.acquire() as conn:
            ident = await backend.ident(conn)
            fresh = await backend.value(conn, backend.get_sql)
            await backend.execute(conn, backend.set_sql)
            changed = await backend.value(conn, backend.get_sql)
            assert changed != fresh
        async with db.acquire() as conn:
            assert await backend.ident(conn) == ident  # the same session, so only the reset can undo it
            seen = await backend.value(conn, backend.get_sql)
        assert seen == (changed if reset == "default" else fresh)


# --- a burst: errors, transactions left open, cancellations ---------------------------------------

# cancel: mid-query (or while waiting for a connection); cancel-tx: the same inside a transaction
# with a row written; cancel-begin: while BEGIN is on its way (aiosqlite runs it anyway, later)
_MIX = {"ok": 40, "error": 15, "open-tx": 15, "cancel": 12, "cancel-tx": 10, "cancel-begin": 8}
_CANCELLED = ("cancel", "cancel-tx", "cancel-begin")


async def burst(backend: Backend, db: Pool[Any], *, requests: int, concurrency: int,
                seed: int) -> tuple[Counter[str], Counter[str]]:
    """Run ``requests`` requests of the kinds in ``_MIX`` from ``concurrency`` tasks; returns what
    was asked and how each one ended."""
    rng = random.Random(seed)
    kinds = rng.choices(list(_MIX), weights=list(_MIX.values()), k=requests)
    todo = iter(kinds)
    ended: Counter[str] = Counter()
    table = backend.table

    async def request(kind: str, beginning: asyncio.Event) -> None:
        async with db.acquire() as conn:
            if kind == "ok":
                assert await backend.value(conn, "SELECT 1") == 1
            elif kind == "error":
                await backend.execute(conn, backend.error_sql)
            else:
                if kind != "cancel":
                    beginning.set()
                    await backend.execute(conn, backend.begin_sql)
                    await backend.execute(conn, f"INSERT INTO {table} (id) VALUES (1)")
                if kind != "open-tx":
                    await backend.execute(conn, backend.sleep_sql)
                    await asyncio.sleep(30)  # never ends on its own: the cancel always lands

    async def worker() -> None:
        for kind in todo:
            beginning = asyncio.Event()
            task = asyncio.create_task(request(kind, beginning))
            if kind == "cancel-begin":
                waiter = asyncio.create_task(beginning.wait())
                await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                task.cancel()
            elif kind in _CANCELLED:
                # lands while waiting for a connection, in BEGIN/INSERT, or mid-query
                await asyncio.sleep(rng.uniform(0.0, 0.04))
                task.cancel()
            try:
                await task
            except backend.query_error:
                ended["error"] += 1
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                ended["cancelled"] += 1
            else:
                ended["ok"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Counter(kinds), ended


async def test_burst_server_counts_match(backend: Backend) -> None:
    """After 1,000 requests with errors, open transactions and cancellations, no lease is left and
    the server sees exactly the pool's connections."""
    async with backend.pool(max_size=8, min_size=1) as db:
        asked, ended = await burst(backend, db, requests=1000, concurrency=50, seed=1)
        assert ended == Counter({
            "ok": asked["ok"] + asked["open-tx"],
            "error": asked["error"],
            "cancelled": sum(asked[kind] for kind in _CANCELLED),
        })
        # a lease ended by a cancellation does not wait for its reset: it may still be running
        assert await eventually(lambda: _true(db.stats().in_use == 0))
        stats = db.stats()
        assert db.leases() == []
        assert stats.waiting == 0
        assert stats.acquired == stats.released
        assert stats.timeouts == 0
        assert 1 <= stats.size <= 8
        assert stats.size == stats.idle + stats.connecting
        server, size = await settled(backend, db)
        assert server == size, f"the server sees {server} connections, the pool counts {size}"
        assert await eventually(lambda: _zero(backend.committed_rows())), "an uncommitted row survived"
    # closed: every connection is gone from the server too
    assert await eventually(lambda: _zero(backend.server_count()))


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def test_pool_connections_work_after_burst(backend: Backend) -> None:
    """After a burst with cancellations every connection still in the pool works, lent without a check."""
    # check_after_idle=None: no ping before lending, so a connection broken by a cancel would show
    async with backend.pool(max_size=8, min_size=1, check_after_idle=None) as db:
        await burst(backend, db, requests=300, concurrency=30, seed=2)
        # a lease ended by a cancellation does not wait for its reset: it may still be running
        assert await eventually(lambda: _true(db.stats().in_use == 0))
        await eventually(lambda: _true(db.stats().connecting == 0))
        stats = db.stats()
        size, discarded = stats.size, stats.discarded
        assert stats.idle == size >= 1
        handles = [await db.acquire() for _ in range(size)]  # every pooled connection, at once
        try:
            assert len({id(unwrap(h)) for h in handles}) == size
            for handle in handles:
                assert await backend.value(handle, "SELECT 1") == 1
                assert await backend.outside_transaction(handle)
        finally:
            for handle in handles:
                await db.release(handle)
        stats = db.stats()
        assert stats.discarded == discarded  # none had to be replaced
        assert stats.size == size
        assert stats.in_use == 0


async def _true(value: bool) -> bool:
    return value


# --- recycling ------------------------------------------------------------------------------------


async def test_max_lifetime_replaces_connections(backend: Backend) -> None:
    """With a tiny max_lifetime the connections are replaced (new server sessions) while every
    request succeeds."""
    async with backend.pool(min_size=2, max_size=4, max_lifetime=0.2) as db:
        seen: list[Any] = []
        first: set[Any] = set()
        done = 0

        async def client() -> None:
            nonlocal done
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                async with db.acquire() as conn:
                    ident = await backend.ident(conn)
                    assert await backend.value(conn, "SELECT 1") == 1
                seen.append(ident)
                if len(first) < 2:
                    first.add(ident)
                done += 1
                await asyncio.sleep(0.005)

        await asyncio.gather(*(client() for _ in range(4)))
        assert done > 40
        stats = db.stats()
        assert stats.discarded.get("lifetime", 0) >= 4
        assert set(stats.discarded) <= {"lifetime"}
        assert len(set(seen)) >= 6, f"only {len(set(seen))} sessions over {done} requests"
        # the first sessions were closed on the server, not just forgotten
        assert await eventually(lambda: _zero(backend.alive(first)))
        server, size = await settled(backend, db)
        assert server == size


async def test_expire_replaces_all(backend: Backend) -> None:
    """expire() replaces every connection: idle ones at once, lent ones when they come back."""
    async with backend.pool(min_size=3, max_size=3) as db:
        handles = [await db.acquire() for _ in range(3)]
        old = {await backend.ident(h) for h in handles}
        assert len(old) == 3
        await db.release(handles.pop())  # one idle, two lent
        db.expire()
        for handle in handles:  # a lease outlives expire(): it is only replaced on return
            assert await backend.value(handle, "SELECT 1") == 1
            await db.release(handle)
        handles = [await db.acquire() for _ in range(3)]
        try:
            new = {await backend.ident(h) for h in handles}
        finally:
            for handle in handles:
                await db.release(handle)
        assert len(new) == 3
        assert not old & new
        assert db.stats().discarded == {"expired": 3}
        assert await eventually(lambda: _zero(backend.alive(old)))
        server, size = await settled(backend, db)
        assert server == size == 3


# --- a cancel inside a transaction --------------------------------------------------------------------


async def test_cancel_inside_transaction_keeps_a_healthy_connection(backend: Backend) -> None:
    """A lease cancelled mid-query inside a transaction is rolled back and kept, not thrown away,
    when the driver left the connection open (an aborted transaction refuses the ping, yet the
    server answered)."""
    async with backend.pool(max_size=1, check_after_idle=None) as db:
        started = asyncio.Event()

        async def in_transaction() -> None:
            async with db.acquire() as conn:
                await backend.execute(conn, backend.begin_sql)
                started.set()
                await backend.execute(conn, backend.sleep_sql)

        task = asyncio.create_task(in_transaction())
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with db.acquire() as conn:
            assert await backend.value(conn, "SELECT 1") == 1
        stats = db.stats()
        assert stats.in_use == 0
        assert "reset_failed" not in stats.discarded
        if backend.name in ("asyncpg", "psycopg", "sqlite"):  # asyncmy closes on a cancel by design
            assert stats.discarded == {}
