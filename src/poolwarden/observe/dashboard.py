"""The live dashboard: one page, served by the library, that an operator keeps open.

``router(warden)`` is a FastAPI ``APIRouter`` with three routes under its prefix (by default
``/poolwarden/dashboard``): the page, ``/data`` (the JSON of a :class:`~poolwarden.observe.history.History`,
bounded in memory) and ``/static/<file>`` (uPlot, vendored with its licence, and the page's own script and
style: nothing comes from a CDN, so it works offline). Mount it where operator routes live, with the
dependencies that protect them::

    app.include_router(dashboard.router(warden, dependencies=[Depends(operator_only)]))

``warden.install(app, dashboard=True)`` does this (under ``prefix``) and starts the history with the
app's lifespan. Mounted by hand, the history starts on the first request to the page or its data, or
call ``router.history.start()`` from a lifespan. The page polls ``/data`` every ``interval`` seconds
and draws per resource: connections used/idle/connecting against max, callers queued, wait p50/p99,
acquires per second, errors and refusals by reason, the circuit's state, and a timeline of lifecycle
events. ``actions`` adds buttons that POST to URLs of your app (the demo's load and outage switches).

Chart library: uPlot (MIT, 50 kB, canvas) was chosen over Chart.js for its size and its speed with
thousands of points; its file is ``static/uPlot.iife.min.js`` with ``static/uPlot.LICENSE``.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from poolwarden.observe.history import History

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.params import Depends

    from poolwarden.observe.history import _Source

__all__ = ["Action", "attach", "router"]

#: The static files served, with their media types; nothing else under static/ is reachable.
_STATIC = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_DANGER = ' class="danger"'
# The page runs only our own script: no inline code, no other origin.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")


@dataclass(frozen=True, slots=True)
class Action:
    """A button in the dashboard's header that POSTs to ``url`` (an app route of yours)."""

    label: str
    url: str
    danger: bool = False


def _read(name: str) -> bytes:
    return resources.files("poolwarden.observe").joinpath("static", name).read_bytes()


class DashboardRouter(APIRouter):
    """The dashboard's routes plus the :class:`History` they read (``.history``)."""

    history: History


def router(warden: _Source, *, prefix: str = "/poolwarden/dashboard", interval: float = 1.0,
           points: int = 300, events: int = 200, actions: Sequence[Action] = (),
           dependencies: Sequence[Depends] | None = None) -> DashboardRouter:
    """The dashboard of ``warden``'s resources, as a router to include in an app.

    ``interval`` seconds between samples, ``points`` samples kept per resource (300 x 1 s: five
    minutes), ``events`` lifecycle events kept. Raises ValueError for a bad bound.
    """
    history = History(warden, interval=interval, points=points, events=events)
    page = _read("dashboard.html").decode()
    buttons = "".join(
        f'<button type="button" data-url="{html.escape(a.url)}"{_DANGER if a.danger else ""}>'
        f'{html.escape(a.label)}</button>' for a in actions)
    r = DashboardRouter(prefix=prefix, dependencies=list(dependencies or ()), include_in_schema=False)
    r.history = history
    headers = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "no-store"}

    @r.get("")
    @r.get("/")
    async def dashboard_page() -> HTMLResponse:
        history.start()
        body = page.replace("__BASE__", html.escape(prefix)).replace("__ACTIONS__", buttons)
        return HTMLResponse(body, headers=headers)

    @r.get("/data")
    async def dashboard_data(since: float = Query(0.0, ge=0.0)) -> JSONResponse:
        history.start()
        return JSONResponse(history.snapshot(since), headers={"Cache-Control": "no-store"})

    files = {name: _read(name) for name in _STATIC}

    @r.get("/static/{name}")
    async def dashboard_static(name: str) -> Response:
        body = files.get(name)
        if body is None:
            return Response(status_code=404)
        return Response(body, media_type=_STATIC[name],
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    return r


def attach(app: FastAPI, history: History) -> None:
    """Run ``history`` with ``app``'s lifespan (after the app's own start-up, before its shutdown)."""
    inner: Callable[[Any], Any] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            history.start()
            try:
                yield state
            finally:
                await history.stop()

    app.router.lifespan_context = lifespan
