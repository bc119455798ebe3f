"""Blocking drivers on the pool (psycopg, sqlite3, PyMySQL): the pool's state on the event loop, the
driver's I/O in threads, against the real PostgreSQL, MariaDB and SQLite."""

import asyncio
import logging
import uuid
from typing import Any

import asyncpg
import pytest

from poolwarden import PoolwardenError, Warden, sync, unwrap
from poolwarden.connectors._threads import ThreadedConnector
from tests.support.servers import MYSQL_URL, POSTGRES_URL, require


@pytest.fixture(params=["psycopg", "sqlite3", "pymysql"])
def sync_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "psycopg":
        return require(POSTGRES_URL, "PostgreSQL").replace("postgresql://", "postgresql+psycopg://", 1)
    if request.param == "pymysql":
        return require(MYSQL_URL, "MariaDB/MySQL").replace("mysql://", "mysql+pymysql://", 1)
    return f"sqlite:///{tmp_path}/sync.db"


def _query(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall() if cur.description else None
    finally:
        cur.close()


async def test_sync_pool_lends_and_rolls_back(sync_url: str) -> None:
    """A blocking driver's connection is lent, used from a thread, and a transaction left open is
    rolled back by the pool (in a thread) before the connection is lent again."""
    warden = Warden()
    db = warden.pool("db", sync_url, connector=sync.connector(sync_url), min_size=1, max_size=2)
    assert sync.is_blocking(db)
    async with warden:
        async with db.acquire() as conn:
            assert (await asyncio.to_thread(_query, conn, "SELECT 1"))[0][0] == 1
            async with db.connector.transaction(unwrap(conn)):
                assert db.connector.in_transaction(unwrap(conn))
            await asyncio.to_thread(_query, conn, "BEGIN")
            assert db.connector.in_transaction(unwrap(conn))
        async with db.acquire() as again:
            assert not db.connector.in_transaction(unwrap(again))
        assert db.stats().size == 1


async def test_a_connect_given_up_closes_the_connection_it_opened(postgres_url: str) -> None:
    """A connect whose caller is cancelled finishes in its thread, and its connection is closed."""
    app = f"pw-sync-orphan-{uuid.uuid4().hex[:8]}"
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    connector = sync.connector(url, options={"application_name": app})
    assert isinstance(connector, ThreadedConnector)
    task = asyncio.create_task(connector.connect(5.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    admin = await asyncpg.connect(postgres_url)
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            n = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
            if n == 0:
                break
        assert n == 0
    finally:
        await admin.close()


async def test_blocking_acquire_from_a_thread_and_never_on_the_loop(tmp_path: Any) -> None:
    """acquire_blocking serves a worker thread and refuses the event loop's own thread, clearly."""
    url = f"sqlite:///{tmp_path}/b.db"
    warden = Warden()
    db = warden.pool("db", url, connector=sync.connector(url), max_size=1)
    async with warden:
        with pytest.raises(PoolwardenError, match="cannot be waited for on the event loop thread"):
            sync.acquire_blocking(db)

        def in_thread() -> int:
            conn = sync.acquire_blocking(db)
            try:
                return int(_query(conn, "SELECT 7")[0][0])
            finally:
                asyncio.run_coroutine_threadsafe(db.release(conn), loop).result()
        loop = asyncio.get_running_loop()
        assert await asyncio.to_thread(in_thread) == 7
        assert db.stats().in_use == 0


async def test_the_threadpool_warning_names_the_fix(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A sync pool (ORM or raw) smaller than the threadpool logs sync.threadpool at start-up, naming
    the fix; an async pool does not."""
    caplog.set_level(logging.WARNING, logger="poolwarden")
    warden = Warden()
    orm = warden.sqlalchemy("db", f"sqlite:///{tmp_path}/w.db", sync=True, max_size=5)
    raw_url = f"sqlite:///{tmp_path}/r.db"
    warden.pool("raw", raw_url, connector=sync.connector(raw_url), max_size=5)
    warden.pool("async", f"sqlite:///{tmp_path}/a.db", max_size=5)
    async with warden:
        pass
    messages = [r.getMessage() for r in caplog.records
                if getattr(r, "poolwarden.event", "") == "sync.threadpool"]
    assert len(messages) == 2
    assert "orm.session" in messages[0]
    assert "fastapi#3205" in messages[0]
    assert orm.stats().size == 0
