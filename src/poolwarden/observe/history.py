"""The dashboard's memory: a bounded time series per resource and a bounded timeline of events.

A :class:`History` samples ``warden.stats()`` once per ``interval`` on the event loop (a snapshot is
counters only, so a sample costs microseconds and the pool's hot path pays nothing) and keeps the last
``points`` samples of each resource: connections used/idle/connecting against max, callers queued,
acquires per second, wait p50/p99 over the interval (interpolated in the buckets, see
:mod:`~poolwarden.observe.quantiles`), and per interval the errors and refusals by reason. Lifecycle
events (circuit opened/closed, discards with their reason, leaks with their route, drains, a blocked
event loop) arrive through :func:`~poolwarden.observe.events.subscribe`; the last ``events`` are kept.
Memory is bounded by ``points`` x resources and ``events``, whatever the service does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from poolwarden.observe.events import subscribe
from poolwarden.observe.quantiles import interpolate
from poolwarden.observe.stats import HistogramSnapshot, PoolStats, kind

__all__ = ["Event", "History", "Point"]

#: Refusal and error reasons counted per interval; "discarded:<reason>" keys are added as they appear.
REASONS = ("timeout", "overloaded", "backend_down", "closed", "connect_error", "ping_failed")
_DETAIL = 300  # characters of an event's detail kept (a leak's detail carries a whole stack)


class _Source(Protocol):
    def stats(self) -> Mapping[str, PoolStats]: ...


@dataclass(frozen=True, slots=True)
class Point:
    """One sample of one resource; rates and quantiles are over the interval since the previous one."""

    t: float  # wall-clock seconds (for the charts' time axis)
    used: int
    idle: int
    connecting: int
    max: int
    waiting: int
    acquires_per_s: float
    wait_p50_ms: float
    wait_p99_ms: float
    errors: Mapping[str, int]
    circuit: str
    state: str


@dataclass(frozen=True, slots=True)
class Event:
    """One lifecycle event on the timeline."""

    seq: int
    t: float
    event: str
    resource: str
    detail: str
    route: str | None = None
    reason: str | None = None


class History:
    """Bounded samples of every resource of ``source`` plus the event timeline; see the module doc.

    ``start()`` begins sampling on the running loop and subscribes to events; ``stop()`` ends both.
    ``snapshot()`` is what the dashboard's JSON endpoint returns.
    """

    def __init__(self, source: _Source, *, interval: float = 1.0, points: int = 300, events: int = 200,
                 clock: Callable[[], float] = time.time) -> None:
        if not interval > 0 or points < 2 or events < 1:
            raise ValueError(f"interval must be > 0, points >= 2, events >= 1 (got interval={interval}, "
                             f"points={points}, events={events})")
        self._source = source
        self.interval = interval
        self._points = points
        self._clock = clock
        self._series: dict[str, deque[Point]] = {}
        self._last: dict[str, tuple[float, PoolStats]] = {}
        self._events: deque[Event] = deque(maxlen=events)
        self._loop: deque[tuple[float, float, int]] = deque(maxlen=points)  # (t, max lag, stalls)
        self._threshold = 0.0
        self._seq = itertools.count(1)  # next() is atomic: the watchdog's thread records events too
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Sample every ``interval`` on the running event loop; idempotent."""
        if self._unsubscribe is None:
            self._unsubscribe = subscribe(self.record)
        if self._task is None or self._task.done():
            self.sample()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="poolwarden history")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    # -- recording -----------------------------------------------------------------------------

    def sample(self) -> None:
        """Append one point per resource, computed against the previous sample."""
        now = self._clock()
        for name, s in self._source.stats().items():
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = deque(maxlen=self._points)
            before = self._last.get(name)
            self._last[name] = (now, s)
            series.append(_point(now, s, before))
        watchdog = getattr(self._source, "watchdog", None)
        if watchdog is not None and watchdog.running:
            self._loop.append((now, watchdog.max_lag(), watchdog.stalls))
            self._threshold = float(watchdog.threshold)

    def record(self, event: str, resource: str, detail: str, fields: dict[str, Any]) -> None:
        """The events sink: keep the event's first line (a leak's stack stays in the log); events of
        resources this history does not sample (another warden's) are left out."""
        if resource not in self._series and not event.startswith("loop."):
            return
        route = fields.get("route")
        reason = fields.get("reason")
        line = detail.split("\n", 1)[0]
        where = fields.get("where")
        if isinstance(where, str) and where:  # the innermost line of a stack (loop.blocked)
            line = line.removesuffix("; the code holding it:") + f"; at {where}"
        line = line[:_DETAIL]
        self._events.append(Event(next(self._seq), self._clock(), event, resource, line,
                                  route if isinstance(route, str) else None,
                                  reason if isinstance(reason, str) else None))

    # -- reading -------------------------------------------------------------------------------

    def snapshot(self, since: float = 0.0) -> dict[str, Any]:
        """JSON-ready: ``{"interval", "now", "resources": {name: {"points": [...], ...}}, "events",
        "loop"}`` (``loop``: the watchdog's largest lag per interval and its stall count, or None without
        a running watchdog); only points and events newer than ``since`` (wall-clock seconds)."""
        resources: dict[str, Any] = {}
        for name, series in self._series.items():
            points = [p for p in series if p.t > since]
            last = series[-1] if series else None
            current = self._last.get(name)
            s = current[1] if current else None
            resources[name] = {
                "kind": kind(s) if s else "db",
                "driver": s.driver if s else "?",
                "state": last.state if last else "?",
                "circuit": last.circuit if last else "?",
                "ready": bool(s.ready) if s else False,
                "max": last.max if last else 0,
                "last_error": s.last_error if s else None,
                "points": [_point_dict(p) for p in points],
            }
        events = [_event_dict(e) for e in self._events if e.t > since]
        loop = None
        if self._loop:
            loop = {"threshold_ms": round(self._threshold * 1000, 3),
                    "points": [{"t": round(t, 3), "lag_ms": round(lag * 1000, 3), "stalls": n}
                               for t, lag, n in self._loop if t > since]}
        return {"interval": self.interval, "now": self._clock(), "resources": resources, "events": events,
                "loop": loop}


