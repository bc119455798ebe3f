"""SQLite through aiosqlite.

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:`` (or
``sqlite://``). A query string (``?mode=ro``) opens the file as an SQLite URI.

Each ``:memory:`` connection is a private, empty database that vanishes when the connection is
closed or recycled: for data shared by a pool, use a file.

Choices made here, each with its reason:

* **Explicit transactions** (``isolation_level=None``): Python's sqlite3 module otherwise opens a
  transaction behind the scenes before the first write and keeps it until someone commits, the
  same trap as a non-autocommit PostgreSQL or MySQL connection. ``transaction()`` issues the BEGIN.
* **BEGIN IMMEDIATE** by default (``options={"begin": "DEFERRED"}`` to change): a deferred
  transaction that reads and then writes cannot wait for the write lock and fails at once with
  "database is locked"; taking the lock at BEGIN lets the busy timeout do its job.
* **WAL** for file databases (``options={"journal_mode": "DELETE"}`` on filesystems without shared
  memory, such as NFS): readers no longer block the writer nor the writer the readers, which is what
  lets several pooled connections serve one file at once.
* **A busy timeout** (sqlite3's ``timeout``, 5 s unless ``options={"timeout": ...}``): several
  connections share one file, so a writer that meets another's lock waits instead of failing.

What the pool can rely on:

* Every statement runs on aiosqlite's worker thread, one per connection, through a queue.
  ``in_transaction`` and ``is_closed`` read the connection's flags from the event loop thread
  without queueing (sqlite3 lets them), so they neither block nor raise.
* A task cancelled in the middle of a query does **not** stop it: the statement finishes on the
  worker thread and the next call waits behind it. A cancelled ``BEGIN`` can therefore still open a
  transaction after the lease ended; after a cancellation, ``ping`` (which queues behind it) before
  trusting ``in_transaction``, or discard the connection.
* ``terminate`` interrupts the running statement and queues the close; it does not wait for it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import quote

import aiosqlite
from aiosqlite.context import Result

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors._shared import check_options, network_error, transaction_block
from poolwarden.connectors.base import ServerInfo
from poolwarden.errors import ConfigError
from poolwarden.handle import register_driver

__all__ = ["SqliteConnector", "create"]

_SQLITE_ARGS = frozenset({"timeout", "detect_types", "isolation_level", "check_same_thread", "factory",
                          "cached_statements", "uri", "iter_chunk_size"})
_OWN_OPTIONS = frozenset({"begin", "journal_mode"})
_BEGIN = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})
_JOURNAL = frozenset({"WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY", "OFF"})
# Connection-scoped PRAGMAs a borrower may change; read once after connect, restored by reset().
_SESSION_PRAGMAS = ("busy_timeout", "foreign_keys", "query_only", "recursive_triggers", "synchronous",
                    "temp_store", "cache_size", "automatic_index")
_READ_PRAGMAS = "SELECT * FROM " + ", ".join(f"pragma_{name}()" for name in _SESSION_PRAGMAS)
_LEFTOVERS = """
    SELECT printf('DETACH DATABASE "%w"', name) FROM pragma_database_list WHERE name NOT IN ('main', 'temp')
    UNION ALL
    SELECT printf('DROP %s IF EXISTS temp."%w"', type, name) FROM temp.sqlite_master
    WHERE type IN ('table', 'view', 'trigger')
