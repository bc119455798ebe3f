"""``warden.sqlalchemy(...)``: a poolwarden pool under a SQLAlchemy engine, with session dependencies.

The resource *is* a pool (stats, metrics, ``/readyz``, drain, leaks like any other) whose connections
an ``AsyncEngine`` (or a sync ``Engine`` with ``sync=True``) borrows through :class:`WardenPool`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from sqlalchemy.util.concurrency import greenlet_spawn

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors import connector_for
from poolwarden.connectors.base import Connector
from poolwarden.errors import ConfigError, TransactionFailed
from poolwarden.handle import unwrap
from poolwarden.observe.leaks import current_route
from poolwarden.orm.bridge import ConnectionDropped, Lease, WardenPool
from poolwarden.orm.sessions import ENDED, guarded, settle
from poolwarden.sync import connector_for as sync_connector_for
from poolwarden.warden import Override, Resource

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.params import Depends

__all__ = ["AsyncSQLAlchemy", "SQLAlchemyResource", "SyncSQLAlchemy"]

S = TypeVar("S")
Release = Literal["endpoint", "response"]

# SQLAlchemy's default driver per scheme when the URL names none
_ASYNC_DRIVER = {"postgresql": "asyncpg", "postgres": "asyncpg", "sqlite": "aiosqlite",
                 "mysql": "asyncmy", "mariadb": "asyncmy"}
_SYNC_DRIVER = {"postgresql": "psycopg", "postgres": "psycopg", "sqlite": "pysqlite",
                "mysql": "pymysql", "mariadb": "pymysql"}
# drivers whose connector opens in autocommit by default: SQLAlchemy runs its own transactions
_AUTOCOMMIT_DRIVERS = frozenset({"psycopg", "asyncmy", "pymysql"})


class SQLAlchemyResource(Resource[Any], Generic[S]):
    """A pool lending its connections to a SQLAlchemy engine; ``S`` is the session type it gives."""

    is_async: bool

    def __init__(self, name: str, connector: Connector[Any], config: PoolConfig, dsn: DSN | None, *,
                 sync_engine: Engine, session_class: type[Session],
                 session_options: Mapping[str, Any]) -> None:
        super().__init__(name, connector, config, dsn)
        old = sync_engine.pool
        dialect = sync_engine.dialect
        cargs, cparams = dialect.create_connect_args(sync_engine.url)
        if config.pgbouncer and dialect.driver == "asyncpg":
            # SQLAlchemy's asyncpg wrapper prepares named statements of its own: behind PgBouncer in
            # transaction mode they must not outlive their transaction nor collide between clients
            cparams.setdefault("prepared_statement_cache_size", 0)
            cparams.setdefault("prepared_statement_name_func", _unique_statement_name)
        self.bridge = WardenPool(self, is_async=self.is_async, dialect=dialect, dispatch=old.dispatch,
                                 connect_args=(cargs, cparams), echo=old.echo,
                                 logging_name=old._orig_logging_name)
        sync_engine.pool = self.bridge
        old.dispose()  # never connected: declaring does no I/O
        if sync_engine.dialect.name == "sqlite":
            # The connectors open SQLite without the driver's implicit transactions, so SQLAlchemy's
            # BEGIN is emitted here (SQLAlchemy's documented recipe); SAVEPOINTs then work too.
            event.listen(sync_engine, "begin", _sqlite_begin)
        if sync_engine.dialect.name == "postgresql":
            # PostgreSQL answers the COMMIT of a transaction in which a statement failed with ROLLBACK,
            # and the drivers report that as a success: remember which transaction (or savepoint) the
            # failure aborted. A dialect event, so statements that succeed pay nothing for it.
            event.listen(sync_engine, "handle_error", _statement_failed)
        self._session_class = guarded(session_class)
        self._session_options = {"expire_on_commit": False, **session_options}
        self._session_depends: dict[tuple[Release, bool], Depends] = {}

    # -- FastAPI ----------------------------------------------------------------------------------

    @property
    def session(self) -> Depends:
        """``Depends`` giving a session per request; rolled back and released when the endpoint returns."""
        return self.session_depends()

    @property
    def transaction(self) -> Depends:
        """``Depends`` giving a session committed when the endpoint returns (before the response
        starts; a failed commit is an error response, never a 2xx) or rolled back on any exception."""
        return self.session_depends(transaction=True)

    def session_depends(self, *, release: Release = "endpoint", transaction: bool = False) -> Depends:
        """A session ``Depends``: ``release="response"`` keeps it until the response was sent (for a
        streaming body; not with ``transaction=True``, whose commit must precede the response)."""
        key = (release, transaction)
        dep = self._session_depends.get(key)
        if dep is None:
            from poolwarden.orm.dependencies import session_dependency

            dep = self._session_depends[key] = session_dependency(self, release=release,
                                                                  transaction=transaction)
        return dep

    def override_sessions(self, app: FastAPI, session: Callable[..., Any],
                          transaction: Callable[..., Any] | None = None) -> Override:
        """Make every session dependency of this resource give ``session`` (a FastAPI dependency)
        in ``app``, for tests (``transaction`` for :attr:`transaction` when given); ``undo()`` the
        result (or ``with`` it) to restore. :mod:`poolwarden.testing_orm` builds on it."""
        keys: list[tuple[Callable[..., Any], Callable[..., Any]]] = []
        for release in ("endpoint", "response"):
            for tx in (False, True):
                if tx and release == "response":
                    continue
                own = self.session_depends(release=release, transaction=tx).dependency
                assert own is not None
                keys.append((own, transaction if tx and transaction is not None else session))
        return Override(app, keys)

    # -- outside FastAPI --------------------------------------------------------------------------

    def session_scope(self, *, transaction: bool = False) -> AbstractAsyncContextManager[S]:
        """``async with orm.session_scope() as session``: one lease, ended at the block's end;
        ``transaction=True`` commits on a clean exit."""
        return self._orm_scope(transaction)

    @asynccontextmanager
    async def _orm_scope(self, transaction: bool, route: str | None = None) -> AsyncIterator[S]:
        """The session's whole life; ``route`` names the request in leak reports."""
        token = None if route is None else current_route.set(route)
        try:
            handle = await self.acquire()
        finally:
            if token is not None:
                current_route.reset(token)
        session, conn, lease = await self._orm_begin(handle)
        try:
            yield session
        except BaseException as exc:
            await self._orm_end(handle, session, conn, lease, commit=False, error=exc)
            raise
        await self._orm_end(handle, session, conn, lease, commit=transaction, error=None)

    # -- the lifecycle of one session -------------------------------------------------------------

    async def _orm_begin(self, handle: Any) -> tuple[S, Any, Lease]:
        try:
            with self.bridge.reserve(handle) as lease:
                conn = await self._orm_connect(handle)
        except BaseException as exc:
            await self._release(handle, exc)
            raise
        return self._orm_session(conn), conn, lease

    async def _orm_connect(self, handle: Any) -> Any:
        raise NotImplementedError

    def _orm_session(self, conn: Any, **extra: Any) -> S:
        raise NotImplementedError

    async def _orm_end(self, handle: Any, session: Any, conn: Any, lease: Lease, *, commit: bool,
                      error: BaseException | None) -> None:
        """Commit (if asked and all went well), end the session, release the lease: exactly once."""
        raise NotImplementedError

    async def _orm_release(self, handle: Any, lease: Lease, error: BaseException | None,
                             cleaned: bool) -> None:
        if lease.dead or not cleaned:
            exc: BaseException | None = ConnectionDropped("the session could not be cleaned up")
        elif error is not None and not isinstance(error, Exception):
            exc = error  # cancelled: poolwarden resyncs and rolls back under its shield
        else:
            exc = None
        await self._release(handle, exc)


