"""Shared clients (Redis, httpx, a SQLAlchemy engine) declared on a Warden, against real servers.

Requests go through the real ASGI stack and lifespan; Redis faults come from a TCP proxy that refuses and
resets; the HTTP backend is a real uvicorn server. No ``from __future__ import annotations`` here: the
routes are declared inside the tests, and FastAPI must see their annotations as objects.
"""

import asyncio
import json
import logging
import re
import socket
import sys
import time
import uuid
from typing import Annotated, Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, Response
from sqlalchemy import text

from poolwarden import BackendDown, ConfigError, PoolClosed, Warden
from poolwarden.observe.prometheus import collector
from tests.integration.test_fastapi import running, serving, wait_until
from tests.support.faultproxy import FaultProxy, fault_proxy

CANARY = "canary-pw"
# quick health checks, so faults show within a second or two
FAST: dict[str, Any] = {"health_interval": 0.05, "failure_threshold": 2, "backoff_initial": 0.01,
                        "backoff_max": 0.05, "connect_timeout": 0.5, "startup_timeout": 5.0}


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def app_for(warden: Warden) -> FastAPI:
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False, stats=True)  # the tests read /poolwarden/stats anonymously
    return app


def events(caplog: pytest.LogCaptureFixture, *names: str) -> list[tuple[str, str]]:
    return [(r.__dict__["poolwarden.event"], r.__dict__["poolwarden.resource"]) for r in caplog.records
            if r.__dict__.get("poolwarden.event") in names]


@pytest.fixture
async def redis_proxy(redis_url: str) -> Any:
    """A FaultProxy in front of the real Redis."""
    parts = urlsplit(redis_url)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        yield proxy


