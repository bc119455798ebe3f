"""The event-loop watchdog: finds the synchronous code that holds the loop, in production.

A blocking call inside an ``async def`` route (``time.sleep``, ``requests.get``, a sync driver's query)
stalls every request of the process. The watchdog has two halves:

* on the loop, a heartbeat timer every ``interval`` seconds notes when it ran and how late (the
  loop's *lag*, kept in a histogram with the conventions' buckets and as a maximum since the last read);
* a daemon thread wakes every ``interval`` and, when the next heartbeat is late by more than
  ``threshold``, reads the loop thread's current frame (``sys._current_frames()``): the stack of the
  code holding the loop at that moment. It logs ``loop.blocked`` once per stall at WARNING, with the
  route being served (found in the ASGI ``scope`` of the frames on that stack) and the stack, and
  counts the stall.

Cost: one timer callback per ``interval`` on the loop and a thread that wakes as often and takes the
GIL for a few microseconds; nothing on the pools' hot path. The benchmark measures it against the
FastAPI app without it (``benchmarks/bench_observe.py``).

Start it with ``Warden(watchdog=0.1)`` (started and stopped with the warden), or by hand::

    dog = Watchdog(threshold=0.1)
    dog.start()        # on the running loop
    ...
    dog.stop()

Why not asyncio's debug mode (``loop.slow_callback_duration``)? It reports slow callbacks after they
end, without the stack of the code that blocked, and debug mode slows the whole loop down.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from poolwarden.errors import ConfigError
from poolwarden.observe.events import emit
from poolwarden.observe.stats import Histogram, HistogramSnapshot

__all__ = ["LOOP", "Stall", "Watchdog"]

#: The resource name the watchdog's events carry.
LOOP = "event-loop"
_STACK_LIMIT = 30
_RECHECK = 0.005  # seconds between the two looks that tell a blocked loop from a busy one


@dataclass(frozen=True, slots=True)
class Stall:
    """One blocked stretch of the loop, as seen while it was blocked."""

    blocked: float  # seconds since the last heartbeat when the stack was taken
    route: str | None
    stack: str


class Watchdog:
    """Measure the event loop's lag; log the route and the stack of the code that blocks it.

    ``threshold`` (seconds) is how long the loop may be held before it is reported (a stall is seen
    between ``threshold`` and ``threshold + interval`` after it began); ``interval`` (default
    ``threshold``, at most 0.5 s) is how often the heartbeat runs and the thread looks.
    Raises ConfigError (a ValueError) for a threshold or interval that is not positive.
    """

    def __init__(self, threshold: float = 0.1, *, interval: float | None = None) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold > 0:
            raise ConfigError(f"watchdog threshold must be a positive number of seconds (got {threshold!r})")
        self.threshold = float(threshold)
        self.interval = min(float(threshold), 0.5) if interval is None else interval
        if not self.interval > 0:
            raise ConfigError(f"watchdog interval must be positive (got {interval!r})")
        self.stalls = 0
        self.last_stall: Stall | None = None
        self._lag = Histogram()
        self._max_lag = 0.0
        self._beat_at = 0.0
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_thread = 0

    def __repr__(self) -> str:
        return f"<Watchdog threshold={self.threshold}s stalls={self.stalls} running={self.running}>"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Watch the running loop from now on; idempotent."""
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._beat_at = time.monotonic()
        self._schedule(self._beat_at)
        self._thread = threading.Thread(target=self._watch, name="poolwarden watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (from the loop's thread); the lag histogram is kept."""
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(1.0, 2 * self.interval))

    # -- the loop's half -------------------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._loop.time() + self.interval, self._beat)

    def _beat(self) -> None:
        now = time.monotonic()
        lag = max(0.0, now - self._due)
        self._lag.observe(lag)
        if lag > self._max_lag:
            self._max_lag = lag
        self._beat_at = now
        if not self._stop.is_set():
            self._schedule(now)

    def lag(self) -> HistogramSnapshot:
        """The heartbeat's lateness so far, in seconds (the loop's lag)."""
        return self._lag.snapshot()

    def max_lag(self, reset: bool = True) -> float:
        """The largest lag since the last reset (seconds)."""
        value = self._max_lag
        if reset:
            self._max_lag = 0.0
        return value

    # -- the thread's half -----------------------------------------------------------------------

    def _watch(self) -> None:
        reported_beat = -1.0
        while not self._stop.wait(self.interval):
            beat = self._beat_at
            # how late the next heartbeat is: the loop has run nothing of ours since at least then
            late = time.monotonic() - self._due
            if late < self.threshold or beat == reported_beat:
                continue
            first = _callback(sys._current_frames().get(self._loop_thread))
            time.sleep(_RECHECK)
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None:  # the loop's thread is gone
                return
            if self._beat_at != beat:
                continue  # the heartbeat ran meanwhile: the stall is over
            reported_beat = beat
            late = time.monotonic() - self._due
            try:
                if first is None or _callback(frame) is not first:
                    # many short callbacks, no single one holding the loop: it is overloaded, not blocked
                    emit("loop.lagging", LOOP, f"the event loop runs {late:.3f}s late, busy with many "
                         "callbacks (CPU-bound or overloaded, no single call holds it)", lag=late)
                    continue
                stack, where = _format(frame)
                stall = Stall(late, _route(frame), stack)
            except Exception:  # a frame changing under us must never kill the watchdog
                continue
            finally:
                del frame, first
            self.stalls += 1
            self.last_stall = stall
            route = f" serving {stall.route}" if stall.route else ""
            emit("loop.blocked", LOOP,
                 f"the event loop has been blocked for at least {late:.3f}s{route}; the code holding it:\n"
                 f"{stall.stack}", blocked=late, route=stall.route, where=where)


def _callback(frame: FrameType | None) -> FrameType | None:
    """The frame of the callback the loop is running (the child of asyncio's ``Handle._run``): while
    it is the same object, one call holds the loop."""
    child = None
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_run" and code.co_filename.endswith(("asyncio/events.py", "asyncio\\events.py")):
            return child
        child = frame
        frame = frame.f_back
    return None


def _format(frame: FrameType) -> tuple[str, str]:
    """The stack, and its innermost line (``file:line in function: code``) for one-line views."""
    summary = traceback.extract_stack(frame, limit=_STACK_LIMIT)
    last = summary[-1] if summary else None
    where = "" if last is None else (f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"
                                     + (f": {last.line.strip()}" if last.line else ""))
    return "".join(summary.format()), where


def _route(frame: FrameType | None) -> str | None:
    """``METHOD /route/{template}`` of the innermost ASGI scope on the stack, if any."""
    while frame is not None:
        scope = frame.f_locals.get("scope")
        if isinstance(scope, Mapping) and scope.get("type") in ("http", "websocket"):
            return _describe(scope)
        frame = frame.f_back
    return None


def _describe(scope: Mapping[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None) or scope.get("path") or "?"
    method = scope.get("method") or "WS"
    return f"{method} {path}"