class AsyncSQLAlchemy(SQLAlchemyResource[AsyncSession]):
    """``warden.sqlalchemy(name, url)``: ``engine`` is an ``AsyncEngine``, sessions are ``AsyncSession``."""

    is_async = True

    def __init__(self, name: str, connector: Connector[Any], config: PoolConfig, dsn: DSN | None, *,
                 engine: AsyncEngine, session_class: type[Session],
                 async_session_class: type[AsyncSession], session_options: Mapping[str, Any]) -> None:
        super().__init__(name, connector, config, dsn, sync_engine=engine.sync_engine,
                         session_class=session_class, session_options=session_options)
        self.engine = engine
        self._async_session_class = async_session_class

    async def _orm_connect(self, handle: Any) -> AsyncConnection:
        if self.bridge.has_wrapper(unwrap(handle)):
            # the wrapper exists: the checkout awaits nothing, so no greenlet is needed for it
            return AsyncConnection(self.engine, self.engine.sync_engine.connect())
        conn = self.engine.connect()
        await conn.start()  # the bridge's _do_get takes the reserved lease, the dialect connects
        return conn

    def _orm_session(self, conn: Any, **extra: Any) -> AsyncSession:
        return self._async_session_class(bind=conn, sync_session_class=self._session_class,
                                         **{**self._session_options, **extra})

    async def _orm_end(self, handle: Any, session: Any, conn: Any, lease: Lease, *, commit: bool,
                      error: BaseException | None) -> None:
        failure: BaseException | None = None
        try:
            if commit and error is None:
                _check_not_failed(self.name, conn.sync_connection)
                await session.commit()
        except BaseException as exc:
            failure = error = exc
        session.sync_session.info[ENDED] = self.name
        cancelled = error is not None and not isinstance(error, Exception)

        sync_session, sync_conn = session.sync_session, conn.sync_connection

        def close_both() -> None:
            try:
                if cancelled:
                    sync_session.invalidate()  # no I/O through a connection a cancel left mid-query
                else:
                    sync_session.close()
            finally:
                sync_conn.close()

        cleaned = True
        try:
            # One switch into SQLAlchemy's sync side for both, bounded. Cancelled or timed out half
            # way, SQLAlchemy invalidates the connection and it is discarded below: no task of its
            # own is needed to see the close through.
            async with asyncio.timeout(self.config.reset_timeout):
                await greenlet_spawn(close_both)
        except asyncio.CancelledError as exc:
            cleaned, error = False, error or exc
            failure = failure or exc
        except Exception:
            cleaned = False
        await self._orm_release(handle, lease, error, cleaned)
        if failure is not None:
            raise failure


