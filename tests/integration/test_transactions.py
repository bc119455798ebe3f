"""Transactions never lie: a transaction dependency answers 2xx only for work the database kept.

Through FastAPI against the real servers: a COMMIT that fails at commit time (a deferred constraint),
a query error the endpoint swallows, a client that hangs up before the COMMIT (real uvicorn socket), a
COMMIT or ROLLBACK black-holed by the TCP fault proxy (bounded by ``reset_timeout``, shutdown still
within ``drain_timeout``), and a connection the server drops mid-request (503 ``backend-lost``).
Rows are counted on the server afterwards. No ``from __future__ import annotations``: FastAPI must
see the routes' annotations as objects.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from poolwarden import ConfigError, Warden
from tests.integration.test_fastapi import (
    Lifespan,
    assert_all_returned,
    assert_problem,
    cancel_on_disconnect,
    make_app,
    running,
    serving,
    started,
    wait_until,
)
from tests.support.faultproxy import FaultProxy, fault_proxy


@dataclass
class Db:
    """One driver: its URL, a table of the test's own, and how to run SQL through a handle."""

    driver: str
    url: str
    table: str

    async def execute(self, conn: Any, sql: str) -> None:
        if self.driver == "mysql":
            async with conn.cursor() as cur:
                await cur.execute(sql)
        else:
            await conn.execute(sql)

    async def scalar(self, conn: Any, sql: str) -> Any:
        if self.driver == "asyncpg":
            return await conn.fetchval(sql)
        if self.driver == "sqlite":
            return (await conn.execute_fetchall(sql))[0][0]
        if self.driver == "mysql":
            async with conn.cursor() as cur:
                await cur.execute(sql)
                return (await cur.fetchone())[0]
        return (await (await conn.execute(sql)).fetchone())[0]

    async def insert(self, conn: Any, row: int) -> None:
        await self.execute(conn, f"INSERT INTO {self.table} (id) VALUES ({row})")

    async def count(self, url: str | None = None) -> int:
        """Rows in the table, counted on a fresh connection of a pool of its own."""
        pool = Warden().pool("count", url or self.url, min_size=1, max_size=1)
        async with pool, pool.acquire() as conn:
            return int(await self.scalar(conn, f"SELECT count(*) FROM {self.table}"))

    async def run(self, *sql: str) -> None:
        pool = Warden().pool("setup", self.url, min_size=1, max_size=1)
        async with pool, pool.acquire() as conn:
            for statement in sql:
                await self.execute(conn, statement)


_URLS = {"asyncpg": "postgres_url", "psycopg": "postgres_url", "sqlite": "sqlite_url", "mysql": "mysql_url"}


@pytest.fixture
async def db(request: pytest.FixtureRequest) -> AsyncIterator[Db]:
    driver = request.param
    url = request.getfixturevalue(_URLS[driver])
    if driver == "psycopg":
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    table = f"lg_tx_{uuid.uuid4().hex[:10]}"
    target = Db(driver, url, table)
    engine = " ENGINE=InnoDB" if driver == "mysql" else ""
    await target.run(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY){engine}")
    yield target
    await target.run(f"DROP TABLE IF EXISTS {table}")


