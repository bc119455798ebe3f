"""The pools' metrics for Prometheus, named by OpenTelemetry's Prometheus mapping.

The metrics are OpenTelemetry's database-client connection metrics (``db.client.connection.*``) passed
through the OpenTelemetry → Prometheus compatibility rules: dots become underscores, a unit in braces
(``{connection}``) is dropped, ``s`` becomes a ``_seconds`` suffix and a monotonic counter ends in
``_total``. Every series carries ``db_client_connection_pool_name``, the resource's name::

    OpenTelemetry (unit)                         Prometheus                                type
    db.client.connection.count ({connection})    db_client_connection_count                gauge
        with db.client.connection.state          with db_client_connection_state=idle|used
    db.client.connection.idle.max                db_client_connection_idle_max             gauge
    db.client.connection.idle.min                db_client_connection_idle_min             gauge
    db.client.connection.max                     db_client_connection_max                  gauge
    db.client.connection.pending_requests        db_client_connection_pending_requests     gauge
    db.client.connection.timeouts ({timeout})    db_client_connection_timeouts_total       counter
    db.client.connection.create_time (s)         db_client_connection_create_time_seconds  histogram
    db.client.connection.wait_time (s)           db_client_connection_wait_time_seconds    histogram
    db.client.connection.use_time (s)            db_client_connection_use_time_seconds     histogram

``idle.min`` is ``min_size``; ``idle.max`` and ``max`` are ``max_size`` (idle connections are bounded by
nothing smaller: above ``min_size`` they retire after ``max_idle``); ``pending_requests`` counts the
callers queued for a connection; ``count`` leaves out connections still being opened.

The histograms use :data:`~poolwarden.observe.stats.BOUNDS`, the buckets the conventions advise.

Two modes, chosen the way prometheus_client chooses them: by ``PROMETHEUS_MULTIPROC_DIR``.

**One process** (the default): a collector reads ``warden.stats()`` when Prometheus scrapes, so the pool's
hot path pays nothing for metrics at all.

**Several worker processes** (``gunicorn -w``, ``uvicorn --workers``, with ``PROMETHEUS_MULTIPROC_DIR``
set before the process starts): one worker answers each scrape and cannot see the other workers' pools,
so prometheus_client aggregates per-process files instead, and a collector has nothing to put there.
Each process therefore writes its own share, from the moment it starts (``warden.install`` or
:func:`instrument` sets this up):

* the histograms and the timeouts counter are prometheus_client objects fed by a
  :class:`~poolwarden.observe.hooks.PoolListener` on every acquire, release, connect and timeout (a
  bucket and a sum written to the process's file: the price of multiprocess mode, a few microseconds);
* the gauges are never touched on the hot path: they are set from a stats snapshot by a timer on the
  event loop every ``refresh_interval`` seconds, and again right before this process renders a scrape.
  Their ``multiprocess_mode`` is ``livesum`` by default, the sum over the live workers of each pool
  (what to compare with the server's ``max_connections``), or ``liveall`` for one series per ``pid``;
* a pool's gauges drop to zero as soon as the warden has closed it (the lifespan's shutdown), and
  every gauge of the process when its event loop ends or the interpreter exits, so a worker that stops
  cleanly stops counting even where nobody calls ``mark_process_dead`` (uvicorn's workers end by
  re-raising SIGTERM: no exit handler runs there, hence the close-time write). After a crash, call
  ``prometheus_client.multiprocess.mark_process_dead(pid)`` (gunicorn's ``child_exit``) or empty the
  directory when the service starts, as prometheus_client asks of every multiprocess deployment.

:func:`render` serves both modes: it is what the ``/metrics`` route of ``warden.install`` returns.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from poolwarden.errors import ConfigError
from poolwarden.observe.events import count_events
from poolwarden.observe.hooks import PoolListener
from poolwarden.observe.stats import BOUNDS, HistogramSnapshot, PoolStats, kind

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["PoolCollector", "collector", "instrument", "kind", "multiprocess", "render", "require"]

POOL = "db_client_connection_pool_name"
RESOURCE = "resource"  # the label of poolwarden's own metrics and of the clients'
STATE = "db_client_connection_state"
GaugeMode = Literal["livesum", "liveall"]

_HELP = {
    "count": "The number of connections that are currently in the state given by db_client_connection_state",
    "idle_max": "The maximum number of idle open connections allowed",
    "idle_min": "The minimum number of idle open connections allowed",
    "max": "The maximum number of open connections allowed",
    "pending_requests": "The number of current pending requests for an open connection",
    "timeouts": "The number of connection timeouts that have occurred trying to obtain a connection "
                "from the pool",
    "create_time": "The time it took to create a new connection",
    "wait_time": "The time it took to obtain an open connection from the pool",
    "use_time": "The time between borrowing a connection and returning it to the pool",
}
_GAUGES = ("idle_max", "idle_min", "max", "pending_requests")
_HISTOGRAMS = ("create_time", "wait_time", "use_time")
_log = logging.getLogger("poolwarden")


class _Source(Protocol):
    """What the exporters need of a :class:`~poolwarden.Warden`."""

    def stats(self) -> Mapping[str, PoolStats]: ...
    def add_listener(self, listener: PoolListener) -> None: ...


def multiprocess() -> bool:
    """True when prometheus_client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def require() -> None:
    """Raise ConfigError naming the extra when prometheus_client is not installed."""
    _client()


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "Prometheus metrics need prometheus_client: pip install 'poolwarden[prometheus]'"
        ) from None
    return prometheus_client


