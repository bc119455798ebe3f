"""The four connectors against real servers: open, check, transactions, reset, death and its signs."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors import Connector, connector_for
from poolwarden.errors import ConfigError


class Backend:
    """What differs between backends in SQL and in how a test reaches the driver."""

    name: str
    temp_table: str
    long_query: str
    server = True

    def __init__(self, url: str) -> None:
        self.url = url

    def connector(self, **settings: Any) -> Connector[Any]:
        return connector_for(DSN(self.url), PoolConfig(**settings))

    def with_port(self, port: int) -> str:
        head, _, tail = self.url.partition("@")
        _host_port, slash, rest = tail.partition("/")
        return f"{head}@127.0.0.1:{port}{slash}{rest}"

    async def fetch(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def execute(self, conn: Any, sql: str) -> None:
        await self.fetch(conn, sql)

    def create_table(self, name: str) -> str:
        return f"CREATE TABLE {name} (id INTEGER PRIMARY KEY)"

    # SQL that changes session state, and a query whose answer shows it.
    session_changes: tuple[str, ...]
    session_probe: str

    async def kill(self, connector: Connector[Any], victim: Any) -> None:
        raise NotImplementedError


class Asyncpg(Backend):
    name = "asyncpg"
    temp_table = "CREATE TEMP TABLE lg_tmp (x int)"
    long_query = "SELECT pg_sleep(10)"
    session_changes = ("SET application_name = 'poolwarden-test'", "SET search_path = pg_catalog",
                       "SELECT pg_advisory_lock(4242)")
    session_probe = ("SELECT current_setting('application_name'), current_setting('search_path'),"
                     " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                     "  AND pid = pg_backend_pid())")

    async def fetch(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await conn.fetch(sql)]

    async def kill(self, connector: Connector[Any], victim: Any) -> None:
        [(pid,)] = await self.fetch(victim, "SELECT pg_backend_pid()")
        killer = await connector.connect(5)
        try:
            # With a timeout, pg_terminate_backend waits until the backend has gone.
            [(done,)] = await self.fetch(killer, f"SELECT pg_terminate_backend({pid}, 5000)")
            assert done
        finally:
            await connector.close(killer)


class Psycopg(Asyncpg):
    name = "psycopg"

    async def fetch(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        cur = await conn.execute(sql)
        return [tuple(row) for row in await cur.fetchall()] if cur.description else []


class Sqlite(Backend):
    name = "sqlite"
    server = False
    temp_table = "CREATE TEMP TABLE lg_tmp (x INT)"
    long_query = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000)"
                  " SELECT count(*) FROM c")
    session_changes = ("PRAGMA foreign_keys = ON", "PRAGMA busy_timeout = 1", "PRAGMA query_only = 1",
                       "ATTACH DATABASE ':memory:' AS lg_aux")
    session_probe = ("SELECT * FROM pragma_foreign_keys(), pragma_busy_timeout(), pragma_query_only(),"
                     " (SELECT count(*) FROM pragma_database_list WHERE name NOT IN ('main', 'temp'))")

    async def fetch(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await conn.execute_fetchall(sql)]

    async def kill(self, connector: Connector[Any], victim: Any) -> None:
        # No server to kill: close the sqlite3 connection behind aiosqlite's back instead.
        await victim._execute(victim._conn.close)


class Mysql(Backend):
    name = "mysql"
    temp_table = "CREATE TEMPORARY TABLE lg_tmp (x INT)"
    long_query = "SELECT SLEEP(10)"
    session_changes = ("SET @lg = 42", "SET SESSION wait_timeout = 77", "SET NAMES latin1",
                       "SELECT GET_LOCK('poolwarden-test', 0)")
    session_probe = ("SELECT @lg, @@session.wait_timeout, @@character_set_client, @@autocommit,"
                     " IS_USED_LOCK('poolwarden-test') = CONNECTION_ID()")

    async def fetch(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return [tuple(row) for row in await cur.fetchall()]

    async def kill(self, connector: Connector[Any], victim: Any) -> None:
        [(thread_id,)] = await self.fetch(victim, "SELECT CONNECTION_ID()")
        killer = await connector.connect(5)
        try:
            await self.execute(killer, f"KILL {thread_id}")
            for _ in range(100):  # KILL only flags the thread; wait until it has gone
                rows = await self.fetch(killer, f"SELECT 1 FROM information_schema.PROCESSLIST"
                                                f" WHERE ID = {thread_id}")
                if not rows:
                    break
                await asyncio.sleep(0.02)
        finally:
            await connector.close(killer)


def _psycopg_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.partition('+')[0]}+psycopg://{rest}"


_KINDS: dict[str, tuple[type[Backend], str, Callable[[str], str]]] = {
    "asyncpg": (Asyncpg, "postgres_url", lambda url: url),
    "psycopg": (Psycopg, "postgres_url", _psycopg_url),
    "sqlite": (Sqlite, "sqlite_url", lambda url: url),
    "mysql": (Mysql, "mysql_url", lambda url: url),
}
_SERVERS = ["asyncpg", "psycopg", "mysql"]


@pytest.fixture(params=list(_KINDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    kind, fixture, to_url = _KINDS[request.param]
    return kind(to_url(request.getfixturevalue(fixture)))


@pytest.fixture(params=_SERVERS)
def server_backend(request: pytest.FixtureRequest) -> Backend:
    kind, fixture, to_url = _KINDS[request.param]
    return kind(to_url(request.getfixturevalue(fixture)))


@pytest.fixture
def connector(backend: Backend) -> Connector[Any]:
    return backend.connector()


async def dispose(connector: Connector[Any], conn: Any) -> None:
    """Close ``conn`` whatever its state, and wait for aiosqlite's thread so none outlives the test."""
    try:
        await asyncio.wait_for(connector.close(conn), 5)
    except Exception:
        connector.terminate(conn)
    thread = getattr(conn, "_thread", None)
    if thread is not None and thread.ident is not None:
        await asyncio.to_thread(thread.join, 5)


