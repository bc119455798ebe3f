"""The Warden registry: ordered start-up and drain, optional resources, the share warning, and
readiness that follows a real backend outage. No ``from __future__ import annotations``: FastAPI
must see the routes' annotations as objects."""

import asyncio
import logging
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI

from poolwarden import BackendDown, Warden
from poolwarden.testing import FakeConnector
from tests.integration.test_fastapi import running
from tests.support.faultproxy import FaultProxy


class _Recorder(FakeConnector):
    """A fake connector that writes its name into a shared journal at each first connect and close."""

    def __init__(self, name: str, journal: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.journal = journal

    async def connect(self, timeout: float) -> Any:
        conn = await super().connect(timeout)
        self.journal.append(f"open {self.name}")
        return conn

    async def close(self, conn: Any) -> None:
        self.journal.append(f"close {self.name}")
        await super().close(conn)


async def test_resources_open_in_declaration_order_and_close_in_reverse() -> None:
    """Each resource is open before the next one starts, and they drain last-declared first."""
    journal: list[str] = []
    warden = Warden(environ={})
    for name in ("first", "second", "third"):
        warden.pool(name, connector=_Recorder(name, journal, connect_delay=0.01), min_size=1,
                   max_size=1, check_after_idle=None)
    async with warden:
        assert journal == ["open first", "open second", "open third"]
    assert journal[3:] == ["close third", "close second", "close first"]


async def test_a_failed_start_closes_what_was_already_open() -> None:
    """When a required resource cannot start, those opened before it are closed and the error names it."""
    journal: list[str] = []
    warden = Warden(environ={})
    first = warden.pool("first", connector=_Recorder("first", journal), min_size=1, max_size=1)
    warden.pool("broken", connector=FakeConnector(fail_connects=-1), startup_timeout=0.3,
               backoff_initial=0.01, backoff_max=0.05)
    with pytest.raises(BackendDown, match="broken") as info:
        await warden.open()
    assert "ConnectionRefusedError" in str(info.value)
    assert first.state == "closed"
    assert journal == ["open first", "close first"]


async def test_an_optional_resource_starts_degraded_and_does_not_gate_readiness() -> None:
    """An optional resource that cannot connect lets start-up finish, reports "warn", keeps /readyz 200,
    and serves once its backend comes."""
    connector = FakeConnector(fail_connects=-1)
    warden = Warden(environ={})
    warden.pool("db", connector=FakeConnector(), check_after_idle=None)
    extra = warden.pool("extra", connector=connector, optional=True, startup_timeout=0.2,
                       backoff_initial=0.01, backoff_max=0.05, failure_threshold=100)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    async with running(app) as client:
        assert not extra.ready
        resp = await client.get("/readyz")
        assert resp.status_code == 200
        assert resp.json()["status"] == "warn"
        assert resp.json()["checks"]["extra:connections"][0]["status"] == "warn"
        connector.fail_connects = 0
        for _ in range(100):
            if extra.ready:
                break
            await asyncio.sleep(0.02)
        assert extra.ready
        assert (await client.get("/readyz")).json()["status"] == "pass"


async def test_share_warning_when_one_pool_may_take_half_the_server(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A pool whose max_size is more than half of the server's max_connections is warned about at open."""
    caplog.set_level(logging.WARNING, logger="poolwarden")
    warden = Warden(environ={})
    db = warden.pool("big", postgres_url, min_size=0, max_size=10_000)
    async with warden:
        assert db.server_info is not None
        assert db.server_info.max_connections
    records = [r for r in caplog.records if getattr(r, "poolwarden.event", None) == "pool.share"]
    assert records
    assert "max_connections=" in records[0].getMessage()


async def test_readyz_follows_a_real_backend_outage(postgres_url: str, pg_proxy: FaultProxy) -> None:
    """/readyz turns 503 when PostgreSQL becomes unreachable (circuit open) while /livez stays 200,
    and turns 200 again once the backend answers."""
    warden = Warden(environ={})
    db = warden.pool("db", pg_proxy.url_for(postgres_url), min_size=1, max_size=2,
                    check_after_idle=0.0, failure_threshold=2, backoff_initial=0.02, backoff_max=0.1,
                    connect_timeout=0.5, acquire_timeout=1.0)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    Conn = Annotated[Any, db.connection]

    @app.get("/one")
    async def one(conn: Conn) -> int:
        return int(await conn.fetchval("SELECT 1"))

    async with running(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        pg_proxy.refuse(True)
        await pg_proxy.cut()
        statuses = [(await client.get("/one")).status_code for _ in range(5)]
        assert 503 in statuses
        ready = await _poll(client, "/readyz", 503)
        assert ready.json()["checks"]["db:connections"][0]["status"] == "fail"
        assert (await client.get("/livez")).status_code == 200
        pg_proxy.refuse(False)
        await _poll(client, "/readyz", 200, timeout=3.0)
        assert (await client.get("/one")).json() == 1


async def _poll(client: httpx.AsyncClient, path: str, status: int, timeout: float = 2.0) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get(path)
        if resp.status_code == status or asyncio.get_running_loop().time() > deadline:
            assert resp.status_code == status, resp.text
            return resp
        await asyncio.sleep(0.02)


async def test_a_leak_names_the_route_that_holds_it(
        sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """With leak_threshold set, a request holding its connection too long is reported with its route."""
    caplog.set_level(logging.WARNING, logger="poolwarden")
    warden = Warden(environ={})
    db = warden.pool("db", sqlite_url, leak_threshold=0.05, max_size=2)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    Conn = Annotated[Any, db.connection]

    @app.get("/reports/{rid}")
    async def report(rid: int, conn: Conn) -> int:
        await asyncio.sleep(0.3)
        return rid

    async with running(app) as client:
        assert (await client.get("/reports/7")).json() == 7
    suspected = [r for r in caplog.records if getattr(r, "poolwarden.event", None) == "leak.suspected"]
    assert suspected, [r.getMessage() for r in caplog.records]
    assert getattr(suspected[0], "poolwarden.route") == "GET /reports/{rid}"
    assert "GET /reports/{rid}" in suspected[0].getMessage()
    returned = [r for r in caplog.records if getattr(r, "poolwarden.event", None) == "leak.returned"]
    assert returned
