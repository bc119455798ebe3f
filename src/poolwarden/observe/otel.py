"""The pools' metrics for OpenTelemetry, as the database-client semantic conventions name them.

``instrument(warden)`` creates, on the meter ``poolwarden``, every connection-pool metric of the
conventions, each with the attribute ``db.client.connection.pool.name`` (the resource's name), and
``db.client.connection.state`` on the count::

    db.client.connection.count             observable up-down counter  {connection}  (+ state idle|used)
    db.client.connection.idle.max          observable up-down counter  {connection}  (max_size)
    db.client.connection.idle.min          observable up-down counter  {connection}  (min_size)
    db.client.connection.max               observable up-down counter  {connection}  (max_size)
    db.client.connection.pending_requests  observable up-down counter  {request}     (queued callers)
    db.client.connection.timeouts          counter                     {timeout}
    db.client.connection.create_time       histogram                   s
    db.client.connection.wait_time         histogram                   s
    db.client.connection.use_time          histogram                   s

HTTP clients are not database pools: they are reported on OpenTelemetry's HTTP client name
``http.client.open_connections`` (attribute ``http.connection.state`` active|idle), and Redis clients
on ``redis.client.connections`` (``state`` used|idle), each with ``poolwarden.resource``; SQLAlchemy
engines are database pools and stay on the ``db.client.connection.*`` names.

The observable instruments read ``warden.stats()`` when the SDK collects (often from the reader's own
thread: a snapshot reads only counters, so each number is exact, though two of them may straddle an
event). The counter and the histograms are fed by a :class:`~poolwarden.observe.hooks.PoolListener` on
every connect, acquire, release and timeout, with the buckets the conventions advise
(:data:`~poolwarden.observe.stats.BOUNDS`) as an advisory to the SDK. Only ``opentelemetry-api`` is
needed here; without an SDK configured, the API's no-op meter makes all of this free.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from poolwarden.errors import ConfigError
from poolwarden.observe.hooks import PoolListener
from poolwarden.observe.stats import BOUNDS, PoolStats, kind

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Counter, Histogram, MeterProvider, Observation

__all__ = ["POOL_NAME", "STATE", "instrument"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
HTTP_STATE = "http.connection.state"
RESOURCE = "poolwarden.resource"


class _Source(Protocol):
    def stats(self) -> Mapping[str, PoolStats]: ...
    def add_listener(self, listener: PoolListener) -> None: ...


#: Per warden, the meter providers it is already instrumented for (None: the global one).
_done: weakref.WeakKeyDictionary[Any, list[object]] = weakref.WeakKeyDictionary()


def _api() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError:
        raise ConfigError(
            "OpenTelemetry metrics need opentelemetry-api: pip install 'poolwarden[otel]'"
        ) from None
    return metrics


def instrument(warden: _Source, meter_provider: MeterProvider | None = None) -> None:
    """Report ``warden``'s pools through OpenTelemetry metrics; calling it again does nothing.

    ``meter_provider`` defaults to the global one (``opentelemetry.metrics.set_meter_provider``).
    Pools declared later are covered too. Raises ConfigError when opentelemetry-api is not installed.
    """
    metrics = _api()
    from poolwarden import __version__

    seen = _done.setdefault(warden, [])
    if any(p is meter_provider for p in seen):
        return
    seen.append(meter_provider)
    meter = metrics.get_meter("poolwarden", __version__, meter_provider=meter_provider)
    ref = weakref.ref(warden)

    def everything() -> Iterable[PoolStats]:
        g = ref()
        return () if g is None else g.stats().values()

    def stats() -> Iterable[PoolStats]:
        return [s for s in everything() if kind(s) == "db"]  # a Redis or HTTP client is no database pool

    def client_connections(which: str, attribute: str, used: str,
                           ) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(options: CallbackOptions) -> list[Observation]:
            return [metrics.Observation(n, {RESOURCE: s.resource, attribute: state})
                    for s in everything() if kind(s) == which
                    for state, n in ((used, s.in_use), ("idle", s.idle))]
        return callback

    meter.create_observable_up_down_counter(
        "http.client.open_connections", [client_connections("http", HTTP_STATE, "active")],
        unit="{connection}",
        description="Number of outbound HTTP connections that are currently active or idle on the client")
    meter.create_observable_up_down_counter(
        "redis.client.connections", [client_connections("redis", "state", "used")], unit="{connection}",
        description="Connections of a Redis client's own pool, by state")

    def count(options: CallbackOptions) -> list[Observation]:
        out = []
        for s in stats():
            out.append(metrics.Observation(s.idle, {POOL_NAME: s.resource, STATE: "idle"}))
            out.append(metrics.Observation(s.in_use, {POOL_NAME: s.resource, STATE: "used"}))
        return out

    def each(read: Callable[[PoolStats], int]) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(options: CallbackOptions) -> list[Observation]:
            return [metrics.Observation(read(s), {POOL_NAME: s.resource}) for s in stats()]
        return callback

    meter.create_observable_up_down_counter(
        "db.client.connection.count", [count], unit="{connection}",
        description="The number of connections that are currently in state described by the state "
                    "attribute")
    meter.create_observable_up_down_counter(
        "db.client.connection.idle.max", [each(lambda s: s.max_size)], unit="{connection}",
        description="The maximum number of idle open connections allowed")
    meter.create_observable_up_down_counter(
        "db.client.connection.idle.min", [each(lambda s: s.min_size)], unit="{connection}",
        description="The minimum number of idle open connections allowed")
    meter.create_observable_up_down_counter(
        "db.client.connection.max", [each(lambda s: s.max_size)], unit="{connection}",
        description="The maximum number of open connections allowed")
    meter.create_observable_up_down_counter(
        "db.client.connection.pending_requests", [each(lambda s: s.waiting)], unit="{request}",
        description="The number of current pending requests for an open connection")
    _outage_instruments(meter, metrics, everything)
    _watchdog(meter, metrics, ref)
    recorder = _Recorder(
        timeouts=meter.create_counter(
            "db.client.connection.timeouts", unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain a "
                        "connection from the pool"),
        create=_histogram(meter, "db.client.connection.create_time",
                          "The time it took to create a new connection"),
        wait=_histogram(meter, "db.client.connection.wait_time",
                        "The time it took to obtain an open connection from the pool"),
        use=_histogram(meter, "db.client.connection.use_time",
                       "The time between borrowing a connection and returning it to the pool"),
    )
    warden.add_listener(recorder)


def _outage_instruments(meter: Any, metrics: Any, everything: Callable[[], Iterable[PoolStats]]) -> None:
    """What makes an outage visible, for every pool and client (the same names as the Prometheus
    exporter's, dotted): circuit state, connect errors, refusals and discards by reason."""

    def circuit(options: CallbackOptions) -> list[Observation]:
        return [metrics.Observation(1 if s.circuit == state else 0, {RESOURCE: s.resource, "state": state})
                for s in everything() for state in ("closed", "open", "half_open")]

    def connect_errors(options: CallbackOptions) -> list[Observation]:
        return [metrics.Observation(s.connect_errors, {RESOURCE: s.resource}) for s in everything()]

    def by_reason(
        read: Callable[[PoolStats], Mapping[str, int]],
    ) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(options: CallbackOptions) -> list[Observation]:
            return [metrics.Observation(n, {RESOURCE: s.resource, "reason": reason})
                    for s in everything() for reason, n in sorted(read(s).items())]
        return callback

    meter.create_observable_gauge(
        "poolwarden.circuit.state", [circuit], unit="1",
        description="1 for the state the resource's circuit breaker is in, 0 for the others")
    meter.create_observable_counter(
        "poolwarden.connect_errors", [connect_errors], unit="{error}",
        description="Failed attempts to connect (or, for a client, to ping) the backend")
    meter.create_observable_counter(
        "poolwarden.acquires.refused", [by_reason(lambda s: s.refused)], unit="{request}",
        description="Acquires that got no connection, by reason: timeout, overloaded, backend_down, closed")
    meter.create_observable_counter(
        "poolwarden.connections.discarded", [by_reason(lambda s: s.discarded)], unit="{connection}",
        description="Connections closed by the pool instead of being reused, by reason")


def _watchdog(meter: Any, metrics: Any, ref: Any) -> None:
    """The watchdog's stalls (``Warden(watchdog=...)``), as the Prometheus exporter has them."""

    def stalls(options: CallbackOptions) -> list[Observation]:
        watchdog = getattr(ref(), "watchdog", None)
        return [] if watchdog is None else [metrics.Observation(watchdog.stalls)]

    meter.create_observable_counter(
        "poolwarden.event_loop.blocked", [stalls], unit="{stall}",
        description="Times the event loop was held longer than the watchdog's threshold")


def _histogram(meter: Any, name: str, description: str) -> Histogram:
    histogram: Histogram = meter.create_histogram(
        name, unit="s", description=description, explicit_bucket_boundaries_advisory=list(BOUNDS))
    return histogram


class _Recorder:
    """The PoolListener feeding the timeouts counter and the three histograms."""

    __slots__ = ("_attrs", "_create", "_timeouts", "_use", "_wait")

    def __init__(self, *, timeouts: Counter, create: Histogram, wait: Histogram, use: Histogram) -> None:
        self._timeouts = timeouts
        self._create = create
        self._wait = wait
        self._use = use
        self._attrs: dict[str, dict[str, str]] = {}

    def _attributes(self, resource: str) -> dict[str, str]:
        attrs = self._attrs.get(resource)
        if attrs is None:
            attrs = self._attrs[resource] = {POOL_NAME: resource}
        return attrs

    def on_acquired(self, resource: str, wait: float) -> None:
        self._wait.record(wait, self._attributes(resource))

    def on_released(self, resource: str, use: float) -> None:
        self._use.record(use, self._attributes(resource))

    def on_connected(self, resource: str, seconds: float) -> None:
        self._create.record(seconds, self._attributes(resource))

    def on_timeout(self, resource: str) -> None:
        self._timeouts.add(1, self._attributes(resource))
