"""fastapi/fastapi#3205 through a real uvicorn server: sync endpoints on a pool of 5, 48 and 64
concurrent requests; every request is served or refused fast, no worker thread waits on the pool."""

import asyncio
import logging
import socket
import time
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from anyio import to_thread
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.orm import Session

from poolwarden import Warden
from tests.support.servers import POSTGRES_URL, require

pytestmark = pytest.mark.postgres


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service(url: str, **settings: Any) -> tuple[FastAPI, Warden, Any]:
    warden = Warden()
    orm = warden.sqlalchemy("db", url, sync=True, min_size=5, max_size=5, **settings)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    DB = Annotated[Session, orm.session]
    raw = warden.pool("raw", url.replace("+psycopg", "", 1), min_size=0, max_size=5,
                      connector=_sync_connector(url), **settings)

    @app.get("/orm")
    def orm_endpoint(s: DB) -> int:  # a sync endpoint: runs in the threadpool
        s.execute(text("SELECT pg_sleep(0.05)"))
        return 1

    @app.get("/raw")
    def raw_endpoint(conn: Annotated[Any, raw.connection]) -> int:
        conn.execute("SELECT pg_sleep(0.05)")
        return 1

    return app, warden, orm


def _sync_connector(url: str) -> Any:
    from poolwarden.sync import connector
    return connector(url)


async def _burst(base: str, path: str, n: int) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def one() -> tuple[int, float]:
            start = time.monotonic()
            r = await client.get(path)
            return r.status_code, time.monotonic() - start
        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/orm", "/raw"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fifo", "adaptive"])
async def test_sync_endpoints_on_a_small_pool_never_stall_the_threadpool(
        path: str, adaptive: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Pool 5, threadpool 40: 48 then 64 concurrent sync requests all finish - every one served
    first come, first served, or (adaptive queue, the default) served or refused at once with a
    503 - and no more worker threads are ever busy than connections are lent."""
    url = require(POSTGRES_URL, "PostgreSQL").replace("postgresql://", "postgresql+psycopg://", 1)
    app, warden, orm = _service(url, acquire_timeout=5, adaptive_queue=adaptive)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    caplog.set_level(logging.WARNING, logger="poolwarden")
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await asyncio.sleep(0.02)
        assert any("fastapi#3205" in r.getMessage() for r in caplog.records)  # the start-up warning
        limiter = to_thread.current_default_thread_limiter()
        pool = warden["raw"] if path == "/raw" else orm
        peak = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                # threads busy in endpoints never outnumber the connections lent (each holds one)
                peak = max(peak, int(limiter.borrowed_tokens) - pool.stats().in_use)
                await asyncio.sleep(0.002)
        watcher = asyncio.create_task(watch())
        for n in (48, 64):
            start = time.monotonic()
            results = await _burst(f"http://127.0.0.1:{port}", path, n)
            elapsed = time.monotonic() - start
            codes = {code for code, _ in results}
            assert codes <= {200, 503}, codes
            assert all(t < 6 for code, t in results if code == 503)
            assert elapsed < 10, f"{n} requests took {elapsed:.1f}s"
            served = [c for c, _ in results].count(200)
            assert served == n if not adaptive else served >= 5, results
        done.set()
        await watcher
        assert peak <= 0, f"{peak} worker threads were busy without a connection"
        assert pool.stats().in_use == 0
    finally:
        server.should_exit = True
        await serving
