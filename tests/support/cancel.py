"""Cancelling at a chosen cancellation point, for the loops that cancel open(), close(), acquire()..."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["cancel_after"]


async def cancel_after(turns: int, coro: Coroutine[Any, Any, Any]) -> bool:
    """Run ``coro`` in a task, cancel it after ``turns`` loop turns and wait for it to end.

    Returns True when the cancellation ended it, False when it finished first. After 0 turns the task
    never started: ``coro`` did not run at all, so the loops start at 1.
    """
    task = asyncio.create_task(coro)
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False
