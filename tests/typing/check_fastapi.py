"""Typing checks for the FastAPI side, run by mypy --strict and pyright (not by pytest): typed pools,
dependencies usable in ``Annotated``, aliases for an app factory, the override API."""

from __future__ import annotations

from typing import Annotated, Any, assert_type

import aiosqlite
import asyncpg
import psycopg
from fastapi import APIRouter, Depends, FastAPI, params
from psycopg.rows import TupleRow

from poolwarden import Client, Override, Resource, Warden
from poolwarden.fastapi import connection, depends, transaction
from poolwarden.testing import FakeConnection, FakeConnector

# An app factory's routers are written before any warden exists: module-level aliases on the
# app-bound dependencies (pyright accepts no type alias inside a function, whatever its metadata).
router = APIRouter()
Conn = Annotated[aiosqlite.Connection, connection("db")]
Tx = Annotated[aiosqlite.Connection, transaction("db")]
Late = Annotated[aiosqlite.Connection, depends("db", release="response")]


@router.get("/n")
async def count(conn: Conn, tx: Tx, late: Late) -> int:
    assert_type(conn, aiosqlite.Connection)
    async with conn.execute("SELECT 1") as cursor:
        row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


def create_app(url: str) -> FastAPI:
    warden = Warden()
    db = warden.pool("db", url, connection_class=aiosqlite.Connection, max_size=4, acquire_timeout=5.0)
    assert_type(db, Resource[aiosqlite.Connection])
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, dependencies=[Depends(lambda: None)], tags=["ops"])
    app.include_router(router)

    # Inside the factory, the resource's own dependencies go inline in the signature.
    @app.get("/m")
    async def m(conn: Annotated[aiosqlite.Connection, db.connection],
                tx: Annotated[aiosqlite.Connection, db.transaction]) -> bool:
        assert_type(conn, aiosqlite.Connection)
        return conn is not tx

    return app


def pools_are_typed_by_their_connection_class() -> None:
    warden = Warden()
    # a generic connection class: say its row type once (the checkers infer its parameter differently)
    pg: Resource[psycopg.AsyncConnection[TupleRow]] = warden.pool(
        "pg", "postgresql+psycopg://app@localhost/app", connection_class=psycopg.AsyncConnection)
    assert_type(pg, Resource[psycopg.AsyncConnection[TupleRow]])
    fake = warden.pool("fake", connector=FakeConnector())
    assert_type(fake, Resource[FakeConnection])
    untyped = warden.pool("any", "sqlite:///:memory:")
    assert_type(untyped, Resource[Any])


def dependencies_are_depends_objects(db: Resource[FakeConnection], app: FastAPI) -> None:
    assert_type(db.connection, params.Depends)
    assert_type(db.transaction, params.Depends)
    assert_type(db.depends(release="response", transaction=True), params.Depends)
    assert_type(connection("db"), params.Depends)

    def fake() -> FakeConnection:
        return FakeConnection(FakeConnector(), 1)

    with db.override(app, fake) as undo:
        assert_type(undo, Override)
    db.override(app, fake, transaction=fake).undo()


class Queue:
    """A client of some service, made by a driver of the user's own."""


class QueueDriver:
    driver = "queue"

    async def open(self) -> Queue:
        return Queue()

    async def ping(self, client: Queue) -> None: ...

    async def close(self, client: Queue) -> None: ...

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, OSError)


def clients_are_typed_by_their_driver() -> None:
    warden = Warden()
    assert_type(warden.client("queue", factory=QueueDriver()), Client[Queue])
    assert_type(warden.client("cache", "redis://localhost:6379/0"), Client[Any])


def asyncpg_pools_are_typed_too() -> FastAPI:
    """The README's quick start: asyncpg's types come from asyncpg-stubs (pip install asyncpg-stubs).
    Its Connection is generic in the record type: annotate once (mypy infers Connection[Any])."""
    warden = Warden()
    db: Resource[asyncpg.Connection] = warden.pool(
        "db", "postgresql://app@localhost/app", connection_class=asyncpg.Connection)
    app = FastAPI(lifespan=warden.lifespan)

    @app.get("/n")
    async def n(conn: Annotated[asyncpg.Connection, db.connection]) -> int:
        assert_type(conn, asyncpg.Connection)
        value = await conn.fetchval("SELECT 1")
        return int(value)

    return app


async def outside_fastapi(db: Resource[asyncpg.Connection]) -> None:
    async with db, db.acquire() as conn:
        assert_type(conn, asyncpg.Connection)
