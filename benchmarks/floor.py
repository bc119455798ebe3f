"""The floor: the cheapest correct asyncio pool, to measure every real pool against.

A fixed set of raw asyncpg connections, a deque of idle ones and a deque of waiter futures.
Acquire takes an idle connection when nobody is queued, else queues a future; release hands the
connection straight to the oldest waiter that is still waiting, else puts it back on the idle
stack. No health checks, no resets, no timeouts, no stats: nothing a production pool must do, only
what any pool cannot avoid. A waiter cancelled after its grant passes the connection on, so the pool
never loses a connection (that is what makes it *correct*, not just fast).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import asyncpg

__all__ = ["FloorPool"]


class FloorPool:
    __slots__ = ("_conns", "_idle", "_url", "_waiters")

    def __init__(self, conns: list[Any], url: str = "") -> None:
        self._url = url
        self._conns = list(conns)
        self._idle: deque[Any] = deque(conns)
        self._waiters: deque[asyncio.Future[Any]] = deque()

    @classmethod
    async def connect(cls, url: str, size: int) -> FloorPool:
        conns = await asyncio.gather(*(asyncpg.connect(url) for _ in range(size)))
        return cls(list(conns), url)

    def acquire(self) -> _Lease:
        return _Lease(self)

    async def _wait(self) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._put(fut.result())  # granted, then cancelled before it ran: pass it on
            # a cancelled future stays in the deque; _put skips it
            raise

    def _put(self, conn: Any) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)

    async def repair(self) -> None:
        """Benchmark harness only, never on the measured path: with no lease out, replace the
        connections the server dropped (the floor itself never notices a dead connection)."""
        for i, conn in enumerate(self._conns):
            if conn.is_closed():
                self._conns[i] = await asyncpg.connect(self._url)
        self._idle = deque(self._conns)
        self._waiters.clear()

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._conns), return_exceptions=True)


class _Lease:
    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: FloorPool) -> None:
        self._pool = pool

    async def __aenter__(self) -> Any:
        pool = self._pool
        if pool._idle and not pool._waiters:
            conn = pool._idle.pop()
        else:
            conn = await pool._wait()
        self._conn = conn
        return conn

    async def __aexit__(self, *exc: object) -> None:
        self._pool._put(self._conn)
