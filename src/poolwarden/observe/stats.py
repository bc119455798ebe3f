"""The frozen stats snapshot of a pool, and the cheap histogram the pool keeps."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BOUNDS", "Histogram", "HistogramSnapshot", "PoolStats", "kind"]

#: Bucket upper bounds in seconds, as the OpenTelemetry database-client conventions advise.
BOUNDS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

CircuitState = Literal["closed", "open", "half_open"]
PoolState = Literal["new", "opening", "open", "draining", "closed"]


class Histogram:
    """Counts per bucket plus sum; ``observe`` is a bisect and two additions, nothing more."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.count, self.sum)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Non-cumulative bucket counts (the last one is +Inf), count and sum, in seconds."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float

    def quantile(self, q: float) -> float:
        """An upper bound of the ``q`` quantile from the buckets (0.0 when empty)."""
        if not self.count:
            return 0.0
        target = q * self.count
        seen = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += n
            if seen >= target:
                return bound
        return float("inf")  # pragma: no cover

    def to_dict(self) -> dict[str, object]:
        """The raw buckets, and next to them the p50/p90/p99 interpolated in the buckets (seconds; a
        quantile past the last bound reads as that bound)."""
        from poolwarden.observe.quantiles import interpolate

        out: dict[str, object] = {"bounds": list(self.bounds), "counts": list(self.counts),
                                  "count": self.count, "sum": self.sum}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            out[name] = round(interpolate(self.bounds, self.counts, q)[0], 6)
        return out


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A consistent snapshot of one pool, taken without I/O."""

    resource: str
    driver: str
    state: PoolState
    circuit: CircuitState
    size: int
    idle: int
    in_use: int
    connecting: int
    waiting: int
    min_size: int
    max_size: int
    acquired: int
    released: int
    discarded: Mapping[str, int]
    timeouts: int
    overloaded: int
    connect_errors: int
    pings_failed: int
    wait_time: HistogramSnapshot
    use_time: HistogramSnapshot
    connect_time: HistogramSnapshot
    #: seconds until the next probe of an open or half-open circuit ends (0.0 when closed)
    retry_after: float = 0.0
    #: the last connect or ping error, scrubbed of secrets
    last_error: str | None = None
    #: seconds of the last successful ping or connect round trip, if any
    last_check_seconds: float | None = None
    #: monotonic age in seconds of the last check (None when never checked)
    last_check_age: float | None = None
    #: True when the pool can lend: open, circuit closed and connected at least once
    ready: bool = False
    #: a required resource gates readiness; an optional one only reports
    optional: bool = False
    #: "lifo" while the queue stands and the newest caller is served first, else "fifo"
    queue_mode: Literal["fifo", "lifo"] = "fifo"
    #: the queue bound in force (``max_waiting``, or its default from ``max_size``; 0: no bound)
    queue_bound: int = 0
    #: callers turned away by reason: ``full`` (refused at once), ``overload`` (shed while the queue
    #: stood), ``timeout`` (waited ``acquire_timeout``)
    shed: Mapping[str, int] = field(default_factory=dict)
    #: time spent in the queue by the callers that were served (``None`` for clients)
    queue_time: HistogramSnapshot | None = None
    extra: Mapping[str, object] = field(default_factory=dict)
    #: acquires refused, by reason: timeout, overloaded, backend_down, closed
    refused: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, HistogramSnapshot):
                value = value.to_dict()
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        return out


def kind(s: PoolStats) -> Literal["db", "http", "redis"]:
    """What a resource is, for naming its metrics and health: an HTTP or Redis client is no database pool."""
    if s.extra.get("kind") == "client":
        if s.driver == "httpx":
            return "http"
        if s.driver == "redis":
            return "redis"
    return "db"  # pools, and SQLAlchemy engines (a database pool of their own)
