"""Warden: the registry of a service's resources, their ordered start-up and drain, health and stats."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack, overload

from poolwarden.clients import Client, ClientConfig, driver_for
from poolwarden.clients.base import ClientDriver
from poolwarden.config import DSN, PoolConfig, Secrets, check_resource_name, env_name, env_url
from poolwarden.connectors import connector_for
from poolwarden.connectors.base import Connector
from poolwarden.errors import ConfigError
from poolwarden.handle import unwrap
from poolwarden.observe.events import emit
from poolwarden.observe.hooks import PoolListener
from poolwarden.observe.leaks import LeaseInfo
from poolwarden.observe.stats import PoolStats
from poolwarden.observe.watchdog import Watchdog
from poolwarden.pool import Pool
from poolwarden.settings import ClientSettings, PoolSettings
from poolwarden.sync import is_blocking, warn_threadpool

if TYPE_CHECKING:
    from fastapi import FastAPI, params
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from poolwarden.orm import AsyncSQLAlchemy, SQLAlchemyResource, SyncSQLAlchemy

__all__ = ["Override", "Resource", "Warden"]

C = TypeVar("C")
T = TypeVar("T")
Release = Literal["endpoint", "response"]


class Resource(Pool[C]):
    """A pool declared on a :class:`Warden`: a :class:`Pool` plus ready FastAPI dependencies.

    Each dependency is one object for the life of the resource (``db.depends(...)`` with the same
    arguments returns the same one), so it is a stable key for ``app.dependency_overrides``; the
    documented way to replace them in tests is :meth:`override`.
    """

    def __init__(self, name: str, connector: Connector[C], config: PoolConfig, dsn: DSN | None) -> None:
        secrets = Secrets((*(dsn.secrets.values if dsn else ()), *config.secrets))
        super().__init__(name, connector, config, secrets=secrets)
        self.dsn = dsn  # str() and repr() of a DSN are redacted
        self._depends: dict[tuple[Release, bool], params.Depends] = {}
        self._before_close: list[Callable[[], Awaitable[None]]] = []

    @property
    def connection(self) -> params.Depends:
        """``Depends`` lending a connection, released as soon as the endpoint returns:
        ``Annotated[asyncpg.Connection, db.connection]``."""
        return self.depends()

    @property
    def transaction(self) -> params.Depends:
        """``Depends`` lending a connection inside a transaction: commit on success, roll back on
        any exception (``HTTPException`` included); released when the endpoint returns."""
        return self.depends(transaction=True)

    def depends(self, *, release: Release = "endpoint", transaction: bool = False) -> params.Depends:
        """A FastAPI ``Depends`` for this pool; the same object for the same arguments.

        ``release="endpoint"`` (the default) gives the connection back when the endpoint returns,
        before the response is sent; ``release="response"`` keeps it until the response has been
        sent, for a streaming body that reads from it. Raises ConfigError for another ``release``.
        """
        key = (release, transaction)
        dep = self._depends.get(key)
        if dep is None:
            from poolwarden.fastapi import dependency  # FastAPI is imported only by those who use it

            dep = self._depends[key] = dependency(self, release=release, transaction=transaction)
        return dep

    def override(self, app: FastAPI, connection: Callable[..., Any],
                 transaction: Callable[..., Any] | None = None) -> Override:
        """Make every dependency of this pool lend from ``connection`` in ``app``, for tests.

        ``connection`` is a FastAPI dependency (a function or generator that may take ``Request``
        and other dependencies) returning the object to lend. It replaces :attr:`connection`,
        :attr:`transaction`, every :meth:`depends` variant and the app-bound
        ``poolwarden.fastapi.connection(name)`` family; the transaction variants use
        ``transaction`` instead when given. Returns an :class:`Override`: ``undo()`` it, or use it
        as a context manager, to restore what was there. ``poolwarden.testing`` builds on it.
        """
        from poolwarden.fastapi import named_dependencies

        keys: list[tuple[Callable[..., Any], Callable[..., Any]]] = []
        for release in ("endpoint", "response"):
            for tx in (False, True):
                provider = transaction if tx and transaction is not None else connection
                try:
                    own = self.depends(release=release, transaction=tx).dependency
                    named = named_dependencies(self.name, release=release, transaction=tx).dependency
                except ConfigError:
                    continue  # a combination the dependencies refuse cannot be in use either
                assert own is not None
                assert named is not None
                keys += [(own, provider), (named, provider)]
        return Override(app, keys)

    async def close(self) -> list[LeaseInfo]:
        # what must give its connection back before the drain starts (a test's rollback lease)
        for hook in list(self._before_close):
            await hook()
        return await super().close()


class Override:
    """Dependency overrides set by :meth:`Resource.override`; undone by ``undo()`` or ``with``."""

    def __init__(self, app: FastAPI, keys: list[tuple[Callable[..., Any], Callable[..., Any]]]) -> None:
        self._overrides: dict[Callable[..., Any], Callable[..., Any]] = app.dependency_overrides
        self._before = {key: self._overrides.get(key) for key, _ in keys}
        for key, provider in keys:
            self._overrides[key] = provider

    def undo(self) -> None:
        """Restore the overrides that were there before (usually none)."""
        for key, before in self._before.items():
            if before is None:
                self._overrides.pop(key, None)
            else:
                self._overrides[key] = before

    def __enter__(self) -> Override:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


class Warden:
    """The resources of one service: declare them, then ``FastAPI(lifespan=warden.lifespan)``."""

    def __init__(self, *, environ: Mapping[str, str] | None = None, watchdog: float | None = None) -> None:
        """``watchdog``: seconds the event loop may be blocked before the route and the stack of the code
        holding it are logged (``loop.blocked``) - see :mod:`poolwarden.observe.watchdog`; None: off."""
        self._environ = os.environ if environ is None else environ
        self.watchdog = None if watchdog is None else Watchdog(watchdog)
        self._resources: dict[str, Resource[Any]] = {}
        self._declared: dict[str, Resource[Any] | Client[Any]] = {}  # pools and clients, in order
        self._listeners: list[PoolListener] = []
        self.draining = False

    @overload
    def pool(self, name: str, url: str | None = None, *, connection_class: type[C],
             connector: Connector[C] | None = None, **settings: Unpack[PoolSettings]) -> Resource[C]: ...

    @overload
    def pool(self, name: str, url: str | None = None, *, connector: Connector[C],
             **settings: Unpack[PoolSettings]) -> Resource[C]: ...

    @overload
    def pool(self, name: str, url: str | None = None, **settings: Unpack[PoolSettings]) -> Resource[Any]: ...

    def pool(self, name: str, url: str | None = None, *, connection_class: type[Any] | None = None,
             connector: Connector[Any] | None = None, **settings: Unpack[PoolSettings]) -> Resource[Any]:
        """Declare a connection pool; validates now (raising ConfigError), connects at start-up.

        ``url`` may come from ``POOLWARDEN_<NAME>_URL``; the scheme picks the driver (postgresql://,
        postgresql+psycopg://, mysql://, mariadb://, sqlite:///). Settings are PoolConfig keywords,
        also read from ``POOLWARDEN_<NAME>_<SETTING>``. Pass ``connector`` to bring your own backend.

        ``connection_class`` types the pool for mypy and pyright (``Resource[asyncpg.Connection]``);
        it must be the driver's connection class or a base of it, or ConfigError says which class
        the URL's driver lends. Without it (and without ``connector``) the pool is ``Resource[Any]``.
        """
        check_resource_name(name)
        if name in self._declared:
            raise ConfigError(f"resource {name!r} is declared twice")
        config = PoolConfig.from_settings(name, settings, self._environ)
        if url is None:
            url = env_url(name, self._environ)
        dsn: DSN | None = None
        if connector is None:
            if url is None:
                raise ConfigError(f"resource {name!r} needs a url (or POOLWARDEN_{env_name(name)}_URL)")
            dsn = DSN(url)
            connector = connector_for(dsn, config)
        elif url is not None:
            dsn = DSN(url)
        if connection_class is not None and not _lends(connector, connection_class):
            raise ConfigError(
                f"pool {name!r} lends {_qualname(connector.connection_class)} (driver "
                f"{connector.driver}), not {_qualname(connection_class)}: pass connection_class="
                f"{_qualname(connector.connection_class)} or a base of it")
        resource: Resource[Any] = Resource(name, connector, config, dsn)
        for listener in self._listeners:
            resource.add_listener(listener)
        self._resources[name] = self._declared[name] = resource
        return resource

    @overload
    def sqlalchemy(self, name: str, url: str | None = None, *, sync: Literal[False] = False,
                   engine: AsyncEngine | None = None, **options: Any) -> AsyncSQLAlchemy: ...
    @overload
    def sqlalchemy(self, name: str, url: str | None = None, *, sync: Literal[True],
                   engine: Engine | None = None, **options: Any) -> SyncSQLAlchemy: ...
    def sqlalchemy(self, name: str, url: str | None = None, *, sync: bool = False,
                   engine: AsyncEngine | Engine | None = None, **options: Any) -> SQLAlchemyResource[Any]:
        """Declare a pool lent to a SQLAlchemy engine: ``orm.engine``, ``orm.session``, ``orm.transaction``.

        See :func:`poolwarden.orm.resource.declare` and docs/orm.md (``sync=True`` for a sync Engine;
        ``engine=`` hands an existing engine's connections to poolwarden).
        """
        from poolwarden.orm.resource import declare  # SQLAlchemy is imported only by those who use it

        return declare(self, name, url, sync=sync, engine=engine, options=options)

    @overload
    def client(self, name: str, url: str | None = None, *, kind: str | None = None,
               factory: ClientDriver[T], **settings: Unpack[ClientSettings]) -> Client[T]: ...

    @overload
    def client(self, name: str, url: str | None = None, *, kind: str | None = None,
               **settings: Unpack[ClientSettings]) -> Client[Any]: ...

    def client(self, name: str, url: str | None = None, *, kind: str | None = None,
               factory: ClientDriver[Any] | None = None, **settings: Unpack[ClientSettings]) -> Client[Any]:
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
            url = env_url(name, self._environ)
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
        if self.watchdog is not None:
            self.watchdog.start()
        opened: list[Resource[Any] | Client[Any]] = []
        try:
            for resource in self._declared.values():
                await self._open_one(resource)
                opened.append(resource)
        except BaseException:
            for resource in reversed(opened):
                await resource.close()
                self._closed(resource)
            if self.watchdog is not None:
                self.watchdog.stop()
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
        if isinstance(resource, Resource) and is_blocking(resource):
            warn_threadpool(resource)  # a sync driver's pool smaller than the threadpool: fastapi#3205
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
        remaining = list(reversed(list(self._declared.values())))
        try:
            while remaining:
                left = await remaining[0].close()
                resource = remaining.pop(0)
                self._closed(resource)
                if left:
                    abandoned[resource.name] = left
        except BaseException:
            # cancelled (a second Ctrl-C): the one being closed has ended itself at once; the ones
            # after it must not stay open, so they end at once too, then the cancellation goes on
            for resource in remaining:
                abort = getattr(resource, "_abort_now", None)
                if abort is not None:
                    abort()
                self._closed(resource)
            raise
        finally:
            if self.watchdog is not None:
                self.watchdog.stop()
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

    def install(self, app: FastAPI, *, health: bool = True, metrics: bool | None = None,
                stats: bool | None = None, prefix: str = "",
                dependencies: Sequence[params.Depends] | None = None,
                tags: Sequence[str] = ("poolwarden",), include_in_schema: bool = False,
                dashboard: bool = False) -> None:
        """Bind this warden to ``app`` and add the 503 handlers and the operator routes.

        ``/livez`` (never touches a backend) and ``/readyz`` are always open: probes send no
        credentials. ``/metrics`` is added when prometheus_client is installed (``metrics``), unless
        the app serves ``/metrics`` already: then the pools join prometheus_client's default registry,
        which that endpoint exposes. ``/poolwarden/stats`` and ``/poolwarden/health`` (verbose
        readiness, with last errors) are internals: served only behind ``dependencies`` (FastAPI
        dependencies that authenticate the caller), or to anyone with ``stats=True`` (for an app on
        a private port; ``/readyz?verbose`` then works too); ``stats=False`` never serves them.
        ``dashboard=True`` adds the live dashboard at ``/poolwarden/dashboard`` under the same guard
        (see :mod:`poolwarden.observe.dashboard`), its history running with the app's lifespan.
        Every route carries ``tags`` and a fixed operation id (``poolwarden_livez``...), and none is
        added on a path the app already serves. Binding lets ``poolwarden.fastapi.connection(name)``
        lend from this warden's pools in this app.
        """
        from poolwarden.fastapi import install

        install(self, app, health=health, metrics=metrics, stats=stats, prefix=prefix,
                dependencies=dependencies, tags=tags, include_in_schema=include_in_schema,
                dashboard=dashboard)


def _lends(connector: Connector[Any], connection_class: type[Any]) -> bool:
    lent = getattr(connector, "connection_class", None)
    return isinstance(lent, type) and issubclass(lent, connection_class)


def _qualname(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
