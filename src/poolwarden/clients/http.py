"""HTTP through httpx: one ``AsyncClient`` on a base URL, whose connection pool httpcore keeps.

``options`` are ``AsyncClient`` keyword arguments (``limits``, ``headers``, ``transport``...); the
timeout defaults to httpx's 5 s with ``connect_timeout`` for connecting. The ping is a GET of
``health_path`` (relative to the base URL) that must answer below 400; without ``health_path`` there
is no ping and the client is ready as soon as it is made.
"""

from __future__ import annotations

import inspect
from typing import Any

import httpx

from poolwarden.clients.base import Occupancy
from poolwarden.clients.config import ClientConfig
from poolwarden.config import DSN
from poolwarden.connectors._shared import check_options
from poolwarden.errors import ConfigError

__all__ = ["HttpDriver", "create"]

_OWN_OPTIONS = frozenset({"self", "base_url"})


def create(dsn: DSN, config: ClientConfig) -> HttpDriver:
    """The httpx driver for the base URL ``dsn``; raises ConfigError for an unknown option."""
    return HttpDriver(dsn, config)


class HttpDriver:
    """Makes, pings (GET ``health_path``) and closes an ``httpx.AsyncClient``."""

    driver = "httpx"

    def __init__(self, dsn: DSN, config: ClientConfig) -> None:
        allowed = set(inspect.signature(httpx.AsyncClient.__init__).parameters) - _OWN_OPTIONS
        self._options = check_options(self.driver, config.options, allowed)
        self._options.setdefault("timeout", httpx.Timeout(5.0, connect=config.connect_timeout))
        if dsn.username is not None or dsn.password is not None:
            # As httpx.BasicAuth, not in the base URL: httpx logs every request's URL at INFO.
            if "auth" in self._options:
                raise ConfigError("the http client's credentials are given twice, in the URL and in "
                                  "options={'auth': ...}: give them once")
            self._options["auth"] = httpx.BasicAuth(dsn.username or "", dsn.password or "")
        self._url = dsn.url()
        self._path = config.health_path
        self.pings = self._path is not None

    def __repr__(self) -> str:
        return "<HttpDriver>"

    async def open(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self._url, **self._options)

    async def ping(self, client: httpx.AsyncClient) -> None:
        if self._path is None:
            return
        response = await client.get(self._path)
        if response.status_code >= 400:
            # our own short message: httpx's names the whole URL and links to MDN
            raise httpx.HTTPStatusError(f"GET {self._path} answered {response.status_code}",
                                        request=response.request, response=response)

    async def close(self, client: httpx.AsyncClient) -> None:
        await client.aclose()

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, (httpx.TransportError, OSError))

    def occupancy(self, client: httpx.AsyncClient) -> Occupancy | None:
        pool: Any = getattr(getattr(client, "_transport", None), "_pool", None)  # httpcore's, if default
        if pool is None:
            return None
        conns = list(pool.connections)
        idle = sum(1 for c in conns if c.is_idle())
        limit = getattr(pool, "_max_connections", None)
        return Occupancy(idle=idle, in_use=len(conns) - idle, max_size=int(limit) if limit else 0)
