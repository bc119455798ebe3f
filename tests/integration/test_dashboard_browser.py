"""The demo's live dashboard in a real headless Chromium (Debian's, driven by Playwright): it renders
with no network but the service, its charts receive points under load, an outage opens the circuit on
screen and recovery closes it, /docs and /redoc work offline; screenshots are kept as test artifacts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.tools import ROOT, require_tool

pytestmark = pytest.mark.slow

#: ReDoc's "API docs by Redocly" footer logo: decorative, the only thing it asks of the internet (the page
#: renders without it); the test answers it with an empty picture rather than count it as a failure.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
ARTIFACTS = Path(os.environ.get("POOLWARDEN_ARTIFACTS", ROOT / "build" / "artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_tool("install-chromium", "chromium")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The notes demo under uvicorn, on SQLite in a temporary directory; yields its base URL."""
    port = _free_port()
    env = dict(os.environ, NOTES_DATABASE_URL=f"sqlite:///{tmp_path_factory.mktemp('demo')}/notes.db")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "poolwarden.demo.app:app", "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"the demo exited: {proc.stderr.read() if proc.stderr else ''}"
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the demo did not come up within 30 s"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def page(chromium: str, demo: str) -> Iterator[tuple[object, list[str]]]:
    """A page in a browser that may reach the demo and nothing else; yields it and the problems seen."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1440, "height": 1000})

        def only_the_demo(route: object) -> None:
            url = route.request.url  # type: ignore[attr-defined]
            if url.startswith(demo) or url.startswith("data:"):
                route.continue_()  # type: ignore[attr-defined]
            elif url == REDOC_LOGO:  # answered locally, as an empty picture: nothing leaves the machine
                route.fulfill(status=200, content_type="image/svg+xml",  # type: ignore[attr-defined]
                              body='<svg xmlns="http://www.w3.org/2000/svg"/>')
            else:
                problems.append(f"request outside the service: {url}")
                route.abort()  # type: ignore[attr-defined]

        context.route("**/*", only_the_demo)
        pg = context.new_page()
        pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        pg.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
              if msg.type == "error" else None)
        try:
            yield pg, problems
        finally:
            browser.close()


def _wait(pg: object, js: str, timeout: float = 20) -> None:
    pg.wait_for_function(f"() => {js}", timeout=timeout * 1000)  # type: ignore[attr-defined]


def test_dashboard_renders_receives_points_under_load_and_shows_an_outage(
        page: tuple[object, list[str]], demo: str) -> None:
    """Charts fill while load runs, the circuit opens on screen during an outage and closes after."""
    pg, problems = page
    pg.goto(demo + "/")  # type: ignore[attr-defined]
    pg.wait_for_selector('article.resource[data-resource="db"] .uplot canvas')  # type: ignore[attr-defined]
    assert pg.locator('article.resource[data-resource="db"] .chart').count() == 5  # type: ignore[attr-defined]
    _wait(pg, "window.poolwardenDashboard.points('db') >= 2")
    pg.click("text=Create load")  # type: ignore[attr-defined]
    _wait(pg, "Math.max(...window.poolwardenDashboard.series('db', 'used')) >= 5")
    _wait(pg, "Math.max(...window.poolwardenDashboard.series('db', 'waiting')) >= 1")
    _wait(pg, "Math.max(...window.poolwardenDashboard.series('db', 'acquires_per_s')) > 0")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "dashboard-load.png"), full_page=True)  # type: ignore[attr-defined]

    pg.click("text=Block the event loop")  # type: ignore[attr-defined]
    pg.wait_for_selector("#events li[data-event='loop.blocked']", timeout=20000)  # type: ignore[attr-defined]
    assert "POST /demo/block" in pg.inner_text("#events li[data-event='loop.blocked']")  # type: ignore[attr-defined]
    pg.wait_for_selector('article.resource[data-resource="event loop"] .uplot canvas')  # type: ignore[attr-defined]

    pg.click("text=Simulate outage")  # type: ignore[attr-defined]
    time.sleep(0.5)
    pg.click("text=Create load")  # type: ignore[attr-defined]
    pg.wait_for_selector("#events li[data-event='circuit.opened']", timeout=20000)  # type: ignore[attr-defined]
    pg.wait_for_selector("text=circuit open", timeout=20000)  # type: ignore[attr-defined]
    time.sleep(1.5)  # a refusal or two on the errors chart
    pg.screenshot(path=str(ARTIFACTS / "dashboard-outage.png"), full_page=True)  # type: ignore[attr-defined]

    pg.click("text=Recover")  # type: ignore[attr-defined]
    pg.wait_for_selector("#events li[data-event='circuit.closed']", timeout=20000)  # type: ignore[attr-defined]
    pg.wait_for_selector("text=circuit closed", timeout=20000)  # type: ignore[attr-defined]
    pg.screenshot(path=str(ARTIFACTS / "dashboard-recovered.png"), full_page=True)  # type: ignore[attr-defined]
    assert problems == []
    print(f"screenshots in {ARTIFACTS}")


def test_swagger_and_redoc_work_offline(page: tuple[object, list[str]], demo: str) -> None:
    """/docs and /redoc render the API with every asset served by the app itself."""
    pg, problems = page
    pg.goto(demo + "/docs")  # type: ignore[attr-defined]
    pg.wait_for_selector(".swagger-ui .opblock", timeout=20000)  # type: ignore[attr-defined]
    assert pg.locator(".opblock").count() >= 5  # type: ignore[attr-defined]
    pg.goto(demo + "/redoc")  # type: ignore[attr-defined]
    pg.wait_for_selector("text=A poolwarden demo", timeout=20000)  # type: ignore[attr-defined]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "redoc-offline.png"))  # type: ignore[attr-defined]
    assert problems == []
