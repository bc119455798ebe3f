"""Warden: the registry of a service's resources, their ordered start-up and drain, health and stats."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from poolwarden.clients import Client, ClientConfig, driver_for
from poolwarden.clients.base import ClientDriver
from poolwarden.config import DSN, PoolConfig, Secrets, check_resource_name, env_name
from poolwarden.connectors import connector_for
from poolwarden.connectors.base import Connector
from poolwarden.errors import ConfigError
from poolwarden.handle import unwrap
from poolwarden.observe.events import emit
from poolwarden.observe.hooks import PoolListener
from poolwarden.observe.leaks import LeaseInfo
from poolwarden.observe.stats import PoolStats
from poolwarden.pool import Pool

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["Resource", "Warden"]

C = TypeVar("C")
Release = Literal["endpoint", "response"]


class Resource(Pool[C]):
    """A pool declared on a :class:`Warden`: a :class:`Pool` plus ready FastAPI dependencies."""

    def __init__(self, name: str, connector: Connector[C], config: PoolConfig, dsn: DSN | None) -> None:
        secrets = Secrets((*(dsn.secrets.values if dsn else ()), *config.secrets))
        super().__init__(name, connector, config, secrets=secrets)
        self.dsn = dsn  # str() and repr() of a DSN are redacted

    @cached_property
    def connection(self) -> Any:
        """``Depends`` lending a connection, released as soon as the endpoint returns."""
        return self.depends()

    @cached_property
    def transaction(self) -> Any:
        """``Depends`` lending a connection inside a transaction: commit on success, roll back on
        any exception (``HTTPException`` included); released when the endpoint returns."""
        return self.depends(transaction=True)

    def depends(self, *, release: Release = "endpoint", transaction: bool = False) -> Any:
        """A FastAPI ``Depends`` for this pool.

        ``release="endpoint"`` (the default) gives the connection back when the endpoint returns,
        before the response is sent; ``release="response"`` keeps it until the response has been
        sent, for a streaming body that reads from it.
        """
        from poolwarden.fastapi import dependency  # FastAPI is imported only by those who use it

        return dependency(self, release=release, transaction=transaction)


class Warden:
    """The resources of one service: declare them, then ``FastAPI(lifespan=warden.lifespan)``."""

    def __init__(self, *, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._resources: dict[str, Resource[Any]] = {}
        self._declared: dict[str, Resource[Any] | Client[Any]] = {}  # pools and clients, in order
        self._listeners: list[PoolListener] = []
        self.draining = False

    def pool(self, name: str, url: str | None = None, *, connector: Connector[Any] | None = None,
             **settings: Any) -> Resource[Any]:
        """Declare a connection pool; validates now (raising ConfigError), connects at start-up.

        ``url`` may come from ``POOLWARDEN_<NAME>_URL``; the scheme picks the driver (postgresql://,
        postgresql+psycopg://, mysql://, mariadb://, sqlite:///). Settings are PoolConfig keywords,
        also read from ``POOLWARDEN_<NAME>_<SETTING>``. Pass ``connector`` to bring your own backend.
        """
        check_resource_name(name)
        if name in self._declared:
            raise ConfigError(f"resource {name!r} is declared twice")
        config = PoolConfig.from_settings(name, settings, self._environ)
        if url is None:
            url = self._environ.get(f"POOLWARDEN_{env_name(name)}_URL")
        dsn: DSN | None = None
        if connector is None:
            if url is None:
                raise ConfigError(f"resource {name!r} needs a url (or POOLWARDEN_{env_name(name)}_URL)")
            dsn = DSN(url)
            connector = connector_for(dsn, config)
        elif url is not None:
            dsn = DSN(url)
        resource: Resource[Any] = Resource(name, connector, config, dsn)
        for listener in self._listeners:
            resource.add_listener(listener)
        self._resources[name] = self._declared[name] = resource
        return resource

    def client(self, name: str, url: str | None = None, *, kind: str | None = None,
               factory: ClientDriver[Any] | None = None, **settings: Any) -> Client[Any]:
        """Declare a shared, self-pooling client; validates now (raising ConfigError), opens at start-up
        in declaration order with the pools, and closes in reverse.

        ``url`` may come from ``POOLWARDEN_<NAME>_URL``; the scheme picks the driver: redis://,
        rediss://, unix:// (redis.asyncio), http://, https:// (an httpx base URL); pass
        ``kind="sqlalchemy"`` for a SQLAlchemy async engine (its URLs look like a pool's). Settings are
        ClientConfig keywords, also read from ``POOLWARDEN_<NAME>_<SETTING>``. Pass ``factory`` (a
        :class:`~poolwarden.clients.ClientDriver`) to bring your own client.
        """
        check_resource_name(name)
        if name in self._declared:
            raise ConfigError(f"resource {name!r} is declared twice")
        config = ClientConfig.from_settings(name, settings, self._environ)
        if url is None:
            url = self._environ.get(f"POOLWARDEN_{env_name(name)}_URL")
        dsn = None if url is None else DSN(url)
        if factory is None:
            if dsn is None:
                raise ConfigError(f"client {name!r} needs a url (or POOLWARDEN_{env_name(name)}_URL)")
            factory = driver_for(dsn, config, kind)
        client: Client[Any] = Client(name, factory, config, dsn)
        self._declared[name] = client
        return client

    @property
    def resources(self) -> Mapping[str, Resource[Any]]:
        return dict(self._resources)

    def add_listener(self, listener: PoolListener) -> None:
        """Call ``listener`` on every acquire, release, connect and timeout of every pool, those
        declared later included (how the Prometheus and OpenTelemetry exporters see the pools).

        A listener that also has an ``on_closed(resource: str)`` method is told when each resource
        has finished closing (the multiprocess Prometheus exporter zeroes its gauges then).
        """
        self._listeners.append(listener)
        for resource in self._resources.values():
            resource.add_listener(listener)

    def _closed(self, resource: Resource[Any] | Client[Any]) -> None:
        for listener in self._listeners:
            on_closed = getattr(listener, "on_closed", None)
            if on_closed is not None:
                on_closed(resource.name)

    def __getitem__(self, name: str) -> Resource[Any]:
        return self._resources[name]

    def __repr__(self) -> str:
        return f"<Warden resources={list(self._declared)}>"

    async def open(self) -> None:
        """Open every resource in declaration order; on failure close those already open."""
        self.draining = False
        opened: list[Resource[Any] | Client[Any]] = []
        try:
            for resource in self._declared.values():
                await self._open_one(resource)
                opened.append(resource)
        except BaseException:
            for resource in reversed(opened):
                await resource.close()
                self._closed(resource)
            raise

    async def _open_one(self, resource: Resource[Any] | Client[Any]) -> None:
        cfg = resource.config
        if cfg.startup == "lazy":
            await resource.open(wait=False)
        elif cfg.optional:
            await resource.open(wait=False)
            if not await resource.wait_ready(cfg.startup_timeout):
                emit("pool.degraded", resource.name, "optional resource starts degraded; connecting "
                     "in the background")
        else:
            await resource.open(wait=True)
        if resource.ready and isinstance(resource, Resource):
            await self._check_share(resource)

    async def _check_share(self, resource: Resource[Any]) -> None:
        """Warn when this pool alone may take more than half of the server's connection limit."""
        try:
            async with asyncio.timeout(resource.config.connect_timeout):
                async with resource.acquire() as conn:
                    info = await resource.connector.server_info(unwrap(conn))
        except Exception:
            return  # advisory only: start-up must not fail on it
        resource.server_info = info
        limit = info.max_connections
        if limit and resource.config.max_size > limit // 2:
            emit("pool.share", resource.name,
                 f"max_size={resource.config.max_size} is more than half of the server's "
                 f"max_connections={limit}; with several workers or replicas, put PgBouncer in front",
                 max_size=resource.config.max_size, max_connections=limit)

    async def close(self) -> dict[str, list[LeaseInfo]]:
        """Drain every resource, in reverse declaration order; returns the leases abandoned."""
        self.draining = True  # /readyz turns red before anything is refused
        abandoned: dict[str, list[LeaseInfo]] = {}
        for resource in reversed(list(self._declared.values())):
            left = await resource.close()
            self._closed(resource)
            if left:
                abandoned[resource.name] = left
        return abandoned

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """The FastAPI/Starlette lifespan: open in declaration order, drain in reverse at shutdown."""
        await self.open()
        try:
            yield
        finally:
            await self.close()

    async def __aenter__(self) -> Warden:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stats(self) -> dict[str, PoolStats]:
        """A snapshot of every resource, keyed by name."""
        return {name: r.stats() for name, r in self._declared.items()}

    def install(self, app: FastAPI, *, health: bool = True, metrics: bool | None = None, stats: bool = True,
                prefix: str = "") -> None:
        """Add the 503 handlers and, each optional, ``/livez``, ``/readyz``, ``/metrics`` and
        ``/poolwarden/stats`` (the JSON that ``poolwarden top`` reads)."""
        from poolwarden.fastapi import install

        install(self, app, health=health, metrics=metrics, stats=stats, prefix=prefix)
