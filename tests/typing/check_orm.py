"""Typing checks for the ORM side, run by mypy --strict and pyright (not by pytest): the engine's type
follows ``sync``, the session dependencies fit ``Annotated``, session_scope gives the session type."""

from __future__ import annotations

from typing import Annotated, assert_type

from fastapi import FastAPI, params
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from poolwarden import Warden
from poolwarden.orm import AsyncSQLAlchemy, SyncSQLAlchemy

warden = Warden()
orm = warden.sqlalchemy("db", "postgresql+asyncpg://app@db/app", max_size=10)
legacy = warden.sqlalchemy("legacy", "postgresql+psycopg://app@db/app", sync=True, max_size=5)
assert_type(orm, AsyncSQLAlchemy)
assert_type(legacy, SyncSQLAlchemy)
assert_type(orm.engine, AsyncEngine)
assert_type(legacy.engine, Engine)
assert_type(orm.session, params.Depends)
assert_type(orm.transaction, params.Depends)

DB = Annotated[AsyncSession, orm.session]
Tx = Annotated[AsyncSession, orm.transaction]
Legacy = Annotated[Session, legacy.session]

app = FastAPI(lifespan=warden.lifespan)


@app.get("/a")
async def read(session: DB, tx: Tx) -> int:
    assert_type(session, AsyncSession)
    return int(await session.scalar(text("SELECT 1")) or 0)


@app.get("/s")
def read_sync(session: Legacy) -> int:
    assert_type(session, Session)
    return int(session.scalar(text("SELECT 1")) or 0)


async def outside() -> None:
    async with orm.session_scope(transaction=True) as session:
        assert_type(session, AsyncSession)
    async with legacy.session_scope() as sync_session:
        assert_type(sync_session, Session)