# -- lifecycle ----------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_lifespan_opens_clients_and_pools_in_declaration_order(
        redis_url: str, sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The lifespan opens pools and clients in declaration order and closes them in reverse."""
    caplog.set_level(logging.INFO, logger="poolwarden")
    warden = Warden()
    warden.pool("first", sqlite_url)
    cache = warden.client("cache", redis_url)
    warden.pool("last", sqlite_url)
    async with running(app_for(warden)):
        assert cache.ready
    opened = [res for _, res in events(caplog, "pool.opened", "client.opened")]
    closed = [res for _, res in events(caplog, "drain.finished", "client.closed")]
    assert opened == ["first", "cache", "last"]
    assert closed == ["last", "cache", "first"]


@pytest.mark.redis
async def test_get_refuses_before_open_and_after_close(redis_url: str) -> None:
    """``get()`` raises PoolClosed naming the client before open and after close, and serves in between."""
    cache = Warden().client("cache", redis_url)
    with pytest.raises(PoolClosed, match="cache") as before:
        cache.get()
    assert before.value.resource == "cache"
    async with cache:
        assert await cache.get().ping() is True
    with pytest.raises(PoolClosed, match="cache: the client is closed"):
        cache.get()
    assert cache.stats().state == "closed"


# -- FastAPI ------------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_endpoint_sets_and_gets_through_cache_depends(redis_url: str) -> None:
    """Endpoints using ``cache.depends`` SET and GET on the real Redis through the ASGI stack."""
    warden = Warden()
    cache = warden.client("cache", redis_url, options={"decode_responses": True})
    app = app_for(warden)
    Cache = Annotated[aioredis.Redis, cache.depends]

    @app.put("/kv/{key}")
    async def put(key: str, value: str, r: Cache) -> dict[str, bool]:
        return {"ok": bool(await r.set(key, value, ex=60))}

    @app.get("/kv/{key}")
    async def get(key: str, r: Cache) -> dict[str, str | None]:
        return {"value": await r.get(key)}

    key = f"lg-test-{uuid.uuid4().hex}"
    async with running(app) as http:
        assert (await http.put(f"/kv/{key}", params={"value": "hello"})).json() == {"ok": True}
        assert (await http.get(f"/kv/{key}")).json() == {"value": "hello"}
        ready = await http.get("/readyz")
    direct = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await direct.get(key) == "hello"  # the write really reached Redis
        await direct.delete(key)
    finally:
        await direct.aclose()
    assert ready.status_code == 200
    assert ready.json()["checks"]["cache:connections"][0]["status"] == "pass"
    assert "cache:responseTime" in ready.json()["checks"]


@pytest.mark.redis
async def test_readyz_turns_red_while_the_circuit_is_open_and_recovers(redis_proxy: FaultProxy,
                                                                       redis_url: str) -> None:
    """While Redis refuses connections the circuit opens, /readyz fails ``cache:connections`` and the
    endpoint answers 503 problem+json; when Redis is back both recover."""
    warden = Warden()
    cache = warden.client("cache", redis_proxy.url_for(redis_url), **FAST)
    app = app_for(warden)

    @app.get("/ping")
    async def ping(r: Annotated[aioredis.Redis, cache.depends]) -> dict[str, bool]:
        return {"pong": bool(await r.ping())}

    async with running(app) as http:
        assert (await http.get("/readyz")).status_code == 200
        redis_proxy.refuse(True)
        await redis_proxy.cut()
        await wait_until(lambda: cache.stats().circuit == "open", timeout=10)

        ready = await http.get("/readyz")
        assert ready.status_code == 503
        check = ready.json()["checks"]["cache:connections"][0]
        assert check["status"] == "fail"
        assert "circuit open" in check["output"]
        down = await http.get("/ping")
        assert down.status_code == 503
        assert down.headers["content-type"].startswith("application/problem+json")
        assert down.json()["resource"] == "cache"
        assert int(down.headers["retry-after"]) >= 1
        stats = (await http.get("/poolwarden/stats")).json()["cache"]
        assert (stats["circuit"], stats["ready"]) == ("open", False)
        assert stats["last_error"]

        redis_proxy.refuse(False)
        await wait_until(lambda: cache.ready, timeout=10)
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/ping")).json() == {"pong": True}


@pytest.mark.redis
async def test_a_disconnect_in_an_endpoint_checks_the_backend_at_once(redis_proxy: FaultProxy,
                                                                      redis_url: str) -> None:
    """A disconnect error raised through ``cache.depends`` runs the health check now, not at the next
    ``health_interval``, so the circuit opens within a second although the interval is a minute."""
    warden = Warden()
    cache = warden.client("cache", redis_proxy.url_for(redis_url), **{**FAST, "health_interval": 60.0})
    app = app_for(warden)

    @app.get("/ping")
    async def ping(r: Annotated[aioredis.Redis, cache.depends]) -> dict[str, bool]:
        return {"pong": bool(await r.ping())}

    async with running(app) as http:
        assert (await http.get("/ping")).status_code == 200
        redis_proxy.refuse(True)
        await redis_proxy.cut()
        assert (await http.get("/ping")).status_code == 500  # the driver's own error, not ours
        await wait_until(lambda: cache.stats().circuit == "open", timeout=3)
        redis_proxy.refuse(False)


# -- start-up and secrets -----------------------------------------------------------------------------


async def test_wait_startup_on_a_closed_port_raises_backend_down_in_time() -> None:
    """``startup="wait"`` against a port nobody listens on fails with BackendDown naming the client and
    the last error, within ``startup_timeout``."""
    warden = Warden()
    cache = warden.client("cache", f"redis://127.0.0.1:{closed_port()}/0", startup_timeout=1.0,
                         connect_timeout=0.5, backoff_initial=0.01, backoff_max=0.1)
    start = time.monotonic()
    with pytest.raises(BackendDown) as caught:
        await warden.open()
    assert time.monotonic() - start < 2.0
    assert caught.value.resource == "cache"
    assert re.search(r"cache: .*startup_timeout=1.0s; last error: ConnectionError", str(caught.value))
    assert cache.state == "closed"


async def test_the_password_appears_in_no_repr_stats_log_body_or_error(caplog: pytest.LogCaptureFixture
                                                                       ) -> None:
    """A password in a client's URL or options appears in no repr, stats, log record, response body or
    error, while the client fails to reach its backend."""
    caplog.set_level(logging.DEBUG, logger="poolwarden")
    url = f"redis://:{CANARY}@127.0.0.1:{closed_port()}/0"
    warden = Warden()
    cache = warden.client("cache", url, startup="lazy", **FAST)
    app = app_for(warden)

    @app.get("/ping")
    async def ping(r: Annotated[aioredis.Redis, cache.depends]) -> dict[str, bool]:
        return {"pong": bool(await r.ping())}

    async with running(app) as http:
        await wait_until(lambda: cache.stats().circuit == "open", timeout=10)
        bodies = [(await http.get(path)).text for path in ("/readyz?verbose", "/poolwarden/stats", "/ping")]
        with pytest.raises(BackendDown) as down:
            cache.get()
        texts = [repr(cache), repr(warden), str(cache.dsn), repr(cache.dsn), repr(cache.config),
                 json.dumps(cache.stats().to_dict()), str(down.value), *bodies]
    with pytest.raises(BackendDown) as startup:
        await Warden().client("waited", url, **{**FAST, "startup_timeout": 0.3}).open()
    with pytest.raises(ConfigError) as bad_option:
        Warden().client("bad", url, options={"no_such_option": CANARY})
    texts += [str(startup.value), str(bad_option.value)]
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(v) for r in caplog.records for k, v in r.__dict__.items() if k.startswith("poolwarden.")]
    assert cache.stats().last_error  # there was an error to leak
    leaks = [t for t in texts if CANARY in t]
    assert not leaks


# -- HTTP and SQLAlchemy ------------------------------------------------------------------------------


async def test_http_client_pings_its_health_path_on_a_real_server() -> None:
    """An httpx client pings ``health_path`` on a real uvicorn server: its circuit opens while the path
    fails, closes when it answers again, and the client is closed with the warden."""
    backend = FastAPI()
    healthy = {"now": True}

    @backend.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if healthy["now"] else 503)

    @backend.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    async with serving(backend) as port:
        warden = Warden()
        api = warden.client("api", f"http://127.0.0.1:{port}", health_path="/health", **FAST)
        async with warden:
            assert api.ready
            assert api.stats().last_check_seconds is not None
            client = api.get()
            assert (await client.get("/hello")).json() == {"hello": "world"}
            healthy["now"] = False
            await wait_until(lambda: api.stats().circuit == "open", timeout=10)
            with pytest.raises(BackendDown, match=r"last error: HTTPStatusError \(HTTP 503\)"):
                api.get()
            healthy["now"] = True
            await wait_until(lambda: api.ready, timeout=10)
        assert client.is_closed


async def test_http_client_without_health_path_is_ready_without_a_ping() -> None:
    """Without ``health_path`` an HTTP client makes no request at start-up and is ready at once."""
    warden = Warden()
    api = warden.client("api", f"http://127.0.0.1:{closed_port()}", startup_timeout=0.5)
    async with warden:
        assert api.ready
        stats = api.stats()
        assert (stats.last_check_seconds, stats.pings_failed) == (None, 0)


async def _backends(admin: asyncpg.Connection, app_name: str) -> int:
    n = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name)
    return int(n)


@pytest.mark.postgres
async def test_sqlalchemy_engine_client_opens_pings_and_disposes(postgres_url: str) -> None:
    """A SQLAlchemy engine client pings PostgreSQL at open, serves queries, reads its pool's sizes, and
    disposes every server connection at close."""
    app_name = f"lg-clients-{uuid.uuid4().hex[:8]}"
    url = "postgresql+asyncpg://" + postgres_url.split("://", 1)[1]
    warden = Warden()
    orm = warden.client("orm", url, kind="sqlalchemy",
                       options={"connect_args": {"server_settings": {"application_name": app_name}}})
    admin = await asyncpg.connect(postgres_url)
    try:
        async with warden:
            stats = orm.stats()
            assert orm.ready
            assert stats.last_check_seconds is not None
            assert (stats.idle, stats.in_use, stats.max_size) == (1, 0, 15)  # pool_size 5 + max_overflow 10
            async with orm.get().connect() as conn:
                assert (await conn.execute(text("SELECT 41 + 1"))).scalar() == 42
            assert await _backends(admin, app_name) == 1
        for _ in range(250):  # the server notices the goodbye a moment later
            if not await _backends(admin, app_name):
                break
            await asyncio.sleep(0.02)
        assert await _backends(admin, app_name) == 0
        assert orm.state == "closed"
    finally:
        await admin.close()


# -- declaration and exporters ------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "settings", "message"), [
    ("redis://h/0", {"startup": "soon"}, "startup='soon'"),
    ("redis://h/0", {"health_interval": -1}, "health_interval=-1"),
    ("redis://h/0", {"failure_threshold": 0}, "failure_threshold=0"),
    ("redis://h/0", {"max_size": 5}, "'max_size' is for pools"),
    ("redis://h/0", {"health_path": "/health"}, "health_path='/health' for a redis client"),
    ("http://h", {"health_path": "health"}, "health_path='health'"),
    ("redis://h/0", {"options": {"no_such_option": 1}}, "unknown redis option: 'no_such_option'"),
    ("ftp://h/", {}, "unsupported client URL scheme 'ftp'"),
    ("redis://h/0", {"kind": "http"}, "a http client needs a http:// or https:// URL"),
    ("redis://h/0", {"kind": "memcached"}, "kind='memcached'"),
    ("postgresql+psycopg2://u:pw@h/db", {"kind": "sqlalchemy"}, "needs an async driver"),
], ids=["startup", "health_interval", "failure_threshold", "pool-setting", "health_path-redis",
        "health_path-relative", "option", "scheme", "kind-mismatch", "kind-unknown", "sqlalchemy-sync"])
def test_bad_declarations_raise_config_error_naming_key_and_value(url: str, settings: dict[str, Any],
                                                                  message: str) -> None:
    """A bad client URL, kind or setting raises ConfigError at declaration, naming what is wrong."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        Warden().client("cache", url, **settings)


