"""MySQL and MariaDB through asyncmy (``mysql://`` and ``mariadb://``).

Why asyncmy rather than aiomysql. Both descend from PyMySQL and both have a SQLAlchemy dialect
(``mysql+asyncmy``, ``mysql+aiomysql``). asyncmy is compiled with Cython, which makes decoding
rows several times cheaper than aiomysql's pure Python, and it is the more actively developed of
the two: its protocol layer was rewritten around an asyncio ``BufferedProtocol``, it adds
server-side prepared statements and MariaDB bulk execution. The deciding point is cancellation:
since 0.2.13 a read cancelled mid-packet closes the connection (``_close_on_cancel``) instead of
leaving the stream desynced, the bug behind asyncmy's "Packet sequence number wrong" reports, and a
closed connection is exactly what the pool can see and discard. aiomysql closes on cancellation too,
so on correctness they are level and speed decides; hence ``asyncmy>=0.2.13``.

Connections open in **autocommit** mode unless ``options={"autocommit": False}``: with autocommit
off, InnoDB opens a transaction at the first statement, so every read would leave the connection
"in transaction" (a ROLLBACK round trip at each release), a forgotten commit would silently lose
writes, and an idle lease would hold its snapshot open. Transactions are explicit instead, through
``transaction()``, as with the PostgreSQL connectors.

What the pool can rely on:

* ``connect``, ``close`` (sends COM_QUIT), ``ping``, ``rollback``, ``reset`` and ``server_info``
  are coroutines; ``terminate`` (closes the socket), ``is_closed`` and ``in_transaction`` do no I/O.
  ``in_transaction`` reads the status flags of the server's last OK/EOF packet.
* The transport keeps reading while a connection is idle, so a connection the server closed
  (``KILL``, ``wait_timeout``, restart) shows as ``is_closed`` without a ping.
* A task cancelled in the middle of a query closes its connection (``is_closed`` turns true);
  the server does not learn of it until it next writes to the socket, so the query runs on there.
* ``ping`` never reconnects behind the pool's back (asyncmy's default would).
"""

from __future__ import annotations

import asyncio
import inspect
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncmy
from asyncmy import errors
from asyncmy.cursors import Cursor

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors._mysql_common import DISCONNECT_CODES as _DISCONNECT_CODES
from poolwarden.connectors._mysql_common import connect_params
from poolwarden.connectors._shared import network_error, transaction_block
from poolwarden.connectors.base import ServerInfo
from poolwarden.handle import register_driver

__all__ = ["MysqlConnector", "create"]

_COM_RESET_CONNECTION = 0x1F  # MySQL >= 5.7.3, MariaDB >= 10.2.4
_OWN_OPTIONS = frozenset({"db"})  # deprecated alias of database

# Cursors made from a handle end with its lease (asyncmy's pool lends the connection itself).
register_driver(asyncmy.Connection, bound=("cursor",), resources=(Cursor,))


def create(dsn: DSN, config: PoolConfig) -> MysqlConnector:
    """The asyncmy connector for ``dsn``; raises ConfigError for an unknown option or URL parameter."""
    return MysqlConnector(dsn, config)


