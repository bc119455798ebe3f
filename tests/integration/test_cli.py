"""The ``poolwarden`` command, run as a user runs it, against real servers."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

CANARY = "canary-S3cr3t"
ROOT = Path(__file__).resolve().parents[2]


def _command() -> list[str]:
    beside = Path(sys.executable).with_name("poolwarden")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("poolwarden")
    return [found] if found else [sys.executable, "-m", "poolwarden"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "240", "NO_COLOR": "1"}
    return subprocess.run([*_command(), *args], capture_output=True, text=True, timeout=timeout, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- check ------------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_check_postgres(postgres_url: str) -> None:
    """check connects, pings and prints PostgreSQL's version and connection limit, then exits 0."""
    result = run("check", postgres_url)
    assert result.returncode == 0, result
    line = result.stdout.strip()
    assert line.startswith("ok")
    assert "PostgreSQL 1" in line
    assert re.search(r"max_connections=\d+", line)


@pytest.mark.mysql
def test_check_mariadb(mysql_url: str) -> None:
    """check reads MariaDB's version and max_connections."""
    result = run("check", mysql_url)
    assert result.returncode == 0, result
    line = result.stdout.strip()
    assert "MariaDB" in line or "MySQL" in line
    assert re.search(r"max_connections=\d+", line)


def _sqlite_file(url: str) -> Path:
    path = Path(url.removeprefix("sqlite:///"))
    sqlite3.connect(path).close()
    return path


def test_check_sqlite(sqlite_url: str) -> None:
    """check opens a SQLite file and shows its library version (SQLite has no connection limit)."""
    path = _sqlite_file(sqlite_url)
    before = path.read_bytes()
    result = run("check", sqlite_url)
    assert result.returncode == 0, result
    assert "SQLite 3." in result.stdout
    assert "max_connections=n/a" in result.stdout
    assert path.read_bytes() == before  # read-only: not even the journal mode changed
    assert not Path(f"{path}-wal").exists()


def test_check_never_creates_a_sqlite_file(tmp_path: Path) -> None:
    """Checking a SQLite file that is not there fails, and leaves no file behind."""
    path = tmp_path / "x.db"
    result = run("check", f"sqlite:///{path}")
    assert result.returncode == 1
    assert "no such database file" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.redis
def test_check_redis(redis_url: str) -> None:
    """check PINGs Redis (not "unsupported scheme") and reads its version and maxclients."""
    result = run("check", "--json", redis_url)
    assert result.returncode == 0, result
    (row,) = json.loads(result.stdout)
    assert row["product"] in ("Redis", "Valkey")
    assert row["max_connections"] > 0
    assert row["ping_ms"] >= 0


@pytest.mark.redis
def test_check_redis_wrong_password_is_a_failure_without_the_password(redis_url: str) -> None:
    """A Redis URL with a password that the server refuses fails, the password shown nowhere."""
    host = redis_url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    result = run("check", f"redis://nobody-here:{CANARY}@{host}/0")
    assert result.returncode == 1, result
    assert result.stdout.startswith("FAIL")
    assert "AuthenticationError" in result.stdout
    assert CANARY not in result.stdout + result.stderr


def test_check_closed_port_fails_fast() -> None:
    """A port nobody listens on is reported at once, scrubbed, with exit status 1."""
    start = time.monotonic()
    result = run("check", f"postgresql://postgres@127.0.0.1:{free_port()}/test", "--timeout", "5")
    assert time.monotonic() - start < 10
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL")
    assert "ConnectionRefusedError" in result.stdout


def test_check_gives_up_after_timeout() -> None:
    """A server that accepts and never answers is given up on after --timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        start = time.monotonic()
        result = run("check", f"postgresql://postgres@127.0.0.1:{port}/test", "--timeout", "0.5")
        elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert "no answer within 0.5s" in result.stdout
    assert elapsed < 8


@pytest.mark.postgres
def test_check_json_and_mixed_results(postgres_url: str, sqlite_url: str) -> None:
    """--json gives one object per URL; one failure among successes makes the exit status 1."""
    bad = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    _sqlite_file(sqlite_url)
    result = run("check", "--json", postgres_url, sqlite_url, bad)
    assert result.returncode == 1
    rows = json.loads(result.stdout)
    assert [r["ok"] for r in rows] == [True, True, False]
    assert (rows[0]["product"], rows[1]["product"]) == ("PostgreSQL", "SQLite")
    assert rows[0]["max_connections"] > 0
    assert rows[1]["max_connections"] is None
    assert rows[0]["ping_ms"] >= 0
    assert rows[0]["connect_ms"] > 0
    assert "ConnectionRefusedError" in rows[2]["error"]


@pytest.mark.postgres
def test_check_never_prints_the_password(postgres_url: str) -> None:
    """A URL's password appears in no output, whether the check passes or fails, as text or JSON."""
    good = with_password(postgres_url, CANARY)  # trust authentication accepts any password
    bad = f"postgresql://postgres:{CANARY}@127.0.0.1:{free_port()}/test?sslpassword={CANARY}"
    for args in (("check", good, bad), ("check", "--json", good, bad)):
        result = run(*args)
        assert result.returncode == 1
        assert CANARY not in result.stdout + result.stderr
        assert "postgres:***@" in result.stdout