def drivers(*names: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("db", names, indirect=True)


# -- the COMMIT's answer is read ---------------------------------------------------------------------


@drivers("asyncpg", "psycopg")
async def test_commit_failing_at_commit_time_is_an_error_not_a_2xx(db: Db) -> None:
    """A deferred constraint that fails at COMMIT reaches the client as a 500, and no row is kept."""
    parent = f"{db.table}_parent"
    await db.run(f"CREATE TABLE {parent} (id int PRIMARY KEY)",
                 f"ALTER TABLE {db.table} ADD COLUMN parent int REFERENCES {parent} (id) "
                 "DEFERRABLE INITIALLY DEFERRED")
    app, _, pool = make_app(db.url, max_size=2)

    @app.post("/orphan")
    async def orphan(conn: Any = pool.transaction) -> dict[str, bool]:
        await db.execute(conn, f"INSERT INTO {db.table} (id, parent) VALUES (1, 999)")  # checked at COMMIT
        return {"ok": True}

    try:
        async with running(app) as client:
            response = await client.post("/orphan")
            assert response.status_code == 500
            assert_all_returned(pool)
        assert await db.count() == 0
    finally:
        await db.run(f"DROP TABLE {db.table}", f"DROP TABLE {parent}",
                     f"CREATE TABLE {db.table} (id INTEGER PRIMARY KEY)")


@drivers("asyncpg", "psycopg")
async def test_swallowed_query_error_fails_the_request_instead_of_a_silent_rollback(db: Db) -> None:
    """An endpoint that catches a query error inside db.transaction gets a 500 (TransactionFailed),
    not a 200 for an INSERT that PostgreSQL's COMMIT silently turned into a ROLLBACK."""
    app, _, pool = make_app(db.url, max_size=2)

    @app.post("/swallow")
    async def swallow(conn: Any = pool.transaction) -> dict[str, bool]:
        await db.insert(conn, 1)
        try:
            await db.insert(conn, 1)  # duplicate key: the transaction is now failed
        except Exception:
            pass
        return {"ok": True}

    async with running(app) as client:
        response = await client.post("/swallow")
        assert response.status_code == 500
        assert_all_returned(pool)
        assert pool.stats().discarded == {} or sum(pool.stats().discarded.values()) == 0
    assert await db.count() == 0


@drivers("sqlite", "mysql")
async def test_swallowed_statement_error_keeps_the_transaction_where_the_server_does(db: Db) -> None:
    """On SQLite and MySQL a failed statement does not end the transaction: the earlier INSERT is
    committed and the 200 is the truth."""
    app, _, pool = make_app(db.url, max_size=2)

    @app.post("/swallow")
    async def swallow(conn: Any = pool.transaction) -> dict[str, bool]:
        await db.insert(conn, 1)
        try:
            await db.insert(conn, 1)
        except Exception:
            pass
        return {"ok": True}

    async with running(app) as client:
        assert (await client.post("/swallow")).status_code == 200
    assert await db.count() == 1


@drivers("mysql")
async def test_transaction_ended_under_the_block_is_an_error(db: Db) -> None:
    """A MySQL transaction ended before the COMMIT (here an implicit commit by DDL, as a deadlock's
    rollback also does) answers 500 (TransactionFailed): later statements ran in autocommit."""
    app, _, pool = make_app(db.url, max_size=2)
    scratch = f"{db.table}_ddl"

    @app.post("/ddl")
    async def ddl(conn: Any = pool.transaction) -> dict[str, bool]:
        await db.insert(conn, 1)
        await db.execute(conn, f"CREATE TABLE {scratch} (id int)")  # commits the transaction
        await db.insert(conn, 2)  # autocommit now
        return {"ok": True}

    try:
        async with running(app) as client:
            assert (await client.post("/ddl")).status_code == 500
            assert_all_returned(pool)
    finally:
        await db.run(f"DROP TABLE IF EXISTS {scratch}")


def test_transaction_with_release_after_the_response_is_refused_at_declaration(sqlite_url: str) -> None:
    """transaction=True with release="response" would commit after the response: ConfigError, saying why."""
    pool = Warden().pool("db", sqlite_url)
    with pytest.raises(ConfigError, match=r"COMMIT must run before the response starts"):
        pool.depends(release="response", transaction=True)


# -- a client that leaves before the COMMIT ----------------------------------------------------------


@pytest.mark.parametrize("server", ["endpoint-runs-on", "request-cancelled"])
@drivers("asyncpg", "psycopg", "sqlite", "mysql")
async def test_client_that_leaves_before_the_commit_rolls_back(db: Db, server: str) -> None:
    """A client hanging up (real socket) while its transaction endpoint runs gets a rollback: no row,
    whether the server lets the endpoint run on (uvicorn) or cancels the request."""
    app, _, pool = make_app(db.url, max_size=2)
    inside, hung_up = asyncio.Event(), asyncio.Event()

    @app.post("/slow")
    async def slow(conn: Any = pool.transaction) -> dict[str, bool]:
        await db.insert(conn, 1)
        inside.set()
        await hung_up.wait()
        await db.insert(conn, 2)
        return {"ok": True}

    @app.post("/fast")
    async def fast(conn: Any = pool.transaction) -> dict[str, bool]:
        await db.insert(conn, 3)
        return {"ok": True}

    async with serving(cancel_on_disconnect(app) if server == "request-cancelled" else app) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(inside.wait(), 5)
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.1)  # the server notices the hang-up
        hung_up.set()
        await wait_until(lambda: pool.stats().in_use == 0)
        assert_all_returned(pool)
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        writer2.write(b"POST /fast HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        assert (await reader2.readline()).startswith(b"HTTP/1.1 200")  # a client that stays is served
        writer2.close()
    assert await db.count() == 1  # only /fast's row


# -- bounded COMMIT and ROLLBACK ----------------------------------------------------------------------


@pytest.fixture
async def proxy(db: Db) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of ``db``'s server (``proxy.url_for(db.url)``)."""
    parts = urlsplit(db.url)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 0) as started_proxy:
        yield started_proxy