# -- one process: a collector reading the snapshot at scrape time -------------------------------------


class PoolCollector:
    """A prometheus_client collector for every pool of a warden, read from ``warden.stats()`` when scraped.

    Register it on a registry of your own with ``registry.register(collector(warden))``. Single-process
    only: in multiprocess mode use :func:`instrument` (prometheus_client ignores collectors there).
    """

    def __init__(self, warden: _Source) -> None:
        _client()
        self._warden = warden
        count_events("leak.suspected")

    def describe(self) -> list[Metric]:
        # The names, so that a registry refuses a second collector exporting the same metrics.
        return _families(())

    def collect(self) -> list[Metric]:
        return _families(self._warden.stats().values(), getattr(self._warden, "watchdog", None))


def collector(warden: _Source) -> PoolCollector:
    """The single-process collector of ``warden``'s pools; raises ConfigError without prometheus_client."""
    return PoolCollector(warden)


def _families(stats: Iterable[PoolStats], watchdog: Any = None) -> list[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    stats = list(stats)
    ops = _operations(stats, watchdog)
    clients = _clients([s for s in stats if kind(s) != "db"])
    stats = [s for s in stats if kind(s) == "db"]

    count = GaugeMetricFamily("db_client_connection_count", _HELP["count"], labels=[POOL, STATE])
    gauges = {key: GaugeMetricFamily(f"db_client_connection_{key}", _HELP[key], labels=[POOL])
              for key in _GAUGES}
    timeouts = CounterMetricFamily("db_client_connection_timeouts", _HELP["timeouts"], labels=[POOL])
    hists = {key: HistogramMetricFamily(f"db_client_connection_{key}_seconds", _HELP[key], labels=[POOL],
                                        unit="seconds")
             for key in _HISTOGRAMS}
    for s in stats:
        label = [s.resource]
        count.add_metric([s.resource, "idle"], s.idle)
        count.add_metric([s.resource, "used"], s.in_use)
        for key, value in _gauge_values(s).items():
            gauges[key].add_metric(label, value)
        timeouts.add_metric(label, s.timeouts)
        for key, snap in (("create_time", s.connect_time), ("wait_time", s.wait_time),
                          ("use_time", s.use_time)):
            hists[key].add_metric(label, _buckets(snap), snap.sum)
    return [count, *gauges.values(), timeouts, *hists.values(), *clients, *ops]


def _clients(stats: Iterable[PoolStats]) -> list[Metric]:
    """HTTP clients on OpenTelemetry's HTTP client names, Redis clients on names of their own."""
    from prometheus_client.core import GaugeMetricFamily

    http = GaugeMetricFamily("http_client_open_connections", "Number of outbound HTTP connections that "
                             "are currently active or idle on the client",
                             labels=["http_connection_state", RESOURCE])
    redis = GaugeMetricFamily("redis_client_connections", "Connections of a Redis client's own pool, "
                              "by state", labels=["state", RESOURCE])
    limit = GaugeMetricFamily("poolwarden_client_connections_max", "The connection limit of a client's own "
                              "pool (0: unbounded or not told by the driver)", labels=[RESOURCE])
    for s in stats:
        if kind(s) == "http":
            http.add_metric(["active", s.resource], s.in_use)
            http.add_metric(["idle", s.resource], s.idle)
        else:
            redis.add_metric(["used", s.resource], s.in_use)
            redis.add_metric(["idle", s.resource], s.idle)
        limit.add_metric([s.resource], s.max_size)
    return [http, redis, limit]


def _operations(stats: Iterable[PoolStats], watchdog: Any) -> list[Metric]:
    """What the alert rules need beyond the conventions: circuit, readiness, refusals, discards, leaks,
    connect errors, for every resource; and the event loop's lag when the watchdog runs."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    from poolwarden.observe.events import counted

    circuit = GaugeMetricFamily("poolwarden_circuit_state", "1 for the state the resource's circuit "
                                "breaker is in, 0 for the others", labels=[RESOURCE, "state"])
    ready = GaugeMetricFamily("poolwarden_ready", "1 when the resource can serve now", labels=[RESOURCE])
    connect = CounterMetricFamily("poolwarden_connect_errors", "Failed attempts to connect (or, for a "
                                  "client, to ping) the backend", labels=[RESOURCE])
    refused = CounterMetricFamily("poolwarden_acquires_refused", "Acquires that got no connection, by "
                                  "reason: timeout, overloaded, backend_down, closed",
                                  labels=[RESOURCE, "reason"])
    discarded = CounterMetricFamily("poolwarden_connections_discarded", "Connections closed by the pool "
                                    "instead of being reused, by reason", labels=[RESOURCE, "reason"])
    leaks = CounterMetricFamily("poolwarden_leaks_suspected", "Leases held longer than leak_threshold",
                                labels=[RESOURCE])
    events = counted("leak.suspected")
    for s in stats:
        for state in ("closed", "open", "half_open"):
            circuit.add_metric([s.resource, state], 1 if s.circuit == state else 0)
        ready.add_metric([s.resource], 1 if s.ready else 0)
        connect.add_metric([s.resource], s.connect_errors)
        reasons = dict(s.refused) or {"timeout": s.timeouts, "overloaded": s.overloaded}
        for reason, n in sorted(reasons.items()):
            refused.add_metric([s.resource, reason], n)
        for reason, n in sorted(s.discarded.items()):
            discarded.add_metric([s.resource, reason], n)
        leaks.add_metric([s.resource], events.get(s.resource, 0))
    out: list[Metric] = [circuit, ready, connect, refused, discarded, leaks, *_queue(stats)]
    if watchdog is not None:
        lag = HistogramMetricFamily("poolwarden_event_loop_lag_seconds", "How late the watchdog's heartbeat "
                                    "ran on the event loop", unit="seconds")
        snap = watchdog.lag()
        lag.add_metric([], _buckets(snap), snap.sum)
        blocked = CounterMetricFamily("poolwarden_event_loop_blocked", "Times the event loop was held "
                                      "longer than the watchdog's threshold")
        blocked.add_metric([], watchdog.stalls)
        out += [lag, blocked]
    return out


def _queue(stats: Iterable[PoolStats]) -> list[Metric]:
    """Overload: the queue's mode, who it turned away and why, and how long the served waited."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    lifo = GaugeMetricFamily("poolwarden_queue_lifo", "1 while the queue stands and the newest caller "
                             "is served first (adaptive LIFO), 0 first come first served",
                             labels=[RESOURCE])
    shed = CounterMetricFamily("poolwarden_queue_shed", "Callers turned away by the queue, by reason: full "
                               "(refused at once), overload (shed while the queue stood), timeout",
                               labels=[RESOURCE, "reason"])
    sojourn = HistogramMetricFamily("poolwarden_queue_time_seconds", "Time the served callers spent "
                                    "queued for a connection", labels=[RESOURCE], unit="seconds")
    for s in stats:
        if s.queue_time is None:
            continue  # a client: no queue of ours
        lifo.add_metric([s.resource], 1 if s.queue_mode == "lifo" else 0)
        for reason, n in sorted(s.shed.items()):
            shed.add_metric([s.resource, reason], n)
        sojourn.add_metric([s.resource], _buckets(s.queue_time), s.queue_time.sum)
    return [lifo, shed, sojourn]