@pytest.fixture
async def conn(connector: Connector[Any]) -> AsyncIterator[Any]:
    connection = await connector.connect(5)
    yield connection
    await dispose(connector, connection)


@pytest.fixture
async def table(backend: Backend, connector: Connector[Any]) -> AsyncIterator[str]:
    name = f"lg_conn_{uuid.uuid4().hex[:12]}"
    admin = await connector.connect(5)
    try:
        await backend.execute(admin, backend.create_table(name))
        yield name
        await backend.execute(admin, f"DROP TABLE {name}")
    finally:
        await dispose(connector, admin)


async def count(backend: Backend, connector: Connector[Any], table: str) -> int:
    """Rows in ``table`` as another connection sees them (so only committed rows)."""
    other = await connector.connect(5)
    try:
        [(n,)] = await backend.fetch(other, f"SELECT count(*) FROM {table}")
        return int(n)
    finally:
        await dispose(connector, other)


async def failure(action: Awaitable[Any]) -> BaseException:
    try:
        await action
    except Exception as exc:
        return exc
    raise AssertionError("expected the call to fail")


# --- open, check, close ---------------------------------------------------------------------------


async def test_connect_ping_close(backend: Backend, connector: Connector[Any]) -> None:
    """A connection opens, answers a ping and a query, and reports itself closed after close()."""
    conn = await connector.connect(5)
    assert isinstance(conn, connector.connection_class)
    assert not connector.is_closed(conn)
    await connector.ping(conn)
    assert await backend.fetch(conn, "SELECT 1") == [(1,)]
    await dispose(connector, conn)
    assert connector.is_closed(conn)


async def test_server_info(backend: Backend, connector: Connector[Any], conn: Any) -> None:
    """server_info names the product and version, and a server's connection limit."""
    info = await connector.server_info(conn)
    assert info.product in {"asyncpg": "PostgreSQL", "psycopg": "PostgreSQL", "sqlite": "SQLite",
                            "mysql": ("MariaDB", "MySQL")}[backend.name]
    assert info.version
    assert info.version[0].isdigit()
    if backend.server:
        assert info.max_connections is not None
        assert info.max_connections > 0
    else:
        assert info.max_connections is None
    assert not connector.in_transaction(conn)


