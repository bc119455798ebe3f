"""The pytest plugin's rollback story, run as a user's suite would run it (pytester) against the real
servers: a new app and ``TestClient`` per test, a module-wide ``TestClient``, and httpx's ASGITransport;
requests of a test share one connection in a transaction, transactions nest as SAVEPOINTs, and nothing
is left in the database afterwards."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from poolwarden import Warden
from poolwarden.handle import unwrap
from poolwarden.rollback import execute

pytest_plugins = ["pytester"]

BACKENDS = ["asyncpg", "psycopg", "aiosqlite", "asyncmy"]

# The app under test, written as a user's would be; {url} and {table} are filled in per backend.
APP = '''
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException

from poolwarden import Warden
from poolwarden.fastapi import connection, transaction
from poolwarden.handle import unwrap
from poolwarden.rollback import execute

URL, TABLE = {url!r}, {table!r}
router = APIRouter()
Conn = Annotated[Any, connection("db")]
Tx = Annotated[Any, transaction("db")]


async def scalar(conn: Any, sql: str) -> Any:
    raw = unwrap(conn)
    module = type(raw).__module__
    if module.startswith("asyncpg"):
        return await raw.fetchval(sql)
    if module.startswith("aiosqlite"):
        return (await raw.execute_fetchall(sql))[0][0]
    if module.startswith("asyncmy"):
        async with raw.cursor() as cur:
            await cur.execute(sql)
            return (await cur.fetchone())[0]
    return (await (await raw.execute(sql)).fetchone())[0]


@router.post("/items/{{name}}")
async def add(name: str, conn: Tx) -> None:
    await execute(conn, f"INSERT INTO {{TABLE}} (name) VALUES ('{{name}}')")


@router.post("/refused/{{name}}")
async def refused(name: str, conn: Tx) -> None:
    await execute(conn, f"INSERT INTO {{TABLE}} (name) VALUES ('{{name}}')")
    raise HTTPException(409, "no")


@router.get("/count")
async def count(conn: Conn) -> int:
    return int(await scalar(conn, f"SELECT COUNT(*) FROM {{TABLE}}"))


def create_app(warden: Warden | None = None) -> FastAPI:
    if warden is None:
        warden = Warden(environ={{}})
        warden.pool("db", URL, min_size=1, max_size=2, check_after_idle=None)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    app.include_router(router)
    return app


# a module-level warden, re-opened by each test's app
shared_warden = Warden(environ={{}})
shared_warden.pool("db", URL, min_size=1, max_size=2, check_after_idle=None)
'''

TESTS = '''
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi.testclient import TestClient

from app_under_test import TABLE, create_app, shared_warden
from poolwarden.rollback import execute


@pytest.fixture(params=["warden-per-app", "module-level-warden"])
def client(request, poolwarden_rollback):
    """A new app and TestClient per test (the full-stack template's and most apps' pattern), with a
    warden per app or one module-level warden that each test's lifespan opens again."""
    app = create_app() if request.param == "warden-per-app" else create_app(shared_warden)
    poolwarden_rollback(app)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("run", range(3))
def test_per_test_client(client, run):
    assert client.get("/count").json() == 0
    assert client.post("/items/a").status_code == 200
    assert client.post("/refused/b").status_code == 409  # its SAVEPOINT is rolled back
    assert client.post("/items/c").status_code == 200
    assert client.get("/count").json() == 2  # the test sees its own writes across requests


@pytest.fixture(scope="module")
def app():
    return create_app()


@pytest.fixture(scope="module")
def module_client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture
def shared(app, module_client, poolwarden_rollback):
    """One TestClient for the module, a rollback per test."""
    poolwarden_rollback(app, "db")
    return module_client


@pytest.mark.parametrize("run", range(2))
def test_module_client(shared, run):
    assert shared.get("/count").json() == 0
    assert shared.post("/items/x").status_code == 200
    assert shared.get("/count").json() == 1


@pytest.fixture
async def seeded(poolwarden_rollback):
    """The RealWorld example app's harness: an app per test under LifespanManager, an httpx client,
    and rows written by a fixture on the test's own connection."""
    app = create_app()
    rollback = poolwarden_rollback(app)
    async with LifespanManager(app):
        await execute(await rollback["db"].connection(), f"INSERT INTO {TABLE} (name) VALUES ('seed')")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


@pytest.mark.parametrize("run", range(2))
async def test_seeded_by_a_fixture(seeded, run):
    assert (await seeded.get("/count")).json() == 1
    assert (await seeded.post("/items/z")).status_code == 200
    assert (await seeded.get("/count")).json() == 2

'''


def _url(backend: str, postgres_url: str, mysql_url: str, tmp_path: Any) -> str:
    return {
        "asyncpg": postgres_url,
        "psycopg": postgres_url.replace("postgresql://", "postgresql+psycopg://"),
        "aiosqlite": f"sqlite:///{tmp_path}/rollback.db",
        "asyncmy": mysql_url,
    }[backend]


async def _run_sql(url: str, *statements: str) -> None:
    warden = Warden(environ={})
    db = warden.pool("db", url, min_size=1, max_size=1, check_after_idle=None)
    async with warden, db.acquire() as conn:
        for sql in statements:
            await execute(conn, sql)


async def _count(url: str, table: str) -> int:
    warden = Warden(environ={})
    db = warden.pool("db", url, min_size=1, max_size=1, check_after_idle=None)
    async with warden, db.acquire() as conn:
        raw = unwrap(conn)
        module = type(raw).__module__
        if module.startswith("asyncpg"):
            return int(await raw.fetchval(f"SELECT COUNT(*) FROM {table}"))
        if module.startswith("aiosqlite"):
            return int((await raw.execute_fetchall(f"SELECT COUNT(*) FROM {table}"))[0][0])
        if module.startswith("asyncmy"):
            async with raw.cursor() as cur:
                await cur.execute(f"SELECT COUNT(*) FROM {table}")
                return int((await cur.fetchone())[0])
        return int((await (await raw.execute(f"SELECT COUNT(*) FROM {table}")).fetchone())[0])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
async def test_each_test_runs_in_a_transaction_rolled_back_at_its_end(
        backend: str, pytester: pytest.Pytester, postgres_url: str, mysql_url: str, tmp_path: Any) -> None:
    """A user's suite (per-test TestClient, module TestClient, ASGITransport) passes on each driver: every
    test starts from an empty table, sees its own writes, a refused request's SAVEPOINT rolls back, and
    the table is still empty on the server afterwards."""
    url = _url(backend, postgres_url, mysql_url, tmp_path)
    table = f"pw_rollback_{uuid.uuid4().hex[:10]}"
    await _run_sql(url, f"CREATE TABLE {table} (name VARCHAR(20) NOT NULL)")
    try:
        pytester.makepyfile(app_under_test=APP.format(url=url, table=table), test_suite=TESTS)
        pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
                         "filterwarnings = error\n")
        result = await _in_thread(pytester, "-q", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=10)
        assert await _count(url, table) == 0
    finally:
        await _run_sql(url, f"DROP TABLE {table}")


async def _in_thread(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the inner suite in a subprocess: it has event loops of its own."""
    import asyncio

    return await asyncio.to_thread(pytester.runpytest_subprocess, *args)
