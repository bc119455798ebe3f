"""Health reports in the ``application/health+json`` shape (draft-inadarei-api-health-check).

Readiness is read from each pool's own state (circuit, last check, draining); it never runs a query,
so a probe storm cannot load the database, and liveness never looks at a backend at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from poolwarden.observe.stats import PoolStats, kind

#: the health draft's componentType: a database or Redis is a datastore, an HTTP upstream a system
_COMPONENT = {"db": "datastore", "redis": "datastore", "http": "system"}

__all__ = ["CONTENT_TYPE", "liveness", "readiness"]

CONTENT_TYPE = "application/health+json"


def liveness() -> tuple[int, dict[str, Any]]:
    """The process answers: that is all liveness means (a backend blip must never restart it)."""
    return 200, {"status": "pass"}


def readiness(stats: Mapping[str, PoolStats], *, draining: bool, verbose: bool = False
              ) -> tuple[int, dict[str, Any]]:
    """200 when every required resource can lend and the service is not draining, else 503."""
    now = datetime.now(UTC).isoformat()
    checks: dict[str, list[dict[str, Any]]] = {}
    failed = draining
    degraded = False
    for name, s in stats.items():
        ok = s.ready and not draining
        status = "pass" if ok else ("warn" if s.optional and not draining else "fail")
        if status == "fail":
            failed = True
        elif status == "warn":
            degraded = True
        component = _COMPONENT[kind(s)]
        conn: dict[str, Any] = {
            "componentId": name, "componentType": component, "observedValue": s.idle + s.in_use,
            "observedUnit": "connections", "status": status, "time": now,
        }
        if verbose:
            conn["output"] = _why(s, draining)
            conn["details"] = {"size": s.size, "idle": s.idle, "in_use": s.in_use,
                               "connecting": s.connecting, "waiting": s.waiting, "max": s.max_size,
                               "circuit": s.circuit, "state": s.state, "optional": s.optional,
                               "retry_after": round(s.retry_after, 3)}
        elif not ok:
            conn["output"] = _why(s, draining)
        checks[f"{name}:connections"] = [conn]
        if s.last_check_seconds is not None:
            checks[f"{name}:responseTime"] = [{
                "componentId": name, "componentType": component,
                "observedValue": round(s.last_check_seconds * 1000, 3), "observedUnit": "ms",
                "status": status, "time": _ago(s.last_check_age),
            }]
    overall = "fail" if failed else ("warn" if degraded else "pass")
    body: dict[str, Any] = {"status": overall, "checks": checks}
    if draining:
        body["output"] = "draining: shutting down"
    return (503 if failed else 200), body


def _why(s: PoolStats, draining: bool) -> str:
    if draining or s.state in ("draining", "closed"):
        return "draining"
    if s.state != "open":
        return f"pool is {s.state}"
    if s.circuit != "closed":
        return f"circuit open: backend unreachable, next probe in {s.retry_after:.1f}s"
    if not s.ready:
        return "not connected yet"
    return "ok"


def _ago(age: float | None) -> str:
    when = time.time() - (age or 0.0)
    return datetime.fromtimestamp(when, UTC).isoformat()