async def test_terminate_never_raises(backend: Backend, connector: Connector[Any]) -> None:
    """terminate works on a live connection, twice, and a close after it returns at once."""
    conn = await connector.connect(5)
    connector.terminate(conn)
    connector.terminate(conn)
    assert connector.is_closed(conn)
    await asyncio.wait_for(connector.close(conn), 2)
    await dispose(connector, conn)


async def test_terminate_dead_connection(backend: Backend, connector: Connector[Any]) -> None:
    """terminate on a connection the server already killed does not raise."""
    conn = await connector.connect(5)
    await backend.kill(connector, conn)
    await failure(backend.fetch(conn, "SELECT 1"))
    connector.terminate(conn)
    assert connector.is_closed(conn)
    await dispose(connector, conn)


# --- transactions ---------------------------------------------------------------------------------


async def test_clean_after_plain_read(backend: Backend, connector: Connector[Any], conn: Any) -> None:
    """A plain read leaves no transaction open: autocommit is the default everywhere."""
    assert not connector.in_transaction(conn)
    await backend.fetch(conn, "SELECT 1")
    assert not connector.in_transaction(conn)
    await connector.ping(conn)
    assert not connector.in_transaction(conn)


async def test_in_transaction_states(backend: Backend, connector: Connector[Any], conn: Any) -> None:
    """in_transaction is true inside a transaction, also a failed one, and false after rollback."""
    await backend.execute(conn, "BEGIN")
    assert connector.in_transaction(conn)
    await failure(backend.fetch(conn, "SELECT * FROM lg_missing_table"))
    assert connector.in_transaction(conn)
    await connector.rollback(conn)
    assert not connector.in_transaction(conn)
    async with connector.transaction(conn):
        assert connector.in_transaction(conn)
    assert not connector.in_transaction(conn)


async def test_transaction_commits(backend: Backend, connector: Connector[Any], conn: Any,
                                   table: str) -> None:
    """A transaction block that ends cleanly commits."""
    async with connector.transaction(conn):
        await backend.execute(conn, f"INSERT INTO {table} (id) VALUES (1)")
        await backend.execute(conn, f"INSERT INTO {table} (id) VALUES (2)")
    assert not connector.in_transaction(conn)
    assert await count(backend, connector, table) == 2


async def test_transaction_rolls_back(backend: Backend, connector: Connector[Any], conn: Any,
                                      table: str) -> None:
    """A transaction block that raises rolls back and re-raises the same exception."""
    boom = RuntimeError("boom")

    async def body() -> None:
        async with connector.transaction(conn):
            await backend.execute(conn, f"INSERT INTO {table} (id) VALUES (1)")
            raise boom

    with pytest.raises(RuntimeError) as info:
        await body()
    assert info.value is boom
    assert not connector.in_transaction(conn)
    assert await count(backend, connector, table) == 0
    await backend.execute(conn, f"INSERT INTO {table} (id) VALUES (1)")  # the connection goes on
    assert await count(backend, connector, table) == 1


async def test_transaction_rolls_back_on_cancel(backend: Backend, connector: Connector[Any],
                                                conn: Any, table: str) -> None:
    """Cancellation inside a transaction block rolls it back too."""
    entered = asyncio.Event()

    async def body() -> None:
        async with connector.transaction(conn):
            await backend.execute(conn, f"INSERT INTO {table} (id) VALUES (1)")
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not connector.in_transaction(conn)
    assert await count(backend, connector, table) == 0


# --- reset ----------------------------------------------------------------------------------------


async def test_reset_restores_session(backend: Backend, connector: Connector[Any], conn: Any) -> None:
    """reset() undoes session settings, temporary tables, locks and an open transaction."""
    before = await backend.fetch(conn, backend.session_probe)
    await backend.execute(conn, backend.temp_table)
    for sql in backend.session_changes:
        await backend.execute(conn, sql)
    assert await backend.fetch(conn, backend.session_probe) != before
    await backend.execute(conn, "BEGIN")
    assert connector.in_transaction(conn)

    await connector.reset(conn)

    assert not connector.in_transaction(conn)
    assert await backend.fetch(conn, backend.session_probe) == before
    error = await failure(backend.fetch(conn, "SELECT * FROM lg_tmp"))
    assert not connector.is_disconnect(error)
    async with connector.transaction(conn):  # transactions still work, and so does the reset
        await backend.execute(conn, backend.temp_table)
    await connector.reset(conn)
    await connector.ping(conn)