def _gauge_values(s: PoolStats) -> dict[str, int]:
    # Idle connections are bounded by max_size alone (above min_size they retire after max_idle).
    return {"idle_max": s.max_size, "idle_min": s.min_size, "max": s.max_size,
            "pending_requests": s.waiting}


def _buckets(snap: HistogramSnapshot) -> list[tuple[str, float]]:
    from prometheus_client import utils

    float_to_go: Callable[[float], str] = utils.floatToGoString  # as prometheus_client writes "le"
    out: list[tuple[str, float]] = []
    seen = 0
    for bound, n in zip(snap.bounds, snap.counts, strict=False):
        seen += n
        out.append((float_to_go(bound), seen))
    out.append(("+Inf", snap.count))
    return out


# -- several processes: each writes its share to prometheus_client's files ----------------------------


class _Metrics:
    """The prometheus_client objects of multiprocess mode: one set per process."""

    def __init__(self, pc: Any, gauge_mode: GaugeMode) -> None:
        self.gauge_mode = gauge_mode
        self.count: Gauge = pc.Gauge("db_client_connection_count", _HELP["count"], (POOL, STATE),
                                     registry=None, multiprocess_mode=gauge_mode)
        self.gauges: dict[str, Gauge] = {
            key: pc.Gauge(f"db_client_connection_{key}", _HELP[key], (POOL,), registry=None,
                          multiprocess_mode=gauge_mode)
            for key in _GAUGES}
        self.timeouts: Counter = pc.Counter("db_client_connection_timeouts", _HELP["timeouts"], (POOL,),
                                            registry=None)
        self.hists: dict[str, Histogram] = {
            key: pc.Histogram(f"db_client_connection_{key}", _HELP[key], (POOL,), registry=None,
                              unit="seconds", buckets=BOUNDS)
            for key in _HISTOGRAMS}