"""
_CLOSED_MESSAGES = ("no active connection", "connection closed", "closed database")

# Cursors made from a handle (conn.cursor(), and the ones execute() returns) end with its lease.
register_driver(aiosqlite.Connection, bound=("cursor", "execute", "executemany", "executescript"),
                resources=(aiosqlite.Cursor, Result))


def create(dsn: DSN, config: PoolConfig) -> SqliteConnector:
    """The SQLite connector for ``dsn``; raises ConfigError for a bad path or option."""
    return SqliteConnector(dsn, config)


class SqliteConnector:
    """Opens, checks and resets aiosqlite connections; ``config.options`` go to ``sqlite3.connect``."""

    driver = "aiosqlite"
    connection_class: type[aiosqlite.Connection] = aiosqlite.Connection

    def __init__(self, dsn: DSN, config: PoolConfig) -> None:
        options = check_options(self.driver, config.options, _SQLITE_ARGS | _OWN_OPTIONS)
        self._begin = _choice(options.pop("begin", "IMMEDIATE"), _BEGIN, "begin")
        journal = _choice(options.pop("journal_mode", "WAL"), _JOURNAL, "journal_mode")
        if dsn.host:
            raise ConfigError(f"sqlite URLs have no host: sqlite:///relative.db or sqlite:////abs.db"
                              f" (got {dsn.redacted!r})")
        # sqlite:///rel.db has the path "/rel.db", sqlite:////abs.db has "//abs.db".
        path = dsn.path[1:] if dsn.path.startswith("/") else dsn.path
        query = dsn.query
        memory = path in ("", ":memory:") or query.get("mode") == "memory"
        if query:
            self._database = f"file:{quote(path or ':memory:', safe='/:')}?{dsn.raw_query}"
            options["uri"] = True
        else:
            self._database = path or ":memory:"
        options.setdefault("isolation_level", None)
        options.setdefault("timeout", 5.0)
        self._journal = None if memory or query.get("mode") == "ro" else journal
        self._options = options
        self._redacted = dsn.redacted
        self._restore_pragmas: str | None = None
        self._closing: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Future[None]] = (
            weakref.WeakKeyDictionary())
        self._flights: weakref.WeakKeyDictionary[aiosqlite.Connection, _InFlight] = (
            weakref.WeakKeyDictionary())

    def __repr__(self) -> str:
        return f"<SqliteConnector {self._redacted}>"

    async def connect(self, timeout: float) -> aiosqlite.Connection:
        conn = aiosqlite.connect(self._database, **self._options)
        self._flights[conn] = _track_in_flight(conn)
        try:
            async with asyncio.timeout(timeout):
                await conn
                if self._journal is not None:
                    await conn.execute_fetchall(f"PRAGMA journal_mode = {self._journal}")
                if self._restore_pragmas is None:
                    row = next(iter(await conn.execute_fetchall(_READ_PRAGMAS)))
                    self._restore_pragmas = "".join(
                        f"PRAGMA {name} = {int(value)};"
                        for name, value in zip(_SESSION_PRAGMAS, row, strict=True))
        except BaseException as exc:
            self.terminate(conn)
            if not isinstance(exc, asyncio.CancelledError):
                # The worker thread's last act is to call back into this event loop; let it, so it
                # never does so into a loop that has closed meanwhile (a failed open at shutdown).
                for _ in range(1000):
                    if not conn._thread.is_alive():
                        break
                    await asyncio.sleep(0.001)
            raise
        return conn

    async def close(self, conn: aiosqlite.Connection) -> None:
        # aiosqlite's close() queues behind a running statement, still waits for it in a finally
        # block when cancelled, and always ends with stop(); a second stop() after the first one
        # is never served and its waiter hangs. So: one close per connection, run shielded, the
        # running statement interrupted if the caller gives up, and terminate() holds off stop().
        closing = self._closing.get(conn)
        if closing is None:
            if not conn._running:  # terminate() already stopped it
                return
            closing = self._closing[conn] = asyncio.ensure_future(conn.close())
            closing.add_done_callback(_retrieve)
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            _interrupt(conn)
            raise

    def terminate(self, conn: aiosqlite.Connection) -> None:
        _interrupt(conn)
        # Stopped already, or close() under way (it stops the thread itself): a second stop()
        # would never be served.
        if not conn._running or conn in self._closing:
            return
        try:
            conn.stop()
        except Exception:  # terminate must never raise
            pass

    async def ping(self, conn: aiosqlite.Connection) -> None:
        # Goes through the worker's queue, so it also proves the thread is alive and not stuck.
        await conn.execute_fetchall("SELECT 1")

    def is_closed(self, conn: aiosqlite.Connection) -> bool:
        if not conn._running:  # stop() was called: the worker thread is closing the connection
            return True
        try:
            conn.total_changes  # noqa: B018 - raises once the connection is closed
        except (ValueError, sqlite3.ProgrammingError):
            return True
        return False

    def in_transaction(self, conn: aiosqlite.Connection) -> bool:
        # A statement whose cancellation the lease swallowed still runs (or waits) on the worker
        # thread: a BEGIN there opens a transaction after the release, so it counts as open; the
        # rollback queues behind it.
        flight = self._flights.get(conn)
        if flight is not None and flight.sent != flight.done:
            return True
        try:
            return conn.in_transaction
        except (ValueError, sqlite3.ProgrammingError):  # closed: nothing is open any more
            return False

    async def rollback(self, conn: aiosqlite.Connection) -> None:
        await conn.rollback()

    async def reset(self, conn: aiosqlite.Connection) -> None:
        if self.in_transaction(conn):
            await conn.rollback()
        # PRAGMAs first: a borrower's query_only=1 would refuse the DROPs.
        drops = "".join(f"{row[0]};" for row in await conn.execute_fetchall(_LEFTOVERS))
        await conn.executescript((self._restore_pragmas or "") + drops)
        # Client-side state a borrower may have changed (both setters are safe from this thread).
        conn.row_factory = None
        conn.text_factory = str

    def transaction(self, conn: aiosqlite.Connection) -> AbstractAsyncContextManager[object]:
        async def begin() -> None:
            await conn.execute_fetchall(f"BEGIN {self._begin}")

        return transaction_block(begin, conn.commit, conn.rollback, lambda: self.in_transaction(conn))

    def is_disconnect(self, exc: BaseException) -> bool:
        # TimeoutError: the statement may still be running on the worker thread, so what the
        # connection holds afterwards is unknown; it is cheaper to open a new one than to guess.
        if network_error(exc):
            return True
        if isinstance(exc, (ValueError, sqlite3.ProgrammingError)):
            message = str(exc).lower()
            return any(text in message for text in _CLOSED_MESSAGES)
        return False

    async def server_info(self, conn: aiosqlite.Connection) -> ServerInfo:
        rows = await conn.execute_fetchall("SELECT sqlite_version()")
        return ServerInfo(product="SQLite", version=str(next(iter(rows))[0]), max_connections=None)


def _choice(value: Any, allowed: frozenset[str], key: str) -> str:
    text = str(value).upper()
    if text not in allowed:
        raise ConfigError(f"sqlite option {key} must be one of {', '.join(sorted(allowed))} (got {value!r})")
    return text


def _interrupt(conn: aiosqlite.Connection) -> None:
    # interrupt() is the one sqlite3 call made to be called from another thread; without it a long
    # statement keeps the worker thread, and any write lock, until it ends.
    try:
        raw = conn._connection
        if raw is not None:
            raw.interrupt()
    except Exception:
        pass


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # read, so asyncio does not log "exception was never retrieved"


class _InFlight:
    """Calls handed to a connection's worker thread and not finished there. Each counter is written
    by one thread only (``sent`` by the event loop, ``done`` by the worker), so no lock is needed."""

    __slots__ = ("done", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.done = 0


def _track_in_flight(conn: aiosqlite.Connection) -> _InFlight:
    """Count what ``conn`` runs on its thread: aiosqlite routes every call (cursors too) through
    ``_execute``, whose caller may be cancelled while the call goes on."""
    flight = _InFlight()
    execute: Any = conn._execute

    async def tracked(fn: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                flight.done += 1

        if conn._running and conn._connection:  # else aiosqlite refuses it before queueing
            flight.sent += 1
        return await execute(run)

    conn._execute = tracked  # type: ignore[method-assign]
    return flight