class SyncSQLAlchemy(SQLAlchemyResource[Session]):
    """``warden.sqlalchemy(name, url, sync=True)``: ``engine`` is a sync ``Engine``; sessions are
    ``Session`` (or SQLModel's), opened on the event loop and used by sync endpoints in their thread."""

    is_async = False

    def __init__(self, name: str, connector: Connector[Any], config: PoolConfig, dsn: DSN | None, *,
                 engine: Engine, session_class: type[Session], session_options: Mapping[str, Any]) -> None:
        super().__init__(name, connector, config, dsn, sync_engine=engine,
                         session_class=session_class, session_options=session_options)
        self.engine = engine

    async def _orm_connect(self, handle: Any) -> Connection:
        if self.bridge.has_wrapper(unwrap(handle)):
            return self.engine.connect()  # the wrapper exists: checkout does no I/O
        # a new wrapper runs the dialect's connect events, which may query: in a thread
        task = asyncio.ensure_future(asyncio.to_thread(self.engine.connect))
        try:
            return await asyncio.shield(task)
        except BaseException:
            task.add_done_callback(_invalidate_orphan)
            raise

    def _orm_session(self, conn: Any, **extra: Any) -> Session:
        return self._session_class(bind=conn, **{**self._session_options, **extra})

    async def _orm_end(self, handle: Any, session: Any, conn: Any, lease: Lease, *, commit: bool,
                      error: BaseException | None) -> None:
        cancelled = error is not None and not isinstance(error, Exception)

        def cleanup() -> None:
            try:
                if commit and not cancelled and error is None:
                    _check_not_failed(self.name, conn)
                    session.commit()
            finally:
                session.info[ENDED] = self.name
                try:
                    session.close()
                finally:
                    conn.close()

        failure: BaseException | None = None
        cleaned = True
        if cancelled:
            session.info[ENDED] = self.name
            session.invalidate()  # no I/O: poolwarden resyncs and rolls back the connection
            conn.close()
        else:
            try:
                # a sync driver's I/O in a thread; never abandoned, as the driver's connection must
                # not be closed under a statement still running in another thread
                await settle(lambda: asyncio.to_thread(cleanup))
            except asyncio.CancelledError as exc:
                failure = error = exc  # settle() let the cleanup finish first
            except BaseException as exc:
                failure = exc
                cleaned = _left_clean(exc)
        await self._orm_release(handle, lease, error, cleaned)
        if failure is not None:
            raise failure


