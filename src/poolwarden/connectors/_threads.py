"""What the sync-driver connectors share: their blocking I/O runs in threads, the pool stays on the loop.

The pool's state is only ever touched on the event loop; a sync driver's connect, ping, rollback,
reset and close run in worker threads (``asyncio.to_thread``, the loop's default executor, not
Starlette's threadpool, so this I/O never competes with sync endpoints for a thread). A thread
cannot be cancelled: when its caller is, the call finishes on its own, a connection it opened is
closed, and a close asked for meanwhile waits for it, because a sync driver's connection must not be
closed under a statement still running in another thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, TypeVar

from poolwarden.connectors.base import ServerInfo

__all__ = ["ThreadedConnector"]

C = TypeVar("C")
T = TypeVar("T")


class ThreadedConnector(Generic[C]):
    """The async Connector protocol over a blocking driver; subclasses write the ``_sync`` methods.

    ``blocking = True`` tells poolwarden the connections are for sync code (the threadpool warning).
    """

    driver: str
    connection_class: type[C]
    blocking = True

    def __init__(self) -> None:
        # id(conn) -> the thread call running on it; sqlite3 connections take no weak references
        self._busy: dict[int, asyncio.Future[Any]] = {}

    # -- what a driver module writes --------------------------------------------------------------

    def _connect_sync(self, timeout: float) -> C:
        raise NotImplementedError

    def _close_sync(self, conn: C) -> None:
        raise NotImplementedError

    def _ping_sync(self, conn: C) -> None:
        raise NotImplementedError

    def _rollback_sync(self, conn: C) -> None:
        raise NotImplementedError

    def _reset_sync(self, conn: C) -> None:
        raise NotImplementedError

    def _begin_sync(self, conn: C) -> None:
        raise NotImplementedError

    def _commit_sync(self, conn: C) -> None:
        raise NotImplementedError

    def _server_info_sync(self, conn: C) -> ServerInfo:
        raise NotImplementedError

    def is_closed(self, conn: C) -> bool:
        raise NotImplementedError

    def in_transaction(self, conn: C) -> bool:
        raise NotImplementedError

    def is_disconnect(self, exc: BaseException) -> bool:
        raise NotImplementedError

    # -- the async protocol -----------------------------------------------------------------------

    async def _run(self, conn: C | None, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a thread; a cancelled caller leaves it to finish (it cannot be stopped)."""
        task: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        if conn is not None:
            key = id(conn)
            self._busy[key] = task
            task.add_done_callback(lambda _t: self._busy.pop(key, None))
        return await asyncio.shield(task)

    async def connect(self, timeout: float) -> C:
        task = asyncio.ensure_future(asyncio.to_thread(self._connect_sync, timeout))
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(task)
        except BaseException:
            task.add_done_callback(self._close_orphan)  # opened after its caller gave up
            raise

    def _close_orphan(self, task: asyncio.Future[C]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.terminate(task.result())

    async def close(self, conn: C) -> None:
        busy = self._busy.get(id(conn))
        if busy is not None:
            await asyncio.wait([busy])
        await self._run(conn, self._close_sync, conn)

    def terminate(self, conn: C) -> None:
        busy = self._busy.get(id(conn))
        if busy is not None and not busy.done():
            busy.add_done_callback(lambda _t: self._close_quietly(conn))
            return
        self._close_quietly(conn)

    def _close_quietly(self, conn: C) -> None:
        try:
            self._close_sync(conn)
        except Exception:  # terminate must never raise
            pass

    async def ping(self, conn: C) -> None:
        await self._run(conn, self._ping_sync, conn)

    async def rollback(self, conn: C) -> None:
        await self._run(conn, self._rollback_sync, conn)

    async def reset(self, conn: C) -> None:
        await self._run(conn, self._reset_sync, conn)

    def transaction(self, conn: C) -> AbstractAsyncContextManager[object]:
        return self._transaction(conn)

    @asynccontextmanager
    async def _transaction(self, conn: C) -> AsyncIterator[object]:
        await self._run(conn, self._begin_sync, conn)
        try:
            yield conn
        except BaseException as exc:
            try:
                await self._run(conn, self._rollback_sync, conn)
            except Exception as rollback_exc:
                exc.add_note(f"poolwarden: the rollback failed too ({type(rollback_exc).__name__})")
            raise
        await self._run(conn, self._commit_sync, conn)

    async def server_info(self, conn: C) -> ServerInfo:
        return await self._run(conn, self._server_info_sync, conn)
