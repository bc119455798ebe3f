"""Both PostgreSQL connectors behind a real PgBouncer in transaction mode (scripts/pgbouncer: 10 server
connections at most), with ``pgbouncer=True``; and the control that shows what goes wrong without it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from poolwarden import Warden
from poolwarden.warden import Resource
from tests.integration.test_cli import run
from tests.support.pgbouncer import ADMIN_URL, PORT, ROOT, SCRIPT

pytestmark = pytest.mark.postgres

TASKS = 50
QUERIES = 2_000
MAX_SIZE = 20
SERVER_LIMIT = 10  # max_db_connections and default_pool_size in scripts/pgbouncer


class Driver:
    """How a test speaks to one driver through a lent connection."""

    def __init__(self, name: str, scheme: str, placeholder: str) -> None:
        self.name = name
        self.scheme = scheme
        self.placeholder = placeholder

    def url(self, pgbouncer_url: str) -> str:
        return self.scheme + pgbouncer_url.partition("://")[2]

    async def fetchval(self, conn: Any, sql: str, *args: Any) -> Any:
        sql = sql.replace("$1", self.placeholder)
        if self.name == "asyncpg":
            return await conn.fetchval(sql, *args)
        cur = await conn.execute(sql, args or None)
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def execute(self, conn: Any, sql: str, *args: Any) -> None:
        sql = sql.replace("$1", self.placeholder)
        if self.name == "asyncpg":
            await conn.execute(sql, *args)
        else:
            await conn.execute(sql, args or None)

    def __repr__(self) -> str:
        return self.name


ASYNCPG = Driver("asyncpg", "postgresql://", "$1")
PSYCOPG = Driver("psycopg", "postgresql+psycopg://", "%s")
DRIVERS = pytest.mark.parametrize("driver", [ASYNCPG, PSYCOPG], ids=str)


def bouncer(command: str) -> list[dict[str, Any]]:
    """Run a PgBouncer admin console command (simple query protocol only, hence ClientCursor)."""
    with psycopg.connect(ADMIN_URL, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.execute(command)
        if cur.description is None:
            return []
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def pool_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The SHOW POOLS row of database ``test``."""
    [pool] = [r for r in rows if r["database"] == "test"]
    return pool


def transactions() -> int:
    """How many transactions PgBouncer has run on database ``test`` so far (SHOW STATS is live)."""
    [row] = [r for r in bouncer("SHOW STATS") if r["database"] == "test"]
    return int(row["total_xact_count"])


def servers(pool: dict[str, Any]) -> int:
    return sum(pool[k] for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))


@pytest.fixture
def fresh_servers(pgbouncer_url: str) -> Iterator[None]:
    """Server connections free of anything earlier tests (the control) left behind, before and after."""
    bouncer("RECONNECT test")
    yield
    bouncer("RECONNECT test")


@pytest.fixture
async def table(pgbouncer_url: str) -> AsyncIterator[str]:
    """A fresh table ``(id int primary key)``, dropped afterwards."""
    name = f"lg_pgb_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pgbouncer_url, statement_cache_size=0)
    try:
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        yield name
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
    finally:
        await conn.close()


async def pool_for(url: str, **settings: Any) -> tuple[Warden, Resource[Any]]:
    warden = Warden(environ={})
    db = warden.pool("db", url, min_size=0, max_size=MAX_SIZE, acquire_timeout=15, **settings)
    await warden.open()
    return warden, db


async def load(db: Resource[Any], driver: Driver) -> tuple[list[int], list[BaseException]]:
    """QUERIES parametrised queries from TASKS concurrent tasks, one lease each; answers and errors."""
    answers: list[int] = []
    errors: list[BaseException] = []

    async def worker(first: int) -> None:
        for value in range(first, QUERIES, TASKS):
            try:
                async with db.acquire() as conn:
                    answers.append(await driver.fetchval(conn, "SELECT $1::int", value))
            except Exception as exc:
                errors.append(exc)

    async with asyncio.timeout(20):
        await asyncio.gather(*(worker(i) for i in range(TASKS)))
    return answers, errors


