"""Real server restarts under steady load: requests fail fast once the circuit is open, and the
pool serves again within one probe interval of the server accepting connections.

Slow: each test stops a real server for a few seconds. The server is a private one
(tests/support/private_pg.py) on its own port, so no shared server is ever stopped.

(No ``from __future__ import annotations`` here: FastAPI must resolve the endpoint's local alias.)
"""

import asyncio
import contextlib
import logging
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from poolwarden import BackendDown, Warden
from tests.support.private_pg import (
    PrivateMariaDB,
    PrivatePostgres,
    accepts,
    private_mariadb,
    private_postgres,
)

pytestmark = pytest.mark.slow

_monotonic = time.monotonic
BACKOFF_MAX = 0.5
OUTAGE = 2.0  # seconds the server stays down once stopped


# -- server control ------------------------------------------------------------------------------


@dataclass
class _Server:
    """Stop and start one private server (never a shared one); ``accepts`` is a quick TCP probe."""

    name: str
    private: PrivatePostgres | PrivateMariaDB

    def accepts(self) -> bool:
        return accepts(self.private.port, timeout=0.2)

    async def stop(self) -> None:
        await self.private.astop()

    async def start(self) -> None:
        await self.private.astart()

    async def wait_accepting(self, timeout: float = 60) -> float:
        """Poll until the server accepts connections; return when it first did (monotonic)."""
        deadline = _monotonic() + timeout
        while not await asyncio.to_thread(self.accepts):
            if _monotonic() > deadline:
                raise RuntimeError(f"{self.name} does not accept connections after {timeout}s")
            await asyncio.sleep(0.02)
        return _monotonic()


@pytest.fixture
def postgres_server() -> Iterator[_Server]:
    """A private PostgreSQL cluster on its own port, deleted at teardown whatever happened."""
    with private_postgres() as pg:
        yield _Server("PostgreSQL", pg)


@pytest.fixture
def mariadb_server() -> Iterator[_Server]:
    """A private MariaDB server on its own port, deleted at teardown whatever happened."""
    with private_mariadb() as my:
        yield _Server("MariaDB", my)


# -- steady load ---------------------------------------------------------------------------------


@dataclass
class _Sample:
    started: float
    ended: float
    outcome: str

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class _Load:
    """A few workers sending one request after another (5 ms apart) until stopped."""

    call: Callable[[], Awaitable[str]]
    samples: list[_Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _worker(self) -> None:
        while not self._stop.is_set():
            started = _monotonic()
            try:
                outcome = await self.call()
            except Exception as exc:
                outcome = type(exc).__name__
            self.samples.append(_Sample(started, _monotonic(), outcome))
            await asyncio.sleep(0.005)

    def start(self, workers: int = 4) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def until_ok_after(self, moment: float, timeout: float) -> _Sample:
        deadline = _monotonic() + timeout
        while True:
            for sample in self.samples:
                if sample.outcome == "ok" and sample.started >= moment:
                    return sample
            if _monotonic() > deadline:
                pytest.fail(f"no successful request within {timeout}s after the server came back; "
                            f"last outcomes: {[s.outcome for s in self.samples[-8:]]}")
            await asyncio.sleep(0.01)


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else max(values, default=0.0)


async def _restart_under_load(server: _Server, load: _Load, down: str) -> dict[str, Any]:
    """Stop ``server`` under ``load`` for OUTAGE seconds, start it, and measure.

    Returns the figures; fails if requests during the outage (once ``down`` is what they get) are
    not fast, or the first success after the server is back comes later than one probe interval.
    """
    load.start()
    await asyncio.sleep(0.5)
    stopping = _monotonic()
    try:
        await server.stop()
        stopped = _monotonic()
        await asyncio.sleep(OUTAGE)
    finally:
        await server.start()
    back = await server.wait_accepting()
    first_ok = await load.until_ok_after(back - 0.05, timeout=10)
    await asyncio.sleep(0.5)
    await load.stop()

    before = [s for s in load.samples if s.ended < stopping]
    outage = [s for s in load.samples if stopping <= s.started and s.ended < back]
    fast = [s.seconds for s in outage if s.outcome == down]
    after = [s for s in load.samples if s.started > first_ok.ended]
    figures = {
        "requests_before": len(before),
        "failed_during_outage": len([s for s in outage if s.outcome != "ok"]),
        "outcomes_during_outage": sorted({s.outcome for s in outage}),
        f"{down}_count": len(fast),
        f"{down}_p50_ms": 1000 * statistics.median(fast) if fast else None,
        f"{down}_p95_ms": 1000 * _p95(fast),
        "slowest_failure_ms": 1000 * max((s.seconds for s in outage if s.outcome != "ok"), default=0),
        "stop_took_s": stopped - stopping,
        # negative when the pool served before the readiness poll (every ~20 ms) noticed the server
        "first_success_after_accepting_s": first_ok.ended - back,
        "requests_after": len(after),
    }
    print(f"\n{server.name} restart under load: {figures}")

    assert before, figures
    assert all(s.outcome == "ok" for s in before), figures
    assert len(fast) >= 20, figures  # the circuit opened and answered most of the outage
    assert _p95(fast) < 0.05, figures  # fail fast, not after acquire_timeout (5 s)
    assert max(s.seconds for s in outage if s.outcome != "ok") < 2.0, figures
    assert first_ok.ended - back < BACKOFF_MAX + 0.5, figures  # within one probe interval
    assert after, figures
    assert all(s.outcome == "ok" for s in after), figures
    return figures


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_restart_under_load_fails_fast_then_recovers(postgres_server: _Server) -> None:
    """During a real PostgreSQL restart, requests through FastAPI get a fast 503 backend-down once
    the circuit is open, and succeed again within one probe interval of the server being back."""
    warden = Warden()
    db = warden.pool("db", postgres_server.private.url, min_size=2, max_size=4, failure_threshold=2,
                    backoff_max=BACKOFF_MAX, acquire_timeout=5, connect_timeout=2)
    app = FastAPI()
    warden.install(app, metrics=False, stats=False)

    @app.get("/q")
    async def q(conn: Annotated[Any, db.connection]) -> dict[str, int]:
        return {"v": await conn.fetchval("SELECT 1")}

    @app.exception_handler(Exception)
    async def driver_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"kind": type(exc).__name__}, status_code=500)

    retry_after: list[str] = []
    async with warden, httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as client:

        async def call() -> str:
            resp = await client.get("/q")
            if resp.status_code == 200:
                return "ok"
            body = resp.json()
            if resp.status_code == 503:
                retry_after.append(resp.headers.get("Retry-After", ""))
                return "503 " + str(body["type"]).rpartition(":")[2]
            return f"{resp.status_code} {body.get('kind')}"

        await _restart_under_load(postgres_server, _Load(call), down="503 backend-down")
        assert retry_after
        assert all(v.isdigit() and int(v) >= 1 for v in retry_after), retry_after
        stats = db.stats()
        assert stats.in_use == 0
        assert stats.circuit == "closed"