# --- death and ordinary errors --------------------------------------------------------------------


async def test_disconnect_after_kill(backend: Backend, connector: Connector[Any], conn: Any) -> None:
    """A connection the server killed fails its next query with an error is_disconnect recognises."""
    await backend.kill(connector, conn)
    first = await failure(backend.fetch(conn, "SELECT 1"))
    assert connector.is_disconnect(first), repr(first)
    second = await failure(backend.fetch(conn, "SELECT 1"))
    assert connector.is_disconnect(second), repr(second)
    assert connector.is_disconnect(await failure(connector.ping(conn)))
    assert connector.is_closed(conn)
    assert not connector.in_transaction(conn)


@pytest.mark.parametrize("kind", ["asyncpg", "mysql"])
async def test_is_closed_sees_kill_without_io(kind: str, request: pytest.FixtureRequest) -> None:
    """asyncpg and asyncmy notice that the server closed an idle connection without a query."""
    backend_cls, fixture, to_url = _KINDS[kind]
    backend = backend_cls(to_url(request.getfixturevalue(fixture)))
    connector = backend.connector()
    conn = await connector.connect(5)
    try:
        await backend.kill(connector, conn)
        for _ in range(500):
            if connector.is_closed(conn):
                break
            await asyncio.sleep(0.01)
        assert connector.is_closed(conn)
    finally:
        await dispose(connector, conn)


async def test_sql_errors_are_not_disconnects(backend: Backend, connector: Connector[Any], conn: Any,
                                              table: str) -> None:
    """A syntax error or a unique violation is the query's fault: the connection stays usable."""
    syntax = await failure(backend.fetch(conn, "SELEC 1"))
    assert not connector.is_disconnect(syntax), repr(syntax)
    await backend.execute(conn, f"INSERT INTO {table} (id) VALUES (1)")
    duplicate = await failure(backend.execute(conn, f"INSERT INTO {table} (id) VALUES (1)"))
    assert not connector.is_disconnect(duplicate), repr(duplicate)
    assert not connector.is_closed(conn)
    assert not connector.in_transaction(conn)
    await connector.ping(conn)


async def test_cancel_mid_query(backend: Backend, connector: Connector[Any], conn: Any) -> None:
    """A query cancelled half-way leaves the connection either closed or usable and clean."""
    task = asyncio.create_task(backend.fetch(conn, backend.long_query))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 6
    if backend.name == "mysql":
        assert connector.is_closed(conn)  # asyncmy closes a connection cancelled mid-read
        return
    await asyncio.wait_for(connector.ping(conn), 10)  # aiosqlite: waits for the statement to end
    assert not connector.in_transaction(conn)
    assert await backend.fetch(conn, "SELECT 1") == [(1,)]


def test_other_errors_are_not_disconnects(connector: Connector[Any]) -> None:
    """Exceptions that are not about the connection are never disconnects."""
    for exc in (ValueError("bad value"), RuntimeError("no"), KeyError("k"), asyncio.CancelledError()):
        assert not connector.is_disconnect(exc)
    for exc in (ConnectionResetError("reset"), TimeoutError(), OSError("broken pipe")):
        assert connector.is_disconnect(exc)


# --- connect failures -----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connect_refused_fails_fast(server_backend: Backend) -> None:
    """Connecting to a closed port fails with the driver's error well within the timeout."""
    connector = type(server_backend)(server_backend.with_port(_closed_port())).connector()
    started = time.monotonic()
    error = await failure(asyncio.wait_for(connector.connect(3), 10))
    assert time.monotonic() - started < 3
    assert not isinstance(error, (TimeoutError, ConfigError)), repr(error)
    assert connector.is_disconnect(error), repr(error)


