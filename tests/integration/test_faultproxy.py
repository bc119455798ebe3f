"""The fault-injecting proxy does what resilience tests rely on, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support.faultproxy import FaultProxy, fault_proxy

pytestmark = pytest.mark.postgres

Connect = Callable[[], Awaitable[asyncpg.Connection]]


async def _eventually(condition: Callable[[], bool], timeout: float = 1.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def _no_stray_tasks() -> None:
    """Give background tasks (ours or asyncpg's) a moment to finish, then insist they did."""
    me = asyncio.current_task()

    def others() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t is not me]

    assert await _eventually(lambda: not others()), f"tasks left running: {others()}"


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(postgres_url)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy
    assert proxy.active == 0
    await _no_stray_tasks()


@pytest.fixture
async def connect(proxy: FaultProxy, postgres_url: str) -> AsyncIterator[Connect]:
    """Open asyncpg connections through the proxy; whatever is left is closed at teardown."""
    opened: list[asyncpg.Connection] = []

    async def _connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(proxy.url_for(postgres_url), timeout=2)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        with contextlib.suppress(Exception):
            await conn.close(timeout=1)


class _Echo:
    """A loopback echo server that records how each connection ended: b"" (EOF) or the error."""

    def __init__(self) -> None:
        self.port = 0
        self.endings: list[bytes | BaseException] = []
        self._handlers: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            self.endings.append(b"")
        except OSError as exc:
            self.endings.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[_Echo]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()


def test_url_for_rewrites_only_host_and_port() -> None:
    proxy = FaultProxy("127.0.0.1", 5432)
    proxy.port = 40000
    assert (
        proxy.url_for("postgresql://user:pw@db.example:5432/test?sslmode=disable")
        == "postgresql://user:pw@127.0.0.1:40000/test?sslmode=disable"
    )
    assert proxy.url_for("redis://localhost/0") == "redis://127.0.0.1:40000/0"
    assert FaultProxy("::1", 1, listen_host="::1").url_for("mysql://h:1/d") == "mysql://[::1]:0/d"


async def test_queries_pass_through(proxy: FaultProxy, connect: Connect) -> None:
    conn = await connect()
    assert await conn.fetchval("SELECT 1") == 1
    big = await conn.fetchval("SELECT string_agg(i::text, ',' ORDER BY i) FROM generate_series(1, 100000) i")
    assert big == ",".join(map(str, range(1, 100001)))
    assert proxy.active == 1
    await conn.close()
    assert await _eventually(lambda: proxy.active == 0)


async def test_cut_resets_existing_connections(proxy: FaultProxy, connect: Connect) -> None:
    idle, busy = await connect(), await connect()
    in_flight = asyncio.create_task(busy.fetchval("SELECT pg_sleep(2)"))
    await asyncio.sleep(0.1)

    await proxy.cut()

    assert proxy.active == 0
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        async with asyncio.timeout(1):
            await in_flight
    with pytest.raises((asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError)):
        await idle.fetchval("SELECT 1")
    assert idle.is_closed()
    assert await (await connect()).fetchval("SELECT 1") == 1  # the proxy itself carries on


async def test_cut_sends_rst_to_both_sides() -> None:
    async with _Echo().serving() as echo, fault_proxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"

        await proxy.cut()

        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(1):
                await reader.read(1)
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()
        assert await _eventually(lambda: len(echo.endings) == 1)
        assert isinstance(echo.endings[0], ConnectionResetError)


async def test_latency_delays_each_way_and_keeps_order(proxy: FaultProxy, connect: Connect) -> None:
    conn = await connect()
    loop = asyncio.get_running_loop()
    proxy.set_latency(0.2)

    started = loop.time()
    await conn.execute("SELECT 1")  # simple protocol: exactly one round trip
    assert loop.time() - started >= 0.4

    # Many chunks: each is delayed, in order, and the delays overlap rather than add up.
    started = loop.time()
    big = await conn.fetchval("SELECT string_agg(i::text, ',' ORDER BY i) FROM generate_series(1, 100000) i")
    assert big == ",".join(map(str, range(1, 100001)))
    assert loop.time() - started < 2.0

    proxy.set_latency(0)
    started = loop.time()
    await conn.execute("SELECT 1")
    assert loop.time() - started < 0.2


async def test_lowering_latency_never_reorders() -> None:
    async with _Echo().serving() as echo, fault_proxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        proxy.set_latency(0.3)
        writer.write(b"first ")
        await asyncio.sleep(0.05)
        proxy.set_latency(0)
        writer.write(b"second")
        async with asyncio.timeout(2):
            assert await reader.readexactly(12) == b"first second"
            writer.write_eof()  # half-close travels through, and the echo's close comes back
            assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        assert await _eventually(lambda: proxy.active == 0)
        assert echo.endings == [b""]


async def test_blackhole_hangs_then_resumes(proxy: FaultProxy, connect: Connect, postgres_url: str) -> None:
    conn = await connect()
    assert await conn.fetchval("SELECT 1") == 1
    proxy.blackhole()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await conn.execute("SELECT 1")
    assert not conn.is_closed()  # a hang, not an error: nothing (not even RST/FIN) came back

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await asyncpg.connect(proxy.url_for(postgres_url))
    assert proxy.active >= 2  # the new connection was accepted, just never answered

    proxy.blackhole(False)  # held bytes are delivered and the stalled session recovers
    async with asyncio.timeout(2):
        assert await conn.fetchval("SELECT 2") == 2
        assert await (await connect()).fetchval("SELECT 3") == 3


async def test_refuse_fails_new_connects_fast_but_spares_existing(
    proxy: FaultProxy, connect: Connect, postgres_url: str
) -> None:
    conn = await connect()
    loop = asyncio.get_running_loop()
    proxy.refuse()

    started = loop.time()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(proxy.url_for(postgres_url), timeout=5)
    assert loop.time() - started < 1.0
    assert await conn.fetchval("SELECT 1") == 1
    assert proxy.active == 1

    proxy.refuse(False)  # same port again
    assert await (await connect()).fetchval("SELECT 2") == 2


async def test_stop_leaves_nothing_listening(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    conn = await asyncpg.connect(proxy.url_for(postgres_url), timeout=2)
    try:
        await proxy.stop()
        assert proxy.active == 0
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(proxy.host, proxy.port)
        assert await _eventually(conn.is_closed)
        await proxy.stop()  # idempotent
    finally:
        conn.terminate()
    await _no_stray_tasks()
