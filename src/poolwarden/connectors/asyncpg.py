"""PostgreSQL through asyncpg.

What the pool can rely on:

* ``connect``, ``close``, ``ping``, ``rollback``, ``reset`` and ``server_info`` are coroutines;
  ``terminate``, ``is_closed`` and ``in_transaction`` are plain calls that do no I/O.
* asyncpg reads the socket even while a connection sits idle, so ``is_closed`` turns true as soon
  as the server drops it (``pg_terminate_backend``, a restart): a dead idle connection is found
  without a ping.
* A task cancelled in the middle of a query leaves the connection *usable*: asyncpg sends a cancel
  request on a side connection and the next call waits until the server has acknowledged it. A
  query ``timeout=`` raises ``TimeoutError`` the same way; it still counts as a disconnect here,
  because from outside a timeout cannot be told from a stalled network.
* asyncpg keeps a cache of named prepared statements, so the full reset runs everything
  ``DISCARD ALL`` does except ``DEALLOCATE ALL``. Behind PgBouncer (``pgbouncer=True``) the cache
  is turned off and the reset is only a rollback: the session belongs to the bouncer.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
from asyncpg.connection import _ConnectionProxy
from asyncpg.connresource import ConnectionResource

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors._shared import check_options, conflict, driver_url, network_error
from poolwarden.connectors.base import ServerInfo
from poolwarden.errors import TransactionFailed
from poolwarden.handle import register_driver

__all__ = ["AsyncpgConnector", "create"]

# 57P01 admin shutdown (pg_terminate_backend), 57P02 crash shutdown, 57P03 cannot connect now,
# 57P04 database dropped, 57P05 idle session timeout: the server ends the session for all of them.
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05"})
_CLOSED = re.compile(r"connection (?:is|was|has been) closed")
# The rest of DISCARD ALL, after asyncpg's own reset (CLOSE ALL, UNLISTEN *, RESET ALL, advisory
# unlock). DEALLOCATE ALL is left out on purpose: it would break asyncpg's statement cache.
_RESET_EXTRA = "SET SESSION AUTHORIZATION DEFAULT; DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
_SERVER_INFO = "SELECT current_setting('server_version'), current_setting('max_connections')::int"
_OWN_OPTIONS = frozenset({"dsn", "timeout", "loop"})

# Handles pass isinstance(conn, asyncpg.Connection) as asyncpg's pool proxy does (its base class);
# prepared statements, cursors and transactions made from a handle end with its lease; listener
# callbacks receive the handle, as asyncpg's pool hands them its proxy.
register_driver(
    asyncpg.Connection, base=_ConnectionProxy, bound=("prepare", "cursor", "transaction"),
    callbacks={"add_listener": True, "add_log_listener": True, "add_termination_listener": True,
               "add_query_logger": False},
    resources=(ConnectionResource,),
)


def create(dsn: DSN, config: PoolConfig) -> AsyncpgConnector:
    """The asyncpg connector for ``dsn``; raises ConfigError for an unknown or conflicting option."""
    return AsyncpgConnector(dsn, config)


class AsyncpgConnector:
    """Opens, checks and resets asyncpg connections; ``config.options`` go to ``asyncpg.connect``."""

    driver = "asyncpg"

    def __init__(self, dsn: DSN, config: PoolConfig) -> None:
        allowed = set(inspect.signature(asyncpg.connect).parameters) - _OWN_OPTIONS
        options = check_options(self.driver, config.options, allowed)
        if config.pgbouncer:
            # Named prepared statements live in one server session; in transaction mode the next
            # statement may run on another one ("prepared statement ... does not exist").
            if options.get("statement_cache_size", 0) != 0:
                raise conflict(self.driver, "statement_cache_size", "with pgbouncer=True (must be 0)")
            options["statement_cache_size"] = 0
        self._url = driver_url(dsn)
        self._redacted = dsn.redacted
        options.update(dsn.credentials(options))  # parameters, never inside a URL the driver could echo
        self._options = options
        self._pgbouncer = config.pgbouncer
        self.connection_class: type[asyncpg.Connection] = options.get("connection_class", asyncpg.Connection)

    def __repr__(self) -> str:
        return f"<AsyncpgConnector {self._redacted}>"

    async def connect(self, timeout: float) -> asyncpg.Connection:
        # asyncpg's own timeout covers DNS, TCP, TLS and authentication, and cleans up on expiry.
        return await asyncpg.connect(self._url, timeout=timeout, **self._options)

    async def close(self, conn: asyncpg.Connection) -> None:
        await conn.close()

    def terminate(self, conn: asyncpg.Connection) -> None:
        try:
            conn.terminate()
        except Exception:  # terminate must never raise; the socket is gone either way
            pass

    async def ping(self, conn: asyncpg.Connection) -> None:
        # execute() without arguments uses the simple protocol: one round trip, no statement.
        await conn.execute("SELECT 1")

    def is_closed(self, conn: asyncpg.Connection) -> bool:
        return bool(conn.is_closed())

    def in_transaction(self, conn: asyncpg.Connection) -> bool:
        # asyncpg records a transaction block (_top_xact) before its BEGIN is sent; a lease cancelled
        # in between leaves no server transaction but a client-side one, which would turn the next
        # borrower's transaction() into a SAVEPOINT: the release path must roll it back too.
        # Callbacks a lease registered (listeners, loggers) must not outlive it either. And a
        # statement whose cancellation the lease swallowed may still be settling: until its
        # ReadyForQuery arrives is_in_transaction() is stale (a BEGIN may have run), so it counts.
        raw: Any = conn
        top = getattr(conn, "_top_xact", None)  # private: not in asyncpg-stubs
        return (bool(conn.is_in_transaction()) or top is not None or _has_callbacks(conn)
                or raw._protocol._is_cancelling())

    async def rollback(self, conn: asyncpg.Connection) -> None:
        # A transaction started with ``tr = conn.transaction(); await tr.start()`` and never
        # finished stays registered on the connection, and the next borrower's
        # ``conn.transaction()`` would become a SAVEPOINT outside any transaction. asyncpg's own
        # reset clears it the same way.
        raw: Any = conn
        if raw._protocol._is_cancelling():
            # what asyncpg's own pool waits for at release: then the transaction status is true
            await raw._protocol._wait_for_cancellation()
        if raw._top_xact is not None:
            raw._top_xact = None
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        if _has_callbacks(conn):
            # what asyncpg's pool does at release (Connection.reset): the callbacks go, and so do
            # the LISTENs, or the next borrower's session would receive this lease's notifications
            channels = bool(raw._listeners)
            for callbacks in (raw._listeners, raw._log_listeners, raw._termination_listeners,
                              raw._query_loggers):
                callbacks.clear()
            if channels:
                await conn.execute("UNLISTEN *")

    async def reset(self, conn: asyncpg.Connection) -> None:
        if self.in_transaction(conn) or getattr(conn, "_top_xact", None) is not None:
            await self.rollback(conn)
        if self._pgbouncer:
            return
        # conn.reset() also drops the LISTEN and log callbacks registered on the Python side.
        await conn.reset()
        await conn.execute(_RESET_EXTRA)

    def transaction(self, conn: asyncpg.Connection) -> AbstractAsyncContextManager[object]:
        return _transaction(conn)

    def is_disconnect(self, exc: BaseException) -> bool:
        if network_error(exc):  # ConnectionError is an OSError
            return True
        if isinstance(exc, asyncpg.PostgresError):
            state: str = getattr(exc, "sqlstate", None) or ""
            return state.startswith("08") or state in _SESSION_ENDED
        if isinstance(exc, asyncpg.exceptions.InternalClientError):
            return True  # the protocol is out of sync: the connection cannot be trusted again
        if isinstance(exc, asyncpg.InterfaceError):
            return bool(_CLOSED.search(str(exc)))
        return False

    async def server_info(self, conn: asyncpg.Connection) -> ServerInfo:
        # An unnamed statement even when the cache is on: `poolwarden check` (default config) may be
        # pointed at PgBouncer, where a named one stays on the server and the next check's
        # "__asyncpg_stmt_1__" collides with it (DuplicatePreparedStatementError).
        row = await (await conn.prepare(_SERVER_INFO, name="")).fetchrow()
        assert row is not None  # a SELECT without FROM returns one row
        return ServerInfo(product="PostgreSQL", version=str(row[0]), max_connections=int(row[1]))


def _has_callbacks(conn: asyncpg.Connection) -> bool:
    raw: Any = conn
    return bool(raw._listeners or raw._log_listeners or raw._termination_listeners or raw._query_loggers)


@asynccontextmanager
async def _transaction(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """asyncpg's transaction block, except that the COMMIT's answer is read.

    PostgreSQL answers COMMIT with ``ROLLBACK`` when the transaction had failed (a query error the
    endpoint caught): asyncpg ignores the answer, so the client would be told of a success while
    every write was undone. The block is started through asyncpg so that ``conn.transaction()``
    inside it still makes a SAVEPOINT.
    """
    tx = conn.transaction()
    await tx.start()
    raw: Any = conn
    try:
        yield
    except BaseException as exc:
        raw._top_xact = None
        try:
            await conn.execute("ROLLBACK")
        except Exception as rollback_exc:
            exc.add_note(f"poolwarden: the rollback failed too ({type(rollback_exc).__name__})")
        raise
    raw._top_xact = None
    status = await conn.execute("COMMIT")
    if status != "COMMIT":
        raise TransactionFailed(
            f"COMMIT was answered {status!r}: the transaction had failed (a query error inside it "
            "was caught?) and nothing in it was committed")
