"""Sessions on a poolwarden lease: opened on the event loop, ended exactly once, refused afterwards.

A session is bound to one SQLAlchemy ``Connection`` made over a lease the caller already holds, so
``session.commit()`` never gives the connection back mid-request, and the lease ends in poolwarden's
shielded release whatever happens. After the end the session raises :class:`~poolwarden.LeaseEnded`
naming the resource (its ``get_bind`` is the one door every statement and flush goes through).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from poolwarden.errors import LeaseEnded

__all__ = ["ENDED", "guarded", "settle"]

T = TypeVar("T")
ENDED = "poolwarden.ended"  # session.info key: the resource whose lease ended


class _Guard:
    """Mixin for any ``Session`` class: refuse work once the lease behind the session ended."""

    info: dict[Any, Any]

    def get_bind(self, *args: Any, **kwargs: Any) -> Any:
        ended = self.info.get(ENDED)
        if ended is not None:
            raise LeaseEnded(
                f"{ended}: session used after its request ended; a session from poolwarden lives "
                "as long as its request (or its `async with` block): open a new one instead",
                resource=ended)
        return super().get_bind(*args, **kwargs)  # type: ignore[misc]


_guarded: dict[type[Any], type[Any]] = {}


def guarded(cls: type[Session]) -> type[Session]:
    """``cls`` with the after-the-lease guard (made once per class)."""
    made = _guarded.get(cls)
    if made is None:
        made = _guarded[cls] = type(f"Poolwarden{cls.__name__}", (_Guard, cls), {})
    return made


async def settle(make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
    """Run ``make()`` in a task a cancelled caller does not stop: cleanup that must finish.

    A cancelled caller still waits (up to ``timeout``) for it, then re-raises the cancellation.
    ``timeout`` also bounds the wait of an uncancelled caller (TimeoutError).
    """
    task = asyncio.ensure_future(make())
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task], timeout=timeout)
        raise