class MysqlConnector:
    """Opens, checks and resets asyncmy connections; ``config.options`` go to ``asyncmy.connect``."""

    driver = "asyncmy"
    connection_class: type[asyncmy.Connection] = asyncmy.Connection

    def __init__(self, dsn: DSN, config: PoolConfig) -> None:
        allowed = set(inspect.signature(asyncmy.connect).parameters) - _OWN_OPTIONS
        self._params: dict[str, Any] = connect_params(self.driver, dsn, config, allowed)
        self._redacted = dsn.redacted

    def __repr__(self) -> str:
        return f"<MysqlConnector {self._redacted}>"

    async def connect(self, timeout: float) -> asyncmy.Connection:
        params = self._params
        if "connect_timeout" not in params:
            # asyncmy's own limit covers the TCP connect only; ours covers authentication too.
            params = {**params, "connect_timeout": max(timeout, 0.001)}
        async with asyncio.timeout(timeout):
            # Cancelled (or timed out) half-way, asyncmy closes the socket itself.
            conn: asyncmy.Connection = await asyncmy.connect(**params)
        return conn

    async def close(self, conn: asyncmy.Connection) -> None:
        await conn.ensure_closed()

    def terminate(self, conn: asyncmy.Connection) -> None:
        try:
            conn.close()
        except Exception:  # terminate must never raise
            pass

    async def ping(self, conn: asyncmy.Connection) -> None:
        await conn.ping(reconnect=False)

    def is_closed(self, conn: asyncmy.Connection) -> bool:
        # _stream_broken (asyncmy >= 0.2.13) sees the peer's close before any query does.
        return not conn.connected or bool(getattr(conn, "_stream_broken", False))

    def in_transaction(self, conn: asyncmy.Connection) -> bool:
        # Also true when a lease switched autocommit (conn.autocommit(False)): the server status
        # flags of the last packet say so, and the next borrower must get the mode the pool promises.
        if not conn.connected:
            return False
        autocommit = self._params["autocommit"]
        return bool(conn.get_transaction_status()) or (
            autocommit is not None and conn.get_autocommit() != bool(autocommit))

    async def rollback(self, conn: asyncmy.Connection) -> None:
        await conn.rollback()
        autocommit = self._params["autocommit"]
        if autocommit is not None and conn.get_autocommit() != bool(autocommit):
            raw: Any = conn  # the stub leaves autocommit() untyped
            await raw.autocommit(bool(autocommit))

    async def reset(self, conn: asyncmy.Connection) -> None:
        # COM_RESET_CONNECTION: rollback, session variables back to the globals, user variables,
        # temporary tables, prepared statements, table and GET_LOCK locks all dropped, without the
        # re-authentication of COM_CHANGE_USER. asyncmy has no public call for it. On a server too
        # old for it the command fails and the pool discards the connection, a reset too.
        raw: Any = conn  # the stub omits the private calls and leaves query() untyped
        await raw._execute_command(_COM_RESET_CONNECTION, b"")
        await raw._read_ok_packet()
        _forget_prepared_statements(conn)
        # The reset also undid what asyncmy set up at connect: character set, autocommit, sql_mode.
        autocommit = self._params["autocommit"]
        setup = f"SET NAMES {raw.character_set_name()}"
        if autocommit is not None:
            setup += f", autocommit = {int(bool(autocommit))}"
        if self._params.get("sql_mode") is not None:
            setup += f", sql_mode = {self._params['sql_mode']}"
        await raw.query(setup)
        if self._params.get("init_command") is not None:
            await raw.query(self._params["init_command"])
            await conn.commit()

    def transaction(self, conn: asyncmy.Connection) -> AbstractAsyncContextManager[object]:
        return transaction_block(conn.begin, conn.commit, conn.rollback,
                                 lambda: bool(conn.get_transaction_status()))

    def is_disconnect(self, exc: BaseException) -> bool:
        if network_error(exc):
            return True
        if not isinstance(exc, errors.MySQLError):
            return False
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in _DISCONNECT_CODES:
            return True
        # asyncmy's own: InterfaceError(0, "Not connected" / "Cancelled during execution"),
        # Error("Already closed") from ping, InternalError("Packet sequence number wrong").
        if isinstance(exc, errors.InterfaceError) and code == 0:
            return True
        message = str(exc).lower()
        return "already closed" in message or "packet sequence number wrong" in message

    async def server_info(self, conn: asyncmy.Connection) -> ServerInfo:
        async with conn.cursor() as cur:
            await cur.execute("SELECT VERSION(), @@max_connections")
            row = await cur.fetchone()
        version = str(row[0])
        product = "MariaDB" if "mariadb" in version.lower() else "MySQL"
        return ServerInfo(product=product, version=version, max_connections=int(row[1]))


def _forget_prepared_statements(conn: asyncmy.Connection) -> None:
    """The server dropped every prepared statement; asyncmy's cache must not hand out their ids."""
    cache = getattr(conn, "_stmt_cache", None)
    if not cache:
        return
    for stmt in cache.values():
        try:
            stmt._closed = True  # a later close() must not deallocate an id the server reuses
        except AttributeError:
            pass
    cache.clear()
