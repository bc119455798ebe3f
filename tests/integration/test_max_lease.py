"""max_response_lease on a real socket: a release="response" stream whose reader stalls loses its
connection after the limit, the stream fails, and the pool serves others again.

No ``from __future__ import annotations``: FastAPI must see the routes' annotations as objects.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from poolwarden import Warden
from tests.integration.test_fastapi import serving, wait_until

CHUNK = b"x" * (1 << 20)


async def test_a_stalled_stream_loses_its_connection_after_max_response_lease(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A slow reader pins the pool's only connection until max_response_lease: then the lease ends
    (logged with the route), the connection is closed, a waiting request is served, and the stream
    is cut short instead of finishing."""
    warden = Warden()
    db = warden.pool("db", postgres_url, min_size=1, max_size=1, acquire_timeout=5,
                     max_response_lease=0.5)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app)
    Stream = Annotated[asyncpg.Connection, db.depends(release="response")]
    DB = Annotated[asyncpg.Connection, db.connection]
    chunks_sent = 0

    @app.get("/export")
    async def export(conn: Stream) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            nonlocal chunks_sent
            for _ in range(500):  # 500 MB if read to the end
                await conn.fetchval("SELECT 1")
                chunks_sent += 1
                yield CHUNK

        return StreamingResponse(body(), media_type="application/octet-stream")

    @app.get("/one")
    async def one(conn: DB) -> int:
        return int(await conn.fetchval("SELECT 1"))

    caplog.set_level(logging.WARNING, logger="poolwarden")
    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /export HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        assert b"200 OK" in await reader.read(4096)
        # the reader stalls: the socket buffers fill and the stream blocks, holding the connection
        await wait_until(lambda: chunks_sent > 0 and db.stats().in_use == 1)
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get("/one", timeout=10)
        waited = time.monotonic() - start
        assert response.status_code == 200, response.text
        assert waited < 3.0  # served once the stalled lease ended, not after acquire_timeout
        assert db.stats().discarded.get("max_lease") == 1
        overdue = [r for r in caplog.records if r.getMessage().startswith("lease.overdue")]
        assert len(overdue) == 1
        assert "GET /export" in overdue[0].getMessage()
        assert getattr(overdue[0], "poolwarden.route") == "GET /export"
        # the reader comes back: what was buffered arrives, then the stream ends short
        received = 0
        async with asyncio.timeout(20):
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
        writer.close()
        assert received < 100 * len(CHUNK)
        assert chunks_sent < 100
        await wait_until(lambda: db.stats().in_use == 0)