@DRIVERS
@pytest.mark.usefixtures("fresh_servers")
async def test_concurrent_queries_share_ten_server_connections(pgbouncer_url: str, driver: Driver) -> None:
    """2,000 parametrised queries from 50 tasks on 20 pooled connections all succeed over 10 servers."""
    warden, db = await pool_for(driver.url(pgbouncer_url), pgbouncer=True)
    try:
        answers, errors = await load(db, driver)
        assert errors == []
        assert sorted(answers) == list(range(QUERIES))
        stats = db.stats()
        pool = await asyncio.to_thread(lambda: pool_row(bouncer("SHOW POOLS")))
    finally:
        await warden.close()
    assert stats.size > SERVER_LIMIT, "the pool should hold more clients than the bouncer has servers"
    assert sum(stats.discarded.values()) == 0
    assert pool["cl_active"] >= stats.size  # poolwarden's connections, all still attached
    assert 0 < servers(pool) <= SERVER_LIMIT
    assert pool["sv_active"] == 0  # no lease left a transaction (and so a server) pinned


@DRIVERS
@pytest.mark.usefixtures("fresh_servers")
async def test_transactions_commit_and_roll_back(pgbouncer_url: str, driver: Driver, table: str) -> None:
    """Concurrent conn.transaction() blocks keep one server each, commit on success and roll back on error."""
    warden, db = await pool_for(driver.url(pgbouncer_url), pgbouncer=True)

    class Boom(Exception):
        pass

    async def one(k: int) -> None:
        async with db.acquire() as conn:
            try:
                async with conn.transaction():
                    await driver.execute(conn, f"INSERT INTO {table} VALUES ($1)", k)
                    first = await driver.fetchval(conn, "SELECT pg_backend_pid()")
                    await asyncio.sleep(0.002)  # let the other tasks take the other servers meanwhile
                    await driver.execute(conn, f"INSERT INTO {table} VALUES ($1)", -k)
                    # the whole transaction runs on one server connection
                    assert await driver.fetchval(conn, "SELECT pg_backend_pid()") == first
                    if k % 2:
                        raise Boom
            except Boom:
                pass

    try:
        async with asyncio.timeout(20):
            await asyncio.gather(*(one(k) for k in range(1, 201)))
        async with db.acquire() as conn:
            kept = await driver.fetchval(conn, f"SELECT array_agg(id ORDER BY id) FROM {table}")
        stats = db.stats()
    finally:
        await warden.close()
    evens = [k for k in range(1, 201) if k % 2 == 0]
    assert kept == sorted([*evens, *(-k for k in evens)])
    assert sum(stats.discarded.values()) == 0


