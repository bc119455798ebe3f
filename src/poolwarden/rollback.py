"""Tests that leave no data behind: one connection per pool per test, inside a transaction that is
rolled back at the end, lent to every dependency of the pool; a transaction inside it is a SAVEPOINT.

The same idea as Django's ``TestCase`` and SQLAlchemy's "joining a session into an external
transaction" recipe, for the four drivers poolwarden lends (asyncpg, psycopg, aiosqlite, asyncmy).
:mod:`poolwarden.testing` turns it into the ``poolwarden_rollback`` fixture.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from poolwarden.handle import unwrap

if TYPE_CHECKING:
    from fastapi import FastAPI

    from poolwarden.warden import Override, Resource

__all__ = ["Rollback", "RollbackLease"]

C = TypeVar("C")


class _EndOfTest(Exception):
    """Thrown into the outer transaction block to make it roll back."""


class RollbackLease(Generic[C]):
    """One connection of ``resource``, held from its first use to :meth:`end`, inside a transaction
    that :meth:`end` rolls back.

    Use it directly in an async test (``async with RollbackLease(db) as conn``), or bind it to an app
    with :meth:`override` so every dependency of the pool lends it. Building blocks for other
    fixtures (an ORM session, say): :meth:`connection` and :meth:`savepoint`.

    The connection is taken in the event loop of its first use (with ``TestClient``, the app's own
    loop) and must be used from that loop only; requests of one test share it, so they must not run
    concurrently. A hand-written ``COMMIT`` on SQLite or MariaDB ends the test's transaction: use
    ``db.transaction`` (a SAVEPOINT here) instead; asyncpg's and psycopg's own ``conn.transaction()``
    nest as SAVEPOINTs by themselves.
    """

    def __init__(self, resource: Resource[C]) -> None:
        self.resource = resource
        self._conn: C | None = None
        self._stack: AsyncExitStack | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._names = itertools.count(1)

    @property
    def held(self) -> bool:
        """True between the first use and :meth:`end`."""
        return self._conn is not None

    async def connection(self) -> C:
        """The test's connection, taken from the pool and put in a transaction on first call."""
        if self._conn is not None:
            return self._conn
        async with self._lock:
            if self._conn is None:
                stack = AsyncExitStack()
                conn = await stack.enter_async_context(self.resource.acquire())
                try:
                    await stack.enter_async_context(self.resource.connector.transaction(unwrap(conn)))
                except BaseException:
                    await stack.aclose()
                    raise
                self._stack, self._conn, self._loop = stack, conn, asyncio.get_running_loop()
                self.resource._before_close.append(self.end)
        assert self._conn is not None
        return self._conn

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[C]:
        """The test's connection inside a SAVEPOINT: released on success, rolled back to on any error."""
        conn = await self.connection()
        name = f"poolwarden_{next(self._names)}"
        await execute(conn, f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            await execute(conn, f"ROLLBACK TO SAVEPOINT {name}")
            await execute(conn, f"RELEASE SAVEPOINT {name}")
            raise
        await execute(conn, f"RELEASE SAVEPOINT {name}")

    async def end(self) -> None:
        """Roll the test's transaction back and give the connection back to the pool; idempotent."""
        stack, self._stack, self._conn = self._stack, None, None
        if self.end in self.resource._before_close:
            self.resource._before_close.remove(self.end)
        if stack is not None:
            await stack.__aexit__(_EndOfTest, _EndOfTest(), None)

    def end_from_outside(self, timeout: float = 30.0) -> None:
        """:meth:`end` from synchronous code (a fixture's teardown), in the loop the connection lives in."""
        loop = self._loop
        if self._stack is None or loop is None or loop.is_closed():
            # never used, already ended, or its loop is gone (and the server saw the socket close,
            # which rolls the transaction back by itself)
            self._stack = self._conn = None
            return
        if loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                raise RuntimeError("await lease.end() in the test instead: its loop is this one")
            asyncio.run_coroutine_threadsafe(self.end(), loop).result(timeout)
        else:
            loop.run_until_complete(self.end())

    def override(self, app: FastAPI) -> Override:
        """Make every dependency of the pool lend this connection in ``app``; transactions become
        SAVEPOINTs. Undo the returned :class:`~poolwarden.Override` to restore the real ones."""
        return self.resource.override(app, self._provide, transaction=self._provide_savepoint)

    async def _provide(self) -> AsyncIterator[C]:
        yield await self.connection()

    async def _provide_savepoint(self) -> AsyncIterator[C]:
        async with self.savepoint() as conn:
            yield conn

    async def __aenter__(self) -> C:
        return await self.connection()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.end()


class Rollback:
    """The rollback leases of one app's pools for one test (what ``poolwarden_rollback(app)`` returns)."""

    def __init__(self, leases: dict[str, RollbackLease[Any]], overrides: list[Override]) -> None:
        self.leases = leases
        self._overrides = overrides

    def __getitem__(self, name: str) -> RollbackLease[Any]:
        return self.leases[name]

    def close(self) -> None:
        """End every lease still held (rolling back) and restore the app's dependencies."""
        try:
            for lease in self.leases.values():
                lease.end_from_outside()
        finally:
            for override in self._overrides:
                override.undo()


async def execute(conn: Any, sql: str) -> None:
    """Run one statement without results on any of the four drivers' connections (or a handle)."""
    raw = unwrap(conn)
    fetchall: Callable[[str], Awaitable[Any]] | None = getattr(raw, "execute_fetchall", None)
    if fetchall is not None:  # aiosqlite: execute() returns a cursor that must be closed
        await fetchall(sql)
    elif type(raw).__module__.startswith("asyncmy"):
        async with raw.cursor() as cur:
            await cur.execute(sql)
    else:  # asyncpg, psycopg and the fake connection
        await raw.execute(sql)