async def test_connect_to_silent_server_times_out(server_backend: Backend) -> None:
    """A server that accepts but never speaks makes connect give up after its timeout."""
    peers: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        connector = type(server_backend)(server_backend.with_port(port)).connector()
        started = time.monotonic()
        error = await failure(asyncio.wait_for(connector.connect(0.5), 10))
        assert 0.4 < time.monotonic() - started < 2.5
        assert isinstance(error, TimeoutError), repr(error)
        assert connector.is_disconnect(error)
    finally:
        for writer in peers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_sqlite_missing_directory(tmp_path: Any) -> None:
    """A database file in a directory that does not exist fails with sqlite3's error."""
    connector = connector_for(DSN(f"sqlite:///{tmp_path}/missing/x.db"), PoolConfig())
    error = await failure(connector.connect(2))
    assert isinstance(error, sqlite3.OperationalError)


# --- declaration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "package", "extra"), [
    pytest.param("postgresql://u@h/db", "asyncpg", "postgres", id="asyncpg"),
    pytest.param("postgresql+psycopg://u@h/db", "psycopg", "psycopg", id="psycopg"),
    pytest.param("sqlite:///x.db", "aiosqlite", "sqlite", id="sqlite"),
    pytest.param("mariadb://u@h/db", "asyncmy", "mysql", id="mysql"),
])
def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch, url: str, package: str,
                                        extra: str) -> None:
    """Without its driver a backend fails at declaration with a ConfigError naming the extra."""
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(ConfigError, match=rf"poolwarden\[{extra}\]"):
        connector_for(DSN(url), PoolConfig())


@pytest.mark.parametrize(("url", "option"), [
    pytest.param("postgresql://u:s3cret@h/db", "statement_cache", id="asyncpg"),
    pytest.param("postgresql+psycopg://u:s3cret@h/db", "prepare_treshold", id="psycopg"),
    pytest.param("sqlite:///x.db", "busy_timeout", id="sqlite"),
    pytest.param("mysql://u:s3cret@h/db", "auto_commit", id="mysql"),
])
def test_unknown_option_fails_at_declaration(url: str, option: str) -> None:
    """A misspelt option is a ConfigError naming the key, never showing the value or password."""
    with pytest.raises(ConfigError, match=option) as info:
        connector_for(DSN(url), PoolConfig(options={option: "hunter2"}))
    assert "hunter2" not in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("url", [
    pytest.param("postgresql://u:s3cret@h/db", id="asyncpg"),
    pytest.param("postgresql+psycopg://u:s3cret@h/db", id="psycopg"),
    pytest.param("mysql://u:s3cret@h/db", id="mysql"),
])
def test_repr_hides_password(url: str) -> None:
    """A connector's repr shows the redacted URL."""
    text = repr(connector_for(DSN(url), PoolConfig()))
    assert "s3cret" not in text
    assert "***" in text


@pytest.mark.parametrize(("url", "options"), [
    pytest.param("postgresql://u@h/db", {"statement_cache_size": 100}, id="asyncpg"),
    pytest.param("postgresql+psycopg://u@h/db", {"prepare_threshold": 5}, id="psycopg"),
])
def test_pgbouncer_refuses_prepared_statements(url: str, options: dict[str, Any]) -> None:
    """pgbouncer=True conflicts with an explicit prepared-statement cache."""
    with pytest.raises(ConfigError, match="pgbouncer"):
        connector_for(DSN(url), PoolConfig(pgbouncer=True, options=options))


@pytest.mark.parametrize("kind", ["asyncpg", "psycopg"])
async def test_pgbouncer_mode_works(kind: str, request: pytest.FixtureRequest) -> None:
    """In pgbouncer mode repeated parametrised queries need no named statement, and reset works."""
    backend_cls, fixture, to_url = _KINDS[kind]
    backend = backend_cls(to_url(request.getfixturevalue(fixture)))
    connector = backend.connector(pgbouncer=True)
    conn = await connector.connect(5)
    try:
        for _ in range(8):  # past psycopg's prepare threshold of 5
            assert await backend.fetch(conn, "SELECT 1 + 1") == [(2,)]
        [(prepared,)] = await backend.fetch(conn, "SELECT count(*) FROM pg_prepared_statements")
        assert prepared == 0
        await backend.execute(conn, "BEGIN")
        await connector.reset(conn)
        assert not connector.in_transaction(conn)
    finally:
        await dispose(connector, conn)


