"""FastAPI dependencies giving a SQLAlchemy session per request, on a poolwarden lease.

The lease is taken here, on the event loop, before a sync endpoint occupies a worker thread
(fastapi/fastapi#3205); the session is bound to it for the whole request and ended exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, Request
from fastapi import params as fastapi_params

from poolwarden.errors import ConfigError

if TYPE_CHECKING:
    from poolwarden.orm.resource import SQLAlchemyResource

__all__ = ["session_dependency"]


def session_dependency(orm: SQLAlchemyResource[Any], *, release: Literal["endpoint", "response"],
                       transaction: bool) -> fastapi_params.Depends:
    """A ``Depends`` lending one session of ``orm`` per request (see ``session_depends``)."""
    if release not in ("endpoint", "response"):
        raise ConfigError(f"release must be 'endpoint' or 'response' (got release={release!r})")
    if transaction and release == "response":
        raise ConfigError(f"{orm.name}: a transaction released after the response would commit after a "
                          "2xx was sent; use release='endpoint' or commit in the endpoint")
    leak_on = orm.config.leak_threshold is not None

    async def session(request: Request) -> AsyncIterator[Any]:
        route = None
        if leak_on:
            found = request.scope.get("route")
            route = f"{request.method} {getattr(found, 'path', request.url.path)}"
        async with orm._orm_scope(transaction, route) as sess:
            yield sess

    session.__name__ = f"{orm.name}_{'transaction' if transaction else 'session'}"
    scope: Literal["function", "request"] = "function" if release == "endpoint" else "request"
    depends: fastapi_params.Depends = Depends(session, scope=scope)
    return depends
