"""FastAPI integration: lease dependencies, the 503 problem+json handlers, health/metrics/stats routes.

Release timing maps onto FastAPI's ``Depends(scope=...)``: ``"function"`` ends the lease when the
endpoint returns (before the response is sent, so slow clients never pin a slot), ``"request"``
after the response is sent. No ``BaseHTTPMiddleware`` anywhere: it breaks cancellation and streaming.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, params
from fastapi.responses import JSONResponse, Response

from poolwarden._requires import require_fastapi
from poolwarden.bounded import Expired, bounded
from poolwarden.errors import (
    BackendDown,
    BackendLost,
    ConfigError,
    LeaseEnded,
    PoolClosed,
    PoolOverloaded,
    PoolTimeout,
    Unavailable,
)
from poolwarden.handle import unwrap
from poolwarden.observe import health as _health
from poolwarden.observe.leaks import current_route

if TYPE_CHECKING:
    from poolwarden.warden import Resource, Warden

require_fastapi()  # a FastAPI without Depends(scope=...) fails here, at declaration, naming the fix

__all__ = [
    "bind",
    "bound_warden",
    "connection",
    "dependency",
    "depends",
    "install",
    "problem_response",
    "transaction",
]

_log = logging.getLogger("poolwarden")
_PROBLEM = "application/problem+json"
_KIND = {PoolTimeout: "pool-timeout", PoolOverloaded: "pool-overloaded", BackendDown: "backend-down",
         BackendLost: "backend-lost"}
_TITLE = {
    "pool-timeout": "No database connection became free in time",
    "pool-overloaded": "Too many requests are waiting for a database connection",
    "backend-down": "The backend is down",
    "backend-lost": "The connection to the backend broke during the request",
    "unavailable": "The resource is unavailable",
    "closing": "The service is shutting down",
}


def dependency(pool: Resource[Any], *, release: Literal["endpoint", "response"] = "endpoint",
               transaction: bool = False) -> Any:
    """A ``Depends`` lending one connection of ``pool`` per request (see ``Resource.depends``).

    With ``transaction=True`` the COMMIT runs when the endpoint returns, before the response starts:
    a COMMIT that fails, or that the server answers with a rollback, reaches the client as an error,
    never as a 2xx; a client that left before it gets a rollback. BEGIN, COMMIT and ROLLBACK each
    get ``reset_timeout``: past it the connection is terminated and discarded and the request fails
    with :class:`BackendLost` (503). A driver error meaning the connection broke (the connector's
    ``is_disconnect``) escaping the endpoint also becomes :class:`BackendLost`.
    """
    if release not in ("endpoint", "response"):
        raise ConfigError(f"release must be 'endpoint' or 'response' (got release={release!r})")
    if transaction and release == "response":
        raise ConfigError(
            "transaction=True needs release='endpoint' (got release='response'): the COMMIT must run "
            "before the response starts, or a client could be told of a success that was never "
            "committed. Commit in the endpoint (db.transaction) and stream from a "
            "release='response' connection, or open the transaction inside the streaming body")
    leak_on = pool.config.leak_threshold is not None
    connector = pool.connector

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
        overdue = pool._limit_lease(conn, _route(request)) if release == "response" else None
        try:
            if transaction:
                block = connector.transaction(unwrap(conn))
                await _bounded(pool, conn, block.__aenter__(), "BEGIN")
                try:
                    yield conn
                except BaseException as exc:
                    await _bounded(pool, conn, block.__aexit__(type(exc), exc, exc.__traceback__), "ROLLBACK")
                    raise
                if await request.is_disconnected():
                    gone = HTTPException(499, "the client closed the request before the COMMIT: rolled back")
                    await _bounded(pool, conn, block.__aexit__(HTTPException, gone, None), "ROLLBACK")
                    raise gone
                await _bounded(pool, conn, block.__aexit__(None, None, None), "COMMIT")
            else:
                yield conn
        except BaseException as exc:
            # the pool classifies the driver's own error (a bounded COMMIT's timeout for BackendLost)
            cause = exc.__cause__ if isinstance(exc, BackendLost) and exc.__cause__ else exc
            if overdue is not None:
                overdue.cancel()
            await pool._release(conn, cause)
            if exc is cause and isinstance(exc, Exception) and connector.is_disconnect(exc):
                raise BackendLost(
                    f"{pool.name}: the connection broke during the request ({type(exc).__name__}); "
                    "it was discarded, and whether its last statement took effect is unknown",
                    resource=pool.name, retry_after=1.0) from exc
            raise
        if overdue is not None:
            overdue.cancel()
        await pool._release(conn, None)

    lease.__name__ = f"{pool.name}_{'transaction' if transaction else 'connection'}"
    return Depends(lease, scope="function" if release == "endpoint" else "request")


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', request.url.path)}"


async def _bounded(pool: Resource[Any], conn: Any, step: Awaitable[object], what: str) -> None:
    """Run a BEGIN, COMMIT or ROLLBACK for at most ``reset_timeout``; past it (or when the request is
    cancelled meanwhile) the connection is terminated, its state being unknown."""
    limit = pool.config.reset_timeout
    try:
        await bounded(step, limit, lambda: _terminate(pool, conn), what)
    except Expired as exc:
        unknown = ", and whether it committed is unknown" if what == "COMMIT" else ""
        raise BackendLost(
            f"{pool.name}: {what} got no answer within reset_timeout={limit}s; the connection was "
            f"terminated and discarded{unknown}", resource=pool.name, retry_after=1.0) from exc


def _terminate(pool: Resource[Any], conn: Any) -> None:
    try:
        pool.connector.terminate(unwrap(conn))
    except LeaseEnded:
        pass  # the drain ended the lease and closed the connection already


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
            stats: bool | None = None, prefix: str = "",
            dependencies: Sequence[params.Depends] | None = None,
            tags: Sequence[str] = ("poolwarden",), include_in_schema: bool = False,
            dashboard: bool = False) -> None:
    """Register the handlers and routes on ``app`` and bind ``warden`` to it (see :meth:`Warden.install`)."""
    bind(warden, app)  # first: refused for an app bound to another warden, before anything is added
    app.add_exception_handler(Unavailable, _unavailable)
    app.add_exception_handler(PoolClosed, _unavailable)
    internals = bool(dependencies) if stats is None else stats
    # /livez and /readyz answer anonymous probes (a kubelet sends no credentials): never guarded,
    # not even by the app's own FastAPI(dependencies=...); /metrics stays under those
    probes = _Routes(app, list(tags), include_in_schema, None, probe=True)
    open_routes = _Routes(app, list(tags), include_in_schema, None)
    guarded = _Routes(app, list(tags), include_in_schema, dependencies)
    public_verbose = internals and not dependencies

    if health:
        async def livez() -> Response:
            code, body = _health.liveness()
            return JSONResponse(body, status_code=code, media_type=_health.CONTENT_TYPE)

        async def readyz(request: Request) -> Response:
            verbose = public_verbose and "verbose" in request.query_params
            code, body = _health.readiness(warden.stats(), draining=warden.draining, verbose=verbose)
            return JSONResponse(body, status_code=code, media_type=_health.CONTENT_TYPE)

        probes.add(f"{prefix}/livez", livez, "poolwarden_livez")
        probes.add(f"{prefix}/readyz", readyz, "poolwarden_readyz")

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

        async def metrics_route(request: Request) -> Response:
            payload, content_type = prometheus.render(warden, request.headers.get("accept"))
            return Response(payload, media_type=content_type)

        if _taken(app, f"{prefix}/metrics"):
            # Someone serves /metrics already (prometheus-fastapi-instrumentator, make_asgi_app):
            # the pools join prometheus_client's default registry, which such endpoints expose.
            _join_default_registry(warden)
        else:
            open_routes.add(f"{prefix}/metrics", metrics_route, "poolwarden_metrics")

    if internals:
        async def stats_route() -> Response:
            return JSONResponse({name: s.to_dict() for name, s in warden.stats().items()})

        async def health_route() -> Response:
            code, body = _health.readiness(warden.stats(), draining=warden.draining, verbose=True)
            return JSONResponse(body, status_code=code, media_type=_health.CONTENT_TYPE)

        guarded.add(f"{prefix}/poolwarden/stats", stats_route, "poolwarden_stats")
        guarded.add(f"{prefix}/poolwarden/health", health_route, "poolwarden_health")

    if dashboard:  # the live dashboard shows internals too: same guard as /poolwarden/stats
        if not internals:
            raise ConfigError("dashboard=True serves internals: pass dependencies=[...] that authenticate "
                              "operators, or stats=True for an app on a private port")
        from poolwarden.observe import dashboard as _dashboard

        board = _dashboard.router(warden, prefix=f"{prefix}/poolwarden/dashboard", dependencies=dependencies)
        app.include_router(board)
        _dashboard.attach(app, board.history)


def connection(name: str) -> params.Depends:
    """``Depends`` lending a connection of the pool ``name`` of the warden bound to the app serving
    the request (``warden.install(app)``): for routers written before any warden exists, so that
    each app (a new one per test, say) can have its own. Released when the endpoint returns."""
    return depends(name)


def transaction(name: str) -> params.Depends:
    """Like :func:`connection`, inside a transaction (commit on success, roll back on any error)."""
    return depends(name, transaction=True)


def depends(name: str, *, release: Literal["endpoint", "response"] = "endpoint",
            transaction: bool = False) -> params.Depends:
    """The app-bound form of ``Resource.depends``: the pool is looked up by ``name`` in the warden
    bound to ``request.app`` at each request (a ConfigError names what is missing). The same object
    for the same arguments, and ``Resource.override`` replaces it too."""
    key = (name, release, transaction)
    dep = _named.get(key)
    if dep is None:
        if release not in ("endpoint", "response"):
            raise ConfigError(f"release must be 'endpoint' or 'response' (got release={release!r})")
        if transaction and release == "response":
            raise ConfigError("transaction=True needs release='endpoint' (got release='response'): the "
                              "COMMIT must run before the response starts (see Resource.depends)")

        async def lease(request: Request) -> AsyncIterator[Any]:
            warden = bound_warden(request.app)
            if name not in warden.resources:
                raise ConfigError(f"the warden bound to this app has no pool {name!r} "
                                  f"(it has {sorted(warden.resources)})")
            inner = warden.resources[name].depends(release=release, transaction=transaction).dependency
            assert inner is not None
            async with asynccontextmanager(inner)(request) as conn:
                yield conn

        lease.__name__ = f"{name}_{'transaction' if transaction else 'connection'}"
        dep = _named[key] = Depends(lease, scope="function" if release == "endpoint" else "request")
    return dep


named_dependencies = depends  # the name Resource.override looks for
_named: dict[tuple[str, str, bool], params.Depends] = {}


def _join_default_registry(warden: Warden) -> None:
    """Show ``warden``'s pools in prometheus_client's default registry.

    One collector serves every warden that joined, so a new app and warden per test (each joining)
    never registers the same metric names twice; a warden whose pools are all closed drops out.
    """
    from poolwarden.observe import prometheus

    global _joined
    if prometheus.multiprocess():
        return  # install() already made every worker write its share, which /metrics merges
    if _joined is None:
        import prometheus_client

        _joined = _JoinedWardens()
        prometheus_client.REGISTRY.register(_joined)
    _joined.wardens.add(warden)


class _JoinedWardens:
    def __init__(self) -> None:
        self.wardens: weakref.WeakSet[Warden] = weakref.WeakSet()

    def describe(self) -> list[Any]:
        return []  # names vary with the wardens joined; nothing to reserve

    def collect(self) -> list[Any]:
        from poolwarden.observe import prometheus

        families: dict[str, Any] = {}
        for warden in list(self.wardens):
            if not any(s.state in ("open", "draining") for s in warden.stats().values()):
                continue
            for family in prometheus.collector(warden).collect():
                have = families.get(family.name)
                if have is None:
                    families[family.name] = family
                else:
                    have.samples.extend(family.samples)
        return list(families.values())


_joined: _JoinedWardens | None = None


def bind(warden: Warden, app: FastAPI) -> None:
    """Make ``warden`` the one that :func:`connection`, :func:`transaction` and :func:`depends` of this
    ``app`` lend from (``install`` does it); an app is bound to one warden."""
    bound = getattr(app.state, _STATE_KEY, None)
    if bound is not None and bound is not warden:
        raise ConfigError(f"this app is already bound to another warden ({bound!r})")
    setattr(app.state, _STATE_KEY, warden)


def bound_warden(app: Any) -> Warden:
    """The warden bound to ``app`` by ``warden.install(app)``; ConfigError when there is none."""
    warden: Warden | None = getattr(getattr(app, "state", None), _STATE_KEY, None)
    if warden is None:
        raise ConfigError("no warden is bound to this app: call warden.install(app) in the app factory")
    return warden


_STATE_KEY = "poolwarden"


def _taken(app: FastAPI, path: str) -> bool:
    """True when a GET on ``path`` already reaches another route or mount of ``app``."""
    for route in app.router.routes:
        if getattr(route, "path", None) != path:
            continue
        methods = getattr(route, "methods", None)
        if methods is None or "GET" in methods:  # a Mount, a websocket-less ASGI app, or a GET route
            return True
    return False


class _Routes:
    """Adds operator routes with tags and fixed operation ids, so an app's own
    ``generate_unique_id_function`` (which may read ``route.tags[0]``) is never asked about them, and
    never over a path the app already serves."""

    def __init__(self, app: FastAPI, tags: list[str], include_in_schema: bool,
                 dependencies: Sequence[params.Depends] | None, *, probe: bool = False) -> None:
        self._app = app
        self._tags: list[str | Enum] = list(tags)
        self._schema = include_in_schema
        self._dependencies = dependencies
        self._probe = probe

    def add(self, path: str, endpoint: Callable[..., Any], operation_id: str) -> None:
        if _taken(self._app, path):
            _log.info("install.skipped: %s is served by the app already; poolwarden adds no route there",
                      path, extra={"poolwarden.event": "install.skipped", "poolwarden.path": path})
            return
        router = self._app.router
        app_wide = router.dependencies
        if self._probe:
            router.dependencies = []  # FastAPI's own add_api_route, without the app-wide dependencies
        try:
            self._app.add_api_route(path, endpoint, methods=["GET"], tags=self._tags,
                                    operation_id=operation_id, name=operation_id,
                                    include_in_schema=self._schema, dependencies=self._dependencies)
        finally:
            router.dependencies = app_wide
