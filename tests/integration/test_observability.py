"""A password given to poolwarden never comes out again: not in logs, reprs, errors, health, stats,
metrics."""

# No `from __future__ import annotations`: FastAPI must resolve the endpoints' local Annotated aliases.
import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from fastapi import FastAPI

from poolwarden import BackendDown, PoolConfig, PoolTimeout, Warden
from poolwarden.testing import FakeConnection, FakeConnector
from tests.unit.test_metrics import Scrape

CANARY = "canary-S3cr3t"


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class LeakyConnector(FakeConnector):
    """A backend whose connect error quotes the whole URL, password included, as some drivers do."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def connect(self, timeout: float) -> FakeConnection:
        self.connects += 1
        raise ConnectionRefusedError(f"could not connect to {self.url}: connection refused")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the app's ASGI lifespan for real: startup before the block, shutdown after it."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        await outbox.put(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        stopped = await outbox.get()
        await task
        assert stopped["type"] == "lifespan.shutdown.complete", stopped


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.postgres
async def test_the_canary_appears_nowhere(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Open, lend, return, fail to connect, time out, 503, health, stats, metrics, reprs, errors, logs:
    the password never shows."""
    caplog.set_level(logging.DEBUG, logger="poolwarden")
    url = with_password(postgres_url, CANARY)  # trust authentication accepts (and ignores) it
    dead = f"postgresql://postgres:{CANARY}@127.0.0.1:{closed_port()}/test?sslpassword={CANARY}"
    leaky = f"postgresql://postgres:{CANARY}@db.invalid:5432/test"
    fast_fail: dict[str, Any] = {"startup": "lazy", "failure_threshold": 1, "backoff_initial": 0.01,
                                 "backoff_max": 0.05, "connect_timeout": 2.0}

    warden = Warden(environ={})
    db = warden.pool("db", url, min_size=1, max_size=1, acquire_timeout=0.2, options={"password": CANARY},
                    leak_threshold=30.0)
    down = warden.pool("down", dead, options={"password": CANARY}, **fast_fail)
    quoted = warden.pool("quoted", leaky, connector=LeakyConnector(leaky), **fast_fail)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, stats=True)  # the internals too, so their bodies are checked for the canary

    @app.get("/one")
    async def one(conn: Annotated[Any, db.connection]) -> dict[str, int]:
        return {"one": await conn.fetchval("SELECT 1")}

    @app.get("/down")
    async def on_down(conn: Annotated[Any, down.connection]) -> dict[str, str]:
        return {"reached": "never"}

    seen: list[str] = []
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.get("/one")
            assert r.status_code == 200
            async with db.acquire() as conn:
                seen.append(repr(conn))
                r = await client.get("/one")  # the only connection is lent: 503 after acquire_timeout
                assert r.status_code == 503
                assert r.headers["content-type"] == "application/problem+json"
                seen += [r.text, str(r.headers)]
                with pytest.raises(PoolTimeout) as timeout:
                    await db.acquire(timeout=0.05)
                seen += [str(timeout.value), repr(timeout.value)]

            await eventually(lambda: down.stats().circuit == "open" and quoted.stats().circuit == "open")
            for pool in (down, quoted):
                with pytest.raises(BackendDown) as failed:
                    await pool.acquire()
                seen += [str(failed.value), repr(failed.value), str(failed.value.__cause__)]
            assert quoted.stats().last_error == "ConnectionRefusedError"  # public: the class, no text
            r = await client.get("/down")
            assert r.status_code == 503
            seen += [r.text, str(r.headers)]

            for path in ("/readyz?verbose", "/readyz", "/livez", "/metrics", "/poolwarden/stats"):
                r = await client.get(path)
                seen += [r.text, str(r.headers)]
            assert "db_client_connection_count" in seen[-4]
            assert "ConnectionRefusedError" in seen[-2]  # the leaky error's class, never its text

        for pool in (db, down, quoted):
            seen += [repr(pool), repr(pool.dsn), str(pool.dsn), repr(pool.connector), repr(pool.config),
                     repr(pool.stats()),
                     str(pool.stats().to_dict()), repr(pool.leases())]
        seen.append(repr(warden))

    seen += [caplog.text, *(repr(vars(record)) for record in caplog.records)]
    assert any("connection.lent" in r.getMessage() for r in caplog.records)
    assert any("connection.failed" in r.getMessage() for r in caplog.records)
    leaks = [text for text in seen if CANARY in text]
    assert not leaks, leaks[0]


def test_config_repr_hides_option_secrets() -> None:
    """A PoolConfig's repr (what a debugger, a traceback's locals or an error tracker shows) hides
    secret options."""
    config = PoolConfig(options={"password": CANARY, "sslpassword": CANARY})
    assert CANARY not in repr(config)
    assert CANARY not in str(config)


APP = textwrap.dedent("""
    from fastapi import FastAPI
    from poolwarden import Warden

    warden = Warden()
    db = warden.pool("db", {url!r}, min_size=2, max_size=5)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app)
""")

SCRAPER = textwrap.dedent("""
    import sys
    from poolwarden import Warden
    from poolwarden.observe import prometheus

    sys.stdout.write(prometheus.render(Warden(environ={}))[0].decode())
""")


@pytest.mark.slow
def test_metrics_add_up_across_uvicorn_workers(tmp_path: Path, sqlite_url: str) -> None:
    """Under ``uvicorn --workers 2`` with PROMETHEUS_MULTIPROC_DIR, /metrics sums both workers' pools,
    and once the workers have shut down they count for nothing."""
    (tmp_path / "twoworkers.py").write_text(APP.format(url=sqlite_url))
    (tmp_path / "prometheus").mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
    port = closed_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "twoworkers:app", "--app-dir", str(tmp_path), "--port", str(port),
         "--workers", "2", "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        scrape = None
        while time.monotonic() < deadline:
            try:
                scrape = Scrape(httpx.get(f"{base}/metrics", timeout=2).content)
                if scrape.value("db_client_connection_count", "db", state="idle") == 4:
                    break
            except (httpx.HTTPError, AssertionError, KeyError):
                pass
            time.sleep(0.2)
        assert scrape is not None, "the server never answered"
        assert scrape.value("db_client_connection_count", "db", state="idle") == 4
        assert scrape.value("db_client_connection_max", "db") == 10
        assert scrape.value("db_client_connection_idle_min", "db") == 4
        assert scrape.value("db_client_connection_create_time_seconds_count", "db") == 4
    finally:
        server.terminate()
        server.wait(timeout=30)
    after = subprocess.run([sys.executable, "-c", SCRAPER], env=env, capture_output=True, text=True,
                           timeout=60, check=True)
    scrape = Scrape(after.stdout.encode())
    assert scrape.value("db_client_connection_count", "db", state="idle") == 0
    assert scrape.value("db_client_connection_max", "db") == 0
    assert scrape.value("db_client_connection_create_time_seconds_count", "db") == 4