def _point(now: float, s: PoolStats, before: tuple[float, PoolStats] | None) -> Point:
    errors: dict[str, int] = {}
    rate = 0.0
    wait = HistogramSnapshot(s.wait_time.bounds, (), 0, 0.0)  # the first point has no interval behind it
    if before is not None:
        at, b = before
        elapsed = max(now - at, 1e-9)
        rate = max(s.acquired - b.acquired, 0) / elapsed
        wait = _delta(s.wait_time, b.wait_time)
        for key, x, y in (("timeout", s.timeouts, b.timeouts), ("overloaded", s.overloaded, b.overloaded),
                          ("connect_error", s.connect_errors, b.connect_errors),
                          ("ping_failed", s.pings_failed, b.pings_failed)):
            if x > y:
                errors[key] = x - y
        for reason, n in s.refused.items():  # backend_down, closed (timeout, overloaded: counted above)
            d = n - b.refused.get(reason, 0)
            if d > 0 and reason not in errors:
                errors[reason] = d
        for reason, n in s.discarded.items():
            d = n - b.discarded.get(reason, 0)
            if d > 0:
                errors[f"discarded:{reason}"] = d
    p50, _ = interpolate(wait.bounds, wait.counts, 0.5)
    p99, _ = interpolate(wait.bounds, wait.counts, 0.99)
    return Point(now, s.in_use, s.idle, s.connecting, s.max_size, s.waiting, rate, p50 * 1000, p99 * 1000,
                 errors, s.circuit, s.state)


def _delta(now: HistogramSnapshot, before: HistogramSnapshot) -> HistogramSnapshot:
    if now.bounds != before.bounds or now.count < before.count:
        return now
    return HistogramSnapshot(now.bounds, tuple(a - b for a, b in zip(now.counts, before.counts, strict=True)),
                             now.count - before.count, now.sum - before.sum)


def _point_dict(p: Point) -> dict[str, Any]:
    return {"t": round(p.t, 3), "used": p.used, "idle": p.idle, "connecting": p.connecting, "max": p.max,
            "waiting": p.waiting, "acquires_per_s": round(p.acquires_per_s, 2),
            "wait_p50_ms": round(p.wait_p50_ms, 3), "wait_p99_ms": round(p.wait_p99_ms, 3),
            "errors": dict(p.errors), "circuit": p.circuit}


def _event_dict(e: Event) -> dict[str, Any]:
    return {"seq": e.seq, "t": round(e.t, 3), "event": e.event, "resource": e.resource, "detail": e.detail,
            "route": e.route, "reason": e.reason}
