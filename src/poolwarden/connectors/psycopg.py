"""PostgreSQL through psycopg 3 (``postgresql+psycopg://``).

Connections open in **autocommit** mode unless ``options={"autocommit": False}``. With psycopg's
own default (autocommit off) the first statement of every lease silently opens a transaction that
lasts until someone commits: a plain read leaves the connection "in transaction" at release, so
every return would cost a ROLLBACK round trip, a forgotten commit would lose writes without a
word, and a long lease would hold a snapshot and block VACUUM. In autocommit mode each statement
stands alone and transactions are explicit, ``async with conn.transaction():``, exactly as with
asyncpg, so the two PostgreSQL connectors behave alike and the pool's "rollback only when a
transaction is open" rule stays cheap.

What the pool can rely on:

* ``connect``, ``close``, ``ping``, ``rollback``, ``reset`` and ``server_info`` are coroutines;
  ``terminate`` (libpq's ``PQfinish``), ``is_closed`` and ``in_transaction`` do no I/O.
* psycopg learns that the server dropped an idle connection only at its next I/O, so ``is_closed``
  stays false until then: an idle connection needs a ping to be found dead.
* A task cancelled in the middle of a query is held back while psycopg sends a cancel request and
  waits (up to 5 s) for the server to stop the query; the connection is then usable. If the
  server does not answer in time psycopg closes the connection (``is_closed`` turns true).
* ``ping`` and ``server_info`` run in autocommit even when it is off, as psycopg_pool does, so
  that a check never opens a transaction on an idle connection.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import tuple_row

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors._shared import check_options, conflict, driver_url, network_error
from poolwarden.connectors.base import ServerInfo
from poolwarden.errors import TransactionFailed
from poolwarden.handle import register_driver

__all__ = ["PsycopgConnector", "create"]

Connection = psycopg.AsyncConnection[Any]

_IDLE = pq.TransactionStatus.IDLE
_OPEN = frozenset({pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR,
                   pq.TransactionStatus.ACTIVE})
# 57P01 admin shutdown (pg_terminate_backend), 57P02 crash shutdown, 57P03 cannot connect now,
# 57P04 database dropped, 57P05 idle session timeout: the server ends the session for all of them.
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05"})
_SERVER_INFO = "SELECT current_setting('server_version'), current_setting('max_connections')::int"
_CONNECT_ARGS = frozenset({"autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"})

# Cursors (conn.cursor(), the one conn.execute() returns) and transaction blocks made from a handle
# end with its lease; psycopg_pool lends the connection itself, so no isinstance base is needed.
# Notice and notification handlers registered through a handle fall silent when its lease ends and
# are removed at release (the default reset), as are the LISTENs behind them.
register_driver(psycopg.AsyncConnection, bound=("cursor", "execute", "transaction"),
                callbacks={"add_notice_handler": False, "add_notify_handler": False},
                resources=(psycopg.AsyncCursor, psycopg.AsyncTransaction))


def create(dsn: DSN, config: PoolConfig) -> PsycopgConnector:
    """The psycopg connector for ``dsn``; raises ConfigError for an unknown or conflicting option."""
    return PsycopgConnector(dsn, config)


class PsycopgConnector:
    """Opens, checks and resets ``psycopg.AsyncConnection``; ``config.options`` go to ``connect``.

    Options are ``AsyncConnection.connect`` arguments (``autocommit``, ``prepare_threshold``,
    ``row_factory``, ...) or libpq connection parameters (``sslmode``, ``application_name``, ...).
    """

    driver = "psycopg"
    connection_class: type[Connection] = psycopg.AsyncConnection

    def __init__(self, dsn: DSN, config: PoolConfig) -> None:
        libpq_keys = {opt.keyword.decode() for opt in pq.Conninfo.get_defaults()}
        options = check_options(self.driver, config.options, _CONNECT_ARGS | libpq_keys)
        self._autocommit = bool(options.pop("autocommit", True))
        self._prepare_threshold: int | None = options.pop("prepare_threshold", 5)
        # Prepared statements are per server session; behind PgBouncer in transaction mode the
        # next statement may land on another one.
        if config.pgbouncer and self._prepare_threshold is not None:
            if "prepare_threshold" in config.options:
                raise conflict(self.driver, "prepare_threshold", "with pgbouncer=True (must be None)")
            self._prepare_threshold = None
        self._row_factory = options.get("row_factory") or tuple_row
        self._own_connect_timeout = "connect_timeout" not in options and "connect_timeout" not in dsn.query
        self._url = driver_url(dsn)
        self._redacted = dsn.redacted
        options.update(dsn.credentials(options))  # parameters, never inside a URL the driver could echo
        self._options = options
        self._pgbouncer = config.pgbouncer

    def __repr__(self) -> str:
        return f"<PsycopgConnector {self._redacted}>"

    async def connect(self, timeout: float) -> Connection:
        options = dict(self._options)
        if self._own_connect_timeout:
            # libpq enforces its own limit per host attempt; 2 s is the smallest it accepts.
            options["connect_timeout"] = max(2, math.ceil(timeout))
        async with asyncio.timeout(timeout):
            conn: Connection = await psycopg.AsyncConnection.connect(
                self._url, autocommit=self._autocommit, prepare_threshold=self._prepare_threshold,
                **options,
            )
        _close_on_cancel(conn)
        return conn

    async def close(self, conn: Connection) -> None:
        await conn.close()

    def terminate(self, conn: Connection) -> None:
        try:
            conn.pgconn.finish()
        except Exception:  # terminate must never raise
            pass

    async def ping(self, conn: Connection) -> None:
        async with _autocommit(conn):
            await conn.execute("")  # an empty query: the cheapest round trip libpq can make

    def is_closed(self, conn: Connection) -> bool:
        return conn.closed

    def in_transaction(self, conn: Connection) -> bool:
        # pgconn rather than conn.info: no object is built on this per-release call. A lease that
        # switched the session (set_autocommit(False), an isolation level) is restored as well:
        # the next borrower gets the mode the pool promises.
        raw: Any = conn
        return (conn.pgconn.transaction_status in _OPEN or raw._autocommit is not self._autocommit
                or raw._isolation_level is not None or raw._read_only is not None
                or raw._deferrable is not None or bool(raw._notice_handlers or raw._notify_handlers))

    async def rollback(self, conn: Connection) -> None:
        if conn.pgconn.transaction_status != _IDLE:
            await conn.rollback()
        await self._restore_switches(conn)
        raw: Any = conn
        raw._notice_handlers.clear()
        if raw._notify_handlers:
            raw._notify_handlers.clear()
            async with _autocommit(conn):
                await conn.execute("UNLISTEN *")

    async def _restore_switches(self, conn: Connection) -> None:
        if conn.autocommit != self._autocommit:
            await conn.set_autocommit(self._autocommit)
        await conn.set_isolation_level(None)
        await conn.set_read_only(None)
        await conn.set_deferrable(None)

    async def reset(self, conn: Connection) -> None:
        if conn.pgconn.transaction_status != _IDLE:
            await conn.rollback()
        if not self._pgbouncer:
            await conn.set_autocommit(True)  # DISCARD ALL refuses to run in a transaction block
            # psycopg sees DISCARD ALL go by and forgets its prepared statements.
            await conn.execute("DISCARD ALL")
        # Client-side session state a borrower may have changed.
        await self._restore_switches(conn)
        conn.prepare_threshold = self._prepare_threshold
        conn.row_factory = self._row_factory

    def transaction(self, conn: Connection) -> AbstractAsyncContextManager[object]:
        return _transaction(conn)

    def is_disconnect(self, exc: BaseException) -> bool:
        if network_error(exc):
            return True
        if isinstance(exc, psycopg.Error):
            state = exc.sqlstate
            if state:
                return state.startswith("08") or state in _SESSION_ENDED
            # Without a SQLSTATE the error is the client's own: "the connection is closed",
            # "server closed the connection unexpectedly", "connection timeout expired".
            return isinstance(exc, psycopg.OperationalError)
        return False

    async def server_info(self, conn: Connection) -> ServerInfo:
        async with _autocommit(conn):
            cur = await conn.execute(_SERVER_INFO)
            row = await cur.fetchone()
        assert row is not None
        return ServerInfo(product="PostgreSQL", version=str(row[0]), max_connections=int(row[1]))


@asynccontextmanager
async def _autocommit(conn: Connection) -> AsyncIterator[None]:
    """Run a check without opening a transaction when autocommit is off (psycopg_pool does this)."""
    if conn.autocommit or conn.pgconn.transaction_status != _IDLE:
        yield
        return
    await conn.set_autocommit(True)
    try:
        yield
    finally:
        await conn.set_autocommit(False)


@asynccontextmanager
async def _transaction(conn: Connection) -> AsyncIterator[None]:
    """psycopg's transaction block, refusing to COMMIT a failed transaction.

    PostgreSQL answers COMMIT with ``ROLLBACK`` when the transaction had failed (a query error the
    endpoint caught) and psycopg does not look: the client would be told of a success while every
    write was undone. The failed state is known without a round trip, so it is checked first.
    """
    async with conn.transaction():
        yield
        if conn.pgconn.transaction_status == pq.TransactionStatus.INERROR:
            # raised inside the block, so psycopg rolls it back before this propagates
            raise TransactionFailed(
                "the transaction had failed (a query error inside it was caught), so it was rolled "
                "back instead of committed")


def _close_on_cancel(conn: Connection) -> None:
    """Bound what a cancelled query costs the cancelled task: 1 s at most, then the connection closes.

    psycopg (3.2, 3.3) answers a cancelled wait by sending a cancel request and waiting for the query
    to end, up to 5 s each, in the cancelled task: an ``asyncio.timeout`` around a stalled query
    fired 10 s late. Here the same protocol runs with _CANCEL_WAIT for each step: on a healthy server
    it takes one round trip and the connection is kept; on a stalled one the connection is closed
    (the pool then discards it, as it does asyncmy's, which closes on every cancel). Installed per
    connection on ``wait``, the one coroutine every psycopg query goes through.
    """
    from psycopg import errors, pq, waiting

    async def bounded(gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        try:
            return await waiting.wait_async(gen, conn.pgconn.socket, interval=interval, timeout=timeout)
        except (asyncio.CancelledError, KeyboardInterrupt):
            if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                try:
                    await conn._try_cancel(timeout=_CANCEL_WAIT)
                    await waiting.wait_async(gen, conn.pgconn.socket, interval=interval,
                                             timeout=_CANCEL_WAIT)
                except errors.QueryCanceled:
                    pass  # cancelled on the server: the connection is in sync and kept
                except BaseException:  # timed out, failed or interrupted again: state unknown
                    conn.pgconn.finish()
            raise

    conn.wait = bounded  # type: ignore[method-assign]


_CANCEL_WAIT = 0.5  # seconds for the cancel request, then as long for the query to end
