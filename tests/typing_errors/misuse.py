"""Misuses that mypy --strict and pyright must both reject: each line ending in ``# E`` is an error,
and no other line is. Run by tests/unit/test_typing.py, not by pytest or the plain mypy run."""

from __future__ import annotations

import aiosqlite
import asyncpg
import psycopg
from psycopg.rows import TupleRow

from poolwarden import Resource, Warden

warden = Warden()
lite = warden.pool("lite", "sqlite:///:memory:", connection_class=aiosqlite.Connection)
wrong: Resource[psycopg.AsyncConnection[TupleRow]] = lite  # E
lite.depends(release="later")  # E
warden.pool("misspelt", "sqlite:///:memory:", max_sise=2)  # E
warden.pool("mistyped", "sqlite:///:memory:", acquire_timeout="5s")  # E
warden.client("cache", "redis://localhost", max_size=3)  # E


async def use() -> None:
    async with lite.acquire() as conn:
        await conn.fetchval("SELECT 1")  # E


async def use_asyncpg() -> None:
    pg = warden.pool("pg", "postgresql://app@localhost/app", connection_class=asyncpg.Connection)
    async with pg.acquire() as conn:
        await conn.fetchvall("SELECT 1")  # E
