"""MySQL and MariaDB through PyMySQL's blocking connection, for sync code (``sync=True``).

Autocommit unless ``options={"autocommit": False}``, like the asyncmy connector; the I/O runs in
threads (see ``_threads.py``). The transaction state is read from the server status flags PyMySQL
keeps from the last reply, so ``in_transaction`` does no I/O.
"""

from __future__ import annotations

import inspect
from typing import Any

import pymysql
from pymysql.constants import SERVER_STATUS

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors._mysql_common import DISCONNECT_CODES as _DISCONNECT_CODES
from poolwarden.connectors._mysql_common import connect_params
from poolwarden.connectors._threads import ThreadedConnector
from poolwarden.connectors.base import ServerInfo

__all__ = ["SyncPymysqlConnector", "create"]

Connection = Any  # PyMySQL ships no type information
_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS


def create(dsn: DSN, config: PoolConfig) -> SyncPymysqlConnector:
    """The PyMySQL connector for ``dsn``; raises ConfigError for an unknown option or URL parameter."""
    return SyncPymysqlConnector(dsn, config)


class SyncPymysqlConnector(ThreadedConnector[Connection]):
    """Opens, checks and resets PyMySQL connections in threads; ``config.options`` go to ``connect``."""

    driver = "pymysql"
    connection_class: type[Connection] = pymysql.connections.Connection

    def __init__(self, dsn: DSN, config: PoolConfig) -> None:
        super().__init__()
        allowed = set(inspect.signature(pymysql.connections.Connection.__init__).parameters) - {
            "self", "passwd", "db"}
        self._params: dict[str, Any] = connect_params(self.driver, dsn, config, allowed)
        self._redacted = dsn.redacted

    def __repr__(self) -> str:
        return f"<SyncPymysqlConnector {self._redacted}>"

    def _connect_sync(self, timeout: float) -> Any:
        params = self._params
        if "connect_timeout" not in params:
            params = {**params, "connect_timeout": max(timeout, 0.001)}
        return pymysql.connect(**params)

    def _close_sync(self, conn: Any) -> None:
        if conn.open:
            conn.close()

    def _ping_sync(self, conn: Any) -> None:
        conn.ping(reconnect=False)

    def _rollback_sync(self, conn: Any) -> None:
        conn.rollback()

    def _reset_sync(self, conn: Any) -> None:
        conn.rollback()
        autocommit = self._params["autocommit"]
        if autocommit is not None:
            conn.autocommit(bool(autocommit))

    def _begin_sync(self, conn: Any) -> None:
        conn.begin()

    def _commit_sync(self, conn: Any) -> None:
        conn.commit()

    def _server_info_sync(self, conn: Any) -> ServerInfo:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION(), @@max_connections")
            row = cur.fetchone()
        version = str(row[0])
        product = "MariaDB" if "mariadb" in version.lower() else "MySQL"
        return ServerInfo(product=product, version=version, max_connections=int(row[1]))

    def is_closed(self, conn: Any) -> bool:
        return not conn.open

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.open and (conn.server_status or 0) & _IN_TRANS)

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, (OSError, TimeoutError)):
            return True
        if not isinstance(exc, pymysql.MySQLError):
            return False
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in _DISCONNECT_CODES:
            return True
        return isinstance(exc, pymysql.err.InterfaceError)
