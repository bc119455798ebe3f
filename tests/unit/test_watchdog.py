"""The watchdog names the route and the code that blocks the event loop, and measures the loop's lag."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from poolwarden.observe.watchdog import LOOP, Stall, Watchdog

# About 0.5 s here: longer than threshold + two intervals + the re-check, the longest a stall can go
# unseen (it may begin just after a heartbeat and be first looked at an interval later).
SLOW_SQL = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
            "SELECT sum(x) FROM c")


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/sleepy/{n}")
    async def sleepy(n: int) -> dict[str, int]:
        time.sleep(0.3)  # noqa: ASYNC251 - the classic mistake this test is about
        return {"n": n}

    @app.get("/report")
    async def report() -> dict[str, int]:
        with sqlite3.connect(":memory:") as conn:  # a real sync driver call inside an async route
            total = conn.execute(SLOW_SQL).fetchone()[0]
        return {"total": total}

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/polite")
    async def polite() -> dict[str, bool]:
        await asyncio.sleep(0.3)
        return {"ok": True}

    return app


@pytest.fixture
async def app() -> FastAPI:
    """The app, warmed up: FastAPI's first request pays for lazy set-up that could itself hold the loop."""
    app = make_app()
    await _get(app, "/ping")
    return app


@pytest.fixture
async def dog(app: FastAPI) -> AsyncIterator[Watchdog]:
    watchdog = Watchdog(threshold=0.1)
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.stop()


async def _get(app: FastAPI, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get(path)


def _blocked(caplog: pytest.LogCaptureFixture, route: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "poolwarden.event", None) == "loop.blocked"
            and getattr(r, "poolwarden.route", None) == route]


async def test_a_time_sleep_in_an_async_route_is_reported_with_route_and_stack(
        app: FastAPI, dog: Watchdog, caplog: pytest.LogCaptureFixture) -> None:
    """time.sleep in an async endpoint: one WARNING naming the route template and the sleeping line."""
    caplog.set_level(logging.WARNING, "poolwarden")
    assert (await _get(app, "/sleepy/7")).status_code == 200
    await asyncio.sleep(0.1)
    records = _blocked(caplog, "GET /sleepy/{n}")
    assert len(records) == 1
    message = records[0].getMessage()
    assert getattr(records[0], "poolwarden.resource") == LOOP
    assert "serving GET /sleepy/{n}" in message
    assert "in sleepy" in message
    assert "time.sleep(0.3)" in message
    where = getattr(records[0], "poolwarden.where")
    assert where.startswith("test_watchdog.py:")
    assert "in sleepy: time.sleep(0.3)" in where
    assert dog.stalls >= 1
    assert dog.max_lag() >= 0.2


async def test_a_sync_sqlite3_query_in_an_async_route_is_reported(
        app: FastAPI, dog: Watchdog, caplog: pytest.LogCaptureFixture) -> None:
    """A real sync driver call (sqlite3) holding the loop is caught while it runs, in the route's code."""
    caplog.set_level(logging.WARNING, "poolwarden")
    start = time.perf_counter()
    assert (await _get(app, "/report")).status_code == 200
    assert time.perf_counter() - start > 0.31, "the query must block for longer than a stall can hide"
    records = _blocked(caplog, "GET /report")
    assert len(records) == 1
    assert "conn.execute(SLOW_SQL)" in records[0].getMessage()


async def test_awaiting_is_not_blocking_and_lag_stays_small(
        app: FastAPI, dog: Watchdog, caplog: pytest.LogCaptureFixture) -> None:
    """An endpoint that awaits for as long raises nothing, and the lag histogram stays in low buckets."""
    caplog.set_level(logging.WARNING, "poolwarden")
    assert (await _get(app, "/polite")).status_code == 200
    assert _blocked(caplog, "GET /polite") == []
    lag = dog.lag()
    assert lag.count >= 2  # 0.3 s of beats every 0.1 s: two or three, depending on the phase
    assert lag.counts[-1] == 0  # no beat was ever 10 s late


async def test_stop_ends_the_thread_and_the_timer() -> None:
    """After stop() no thread is left and nothing is reported any more."""
    watchdog = Watchdog(threshold=0.05)
    watchdog.start()
    assert watchdog.running
    watchdog.stop()
    assert not watchdog.running
    time.sleep(0.1)  # noqa: ASYNC251 - blocking on purpose: nothing may watch any more
    assert watchdog.stalls == 0


def test_a_bad_threshold_is_refused() -> None:
    """A threshold that is not a positive number is a ValueError naming it."""
    for bad in (0, -1, True, "1"):
        with pytest.raises(ValueError, match="threshold"):
            Watchdog(threshold=bad)  # type: ignore[arg-type]


async def test_the_warden_setting_runs_the_watchdog_with_its_lifespan(
        caplog: pytest.LogCaptureFixture) -> None:
    """Warden(watchdog=...) starts watching when the warden opens and stops when it closes."""
    from poolwarden import Warden

    caplog.set_level(logging.WARNING, "poolwarden")
    warden = Warden(environ={}, watchdog=0.05)
    assert warden.watchdog is not None
    async with warden:
        assert warden.watchdog.running
        time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop on purpose
        await asyncio.sleep(0.1)
    assert not warden.watchdog.running
    assert warden.watchdog.stalls == 1
    stall = warden.watchdog.last_stall or Stall(0, None, "")
    assert "test_the_warden_setting_runs_the_watchdog" in stall.stack


async def test_many_short_callbacks_are_lagging_not_blocked(caplog: pytest.LogCaptureFixture) -> None:
    """A loop late because it runs hundreds of 1 ms callbacks is reported as lagging, without blaming
    one stack: no single call holds it."""
    caplog.set_level(logging.WARNING, "poolwarden")
    dog = Watchdog(threshold=0.1)
    dog.start()
    try:
        def spin() -> None:
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass

        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.12)  # right after a heartbeat
        for _ in range(400):
            loop.call_soon(spin)
        await asyncio.sleep(0.2)
    finally:
        dog.stop()
    events = [getattr(r, "poolwarden.event", None) for r in caplog.records]
    assert "loop.lagging" in events
    assert "loop.blocked" not in events
    assert dog.stalls == 0