class _Children:
    """One pool's labelled children, bound once so an event costs no label lookup."""

    __slots__ = ("create", "gauges", "idle", "timeouts", "use", "used", "wait")

    def __init__(self, m: _Metrics, resource: str) -> None:
        self.create = m.hists["create_time"].labels(resource)
        self.wait = m.hists["wait_time"].labels(resource)
        self.use = m.hists["use_time"].labels(resource)
        self.timeouts = m.timeouts.labels(resource)
        self.idle = m.count.labels(resource, "idle")
        self.used = m.count.labels(resource, "used")
        self.gauges = {key: m.gauges[key].labels(resource) for key in _GAUGES}


class _ProcessExporter:
    """A PoolListener writing this process's share of one warden's metrics (multiprocess mode)."""

    def __init__(self, warden: _Source, metrics: _Metrics, refresh_interval: float) -> None:
        self._warden = weakref.ref(warden)
        self._metrics = metrics
        self._interval = refresh_interval
        self._children: dict[str, _Children] = {}
        self._task: asyncio.Task[None] | None = None

    def _child(self, resource: str) -> _Children:
        child = self._children.get(resource)
        if child is None:
            child = self._children[resource] = _Children(self._metrics, resource)
            _every_child.append(child)
        return child

    # PoolListener: called by the pool on the event loop, must be fast and never raise
    def on_acquired(self, resource: str, wait: float) -> None:
        self._child(resource).wait.observe(wait)

    def on_released(self, resource: str, use: float) -> None:
        self._child(resource).use.observe(use)

    def on_connected(self, resource: str, seconds: float) -> None:
        self._child(resource).create.observe(seconds)
        self._start_refresher()  # connects are rare, and every pool connects when it opens

    def on_timeout(self, resource: str) -> None:
        self._child(resource).timeouts.inc()

    def on_closed(self, resource: str) -> None:
        """Called by the warden once a resource has closed: it holds and allows nothing any more."""
        _zero(self._child(resource))

    def refresh(self) -> bool:
        """Set the gauges from a snapshot; True while some pool of the warden is not closed."""
        warden = self._warden()
        if warden is None:
            return False
        alive = False
        for s in warden.stats().values():
            if kind(s) != "db":
                continue  # a Redis or HTTP client is no database pool: not on db_client_* names
            child = self._child(s.resource)
            if s.state == "closed":
                _zero(child)
                continue
            alive = True
            child.idle.set(s.idle)
            child.used.set(s.in_use)
            for key, value in _gauge_values(s).items():
                child.gauges[key].set(value)
        return alive

    def _start_refresher(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._task = loop.create_task(self._refresher(), name="poolwarden prometheus gauges")

    async def _refresher(self) -> None:
        """Refresh the gauges every interval until every pool of the warden is closed.

        A task rather than a timer: should the event loop end with pools still open (``asyncio.run``
        returning without the warden being closed), the task is cancelled and zeroes the gauges.
        """
        try:
            while True:
                await asyncio.sleep(self._interval)
                try:
                    if not self.refresh():
                        return
                except Exception:  # a metrics hiccup must never end the refresher
                    _log.debug("prometheus gauge refresh failed", exc_info=True)
        except asyncio.CancelledError:
            for child in self._children.values():  # the loop is going away, and its pools with it
                _zero(child)
            raise


def _zero(child: _Children) -> None:
    child.idle.set(0)
    child.used.set(0)
    for gauge in child.gauges.values():
        gauge.set(0)


_metrics: _Metrics | None = None
_exporters: weakref.WeakKeyDictionary[Any, _ProcessExporter] = weakref.WeakKeyDictionary()
#: every pool's gauges this process ever wrote, zeroed at exit (its warden may be long gone by then)
_every_child: list[_Children] = []
_in_default_registry: weakref.WeakSet[Any] = weakref.WeakSet()


def _zero_at_exit() -> None:
    for child in _every_child:
        try:
            _zero(child)
        except Exception:  # pragma: no cover - the process is exiting anyway
            pass


def instrument(warden: _Source, *, registry: CollectorRegistry | None = None, refresh_interval: float = 1.0,
               gauge_mode: GaugeMode = "livesum") -> None:
    """Make ``warden``'s pools visible to prometheus_client; calling it again does nothing.

    In one process, registers :func:`collector` on ``registry`` (prometheus_client's default one if
    None), so an existing ``/metrics`` endpoint such as ``prometheus_client.make_asgi_app()`` shows the
    pools. In multiprocess mode, starts writing this process's share of the metrics (see the module's
    documentation); ``registry`` is not used there, and ``refresh_interval`` (seconds between gauge
    updates) and ``gauge_mode`` (``"livesum"`` or ``"liveall"``) apply. ``warden.install(app)`` calls it
    in multiprocess mode, so each worker counts from start-up rather than from its first scrape.

    Raises ConfigError without prometheus_client, for a bad setting, or when
    ``PROMETHEUS_MULTIPROC_DIR`` was set after prometheus_client had been imported.
    """
    global _metrics
    pc = _client()
    if not multiprocess():
        target = registry if registry is not None else pc.REGISTRY
        if target is pc.REGISTRY:
            if warden in _in_default_registry:
                return
            _in_default_registry.add(warden)
        target.register(PoolCollector(warden))
        return
    if gauge_mode not in ("livesum", "liveall"):
        raise ConfigError(f"gauge_mode must be 'livesum' or 'liveall' (got gauge_mode={gauge_mode!r})")
    if isinstance(refresh_interval, bool) or not isinstance(refresh_interval, (int, float)) \
            or not refresh_interval > 0:
        raise ConfigError(f"refresh_interval must be a positive number of seconds "
                          f"(got refresh_interval={refresh_interval!r})")
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigError("PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported; set it "
                          "in the environment before the process starts")
    if warden in _exporters:
        return
    if _metrics is None:
        _metrics = _Metrics(pc, gauge_mode)
        atexit.register(_zero_at_exit)
    elif _metrics.gauge_mode != gauge_mode:
        raise ConfigError(f"gauge_mode is chosen once per process (already {_metrics.gauge_mode!r}, "
                          f"got {gauge_mode!r})")
    exporter = _ProcessExporter(warden, _metrics, float(refresh_interval))
    _exporters[warden] = exporter
    warden.add_listener(exporter)
    exporter.refresh()
    exporter._start_refresher()


class _Union:
    """Several collectors seen as one registry, for a single exposition."""

    def __init__(self, *collectors: Collector) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for c in self._collectors:
            yield from c.collect()


def render(warden: _Source, accept: str | None = None) -> tuple[bytes, str]:
    """The metrics exposition for a ``/metrics`` response: ``(body, content_type)``.

    One process: prometheus_client's default registry (the service's own metrics, process metrics)
    plus ``warden``'s pools, read now. Multiprocess mode: this process's gauges are refreshed, then the
    files of every process are merged. ``accept`` is the request's Accept header: OpenMetrics when it
    asks for it, the Prometheus text format otherwise. Raises ConfigError without prometheus_client.
    """
    pc = _client()
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    source: Any
    if multiprocess():
        from prometheus_client.multiprocess import MultiProcessCollector

        instrument(warden)
        _exporters[warden].refresh()
        source = pc.CollectorRegistry()
        MultiProcessCollector(source)  # type: ignore[no-untyped-call]
    elif warden in _in_default_registry:
        source = pc.REGISTRY
    else:
        source = _Union(pc.REGISTRY, PoolCollector(warden))
    payload: bytes = encoder(source)
    return payload, content_type
