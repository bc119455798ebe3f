"""Traces of pool waits: a span per acquire, so a slow request's trace shows whether it waited for the pool.

``instrument(warden)`` adds a :class:`~poolwarden.observe.hooks.PoolListener` that, every time a caller
gets a connection or is refused one, records a span ``acquire <pool>`` in the caller's context (a child of
the request's span when OpenTelemetry's FastAPI/ASGI instrumentation made one), starting when the caller
began to wait and ending when it was served or refused::

    acquire db                               kind INTERNAL, duration = the wait
      db.client.connection.pool.name = "db"  (the attribute of the database-client metric conventions)
      poolwarden.acquire.outcome     = "lent" | "timeout" | "overloaded" | "backend_down"
      poolwarden.acquire.wait        = seconds waited (float)
      error.type                     = "PoolTimeout" | "PoolOverloaded" | "BackendDown"  (refusals only,
                                       with the span's status ERROR)

The span is made after the fact, with its start time set back by the wait: nothing is held open while
the caller waits, and the pool's hot path does not change. Spans are made only inside a sampled
(recording) span, the request's: an acquire outside any trace, or with tracing off in the SDK, costs a
context lookup. Without ``instrument`` the pools carry no listener at all (zero cost);
``benchmarks/bench_observe.py`` measures each case.
Only ``opentelemetry-api`` is needed; install an SDK and a tracer provider to export the spans.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from poolwarden.errors import BackendDown, ConfigError, PoolOverloaded, PoolTimeout, Unavailable
from poolwarden.observe.hooks import PoolListener

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = ["OUTCOME", "POOL_NAME", "WAIT", "instrument"]

POOL_NAME = "db.client.connection.pool.name"
OUTCOME = "poolwarden.acquire.outcome"
WAIT = "poolwarden.acquire.wait"

_done: weakref.WeakKeyDictionary[Any, list[object]] = weakref.WeakKeyDictionary()


class _Source(Protocol):
    def add_listener(self, listener: PoolListener) -> None: ...


def _api() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        raise ConfigError("OpenTelemetry tracing needs opentelemetry-api: pip install 'poolwarden[otel]'") \
            from None
    return trace


def instrument(warden: _Source, tracer_provider: TracerProvider | None = None) -> None:
    """Record a span for every acquire of ``warden``'s pools; calling it again does nothing.

    ``tracer_provider`` defaults to the global one (``opentelemetry.trace.set_tracer_provider``).
    Raises ConfigError when opentelemetry-api is not installed.
    """
    trace = _api()
    from poolwarden import __version__

    seen = _done.setdefault(warden, [])
    if any(p is tracer_provider for p in seen):
        return
    seen.append(tracer_provider)
    tracer = trace.get_tracer("poolwarden", __version__, tracer_provider=tracer_provider)
    warden.add_listener(_Tracer(tracer, trace))


def _outcome(exc: Unavailable) -> str:
    if isinstance(exc, PoolTimeout):
        return "timeout"
    if isinstance(exc, PoolOverloaded):
        return "overloaded"
    if isinstance(exc, BackendDown):
        return "backend_down"
    return "unavailable"


class _Tracer:
    """The PoolListener that turns acquires and refusals into spans."""

    __slots__ = ("_current", "_error", "_internal", "_names", "_tracer")

    def __init__(self, tracer: Tracer, trace: Any) -> None:
        self._tracer = tracer
        self._current = trace.get_current_span
        self._internal = trace.SpanKind.INTERNAL
        self._error = trace.StatusCode.ERROR
        self._names: dict[str, str] = {}

    def _span(self, resource: str, wait: float, attributes: dict[str, Any]) -> Any:
        name = self._names.get(resource)
        if name is None:
            name = self._names[resource] = f"acquire {resource}"
        end = time.time_ns()
        span = self._tracer.start_span(name, kind=self._internal, attributes=attributes,
                                       start_time=end - int(wait * 1e9))
        return span, end

    def on_acquired(self, resource: str, wait: float) -> None:
        if not self._current().is_recording():
            return  # no sampled trace around this acquire: nothing to add a span to
        span, end = self._span(resource, wait, {POOL_NAME: resource, OUTCOME: "lent", WAIT: wait})
        span.end(end_time=end)

    def on_refused(self, resource: str, exc: Unavailable, wait: float) -> None:
        if not self._current().is_recording():
            return
        kind = type(exc).__name__
        span, end = self._span(resource, wait, {POOL_NAME: resource, OUTCOME: _outcome(exc), WAIT: wait,
                                                "error.type": kind})
        span.set_status(self._error, f"{kind}: no connection of {resource} for this caller")
        span.end(end_time=end)

    def on_released(self, resource: str, use: float) -> None:
        pass

    def on_connected(self, resource: str, seconds: float) -> None:
        pass

    def on_timeout(self, resource: str) -> None:
        pass  # recorded by on_refused, in the refused caller's own context