@pytest.mark.mysql
async def test_mariadb_restart_under_load_fails_fast_then_recovers(mariadb_server: _Server) -> None:
    """During a real MariaDB restart, acquires raise BackendDown at once while the circuit is open,
    and succeed again within one probe interval of the server being back."""
    db = Warden().pool("db", mariadb_server.private.url, min_size=2, max_size=4, failure_threshold=2,
                          backoff_max=BACKOFF_MAX, acquire_timeout=5, connect_timeout=2)

    async def call() -> str:
        async with db.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT 1")
            assert (await cur.fetchone())[0] == 1
        return "ok"

    async with db:
        await _restart_under_load(mariadb_server, _Load(call), down=BackendDown.__name__)
        stats = db.stats()
        assert stats.in_use == 0
        assert stats.circuit == "closed"
        assert stats.timeouts == 0, "an acquire waited its full acquire_timeout"


@pytest.mark.postgres
async def test_postgres_outage_recovers_within_half_a_second_beside_asyncpg_glue(
    postgres_server: _Server,
) -> None:
    """The issue 8 outage, in one run: the same endpoint on poolwarden and on hand-written
    ``asyncpg.create_pool`` glue, the same load, one private server stopped for a few seconds.
    poolwarden serves again within 0.5 s of the server accepting connections, answers every failure
    with a fast 503 problem+json, and serves at least as many 2xx as the glue."""
    url = postgres_server.private.url
    warden = Warden()
    db = warden.pool("db", url, min_size=4, max_size=4)
    ours = FastAPI()
    warden.install(ours, metrics=False)

    @ours.get("/q")
    async def q(conn: Annotated[Any, db.connection]) -> dict[str, int]:
        return {"v": await conn.fetchval("SELECT 1")}

    glue_pool: list[asyncpg.Pool] = []

    @asynccontextmanager
    async def glue_lifespan(app: FastAPI) -> AsyncIterator[None]:
        glue_pool.append(await asyncpg.create_pool(url, min_size=4, max_size=4))
        yield
        await glue_pool[0].close()

    glue = FastAPI(lifespan=glue_lifespan)

    async def glue_connection() -> AsyncIterator[Any]:
        async with glue_pool[0].acquire() as conn:
            yield conn

    @glue.get("/q")
    async def gq(conn: Annotated[asyncpg.Connection, Depends(glue_connection)]) -> dict[str, int]:
        return {"v": await conn.fetchval("SELECT 1")}

    def caller(client: httpx.AsyncClient, problems: list[str]) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            resp = await client.get("/q")
            if resp.status_code == 200:
                return "ok"
            if resp.headers.get("content-type") == "application/problem+json":
                problems.append(resp.json()["type"])
                return f"{resp.status_code} problem"
            return f"{resp.status_code}"
        return call

    async with warden, glue_lifespan(glue), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=ours, raise_app_exceptions=False),
                              base_url="http://t") as ours_client, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=glue, raise_app_exceptions=False),
                              base_url="http://t") as glue_client:
        problems: list[str] = []
        ours_load = _Load(caller(ours_client, problems))
        glue_load = _Load(caller(glue_client, []))
        ours_load.start(workers=8)
        glue_load.start(workers=8)
        await asyncio.sleep(0.5)
        await postgres_server.stop()
        down = _monotonic()
        await asyncio.sleep(3.0)
        watch = asyncio.create_task(postgres_server.wait_accepting())
        await postgres_server.start()
        back = await watch
        first_ok = await ours_load.until_ok_after(down, timeout=10)
        await asyncio.sleep(1.0)
        await ours_load.stop()
        await glue_load.stop()

    def count_ok(load: _Load) -> int:
        return len([s for s in load.samples if s.outcome == "ok"])

    failures = [s for s in ours_load.samples if s.outcome != "ok" and s.started >= down]
    figures = {
        "poolwarden_2xx": count_ok(ours_load), "glue_2xx": count_ok(glue_load),
        "poolwarden_first_2xx_after_accepting_s": first_ok.ended - back,
        "poolwarden_failures": len(failures),
        "poolwarden_slowest_failure_ms": 1000 * max((s.seconds for s in failures), default=0.0),
        "poolwarden_outcomes": sorted({s.outcome for s in ours_load.samples}),
        "glue_outcomes": sorted({s.outcome for s in glue_load.samples}),
    }
    print(f"\noutage beside the glue: {figures}")
    assert first_ok.ended - back < 0.5, figures
    assert {s.outcome for s in failures} == {"503 problem"}, figures
    assert set(problems) <= {"urn:poolwarden:problem:backend-down", "urn:poolwarden:problem:backend-lost"}
    assert max(s.seconds for s in failures) < 1.0, figures
    assert count_ok(ours_load) >= count_ok(glue_load), figures


