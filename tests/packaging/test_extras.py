"""Each extra installs on its own from the built wheel and runs its quick start against the real servers.

The wheel is built once; each case gets a fresh virtual environment (made by uv, which installs from
its cache in about a second) holding only ``poolwarden[<extras>]``, and runs a script of
``quickstarts/`` with it, from a directory outside the checkout so nothing of the source tree leaks in.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import IN_CI, MYSQL_URL, POSTGRES_URL, REDIS_URL, require

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).with_name("quickstarts")
SERVERS = {"postgres": (POSTGRES_URL, "PostgreSQL"), "mysql": (MYSQL_URL, "MariaDB"),
           "redis": (REDIS_URL, "Redis")}

# script -> (extras to install, other requirements, servers it talks to)
CASES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "postgres": ("postgres", (), ("postgres",)),
    "psycopg": ("psycopg", (), ("postgres",)),
    "mysql": ("mysql", (), ("mysql",)),
    "pymysql": ("pymysql", (), ("mysql",)),
    "sqlite": ("sqlite", (), ()),
    "redis": ("redis", (), ("redis",)),
    "http": ("http", (), ()),
    "sqlalchemy": ("sqlalchemy", (), ()),
    "sqlalchemy_postgres": ("sqlalchemy,postgres", (), ("postgres",)),
    "sqlalchemy_orm": ("sqlalchemy,sqlite", (), ()),
    "fastapi": ("fastapi", (), ()),
    "fastapi_old": ("sqlite", ("fastapi==0.120.*",), ()),  # an application's own pin of an old FastAPI
    "prometheus": ("prometheus,sqlite", (), ()),
    "otel": ("otel,sqlite", (), ()),
    "cli": ("cli", (), ("postgres",)),
    "all": ("all", (), ("postgres",)),
    "docs": ("docs", (), ()),
    "pytest_plugin": ("sqlite", ("pytest",), ()),  # the plugin loads in a user's test suite
}


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        message = "uv is not installed (it comes with the dev extra: pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {message}")
    return found


def _run(*args: object, timeout: float = 180, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                            **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built once."""
    out = tmp_path_factory.mktemp("dist")
    _run(_uv(), "build", "--wheel", "--quiet", "--out-dir", out, ROOT)
    return next(out.glob("poolwarden-*.whl"))


def _venv(wheel: Path, where: Path, extras: str, *more: str) -> Path:
    """A fresh virtual environment with ``poolwarden[extras]`` from ``wheel`` (and ``more``); its python."""
    uv = _uv()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    _run(uv, "venv", "--quiet", "--python", sys.executable, where, env=env)
    python = where / "bin" / "python"
    _run(uv, "pip", "install", "--quiet", "--python", python, f"poolwarden[{extras}] @ {wheel.as_uri()}",
         *more, env=env)
    return python


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(POOLWARDEN_TEST_POSTGRES=POSTGRES_URL, POOLWARDEN_TEST_MYSQL=MYSQL_URL,
               POOLWARDEN_TEST_REDIS=REDIS_URL)
    return env


@pytest.mark.parametrize("case", list(CASES))
def test_extra_alone_runs_its_quick_start(case: str, wheel: Path, tmp_path: Path) -> None:
    """poolwarden[<extra>] in a fresh venv is enough to run that extra's quick start."""
    extras, more, servers = CASES[case]
    for server in servers:
        require(*SERVERS[server])
    python = _venv(wheel, tmp_path / "venv", extras, *more)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SCRIPTS / "_common.py", work)
    shutil.copy(SCRIPTS / f"{case}.py", work / "quickstart.py")
    result = _run(python, "quickstart.py", cwd=work, env=_env(), timeout=90)
    assert result.stdout.splitlines()[-1] == "ok", result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def demo_server(wheel: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """``poolwarden demo`` from a venv holding only poolwarden[<extras>], serving on a real socket."""
    extras, url = request.param
    if url is not None:
        require(url, "PostgreSQL")
    python = _venv(wheel, tmp_path / "venv", extras)
    port = _free_port()
    env = {**_env(), "NOTES_DATABASE_URL": url or f"sqlite:///{tmp_path}/notes.db"}
    proc = subprocess.Popen([python.parent / "poolwarden", "demo", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/livez", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"the demo did not start: {proc.communicate()[1]}")
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stderr:
            proc.stderr.close()


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as r:
        return r.status, r.read()


@pytest.mark.parametrize("demo_server", [("demo", None), ("demo,postgres", POSTGRES_URL)],
                         ids=["sqlite", "postgres"], indirect=True)
def test_demo_from_the_wheel(demo_server: str) -> None:
    """pip install 'poolwarden[demo]' (plus the driver's extra) is enough for `poolwarden demo`."""
    status, page = _get(f"{demo_server}/")
    assert status == 200
    assert b"<html" in page
    status, created = _get(f"{demo_server}/notes", data=b'{"title": "from the wheel"}')
    assert status == 201
    assert b"from the wheel" in created
    status, stats = _get(f"{demo_server}/poolwarden/stats")
    assert status == 200
    assert b'"db"' in stats
    # the dashboard's chart library and the offline Swagger UI come inside the installed packages
    status, chart = _get(f"{demo_server}/poolwarden/dashboard/static/uPlot.iife.min.js")
    assert status == 200
    assert b"uPlot" in chart
    status, _ = _get(f"{demo_server}/static-offline-docs/swagger-ui-bundle.js")
    assert status == 200


def test_sdist_builds_installs_and_holds_no_environment(tmp_path: Path) -> None:
    """The source distribution carries the source and no virtual environment, and installs."""
    import tarfile

    out = tmp_path / "dist"
    _run(_uv(), "build", "--sdist", "--quiet", "--out-dir", out, ROOT)
    sdist = next(out.glob("poolwarden-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert not [n for n in names if n.endswith("pyvenv.cfg") or "/.venv" in n]
    assert any(n.endswith("src/poolwarden/demo/app.py") for n in names)
    assert any(n.endswith("/LICENSE") for n in names)
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    _run(_uv(), "venv", "--quiet", "--python", sys.executable, venv, env=env)
    _run(_uv(), "pip", "install", "--quiet", "--python", venv / "bin" / "python",
         f"poolwarden[sqlite] @ {sdist.as_uri()}", env=env)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SCRIPTS / "_common.py", work)
    shutil.copy(SCRIPTS / "sqlite.py", work / "quickstart.py")
    result = _run(venv / "bin" / "python", "quickstart.py", cwd=work, env=_env(), timeout=90)
    assert result.stdout.splitlines()[-1] == "ok", result