@DRIVERS
@pytest.mark.usefixtures("fresh_servers")
async def test_full_reset_works_behind_pgbouncer(pgbouncer_url: str, driver: Driver, table: str) -> None:
    """With reset="full", leases that leave a transaction open or aborted are rolled back, nothing is
    discarded, no server stays pinned, and the next lease behaves as a fresh one."""
    # 600 leases at once on 20 connections: a one-off burst past the default queue bound, not what this tests
    warden, db = await pool_for(driver.url(pgbouncer_url), pgbouncer=True, reset="full", max_waiting=0)

    async def leave_open(conn: Any, k: int) -> None:
        if driver.name == "asyncpg":
            await conn.transaction().start()
        else:
            await conn.set_autocommit(False)  # the next statement opens a transaction implicitly
        await driver.execute(conn, f"INSERT INTO {table} VALUES ($1)", k)

    async def leave_aborted(conn: Any, k: int) -> None:
        await leave_open(conn, k)
        with pytest.raises((asyncpg.DivisionByZeroError, psycopg.errors.DivisionByZero)):
            await driver.fetchval(conn, "SELECT 1 / 0")

    async def one(k: int) -> None:
        async with db.acquire() as conn:
            if k % 3 == 0:
                await leave_open(conn, k)
            elif k % 3 == 1:
                await leave_aborted(conn, k)
            else:
                # a plain statement on whatever connection comes: autocommit, so it is kept
                await driver.execute(conn, f"INSERT INTO {table} VALUES ($1)", k)
                assert await driver.fetchval(conn, "SELECT $1::int", k) == k

    try:
        async with asyncio.timeout(20):
            await asyncio.gather(*(one(k) for k in range(600)))
        async with db.acquire() as conn:
            kept = await driver.fetchval(conn, f"SELECT array_agg(id ORDER BY id) FROM {table}")
        stats = db.stats()
        pool = await asyncio.to_thread(lambda: pool_row(bouncer("SHOW POOLS")))
        # the session belongs to the bouncer: with no transaction open the reset sends nothing
        before = await asyncio.to_thread(transactions)
        for k in range(100):
            async with db.acquire() as conn:
                await driver.fetchval(conn, "SELECT $1::int", k)
        sent = await asyncio.to_thread(transactions) - before
    finally:
        await warden.close()
    assert kept == [k for k in range(600) if k % 3 == 2]
    assert 100 <= sent <= 105, f"{sent} transactions for 100 one-statement leases"
    assert sum(stats.discarded.values()) == 0, stats.discarded
    assert stats.size > SERVER_LIMIT
    assert pool["sv_active"] == 0  # every transaction was rolled back: no server is held


# what each driver raises when a named prepared statement meets another server connection
PREPARED_ERRORS = {
    "asyncpg": (asyncpg.exceptions.InvalidSQLStatementNameError,  # "... does not exist"
                asyncpg.exceptions.DuplicatePreparedStatementError),  # "... already exists"
    "psycopg": (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement),
}
STATEMENT_NAMES = {"asyncpg": '"__asyncpg_stmt_', "psycopg": '"_pg3_'}


@DRIVERS
@pytest.mark.usefixtures("fresh_servers")
async def test_without_the_flag_prepared_statements_break(pgbouncer_url: str, driver: Driver) -> None:
    """The control: without pgbouncer=True the same load fails on the drivers' named prepared statements."""
    warden, db = await pool_for(driver.url(pgbouncer_url))  # asyncpg's cache, psycopg's prepare_threshold
    try:
        answers, errors = await load(db, driver)
    finally:
        await warden.close()
    assert errors, "expected named prepared statements to break in transaction mode"
    assert [e for e in errors if not isinstance(e, PREPARED_ERRORS[driver.name])] == []
    assert any(STATEMENT_NAMES[driver.name] in str(e) for e in errors)
    assert len(answers) + len(errors) == QUERIES


@pytest.mark.parametrize("flags", [(), ("--pgbouncer",)], ids=["default", "pgbouncer-flag"])
def test_poolwarden_check_through_pgbouncer(pgbouncer_url: str, flags: tuple[str, ...]) -> None:
    """``poolwarden check`` through PgBouncer exits 0 with both drivers, again and again: it leaves no
    named prepared statement on the server connections for the next check to collide with."""
    urls = (ASYNCPG.url(pgbouncer_url), PSYCOPG.url(pgbouncer_url))
    for _ in range(3):
        result = run("check", *flags, *urls, timeout=30)
        assert result.returncode == 0, result
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 2
        assert all(line.startswith("ok") and "PostgreSQL" in line and ":6432/" in line for line in lines)


@pytest.mark.skipif(bool(os.environ.get("POOLWARDEN_TEST_PGBOUNCER")), reason="not our PgBouncer")
def test_scripts_pgbouncer_is_idempotent(pgbouncer_url: str) -> None:
    """Running scripts/pgbouncer while PgBouncer is up leaves it running and says where it listens."""
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done
    assert f"127.0.0.1:{PORT}" in done.stdout
