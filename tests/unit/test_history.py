"""The dashboard's history: interpolated quantiles, bounded samples, rates and refusals per interval,
the event timeline, and the dashboard's routes serving it."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest
from fastapi import FastAPI

from poolwarden import PoolTimeout, Warden
from poolwarden.observe import dashboard
from poolwarden.observe.events import emit
from poolwarden.observe.history import History
from poolwarden.observe.quantiles import interpolate
from poolwarden.testing import FakeConnector


def test_interpolation_moves_inside_a_bucket() -> None:
    """A quantile between two bounds is interpolated, not reported as the upper bound."""
    bounds = (0.001, 0.005, 0.01)
    assert interpolate(bounds, [0, 10, 0, 0], 0.5) == (pytest.approx(0.003), False)
    assert interpolate(bounds, [10, 0, 0, 0], 0.99)[0] == pytest.approx(0.00099)
    assert interpolate(bounds, [0, 0, 0, 5], 0.5) == (0.01, True)  # past the last bound: it says so
    assert interpolate(bounds, [0, 0, 0, 0], 0.5) == (0.0, False)


def _warden(max_size: int = 2, **settings: object) -> tuple[Warden, FakeConnector]:
    warden = Warden(environ={})
    fake = FakeConnector()
    warden.pool("db", connector=fake, min_size=1, max_size=max_size, **settings)
    return warden, fake


async def test_samples_are_bounded_and_carry_rates_and_refusals() -> None:
    """Points are capped at ``points``; acquires/s and timeouts are per interval, not since start."""
    warden, _ = _warden(max_size=1, acquire_timeout=0.01)
    ticks = itertools.count(1000.0, 1.0)
    history = History(warden, points=3, clock=lambda: next(ticks))
    async with warden:
        pool = warden["db"]
        history.sample()
        for _ in range(4):
            async with pool.acquire():
                pass
        async with pool.acquire():
            with pytest.raises(PoolTimeout):
                await pool.acquire()
        history.sample()
        history.sample()
        history.sample()
    points = history.snapshot()["resources"]["db"]["points"]
    assert len(points) == 3
    assert points[0]["acquires_per_s"] == 5.0
    assert points[0]["errors"] == {"timeout": 1}
    assert points[1]["acquires_per_s"] == 0.0
    assert points[1]["errors"] == {}


async def test_events_reach_the_timeline_with_route_and_reason_and_only_for_its_resources() -> None:
    """Lifecycle events are kept (first line of the detail), DEBUG ones and other wardens' are not."""
    warden, _ = _warden()
    history = History(warden, events=2)
    async with warden:
        history.start()
        emit("leak.suspected", "db", "held too long\n  File 'x.py', line 1", held=3.0, route="GET /slow")
        emit("connection.discarded", "db", "reason=broken", reason="broken")
        emit("connection.discarded", "other", "reason=broken", reason="broken")
        emit("connection.lent", "db", "wait=0")
        await history.stop()
        emit("circuit.opened", "db", "after stop")
    events = history.snapshot()["events"]
    assert [(e["event"], e["route"], e["reason"]) for e in events] == [
        ("leak.suspected", "GET /slow", None), ("connection.discarded", None, "broken")]
    assert events[0]["detail"] == "held too long"


async def test_dashboard_routes_serve_page_data_and_only_known_static_files() -> None:
    """The page escapes its actions, carries a strict CSP; /data is JSON; static is a whitelist."""
    warden, _ = _warden()
    app = FastAPI()
    router = dashboard.router(warden, actions=[dashboard.Action("<b>load</b>", "/x?a=1&b=2")])
    app.include_router(router)
    async with warden:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            page = await client.get("/poolwarden/dashboard")
            assert page.status_code == 200
            assert "&lt;b&gt;load&lt;/b&gt;" in page.text
            assert 'data-url="/x?a=1&amp;b=2"' in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
            await asyncio.sleep(0)
            data = (await client.get("/poolwarden/dashboard/data")).json()
            assert data["resources"]["db"]["points"][0]["max"] == 2
            js = await client.get("/poolwarden/dashboard/static/uPlot.iife.min.js")
            assert js.status_code == 200
            assert js.headers["content-type"].startswith("text/javascript")
            assert (await client.get("/poolwarden/dashboard/static/..%2Fdashboard.py")).status_code == 404
            assert (await client.get("/poolwarden/dashboard/static/dashboard.html")).status_code == 404
            await router.history.stop()


async def test_install_dashboard_is_guarded_like_stats_and_runs_with_the_lifespan() -> None:
    """install(dashboard=True) refuses an unguarded app, and serves data sampled since start-up."""
    from poolwarden import ConfigError

    warden, _ = _warden()
    with pytest.raises(ConfigError, match="dashboard"):
        warden.install(FastAPI(lifespan=warden.lifespan), dashboard=True, stats=False)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, dashboard=True, stats=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            data = (await client.get("/poolwarden/dashboard/data")).json()
    assert data["resources"]["db"]["points"]


def test_stats_show_interpolated_quantiles_next_to_the_raw_buckets() -> None:
    """A histogram's dict keeps bounds and counts and adds p50/p90/p99 read inside the buckets."""
    from poolwarden.observe.stats import HistogramSnapshot

    out = HistogramSnapshot((0.001, 0.005, 0.01), (0, 10, 0, 0), 10, 0.03).to_dict()
    assert out["counts"] == [0, 10, 0, 0]
    assert out["p50"] == pytest.approx(0.003)
    assert out["p99"] == pytest.approx(0.00496)


async def test_the_watchdog_lag_is_sampled_for_the_event_loop_card() -> None:
    """With Warden(watchdog=...), each sample also keeps the largest loop lag and the stall count."""
    warden = Warden(environ={}, watchdog=0.05)
    warden.pool("db", connector=FakeConnector(), min_size=1)
    history = History(warden)
    async with warden:
        history.sample()
        await asyncio.sleep(0.15)
        history.sample()
    loop = history.snapshot()["loop"]
    assert loop["threshold_ms"] == 50.0
    assert len(loop["points"]) == 2
    assert loop["points"][-1]["stalls"] == 0
    assert History(_warden()[0]).snapshot()["loop"] is None


async def test_a_blocked_loop_shows_the_line_holding_it_on_the_timeline() -> None:
    """loop.blocked keeps, on its one line, where the loop is held (the stack stays in the log)."""
    warden, _ = _warden()
    history = History(warden)
    async with warden:
        history.start()
        emit("loop.blocked", "event-loop", "blocked for at least 0.2s serving GET /x; the code holding it:\n"
             "  File ...", route="GET /x", where="app.py:12 in report: time.sleep(1)")
        await history.stop()
    (event,) = history.snapshot()["events"]
    assert event["detail"] == ("blocked for at least 0.2s serving GET /x; at app.py:12 in report: "
                               "time.sleep(1)")


async def test_the_dashboard_is_behind_the_operator_dependencies() -> None:
    """With install(dependencies=...), the page, its data and its files all need the operator's token."""
    from fastapi import Depends, Header, HTTPException

    def operator(x_token: str = Header("")) -> None:
        if x_token != "ok":
            raise HTTPException(401)

    warden, _ = _warden()
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, dashboard=True, dependencies=[Depends(operator)], prefix="/ops")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in ("/ops/poolwarden/dashboard", "/ops/poolwarden/dashboard/data",
                         "/ops/poolwarden/dashboard/static/dashboard.js"):
                assert (await client.get(path)).status_code == 401, path
                assert (await client.get(path, headers={"x-token": "ok"})).status_code == 200, path