@pytest.mark.slow
@pytest.mark.parametrize("step", ["COMMIT", "ROLLBACK"])
@drivers("asyncpg", "psycopg", "mysql")
async def test_black_holed_commit_or_rollback_fails_within_reset_timeout(
        db: Db, step: str, proxy: FaultProxy) -> None:
    """A COMMIT (or ROLLBACK) the network swallows ends the request after reset_timeout with a 503
    backend-lost, the connection terminated and discarded; the server keeps no row."""
    url = proxy.url_for(db.url)
    app, _, pool = make_app(url, max_size=2, reset_timeout=1, check_after_idle=None)

    @app.post("/write")
    async def write(fail: bool = False, conn: Any = pool.transaction) -> dict[str, bool]:
        await db.insert(conn, 1)
        proxy.blackhole()  # the COMMIT or ROLLBACK that follows goes nowhere
        if fail:
            raise RuntimeError("the endpoint failed")
        return {"ok": True}

    async with running(app) as client:
        start = time.monotonic()
        response = await asyncio.wait_for(client.post("/write", params={"fail": step == "ROLLBACK"}), 10)
        took = time.monotonic() - start
        assert_problem(response, "backend-lost", url)
        assert 0.9 < took < 2.5, took
        assert_all_returned(pool)
        assert sum(pool.stats().discarded.values()) == 1
        await proxy.cut()
        proxy.blackhole(False)
        await wait_until(lambda: pool.stats().size >= 1)
    assert await db.count() == 0


@pytest.mark.slow
@drivers("asyncpg", "psycopg")
async def test_shutdown_with_a_black_holed_commit_ends_within_drain_timeout(
        db: Db, proxy: FaultProxy) -> None:
    """Shutdown while a COMMIT hangs (reset_timeout longer than drain_timeout) still ends within
    drain_timeout: the drain terminates the connection under it, and the request fails cleanly."""
    url = proxy.url_for(db.url)
    app, _, pool = make_app(url, max_size=2, reset_timeout=30, drain_timeout=1, check_after_idle=None)
    committing = asyncio.Event()

    @app.post("/write")
    async def write(conn: Any = pool.transaction) -> dict[str, bool]:
        await db.insert(conn, 1)
        proxy.blackhole()
        committing.set()
        return {"ok": True}

    lifespan = Lifespan(app)
    await lifespan.startup()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        pending = await started(client.post("/write"), committing)
        await asyncio.sleep(0.2)
        start = time.monotonic()
        await asyncio.wait_for(lifespan.shutdown(), 10)
        assert time.monotonic() - start < 2.5
        response = await asyncio.wait_for(pending, 5)
        assert response.status_code == 503
    await proxy.cut()
    proxy.blackhole(False)
    assert await db.count() == 0


# -- a connection the server drops mid-request ---------------------------------------------------------


_SUICIDE = {
    "asyncpg": "SELECT pg_terminate_backend(pg_backend_pid())",
    "psycopg": "SELECT pg_terminate_backend(pg_backend_pid())",
    "mysql": "KILL CONNECTION_ID()",
}


