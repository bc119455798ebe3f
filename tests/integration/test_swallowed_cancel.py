"""A cancellation swallowed inside a lease must not leave its statement's effect to the next lease
(issue 9.6).

A lease runs ``with anyio.move_on_after(0): await conn.execute("BEGIN")`` and carries on, so the
lease ends normally, but BEGIN reached the server (asyncpg: its ReadyForQuery not read yet, so the
client still says "no transaction"; SQLite: the BEGIN still queued on the worker thread). Released as
clean, the next borrower's autocommit INSERT would run inside that transaction and be rolled back at
its own release. The release must see the statement still settling and reset the connection.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from poolwarden import Warden, unwrap


async def _count(db: Any, sql: str) -> int:
    async with db.acquire() as conn:
        raw = unwrap(conn)
        if hasattr(raw, "fetchval"):
            return int(await raw.fetchval(sql))
        rows = list(await raw.execute_fetchall(sql))
        return int(rows[0][0])


@pytest.mark.postgres
async def test_asyncpg_begin_cancelled_but_swallowed_does_not_swallow_the_next_insert(
    postgres_url: str,
) -> None:
    """asyncpg: the next borrower's INSERT is committed, each of 20 times."""
    table = f"swallowed_{uuid.uuid4().hex[:8]}"
    db = Warden().pool("db", postgres_url, min_size=1, max_size=1)
    async with db:
        async with db.acquire() as conn:
            await conn.execute(f"CREATE TABLE {table} (id int)")
        try:
            for i in range(20):
                async with db.acquire() as conn:
                    with anyio.move_on_after(0):
                        await conn.execute("BEGIN")
                async with db.acquire() as conn:
                    await conn.execute(f"INSERT INTO {table} VALUES ({i})")
            assert await _count(db, f"SELECT count(*) FROM {table}") == 20
        finally:
            async with db.acquire() as conn:
                await conn.execute(f"DROP TABLE {table}")


async def test_sqlite_begin_cancelled_but_swallowed_does_not_swallow_the_next_insert(tmp_path: Path) -> None:
    """SQLite (aiosqlite): the next borrower's INSERT is committed, each of 20 times."""
    db = Warden().pool("db", f"sqlite:///{tmp_path / 'x.db'}", min_size=1, max_size=1)
    async with db:
        async with db.acquire() as conn:
            await conn.execute("CREATE TABLE t (id int)")
            await conn.commit()
        for i in range(20):
            async with db.acquire() as conn:
                with anyio.move_on_after(0):
                    await conn.execute("BEGIN")
            async with db.acquire() as conn:
                await conn.execute(f"INSERT INTO t VALUES ({i})")  # autocommit: the pool's default
        assert await _count(db, "SELECT count(*) FROM t") == 20
