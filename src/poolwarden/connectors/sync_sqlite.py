"""SQLite through the standard library's ``sqlite3``, for sync code (``sync=True``).

The same choices as the aiosqlite connector (explicit transactions, WAL, a busy timeout), with
``check_same_thread=False``: a connection is opened and checked in the executor's threads and used
by a sync endpoint in a worker thread, one holder at a time (the lease), which sqlite3 allows.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors._shared import check_options
from poolwarden.connectors._threads import ThreadedConnector
from poolwarden.connectors.base import ServerInfo
from poolwarden.connectors.sqlite import (
    _BEGIN,
    _CLOSED_MESSAGES,
    _JOURNAL,
    _OWN_OPTIONS,
    _SQLITE_ARGS,
    _choice,
)
from poolwarden.errors import ConfigError

__all__ = ["SyncSqliteConnector", "create"]


def create(dsn: DSN, config: PoolConfig) -> SyncSqliteConnector:
    """The sqlite3 connector for ``dsn``; raises ConfigError for a bad path or option."""
    return SyncSqliteConnector(dsn, config)


class SyncSqliteConnector(ThreadedConnector[sqlite3.Connection]):
    """Opens, checks and rolls back ``sqlite3`` connections in threads."""

    driver = "sqlite3"
    connection_class: type[sqlite3.Connection] = sqlite3.Connection

    def __init__(self, dsn: DSN, config: PoolConfig) -> None:
        super().__init__()
        allowed = (_SQLITE_ARGS - {"iter_chunk_size"}) | _OWN_OPTIONS
        options: dict[str, Any] = check_options(self.driver, config.options, allowed)
        self._begin = _choice(options.pop("begin", "IMMEDIATE"), _BEGIN, "begin")
        journal = _choice(options.pop("journal_mode", "WAL"), _JOURNAL, "journal_mode")
        if dsn.host:
            raise ConfigError(f"sqlite URLs have no host: sqlite:///relative.db or sqlite:////abs.db"
                              f" (got {dsn.redacted!r})")
        path = dsn.path[1:] if dsn.path.startswith("/") else dsn.path
        if dsn.query:
            raise ConfigError("sync sqlite URLs take no query string; pass options= instead")
        memory = path in ("", ":memory:")
        self._database = path or ":memory:"
        options.setdefault("isolation_level", None)
        options.setdefault("timeout", 5.0)
        options["check_same_thread"] = False
        self._journal = None if memory else journal
        self._options = options
        self._redacted = dsn.redacted

    def __repr__(self) -> str:
        return f"<SyncSqliteConnector {self._redacted}>"

    def _connect_sync(self, timeout: float) -> sqlite3.Connection:
        conn: sqlite3.Connection = sqlite3.connect(self._database, **self._options)
        try:
            if self._journal is not None:
                conn.execute(f"PRAGMA journal_mode = {self._journal}").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    def _close_sync(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def _ping_sync(self, conn: sqlite3.Connection) -> None:
        conn.execute("SELECT 1").fetchall()

    def _rollback_sync(self, conn: sqlite3.Connection) -> None:
        conn.rollback()

    def _reset_sync(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.rollback()
        conn.row_factory = None

    def _begin_sync(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"BEGIN {self._begin}")

    def _commit_sync(self, conn: sqlite3.Connection) -> None:
        conn.commit()

    def _server_info_sync(self, conn: sqlite3.Connection) -> ServerInfo:
        row = conn.execute("SELECT sqlite_version()").fetchone()
        return ServerInfo(product="SQLite", version=str(row[0]), max_connections=None)

    def is_closed(self, conn: sqlite3.Connection) -> bool:
        try:
            conn.total_changes  # noqa: B018 - raises once the connection is closed
        except sqlite3.ProgrammingError:
            return True
        return False

    def in_transaction(self, conn: sqlite3.Connection) -> bool:
        try:
            return conn.in_transaction
        except sqlite3.ProgrammingError:
            return False

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, (OSError, TimeoutError)):
            return True
        if isinstance(exc, sqlite3.ProgrammingError):
            message = str(exc).lower()
            return any(text in message for text in _CLOSED_MESSAGES)
        return False
