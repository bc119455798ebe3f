"""The lifecycle event log: stable event names on the ``poolwarden`` logger, with structured extras.

Every record carries ``poolwarden.event`` and ``poolwarden.resource`` in ``extra`` (so JSON formatters
and log pipelines can key on them), and a short human message made of the same facts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["EVENTS", "Sink", "count_events", "counted", "emit", "logger", "subscribe"]

logger = logging.getLogger("poolwarden")

#: The stable event names, each with the level it is logged at.
EVENTS: dict[str, int] = {
    "pool.opened": logging.INFO,
    "pool.ready": logging.INFO,
    "pool.degraded": logging.WARNING,
    "connection.opened": logging.INFO,
    "connection.failed": logging.WARNING,
    "connection.lent": logging.DEBUG,
    "connection.returned": logging.DEBUG,
    "connection.discarded": logging.WARNING,
    "connection.recycled": logging.INFO,
    "ping.failed": logging.WARNING,
    # the same level, so a service that logs the start of an outage also logs its end
    "circuit.opened": logging.WARNING,
    "circuit.closed": logging.WARNING,
    "leak.suspected": logging.WARNING,
    "leak.returned": logging.WARNING,
    "leak.lost": logging.WARNING,
    "lease.overdue": logging.WARNING,
    "drain.started": logging.INFO,
    "drain.abandoned": logging.WARNING,
    "drain.finished": logging.INFO,
    "pool.resized": logging.INFO,
    "pool.expired": logging.INFO,
    "pool.paused": logging.INFO,
    "pool.resumed": logging.INFO,
    "pool.share": logging.WARNING,
    "client.opened": logging.INFO,
    "client.ready": logging.INFO,
    "client.closed": logging.INFO,
    "loop.blocked": logging.WARNING,
    "loop.lagging": logging.WARNING,
}

#: A subscriber of lifecycle events: ``sink(event, resource, detail, fields)``; must be fast, never raise.
Sink = Callable[[str, str, str, dict[str, Any]], None]
_sinks: list[Sink] = []


def subscribe(sink: Sink) -> Callable[[], None]:
    """Also hand every INFO-or-louder event to ``sink`` (the dashboard's timeline); returns the
    unsubscribe function. Independent of the logger's level: DEBUG events (lend, return) never reach it."""
    _sinks.append(sink)

    def unsubscribe() -> None:
        if sink in _sinks:
            _sinks.remove(sink)
    return unsubscribe


_counts: dict[str, dict[str, int]] = {}


def _count(event: str, resource: str, detail: str, fields: dict[str, Any]) -> None:
    per = _counts.get(event)
    if per is not None:
        per[resource] = per.get(resource, 0) + 1


def count_events(event: str) -> None:
    """Count ``event`` per resource from now on, for :func:`counted` (the Prometheus exporter counts
    ``leak.suspected`` this way); idempotent."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    if not _counts:
        subscribe(_count)
    _counts.setdefault(event, {})


def counted(event: str) -> dict[str, int]:
    """How many times ``event`` was emitted, per resource, since :func:`count_events` asked for it."""
    return dict(_counts.get(event, {}))


def emit(event: str, resource: str, detail: str = "", level: int | None = None, **fields: Any) -> None:
    """Log one event; ``detail`` and ``fields`` must already be free of secrets."""
    lvl = EVENTS[event] if level is None else level
    if _sinks and lvl >= logging.INFO:
        for sink in tuple(_sinks):
            try:
                sink(event, resource, detail, fields)
            except Exception:  # an observer must never break the pool
                logger.debug("event sink failed", exc_info=True)
    if not logger.isEnabledFor(lvl):
        return
    extra: dict[str, Any] = {"poolwarden.event": event, "poolwarden.resource": resource}
    for key, value in fields.items():
        extra[f"poolwarden.{key}"] = value
    if detail:
        logger.log(lvl, "%s [%s] %s", event, resource, detail, extra=extra)
    else:
        logger.log(lvl, "%s [%s]", event, resource, extra=extra)