def _left_clean(exc: BaseException) -> bool:
    # A commit the database refused leaves a rolled-back session (a lost connection shows in
    # lease.dead); anything else leaves the connection in an unknown state.
    from sqlalchemy.exc import DBAPIError

    return isinstance(exc, DBAPIError)


def _invalidate_orphan(task: asyncio.Future[Connection]) -> None:
    if not task.cancelled() and task.exception() is None:
        conn = task.result()
        conn.invalidate()
        conn.close()


def _unique_statement_name() -> str:
    return f"__pw_{uuid.uuid4().hex}__"


_FAILED = "poolwarden.statement_failed"


def _statement_failed(context: Any) -> None:
    conn = context.connection
    if conn is not None and not conn.invalidated and conn.in_transaction():
        # the innermost block: rolling back to its SAVEPOINT (or ending it) clears the failure
        conn.info[_FAILED] = conn.get_nested_transaction() or conn.get_transaction()


def _check_not_failed(resource: str, conn: Connection | None) -> None:
    """Refuse to COMMIT a PostgreSQL transaction that a failed statement aborted: it would roll back
    and be reported as a success."""
    if conn is None or conn.closed or conn.invalidated:
        return
    aborted = conn.info.pop(_FAILED, None)
    if aborted is not None and aborted.is_active:
        raise TransactionFailed(
            f"{resource}: not committed: a statement failed inside this transaction (its error was "
            "caught), so PostgreSQL would answer COMMIT with ROLLBACK; nothing in it was saved",
            resource=resource)


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


# -- declaration ----------------------------------------------------------------------------------


def _carried_size(engine: AsyncEngine | Engine, name: str, settings: Mapping[str, Any],
                  environ: Mapping[str, str]) -> dict[str, Any]:
    """The handed-over engine's own pool size (``pool_size + max_overflow`` of a QueuePool) as
    ``max_size``, unless one is given: whoever sized that pool on purpose must not get poolwarden's
    default instead, silently. An unbounded overflow (-1) or another pool class carries nothing."""
    from poolwarden.config import env_name

    if "max_size" in settings or f"POOLWARDEN_{env_name(name)}_MAX_SIZE" in environ:
        return {}
    pool = engine.sync_engine.pool if isinstance(engine, AsyncEngine) else engine.pool
    size, overflow = getattr(pool, "_pool", None), getattr(pool, "_max_overflow", None)
    if not isinstance(overflow, int) or overflow < 0 or size is None:
        return {}
    max_size = pool.size() + overflow  # type: ignore[attr-defined]
    return {"max_size": max_size} if max_size >= 1 else {}


