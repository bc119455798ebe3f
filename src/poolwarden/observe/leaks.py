"""Where a lease was taken: the acquiring stack (only when leak detection is on) and the route."""

from __future__ import annotations

import sys
import traceback
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["LeaseInfo", "capture_stack", "current_route"]

#: Set by the FastAPI dependency to "GET /users/{uid}" so a leak names the route that holds it.
current_route: ContextVar[str | None] = ContextVar("poolwarden_route", default=None)

_SKIP = ("/poolwarden/", "/asyncio/", "/contextlib.py", "/starlette/", "/fastapi/", "/anyio/")


def capture_stack(limit: int = 40) -> traceback.StackSummary:
    """The caller's stack, without poolwarden's and the event loop's own frames; lines read lazily."""
    frame = sys._getframe(1)
    frames = [(f, lineno) for f, lineno in traceback.walk_stack(frame)
              if not any(part in f.f_code.co_filename for part in _SKIP)]
    frames.reverse()
    return traceback.StackSummary.extract(iter(frames[-limit:]), lookup_lines=False)


def format_stack(stack: traceback.StackSummary | None) -> str:
    if not stack:
        return "  (stack not captured: set leak_threshold to capture where leases are taken)\n"
    return "".join(stack.format())


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """One lease still out: how long it has been held, by which route, taken where."""

    resource: str
    held_seconds: float
    route: str | None
    stack: str

    def describe(self) -> str:
        route = f" by {self.route}" if self.route else ""
        return f"{self.resource}: lease held {self.held_seconds:.3f}s{route}, acquired at:\n{self.stack}"
