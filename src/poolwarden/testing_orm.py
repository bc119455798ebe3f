"""ORM tests that leave no data behind: a session inside a transaction rolled back at the test's end.

SQLAlchemy's "joining a Session into an external transaction" recipe on a poolwarden lease: the
session is bound to one connection whose outer transaction is never committed, with
``join_transaction_mode="create_savepoint"``, so ``session.commit()`` in the code under test (or in
``orm.transaction``) releases a SAVEPOINT and the test's end rolls everything back. With ``app``,
every session dependency of the resource gives this session, ``orm.transaction`` keeping its
commit-on-success / rollback-on-error semantics (as SAVEPOINTs).

``poolwarden_orm_session`` (a fixture, registered by :mod:`poolwarden.testing`)::

    async def test_signup(poolwarden_orm_session):
        session = await poolwarden_orm_session(orm, app)   # app is optional
        ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fastapi import FastAPI

    from poolwarden.orm.resource import SQLAlchemyResource

__all__ = ["poolwarden_orm_session", "rollback_session"]


@asynccontextmanager
async def rollback_session(orm: SQLAlchemyResource[Any], app: FastAPI | None = None) -> AsyncIterator[Any]:
    """A session of ``orm`` inside a transaction rolled back on exit (see the module docs)."""
    from poolwarden.orm.sessions import ENDED

    handle = await orm.acquire()
    try:
        with orm.bridge.reserve(handle):
            conn = await orm._orm_connect(handle)
        sync = not orm.is_async
        outer = await asyncio.to_thread(conn.begin) if sync else await conn.begin()
        session = orm._orm_session(conn, join_transaction_mode="create_savepoint")
        override = None if app is None else orm.override_sessions(
            app, _provider(session, sync, commit=False), transaction=_provider(session, sync, commit=True))
        try:
            yield session
        finally:
            if override is not None:
                override.undo()
            if sync:
                session.info[ENDED] = orm.name

                def end() -> None:
                    try:
                        session.close()
                        outer.rollback()
                    finally:
                        conn.close()
                await asyncio.to_thread(end)
            else:
                session.sync_session.info[ENDED] = orm.name
                try:
                    await session.close()
                    await outer.rollback()
                finally:
                    await conn.close()
    except BaseException as exc:
        await orm._release(handle, exc)
        raise
    await orm._release(handle, None)


def _provider(session: Any, sync: bool, *, commit: bool) -> Callable[..., Any]:
    """An override of a session dependency: what the request did not commit is rolled back (to its
    SAVEPOINT); ``commit`` (orm.transaction) commits it on success, as in production."""

    async def give() -> AsyncIterator[Any]:
        try:
            yield session
        except BaseException:
            if sync:
                await asyncio.to_thread(session.rollback)
            else:
                await session.rollback()
            raise
        end = session.commit if commit else session.rollback
        if sync:
            await asyncio.to_thread(end)
        else:
            await end()

    return give


@pytest.fixture
async def poolwarden_orm_session() -> AsyncIterator[
        Callable[..., Coroutine[Any, Any, Any]]]:
    """``await poolwarden_orm_session(orm, app=None)``: a session rolled back when the test ends."""
    async with AsyncExitStack() as stack:
        async def make(orm: SQLAlchemyResource[Any], app: FastAPI | None = None) -> Any:
            return await stack.enter_async_context(rollback_session(orm, app))

        yield make