def test_check_rejects_an_unknown_scheme_without_showing_the_url() -> None:
    """A bad URL is a failed check that names the problem, not a traceback, and hides the password."""
    result = run("check", f"oracle://scott:{CANARY}@db/orcl")
    assert result.returncode == 1
    assert "unsupported URL scheme" in result.stdout
    assert CANARY not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_python_dash_m_runs_the_same_command() -> None:
    """``python -m poolwarden`` is the same command line."""
    result = subprocess.run([sys.executable, "-m", "poolwarden", "--version"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("poolwarden ")


# -- top and demo -----------------------------------------------------------------------------------

APP = textwrap.dedent("""
    from fastapi import FastAPI
    from poolwarden import Warden

    warden = Warden()
    db = warden.pool("db", {url!r}, min_size=1, max_size=4)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, stats=True)
""")


def _wait_until_up(proc: subprocess.Popen[str], base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the server exited with {proc.returncode}: {detail}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} did not come up within {timeout}s")


GUARDED = textwrap.dedent("""
    from fastapi import Depends, FastAPI, Header, HTTPException
    from poolwarden import Warden

    def operator(authorization: str = Header("")) -> None:
        if authorization != "Bearer s3cr3t-token":
            raise HTTPException(401)

    warden = Warden()
    db = warden.pool("db", {url!r}, min_size=1, max_size=4)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, dependencies=[Depends(operator)])
""")


@pytest.fixture
def server(tmp_path: Path, sqlite_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A uvicorn server running a tiny app with one SQLite pool; yields its base URL."""
    source = GUARDED if getattr(request, "param", "") == "guarded" else APP
    (tmp_path / "tinyapp.py").write_text(source.format(url=sqlite_url))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tinyapp:app", "--app-dir", str(tmp_path), "--port", str(port),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, base)
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


def test_top_once_shows_the_pool_row(server: str) -> None:
    """top --once reads /poolwarden/stats and prints one frame with a row per pool."""
    result = run("top", server, "--once")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.split()[:2] == ["db", "ready"])
    assert re.search(r"▓+·+", row)  # the connections bar: one idle of four
    assert row.split()[3:6] == ["0/4", "1", "0"]  # used/max, idle, queued
    assert "poolwarden top" in result.stdout
    assert max(len(line) for line in lines) <= 80


@pytest.mark.parametrize("server", ["guarded"], indirect=True)
def test_top_sends_headers_for_operator_routes_behind_a_dependency(server: str) -> None:
    """Operator routes behind install(dependencies=...): top without the token gets HTTP 401, with
    --header (or POOLWARDEN_TOP_HEADER) it shows the pools, and the token is printed nowhere."""
    refused = run("top", server, "--once")
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr
    allowed = run("top", server, "--once", "-H", "Authorization: Bearer s3cr3t-token")
    assert allowed.returncode == 0, allowed
    assert any(line.split()[:2] == ["db", "ready"] for line in allowed.stdout.splitlines())
    env = {**os.environ, "POOLWARDEN_TOP_HEADER": "Authorization: Bearer s3cr3t-token"}
    from_env = subprocess.run([*_command(), "top", server, "--once"], capture_output=True, text=True,
                              timeout=60, env=env)
    assert from_env.returncode == 0, from_env
    bad = run("top", server, "--once", "-H", "Bearer s3cr3t-token")
    assert bad.returncode == 2
    for result in (refused, allowed, from_env, bad):
        assert "s3cr3t" not in result.stdout + result.stderr


def test_top_unreachable_exits_1() -> None:
    """top says it cannot read the service and exits 1 when nothing answers."""
    result = run("top", f"http://127.0.0.1:{free_port()}", "--once")
    assert result.returncode == 1
    assert "cannot read" in result.stderr


def test_demo_serves_the_example(tmp_path: Path) -> None:
    """demo runs the packaged notes service (poolwarden.demo.app) with uvicorn on the given port."""
    port = free_port()
    env = {**os.environ, "NOTES_DATABASE_URL": f"sqlite:///{tmp_path}/notes.db"}
    proc = subprocess.Popen([*_command(), "demo", "--port", str(port)], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, base)
        stats = httpx.get(f"{base}/poolwarden/stats", timeout=5).json()
        assert stats["db"]["driver"] == "aiosqlite"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stderr:
            proc.stderr.close()