def declare(warden: Any, name: str, url: str | None, *, sync: bool, engine: AsyncEngine | Engine | None,
            options: dict[str, Any]) -> SQLAlchemyResource[Any]:
    """Build and register the resource of ``warden.sqlalchemy(...)``.

    ``options`` are PoolConfig settings plus: ``session_class`` (a ``Session`` subclass),
    ``sqlmodel=True`` (SQLModel's ``Session``/``AsyncSession``), ``session_options`` (keywords for
    every session; ``expire_on_commit`` defaults to False) and ``engine_options`` (keywords for
    ``create_async_engine``/``create_engine``). Raises ConfigError for a bad URL or option.
    """
    session_class: type[Session] | None = options.pop("session_class", None)
    sqlmodel = bool(options.pop("sqlmodel", False))
    session_options: Mapping[str, Any] | None = options.pop("session_options", None)
    engine_options: Mapping[str, Any] | None = options.pop("engine_options", None)
    settings = options
    from poolwarden.config import check_resource_name, env_name, env_url

    check_resource_name(name)
    if name in warden._declared:
        raise ConfigError(f"resource {name!r} is declared twice")
    if engine is not None:
        if url is not None:
            raise ConfigError(f"{name}: pass url or engine, not both")
        if engine_options:
            raise ConfigError(f"{name}: engine_options are for an engine poolwarden creates")
        sync = isinstance(engine, Engine)
        url = engine.url.render_as_string(hide_password=False)
        settings = {**_carried_size(engine, name, settings, warden._environ), **settings}
    if url is None:
        url = env_url(name, warden._environ)
        if url is None:
            raise ConfigError(f"resource {name!r} needs a url (or POOLWARDEN_{env_name(name)}_URL)")
    dsn = DSN(url)
    driver = dsn.driver or (_SYNC_DRIVER if sync else _ASYNC_DRIVER).get(dsn.scheme)
    if driver is None:
        raise ConfigError(f"{name}: no SQLAlchemy driver known for scheme {dsn.scheme!r}")
    config = PoolConfig.from_settings(name, settings, warden._environ)
    if driver in _AUTOCOMMIT_DRIVERS:
        if config.options.get("autocommit"):
            raise ConfigError(f"{name}: options autocommit=True cannot be set under SQLAlchemy, which "
                              "runs its own transactions (use execution_options(isolation_level="
                              "'AUTOCOMMIT') for autocommit work)")
        config = dataclasses.replace(config, options={**config.options, "autocommit": False})
    # credentials percent-encoded, whatever they hold: SQLAlchemy's URL parser and the pool's DSN agree
    sa_url = dsn.url(scheme=f"{dsn.scheme}+{driver}", credentials=True)
    pool_dsn = DSN(sa_url.replace("+pysqlite", "", 1).replace("+pymysql", "", 1)) if sync else DSN(sa_url)
    connector = (sync_connector_for if sync else connector_for)(pool_dsn, config)
    _leave_session_state_to_sqlalchemy(connector)
    if session_class is None:
        session_class = _sqlmodel_session() if sqlmodel else Session
    options = dict(session_options or {})
    resource: SQLAlchemyResource[Any]
    if sync:
        if engine is None:
            engine = create_engine(sa_url, poolclass=NullPool, **dict(engine_options or {}))
        assert isinstance(engine, Engine)
        resource = SyncSQLAlchemy(name, connector, config, pool_dsn, engine=engine,
                                  session_class=session_class, session_options=options)
    else:
        if engine is None:
            engine = create_async_engine(sa_url, poolclass=NullPool, **dict(engine_options or {}))
        assert isinstance(engine, AsyncEngine)
        async_cls: type[AsyncSession] = _sqlmodel_async_session() if sqlmodel else AsyncSession
        resource = AsyncSQLAlchemy(name, connector, config, pool_dsn, engine=engine,
                                   session_class=session_class, async_session_class=async_cls,
                                   session_options=options)
    for listener in warden._listeners:
        resource.add_listener(listener)
    warden._resources[name] = warden._declared[name] = resource
    return resource


def _leave_session_state_to_sqlalchemy(connector: Connector[Any]) -> None:
    """Only an open transaction makes a connection need the pool's rollback at release.

    The async psycopg connector also resets a lease's notice handlers and session switches; under
    SQLAlchemy those belong to the dialect's wrapper for the connection's whole life (its notice
    handler is added once, at connect), so resetting them would mean a rollback and a new wrapper
    at every release.
    """
    if connector.driver == "psycopg" and not getattr(connector, "blocking", False):
        from poolwarden.connectors.psycopg import _OPEN

        def in_transaction(conn: Any) -> bool:
            return conn.pgconn.transaction_status in _OPEN

        setattr(connector, "in_transaction", in_transaction)  # noqa: B010 - shadows the method


def _sqlmodel_session() -> type[Session]:
    try:
        from sqlmodel import Session as SQLModelSession
    except ImportError:
        raise ConfigError("sqlmodel=True needs SQLModel: pip install sqlmodel") from None
    cls: type[Session] = SQLModelSession
    return cls


def _sqlmodel_async_session() -> type[AsyncSession]:
    try:
        from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession
    except ImportError:
        raise ConfigError("sqlmodel=True needs SQLModel: pip install sqlmodel") from None
    cls: type[AsyncSession] = SQLModelAsyncSession
    return cls
