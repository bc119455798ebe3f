"""FastAPI integration: lease dependencies, the 503 problem+json handlers, health/metrics/stats routes.

Release timing maps onto FastAPI's ``Depends(scope=...)``: ``"function"`` ends the lease when the
endpoint returns (before the response is sent, so slow clients never pin a slot), ``"request"``
after the response is sent. No ``BaseHTTPMiddleware`` anywhere: it breaks cancellation and streaming.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from poolwarden._requires import require_fastapi
from poolwarden.errors import BackendDown, PoolClosed, PoolOverloaded, PoolTimeout, Unavailable
from poolwarden.handle import unwrap
from poolwarden.observe import health as _health
from poolwarden.observe.leaks import current_route

if TYPE_CHECKING:
    from poolwarden.warden import Resource, Warden

require_fastapi()  # a FastAPI without Depends(scope=...) fails here, at declaration, naming the fix

__all__ = ["dependency", "install", "problem_response"]

_PROBLEM = "application/problem+json"
_KIND = {PoolTimeout: "pool-timeout", PoolOverloaded: "pool-overloaded", BackendDown: "backend-down"}
_TITLE = {
    "pool-timeout": "No database connection became free in time",
    "pool-overloaded": "Too many requests are waiting for a database connection",
    "backend-down": "The backend is down",
    "unavailable": "The resource is unavailable",
    "closing": "The service is shutting down",
}


def dependency(pool: Resource[Any], *, release: Literal["endpoint", "response"] = "endpoint",
               transaction: bool = False) -> Any:
    """A ``Depends`` lending one connection of ``pool`` per request (see ``Resource.depends``)."""
    if release not in ("endpoint", "response"):
        from poolwarden.errors import ConfigError

        raise ConfigError(f"release must be 'endpoint' or 'response' (got release={release!r})")
    leak_on = pool.config.leak_threshold is not None

    async def lease(request: Request) -> AsyncIterator[Any]:
        token = None
        if leak_on:
            route = request.scope.get("route")
            token = current_route.set(f"{request.method} {getattr(route, 'path', request.url.path)}")
        try:
            conn = await pool.acquire()
        finally:
            if token is not None:
                current_route.reset(token)
        try:
            if transaction:
                async with pool.connector.transaction(unwrap(conn)):
                    yield conn
            else:
                yield conn
        except BaseException as exc:
            await pool._release(conn, exc)
            raise
        await pool._release(conn, None)

    lease.__name__ = f"{pool.name}_{'transaction' if transaction else 'connection'}"
    return Depends(lease, scope="function" if release == "endpoint" else "request")


def problem_response(exc: Unavailable | PoolClosed) -> JSONResponse:
    """RFC 9457 problem+json for a resource that cannot serve: names the resource, never a DSN."""
    if isinstance(exc, PoolClosed):
        kind, retry = "closing", 1.0
    else:
        kind = next((k for cls, k in _KIND.items() if isinstance(exc, cls)), "unavailable")
        retry = exc.retry_after
    seconds = max(1, math.ceil(retry))
    body = {
        "type": f"urn:poolwarden:problem:{kind}",
        "title": _TITLE[kind],
        "status": 503,
        "detail": f"{exc.resource or 'a resource'} cannot serve this request now; retry in {seconds}s",
        "resource": exc.resource,
        "retry_after": seconds,
    }
    return JSONResponse(body, status_code=503, media_type=_PROBLEM,
                        headers={"Retry-After": str(seconds)})


async def _unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, (Unavailable, PoolClosed))
    return problem_response(exc)


def install(warden: Warden, app: FastAPI, *, health: bool = True, metrics: bool | None = None,
            stats: bool = True, prefix: str = "") -> None:
    """Register the handlers and routes on ``app`` (see :meth:`Warden.install`)."""
    app.add_exception_handler(Unavailable, _unavailable)
    app.add_exception_handler(PoolClosed, _unavailable)

    if health:
        @app.get(f"{prefix}/livez", include_in_schema=False)
        async def livez() -> Response:
            code, body = _health.liveness()
            return JSONResponse(body, status_code=code, media_type=_health.CONTENT_TYPE)

        @app.get(f"{prefix}/readyz", include_in_schema=False)
        async def readyz(request: Request) -> Response:
            verbose = "verbose" in request.query_params
            code, body = _health.readiness(warden.stats(), draining=warden.draining, verbose=verbose)
            return JSONResponse(body, status_code=code, media_type=_health.CONTENT_TYPE)

    if metrics is None:
        # by default /metrics exists when prometheus_client does; asked for explicitly, a missing
        # extra is a ConfigError now rather than a 500 at the first scrape
        metrics = importlib.util.find_spec("prometheus_client") is not None
    if metrics:
        from poolwarden.observe import prometheus

        prometheus.require()

        if prometheus.multiprocess():
            # Each worker writes its share of the metrics from start-up, not from its first scrape.
            prometheus.instrument(warden)

        @app.get(f"{prefix}/metrics", include_in_schema=False)
        async def metrics_route(request: Request) -> Response:
            payload, content_type = prometheus.render(warden, request.headers.get("accept"))
            return Response(payload, media_type=content_type)

    if stats:
        @app.get(f"{prefix}/poolwarden/stats", include_in_schema=False)
        async def stats_route() -> Response:
            return JSONResponse({name: s.to_dict() for name, s in warden.stats().items()})