async def test_psycopg_autocommit_off(postgres_url: str) -> None:
    """With autocommit off, checks still open no transaction and reset restores the setting."""
    connector = connector_for(DSN(_psycopg_url(postgres_url)), PoolConfig(options={"autocommit": False}))
    conn = await connector.connect(5)
    try:
        assert not conn.autocommit
        await connector.ping(conn)
        await connector.server_info(conn)
        assert not connector.in_transaction(conn)
        await conn.execute("SELECT 1")
        assert connector.in_transaction(conn)  # psycopg's implicit BEGIN
        await connector.rollback(conn)
        await conn.set_autocommit(True)
        await connector.reset(conn)
        assert not connector.in_transaction(conn)
        assert not conn.autocommit
    finally:
        await dispose(connector, conn)


async def test_asyncpg_rollback_forgets_unfinished_transaction(postgres_url: str) -> None:
    """After rollback, a transaction object left started does not turn the next one into a SAVEPOINT."""
    connector = connector_for(DSN(postgres_url), PoolConfig())
    conn = await connector.connect(5)
    try:
        await conn.transaction().start()  # started, never finished: a leaked transaction
        assert connector.in_transaction(conn)
        await connector.rollback(conn)
        assert not connector.in_transaction(conn)
        async with connector.transaction(conn):
            assert connector.in_transaction(conn)
        assert not connector.in_transaction(conn)
    finally:
        await dispose(connector, conn)


async def test_sqlite_close_keeps_the_callers_time_bound(sqlite_url: str) -> None:
    """A close queued behind a long statement gives up on time, interrupts it, and still completes."""
    backend = Sqlite(sqlite_url)
    connector = backend.connector()
    conn = await connector.connect(5)
    long_query = asyncio.create_task(backend.fetch(conn, backend.long_query))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connector.close(conn), 0.2)
    assert time.monotonic() - started < 0.5
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        await long_query
    await asyncio.wait_for(connector.close(conn), 5)
    assert connector.is_closed(conn)
    await dispose(connector, conn)


@pytest.mark.parametrize(("url", "journal"), [
    pytest.param("sqlite:///relative.db", "wal", id="relative"),
    pytest.param("sqlite:///{tmp}/absolute.db", "wal", id="absolute"),
    pytest.param("sqlite:///:memory:", "memory", id="memory"),
    pytest.param("sqlite://", "memory", id="bare"),
    pytest.param("sqlite:///{tmp}/uri.db?cache=private", "wal", id="uri"),
])
async def test_sqlite_urls(url: str, journal: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The three URL forms open what they name; files get WAL, memory databases cannot."""
    monkeypatch.chdir(tmp_path)
    connector = connector_for(DSN(url.format(tmp=tmp_path)), PoolConfig())
    conn = await connector.connect(5)
    try:
        assert await Sqlite(url).fetch(conn, "PRAGMA journal_mode") == [(journal,)]
        [(_, _, file)] = await Sqlite(url).fetch(conn, "PRAGMA database_list")
        if journal == "wal":
            assert file == str(tmp_path / url.rpartition("/")[2].partition("?")[0])
        else:
            assert file == ""
    finally:
        await dispose(connector, conn)


async def test_sqlite_read_only_uri(tmp_path: Any) -> None:
    """A ?mode=ro URL opens the file read-only (and leaves its journal mode alone)."""
    writable = connector_for(DSN(f"sqlite:///{tmp_path}/ro.db"), PoolConfig())
    conn = await writable.connect(5)
    await conn.execute("CREATE TABLE t (x INT)")
    await dispose(writable, conn)
    read_only = connector_for(DSN(f"sqlite:///{tmp_path}/ro.db?mode=ro"), PoolConfig())
    conn = await read_only.connect(5)
    try:
        assert await Sqlite("").fetch(conn, "SELECT count(*) FROM t") == [(0,)]
        error = await failure(conn.execute("INSERT INTO t VALUES (1)"))
        assert "readonly" in str(error)
        assert not read_only.is_disconnect(error)
    finally:
        await dispose(read_only, conn)