def test_settings_and_url_come_from_the_environment() -> None:
    """``POOLWARDEN_<NAME>_URL`` and ``POOLWARDEN_<NAME>_<SETTING>`` configure a client; keywords win."""
    warden = Warden(environ={"POOLWARDEN_API_URL": "http://127.0.0.1:9/",
                               "POOLWARDEN_API_HEALTH_INTERVAL": "2.5", "POOLWARDEN_API_HEALTH_PATH": "/up",
                               "POOLWARDEN_API_STARTUP": "lazy"})
    api = warden.client("api", startup="wait")
    assert (api.config.health_interval, api.config.health_path, api.config.startup) == (2.5, "/up", "wait")
    assert api.driver.driver == "httpx"


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declaring a client whose driver is not installed raises ConfigError naming the extra."""
    monkeypatch.setitem(sys.modules, "httpx", None)  # import httpx now fails as if not installed
    with pytest.raises(ConfigError, match=re.escape("pip install 'poolwarden[http]'")):
        Warden().client("api", "http://127.0.0.1/")


@pytest.mark.redis
async def test_prometheus_collector_reports_clients(redis_url: str, sqlite_url: str) -> None:
    """The Prometheus collector reads clients from ``warden.stats()`` beside the pools, a Redis client
    on names of its own (``redis_client_connections``), not as a database pool."""
    warden = Warden()
    warden.pool("db", sqlite_url)
    warden.client("cache", redis_url)
    async with warden:
        families = {f.name: f for f in collector(warden).collect()}
    count = families["db_client_connection_count"]
    pools = {s.labels["db_client_connection_pool_name"] for s in count.samples}
    assert pools == {"db"}
    assert {s.labels["resource"] for s in families["redis_client_connections"].samples} == {"cache"}
