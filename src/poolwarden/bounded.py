"""Connection I/O with a hard bound: COMMIT, ROLLBACK and resets that must not outlive ``reset_timeout``.

``asyncio.timeout`` is not enough on its own: it cancels the awaiting task and then waits for the
driver to finish cancelling, and psycopg holds a cancelled query while it sends a cancel request
and waits for the server (up to 5 s each way, longer than the bound itself on a stalled network).
Here the connection is terminated at the bound instead (its state is unknown by then anyway), which
ends the driver's wait with a connection error at once; a cancellation a little later is only the
backstop for a driver that would not notice. The step runs in the caller's task: no task is
created, so the pool's bookkeeping sees the same ordering as any other await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Expired", "bounded"]

T = TypeVar("T")


class Expired(TimeoutError):
    """The bound passed; the connection was terminated (told apart from a driver's own timeout)."""


async def bounded(step: Awaitable[T], limit: float, abandon: Callable[[], None], what: str) -> T:
    """Await ``step`` for at most ``limit`` seconds.

    At the bound ``abandon()`` is called (terminate the connection; it must not raise) and whatever
    the step then raises becomes :class:`Expired` (a ``TimeoutError`` naming ``what``), chained.
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        abandon()

    timer = asyncio.get_running_loop().call_later(limit, expire)
    try:
        async with asyncio.timeout(limit + _BACKSTOP):
            result = await step
        if expired:  # finished only because the terminate ended it (a ROLLBACK that swallows errors)
            raise Expired(f"{what} got no answer within {limit}s")
        return result
    except Expired:
        raise
    except BaseException as exc:
        if expired and not _cancelled_from_outside(exc):
            raise Expired(f"{what} got no answer within {limit}s") from exc
        raise
    finally:
        timer.cancel()


# after the terminate, how long a driver may take to notice before it is cancelled as well
_BACKSTOP = 0.5


def _cancelled_from_outside(exc: BaseException) -> bool:
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() > 0
