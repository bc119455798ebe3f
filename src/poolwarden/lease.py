"""What a pool hands around: the record of one pooled connection and the object ``pool.acquire()``
returns (a queued caller is a :class:`poolwarden.waitqueue.Waiter`)."""

from __future__ import annotations

import time
from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from poolwarden.handle import handle_class_for

if TYPE_CHECKING:
    from poolwarden.pool import Pool
    from poolwarden.upkeep import PoolUpkeep

__all__ = ["AcquireContext"]

C = TypeVar("C")
_monotonic = time.monotonic


class _Record(Generic[C]):
    """One pooled connection and the facts the pool keeps about it."""

    __slots__ = (
        "checked_at",
        "conn",
        "created_at",
        "expires_at",
        "fresh_until",
        "generation",
        "handle_cls",
        "keepalive_due",
        "last_used",
        "leak_reported",
        "lease_start",
        "pool",
        "route",
        "stack",
        "verified_at",
    )

    def __init__(self, pool: PoolUpkeep[C], conn: C, now: float, expires_at: float, generation: int,
                 keepalive_due: float, check_after: float) -> None:
        self.pool = pool
        self.conn = conn
        self.created_at = now
        self.verified_at = now  # connected or last pinged: compared with the pool's _invalid_before
        self.expires_at = expires_at
        self.generation = generation
        self.last_used = now
        self.checked_at = now
        # lendable without a check until then: min(expiry, last check + check_after_idle)
        self.fresh_until = min(expires_at, now + check_after)
        self.keepalive_due = keepalive_due
        self.lease_start = 0.0
        self.handle_cls = handle_class_for(type(conn))
        self.stack: Any = None
        self.route: str | None = None
        self.leak_reported = False


class AcquireContext(Generic[C]):
    """What ``pool.acquire()`` returns: ``async with`` it, or ``await`` it and release yourself."""

    __slots__ = ("_handle", "_pool", "_timeout")

    def __init__(self, pool: Pool[C], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._handle: C | None = None

    def __await__(self) -> Generator[Any, None, C]:
        return self._pool._acquire(self._timeout).__await__()

    async def __aenter__(self) -> C:
        pool = self._pool
        handle = pool._lend_nowait()
        if handle is None:
            handle = await pool._acquire_slow(_monotonic(), self._timeout)
        self._handle = handle
        return handle

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            slow = self._pool._release_nowait(handle, exc)
            if slow is not None:
                await slow