def _metric(body: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition, by name and (a subset of) labels."""
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name} {labels}")


@pytest.mark.postgres
async def test_an_outage_shows_in_metrics_and_its_end_in_the_log(
    postgres_server: _Server, caplog: pytest.LogCaptureFixture,
) -> None:
    """Mid-outage /metrics shows the open circuit, the connect errors and the refused acquires by
    reason (not an idle pool), and a WARNING-level log records both the start and the end."""
    from poolwarden.observe.prometheus import render

    warden = Warden()
    db = warden.pool("db", postgres_server.private.url, min_size=2, max_size=2, failure_threshold=2)
    caplog.set_level(logging.WARNING, logger="poolwarden")
    async with warden:
        await postgres_server.stop()
        deadline = _monotonic() + 5
        while db.stats().circuit == "closed":
            assert _monotonic() < deadline, "the circuit never opened"
            with contextlib.suppress(Exception):
                async with db.acquire(timeout=0.2) as conn:
                    await conn.fetchval("SELECT 1")
            await asyncio.sleep(0.01)
        for _ in range(5):
            with pytest.raises(BackendDown):
                await db.acquire()
        body = render(warden)[0].decode()
        assert _metric(body, "poolwarden_circuit_state", resource="db", state="closed") == 0
        assert (_metric(body, "poolwarden_circuit_state", resource="db", state="open")
                + _metric(body, "poolwarden_circuit_state", resource="db", state="half_open")) == 1
        assert _metric(body, "poolwarden_connect_errors_total", resource="db") >= 2
        assert _metric(body, "poolwarden_acquires_refused_total", resource="db", reason="backend_down") >= 5
        assert _metric(body, "poolwarden_connections_discarded_total", resource="db") >= 1
        await postgres_server.start()
        deadline = _monotonic() + 5
        while not db.ready:
            assert _monotonic() < deadline, "the circuit never closed"
            await asyncio.sleep(0.01)
        body = render(warden)[0].decode()
        assert _metric(body, "poolwarden_circuit_state", resource="db", state="closed") == 1
    events = [r.getMessage().split(" ", 1)[0] for r in caplog.records]
    assert "circuit.opened" in events
    assert "circuit.closed" in events