@pytest.mark.parametrize("transaction", [False, True], ids=["connection", "transaction"])
@drivers("asyncpg", "psycopg", "mysql")
async def test_disconnect_escaping_an_endpoint_is_503_backend_lost(db: Db, transaction: bool) -> None:
    """A driver disconnect error out of an endpoint becomes 503 problem+json backend-lost with
    Retry-After; the connection is discarded, the others are re-checked, and the next request is served."""
    app, _, pool = make_app(db.url, min_size=2, max_size=2)
    dep = pool.transaction if transaction else pool.connection

    @app.get("/die")
    async def die(conn: Any = dep) -> dict[str, bool]:
        await db.execute(conn, _SUICIDE[db.driver])
        return {"ok": True}

    @app.get("/ok")
    async def ok(conn: Any = dep) -> dict[str, int]:
        return {"one": int(await db.scalar(conn, "SELECT 1"))}

    async with running(app) as client:
        await wait_until(lambda: pool.stats().idle == 2)
        pings = pool.stats().pings_failed
        response = await client.get("/die")
        assert_problem(response, "backend-lost", db.url)
        assert pool.stats().discarded.get("disconnect") == 1
        assert (await client.get("/ok")).json() == {"one": 1}
        assert pool.stats().pings_failed == pings  # the survivor, re-checked, was fine
        assert_all_returned(pool)


async def test_backend_lost_problem_names_only_the_resource(postgres_url: str) -> None:
    """The backend-lost body names the resource and the error class, never the DSN."""
    app, _, pool = make_app(postgres_url)

    @app.get("/die")
    async def die(conn: Any = pool.connection) -> None:
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    async with running(app) as client:
        response = await client.get("/die")
        assert_problem(response, "backend-lost", postgres_url)
        assert "backend-lost" in response.json()["type"]


@pytest.mark.slow
@drivers("asyncpg", "psycopg", "mysql")
async def test_black_holed_rollback_at_release_is_bounded_by_reset_timeout(db: Db, proxy: FaultProxy) -> None:
    """A lease that ends inside a transaction while the network swallows everything: its release
    (the pool's rollback) returns within reset_timeout, and the connection is discarded."""
    pool = Warden().pool("db", proxy.url_for(db.url), min_size=1, max_size=1, reset_timeout=1,
                         check_after_idle=None, drain_timeout=1)
    async with pool:
        conn = await pool.acquire()
        await db.execute(conn, "BEGIN")
        await db.insert(conn, 1)
        proxy.blackhole()
        start = time.monotonic()
        await asyncio.wait_for(pool.release(conn), 10)
        assert time.monotonic() - start < 1.8
        assert pool.stats().discarded == {"reset_failed": 1}
        await proxy.cut()
        proxy.blackhole(False)
    assert await db.count() == 0


@drivers("asyncpg", "sqlite")
async def test_pool_timeout_inside_a_lease_is_not_a_lost_connection(db: Db) -> None:
    """A PoolTimeout (a TimeoutError) from another pool inside an endpoint stays a 503 pool-timeout,
    and the endpoint's own healthy connection is returned, not discarded."""
    app, warden, pool = make_app(db.url, max_size=1)
    other = warden.pool("other", db.url, max_size=1, acquire_timeout=0.2)

    @app.get("/nested")
    async def nested(conn: Any = pool.connection) -> None:
        await db.scalar(conn, "SELECT 1")
        async with other.acquire(), other.acquire():  # the second waits for the first: times out
            pass

    async with running(app) as client:
        response = await client.get("/nested")
        assert response.status_code == 503
        assert response.json()["type"] == "urn:poolwarden:problem:pool-timeout"
        assert pool.stats().discarded == {}
        assert_all_returned(pool)


@drivers("asyncpg", "psycopg")
async def test_nested_transaction_in_a_transaction_dependency_is_a_savepoint(db: Db) -> None:
    """conn.transaction() inside db.transaction is a SAVEPOINT: an error caught around it undoes only
    its own rows, and the outer transaction still commits (no TransactionFailed)."""
    app, _, pool = make_app(db.url, max_size=1)

    @app.post("/nested")
    async def nested(conn: Any = pool.transaction) -> dict[str, bool]:
        await db.insert(conn, 1)
        try:
            async with conn.transaction():
                await db.insert(conn, 2)
                await db.insert(conn, 1)  # duplicate key: fails the savepoint only
        except Exception:
            pass
        await db.insert(conn, 3)
        return {"ok": True}

    async with running(app) as client:
        assert (await client.post("/nested")).status_code == 200
        assert_all_returned(pool)
    assert await db.count() == 2  # rows 1 and 3
