"""PostgreSQL through psycopg 3's blocking ``psycopg.Connection``, for sync code (``sync=True``).

The same choices as the async psycopg connector (autocommit unless ``options={"autocommit": False}``,
prepared statements off behind PgBouncer, checks that never open a transaction), with the I/O run in
threads (see ``_threads.py``). A connection is lent on the event loop and used by a sync endpoint in a
worker thread; psycopg's ``Connection`` serialises its own use with a lock, so that is safe.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
from psycopg import pq

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors._threads import ThreadedConnector
from poolwarden.connectors.base import ServerInfo
from poolwarden.connectors.psycopg import _OPEN, _SERVER_INFO, PsycopgConnector

__all__ = ["SyncPsycopgConnector", "create"]

Connection = psycopg.Connection[Any]
_IDLE = pq.TransactionStatus.IDLE


def create(dsn: DSN, config: PoolConfig) -> SyncPsycopgConnector:
    """The sync psycopg connector for ``dsn``; raises ConfigError for an unknown or conflicting option."""
    return SyncPsycopgConnector(dsn, config)


class SyncPsycopgConnector(ThreadedConnector[Connection]):
    """Opens, checks and resets ``psycopg.Connection`` in threads; ``config.options`` go to ``connect``."""

    driver = "psycopg-sync"
    connection_class: type[Connection] = psycopg.Connection

    def __init__(self, dsn: DSN, config: PoolConfig) -> None:
        super().__init__()
        # The async connector reads and checks the same options the same way (no I/O): reuse it.
        self._same = same = PsycopgConnector(dsn, config)
        self._autocommit = same._autocommit
        self._prepare_threshold = same._prepare_threshold
        self._own_connect_timeout = same._own_connect_timeout
        self._url = same._url
        self._redacted = same._redacted
        self._options = same._options
        self._pgbouncer = same._pgbouncer

    def __repr__(self) -> str:
        return f"<SyncPsycopgConnector {self._redacted}>"

    def _connect_sync(self, timeout: float) -> Connection:
        options = dict(self._options)
        if self._own_connect_timeout:
            options["connect_timeout"] = max(2, math.ceil(timeout))
        conn: Connection = psycopg.Connection.connect(
            self._url, autocommit=self._autocommit, prepare_threshold=self._prepare_threshold, **options)
        return conn

    def _close_sync(self, conn: Connection) -> None:
        conn.close()

    def _ping_sync(self, conn: Connection) -> None:
        if conn.autocommit or conn.pgconn.transaction_status != _IDLE:
            conn.execute("")
            return
        conn.autocommit = True  # a check must not open a transaction on an idle connection
        try:
            conn.execute("")
        finally:
            conn.autocommit = False

    def _rollback_sync(self, conn: Connection) -> None:
        conn.rollback()

    def _reset_sync(self, conn: Connection) -> None:
        if conn.pgconn.transaction_status != _IDLE:
            conn.rollback()
        if not self._pgbouncer:
            conn.autocommit = True
            conn.execute("DISCARD ALL")
        conn.autocommit = self._autocommit
        conn.isolation_level = None
        conn.read_only = None
        conn.deferrable = None
        conn.prepare_threshold = self._prepare_threshold

    def _begin_sync(self, conn: Connection) -> None:
        conn.execute("BEGIN")

    def _commit_sync(self, conn: Connection) -> None:
        conn.execute("COMMIT")

    def _server_info_sync(self, conn: Connection) -> ServerInfo:
        row = conn.execute(_SERVER_INFO).fetchone()
        if conn.pgconn.transaction_status != _IDLE and not conn.autocommit:
            conn.rollback()
        assert row is not None
        return ServerInfo(product="PostgreSQL", version=str(row[0]), max_connections=int(row[1]))

    def is_closed(self, conn: Connection) -> bool:
        return conn.closed

    def in_transaction(self, conn: Connection) -> bool:
        return conn.pgconn.transaction_status in _OPEN

    def is_disconnect(self, exc: BaseException) -> bool:
        return self._same.is_disconnect(exc)
