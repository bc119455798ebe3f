"""poolwarden inside FastAPI, through the real ASGI stack, against real databases.

Requests go through Starlette's routing, FastAPI's dependency scopes and poolwarden's 503 handlers; the
lifespan runs through the ASGI lifespan protocol, as a server runs it, or uvicorn serves the app on a
real socket where a client has to hang up. No ``from __future__ import annotations`` here: the routes
are declared inside the tests, and FastAPI must see their annotations as objects.
"""

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from poolwarden import LeaseEnded, Resource, Warden
from poolwarden.demo.app import Dialect, create_app, dialect_for

PASSWORD = "canary-pw"  # PostgreSQL on loopback trusts any password; it must never reach a response


# -- harness ------------------------------------------------------------------------------------------


@dataclass
class Backend:
    """One database for a test: its URL, how to spell SQL for its driver, a table of its own."""

    name: str
    url: str
    sql: Dialect
    table: str

    async def create_table(self, db: Resource[Any]) -> None:
        async with db.acquire() as conn:
            await self.sql.execute(conn, f"CREATE TABLE {self.table} (id INTEGER PRIMARY KEY, name TEXT)")

    async def insert(self, conn: Any, *ids: int) -> None:
        for i in ids:
            await self.sql.execute(conn, f"INSERT INTO {self.table} (id, name) VALUES (?, ?)", i, "x")

    async def count(self, conn: Any) -> int:
        rows = await self.sql.fetch(conn, f"SELECT COUNT(*) AS n FROM {self.table}")
        return int(rows[0]["n"])


def _with_password(url: str) -> str:
    """``url`` with a password in it: the canary, unless it has one already."""
    parts = urlsplit(url)
    if parts.password:
        return url
    netloc = f"{parts.username or 'postgres'}:{PASSWORD}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """SQLite in a temporary file, or PostgreSQL (with a password in its URL) and a table dropped after."""
    url = request.getfixturevalue(f"{request.param}_url")
    table = f"lg_fastapi_{uuid.uuid4().hex[:12]}"
    if request.param == "postgres":
        url = _with_password(url)
    yield Backend(request.param, url, dialect_for(url), table)
    if request.param == "postgres":
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            await conn.close()


def make_app(url: str, **settings: Any) -> tuple[FastAPI, Warden, Resource[Any]]:
    """A FastAPI app with one pool ``db`` on ``url``, poolwarden's lifespan and handlers installed."""
    warden = Warden()
    settings.setdefault("drain_timeout", 2)  # a failed test must not wait 10 s for a held lease
    db = warden.pool("db", url, **settings)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    return app, warden, db


class Lifespan:
    """Drives an app's lifespan through the ASGI protocol, the way a server does."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task = asyncio.create_task(self._app(scope, self._to_app.get, self._from_app.put))
        await self._exchange("startup")

    async def shutdown(self) -> None:
        await self._exchange("shutdown")
        assert self._task is not None
        await self._task

    async def _exchange(self, phase: str) -> None:
        assert self._task is not None
        await self._to_app.put({"type": f"lifespan.{phase}"})
        reply = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait([reply, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            self._task.result()  # raises what the app raised
            raise AssertionError(f"the app ended its lifespan without answering {phase}")
        message = reply.result()
        assert message["type"] == f"lifespan.{phase}.complete", message


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Start ``app``'s lifespan, lend an HTTP client talking to it in-process, shut down at exit."""
    lifespan = Lifespan(app)
    await lifespan.startup()
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await lifespan.shutdown()


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn on a free loopback port (lifespan included); yields the port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning",
                            http="h11", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


def cancel_on_disconnect(app: ASGIApp) -> ASGIApp:
    """Cancel the request's task when its client hangs up (as some servers and middlewares do;
    uvicorn itself lets the endpoint run on)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        request = asyncio.ensure_future(app(scope, inbox.get, send))

        async def watch() -> None:
            while True:
                message = await receive()
                await inbox.put(message)
                if message["type"] == "http.disconnect":
                    request.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait([request])
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if not request.cancelled():
            request.result()

    return wrapped


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.01)


def assert_all_returned(db: Resource[Any]) -> None:
    """Nothing lent, and every lease taken has ended exactly once."""
    stats = db.stats()
    assert stats.in_use == 0, stats
    assert stats.acquired == stats.released, stats
    assert db.leases() == []


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def started(coro: Awaitable[httpx.Response], event: asyncio.Event) -> asyncio.Task[httpx.Response]:
    """Start a request in a task and wait until the endpoint says it is inside (``event``)."""
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        raise AssertionError(f"the request ended before its endpoint was reached: {task.result()}")
    return task


# -- a lease ends whatever the endpoint does ---------------------------------------------------------


async def test_endpoint_that_raises_returns_its_connection(backend: Backend) -> None:
    """An endpoint that raises (an error or an HTTPException) still gives its connection back."""
    app, _, db = make_app(backend.url, max_size=1, acquire_timeout=2)

    @app.get("/boom")
    async def boom(conn: Any = db.connection) -> None:
        await backend.sql.fetch(conn, "SELECT 1 AS one")
        raise RuntimeError("boom")

    @app.get("/teapot")
    async def teapot(conn: Any = db.connection) -> None:
        await backend.sql.fetch(conn, "SELECT 1 AS one")
        raise HTTPException(418)

    @app.get("/ok")
    async def ok(conn: Any = db.connection) -> dict[str, int]:
        return (await backend.sql.fetch(conn, "SELECT 1 AS one"))[0]

    async with running(app) as client:
        before = db.stats().acquired
        assert (await client.get("/boom")).status_code == 500
        assert (await client.get("/teapot")).status_code == 418
        assert_all_returned(db)
        assert db.stats().acquired == before + 2
        assert (await client.get("/ok")).json() == {"one": 1}  # the only connection is lendable again
        assert_all_returned(db)


@pytest.mark.parametrize("failure", ["plain-exception", "http-exception"])
async def test_failed_transaction_leaves_no_row_and_success_commits(backend: Backend, failure: str) -> None:
    """A transaction endpoint that raises leaves no row behind, while one that returns commits."""
    app, _, db = make_app(backend.url, max_size=2)

    @app.post("/items/{item_id}")
    async def add(item_id: int, fail: bool = False, conn: Any = db.transaction) -> dict[str, int]:
        await backend.insert(conn, item_id)
        if fail and failure == "plain-exception":
            raise RuntimeError("after the insert")
        if fail:
            raise HTTPException(409, "after the insert")
        return {"id": item_id}

    @app.get("/items/count")
    async def count(conn: Any = db.connection) -> int:
        return await backend.count(conn)

    async with running(app) as client:
        await backend.create_table(db)
        failed = await client.post("/items/1", params={"fail": True})
        assert failed.status_code == (500 if failure == "plain-exception" else 409)
        assert (await client.get("/items/count")).json() == 0
        assert (await client.post("/items/2")).status_code == 200
        assert (await client.get("/items/count")).json() == 1
        assert_all_returned(db)
        async with db.acquire() as conn:
            ids = await backend.sql.fetch(conn, f"SELECT id FROM {backend.table}")
        assert ids == [{"id": 2}]


async def test_connection_is_released_before_the_response_is_sent(backend: Backend) -> None:
    """``db.connection`` is back in the pool before the body streams and before background tasks run."""
    app, _, db = make_app(backend.url)
    seen: dict[str, int] = {}

    def note(where: str) -> None:
        seen[where] = db.stats().in_use

    async def body(where: str) -> AsyncIterator[bytes]:
        note(where)
        yield b"body\n"

    @app.get("/background")
    async def background(conn: Any = db.connection) -> JSONResponse:
        await backend.sql.fetch(conn, "SELECT 1 AS one")
        return JSONResponse({"ok": True}, background=BackgroundTask(note, "background"))

    @app.get("/stream")
    async def stream(conn: Any = db.connection) -> StreamingResponse:
        await backend.sql.fetch(conn, "SELECT 1 AS one")
        return StreamingResponse(body("stream"))

    # the control: kept until the response is sent, so the same probes see it still lent
    held = db.depends(release="response")

    @app.get("/stream-held")
    async def stream_held(conn: Any = held) -> StreamingResponse:
        await backend.sql.fetch(conn, "SELECT 1 AS one")
        return StreamingResponse(body("stream-held"), background=BackgroundTask(note, "background-held"))

    async with running(app) as client:
        for path in ("/background", "/stream", "/stream-held"):
            assert (await client.get(path)).status_code == 200
        assert seen == {"background": 0, "stream": 0, "stream-held": 1, "background-held": 1}
        assert_all_returned(db)


@pytest.mark.parametrize("server", ["endpoint-runs-on", "request-cancelled"])
async def test_client_disconnect_leaks_nothing(backend: Backend, server: str) -> None:
    """A client that hangs up mid-request or mid-stream (on a real socket) leaves no lease behind."""
    app, _, db = make_app(backend.url, max_size=2)
    inside = asyncio.Event()
    streaming = asyncio.Event()

    @app.get("/hold")
    async def hold(conn: Any = db.connection) -> dict[str, bool]:
        await backend.sql.fetch(conn, "SELECT 1 AS one")
        inside.set()
        await asyncio.sleep(0.3)  # the client hangs up meanwhile
        await backend.sql.fetch(conn, "SELECT 1 AS one")
        return {"ok": True}

    held = db.depends(release="response")

    @app.get("/stream")
    async def stream(conn: Any = held) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            while True:  # endless: only the client's hang-up ends it
                rows = await backend.sql.fetch(conn, "SELECT 1 AS one")
                yield b"%d\n" % rows[0]["one"]
                streaming.set()
                await asyncio.sleep(0.01)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    served = cancel_on_disconnect(app) if server == "request-cancelled" else app
    async with serving(served) as port:
        for path, event in (("/hold", inside), ("/stream", streaming)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            await writer.drain()
            await asyncio.wait_for(event.wait(), 5)
            if path == "/stream":
                assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            assert db.stats().in_use == 1
            writer.close()  # hang up mid-request / mid-stream
            await writer.wait_closed()
            await wait_until(lambda: db.stats().in_use == 0)
            assert_all_returned(db)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/hold")).json() == {"ok": True}  # the pool still serves
        assert_all_returned(db)


# -- streaming bodies -----------------------------------------------------------------------------------


async def test_streaming_body_reads_from_a_connection_kept_until_the_response(backend: Backend) -> None:
    """With ``release="response"`` a streaming body queries its connection until the last chunk."""
    app, _, db = make_app(backend.url)
    in_use: list[int] = []

    held = db.depends(release="response")

    @app.get("/export")
    async def export(conn: Any = held) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            for after in range(3):
                rows = await backend.sql.fetch(
                    conn, f"SELECT id FROM {backend.table} WHERE id > ? ORDER BY id LIMIT 1", after)
                in_use.append(db.stats().in_use)
                yield b"%d\n" % rows[0]["id"]

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async with running(app) as client:
        await backend.create_table(db)
        async with db.acquire() as conn:
            await backend.insert(conn, 1, 2, 3)
        response = await client.get("/export")
        assert response.status_code == 200
        assert response.text == "1\n2\n3\n"
        assert in_use == [1, 1, 1]
        assert_all_returned(db)


async def test_streaming_body_with_default_release_gets_lease_ended(backend: Backend) -> None:
    """A streaming body that uses a ``db.connection`` after the endpoint returned gets LeaseEnded,
    never the connection another request now holds (max_size=1)."""
    app, _, db = make_app(backend.url, max_size=1, acquire_timeout=2)
    a_streaming, b_holding, b_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @app.get("/stream")
    async def stream(conn: Any = db.connection) -> StreamingResponse:
        await backend.sql.fetch(conn, "SELECT 1 AS one")

        async def lines() -> AsyncIterator[bytes]:
            yield b"started\n"
            a_streaming.set()
            await b_holding.wait()  # the only connection is now another request's
            try:
                await backend.sql.fetch(conn, "SELECT 1 AS one")
            except LeaseEnded as exc:
                yield f"LeaseEnded {exc.resource}\n".encode()
            else:
                yield b"the query ran\n"

        return StreamingResponse(lines())

    @app.get("/hold")
    async def hold(conn: Any = db.connection) -> dict[str, bool]:
        await backend.sql.fetch(conn, "SELECT 1 AS one")
        b_holding.set()
        await b_done.wait()
        await backend.sql.fetch(conn, "SELECT 1 AS one")  # still this request's own connection
        return {"held": True}

    async with running(app) as client:
        a = await started(client.get("/stream"), a_streaming)
        b = await started(client.get("/hold"), b_holding)
        assert db.stats().in_use == 1
        assert (await a).text == "started\nLeaseEnded db\n"
        b_done.set()
        assert (await b).json() == {"held": True}
        assert_all_returned(db)


# -- 503 when a resource cannot serve ----------------------------------------------------------------


def assert_problem(response: httpx.Response, kind: str, url: str) -> None:
    """A 503 problem+json naming the resource ``db``, with Retry-After, showing nothing of ``url``."""
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["status"] == 503
    assert body["type"] == f"urn:poolwarden:problem:{kind}"
    assert body["resource"] == "db"
    parts = urlsplit(url)
    shown = response.text + str(response.headers)
    assert "://" not in shown
    for leak in (parts.password, parts.netloc.rpartition("@")[2], parts.path.lstrip("/") or None):
        assert not leak or leak not in shown, leak


async def test_dry_pool_answers_503_problem_json(backend: Backend) -> None:
    """A pool with no free connection within acquire_timeout answers 503 problem+json with Retry-After."""
    app, _, db = make_app(backend.url, max_size=1, acquire_timeout=0.2)
    inside, done = asyncio.Event(), asyncio.Event()

    @app.get("/hold")
    async def hold(conn: Any = db.connection) -> dict[str, bool]:
        await backend.sql.fetch(conn, "SELECT 1 AS one")
        inside.set()
        await done.wait()
        return {"held": True}

    @app.get("/ok")
    async def ok(conn: Any = db.connection) -> dict[str, int]:
        return (await backend.sql.fetch(conn, "SELECT 1 AS one"))[0]

    async with running(app) as client:
        holder = await started(client.get("/hold"), inside)
        start = time.monotonic()
        response = await client.get("/ok")
        assert time.monotonic() - start < 2
        assert_problem(response, "pool-timeout", backend.url)
        assert db.stats().timeouts == 1
        done.set()
        assert (await holder).status_code == 200
        assert (await client.get("/ok")).json() == {"one": 1}
        assert_all_returned(db)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_max_waiting_refuses_at_once(backend: Backend) -> None:
    """With max_waiting callers already queued, the next request gets 503 at once, not after a wait."""
    app, _, db = make_app(backend.url, max_size=1, max_waiting=1, acquire_timeout=10)
    inside, done = asyncio.Event(), asyncio.Event()

    @app.get("/hold")
    async def hold(conn: Any = db.connection) -> dict[str, bool]:
        inside.set()
        await done.wait()
        return {"held": True}

    @app.get("/ok")
    async def ok(conn: Any = db.connection) -> dict[str, int]:
        return (await backend.sql.fetch(conn, "SELECT 1 AS one"))[0]

    async with running(app) as client:
        holder = await started(client.get("/hold"), inside)
        waiter = asyncio.ensure_future(client.get("/ok"))
        await wait_until(lambda: db.stats().waiting == 1)
        start = time.monotonic()
        response = await client.get("/ok")
        assert time.monotonic() - start < 1  # far below acquire_timeout=10
        assert_problem(response, "pool-overloaded", backend.url)
        assert db.stats().overloaded == 1
        done.set()
        assert (await holder).status_code == 200
        assert (await waiter).json() == {"one": 1}  # the queued caller was served, not dropped
        assert_all_returned(db)


async def test_backend_down_answers_503_fast() -> None:
    """A pool whose server refuses connections (circuit open) answers 503 fast with Retry-After."""
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed_port()}/test"
    app, _, db = make_app(url, startup="lazy", failure_threshold=1, acquire_timeout=10,
                          backoff_initial=5, backoff_max=5)

    @app.get("/ok")
    async def ok(conn: Any = db.connection) -> dict[str, bool]:
        return {"ok": True}

    async with running(app) as client:
        start = time.monotonic()
        response = await client.get("/ok")
        assert time.monotonic() - start < 2  # far below acquire_timeout=10
        assert_problem(response, "backend-down", url)
        assert db.stats().circuit == "open"
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/livez")).status_code == 200
        assert_all_returned(db)


# -- health ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_readyz_turns_red_as_the_drain_starts_while_livez_stays_green(backend: Backend) -> None:
    """/livez answers 200 always; /readyz 200 while open and 503 from the first moment of the drain,
    while a required pool still serves."""
    app, warden, db = make_app(backend.url)
    # declared last, so drained first: while it waits for its lease, `db` is still open and ready
    reports = warden.pool("reports", backend.url, optional=True, drain_timeout=5)
    inside, done = asyncio.Event(), asyncio.Event()

    @app.get("/hold")
    async def hold(conn: Any = reports.connection) -> dict[str, bool]:
        inside.set()
        await done.wait()
        return {"held": True}

    lifespan = Lifespan(app)
    await lifespan.startup()
    shutdown = None
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.headers["content-type"].startswith("application/health+json")
            assert ready.json()["checks"]["db:connections"][0]["status"] == "pass"
            assert (await client.get("/livez")).status_code == 200

            holder = await started(client.get("/hold"), inside)
            shutdown = asyncio.ensure_future(lifespan.shutdown())
            await wait_until(lambda: reports.state == "draining")
            assert not shutdown.done()  # the drain waits for the lease still out
            assert db.stats().ready  # so only the service's own drain can turn readiness red
            draining = await client.get("/readyz")
            assert draining.status_code == 503
            assert draining.json()["status"] == "fail"
            assert (await client.get("/livez")).status_code == 200
            done.set()
            assert (await holder).json() == {"held": True}  # the lease out was allowed to finish
            await shutdown
            assert (await client.get("/livez")).status_code == 200
            assert (await client.get("/readyz")).status_code == 503
    finally:
        done.set()  # a failed assertion must not leave the drain waiting, nor SQLite threads behind
        await (shutdown if shutdown is not None else lifespan.shutdown())
    assert_all_returned(db)
    assert_all_returned(reports)


# -- the demo -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                 pytest.param("mysql", marks=pytest.mark.mysql)])
async def test_demo_app_crud_round_trip(database: str, request: pytest.FixtureRequest,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The notes demo, switched by NOTES_DATABASE_URL alone, creates, finds, updates, exports and deletes."""
    monkeypatch.setenv("NOTES_DATABASE_URL", request.getfixturevalue(f"{database}_url"))
    app = create_app()
    token = uuid.uuid4().hex  # the PostgreSQL and MariaDB tables are shared with other runs
    async with running(app) as client:
        created = await client.post("/notes", json={"title": f"first {token}", "body": "100% real"})
        assert created.status_code == 201, created.text
        note = created.json()
        assert (await client.get(f"/notes/{note['id']}")).json() == note

        found = (await client.get("/notes", params={"q": token.upper()})).json()
        assert [n["id"] for n in found["items"]] == [note["id"]]
        assert (await client.get("/notes", params={"q": f"{token}%"})).json()["items"] == []

        updated = await client.put(f"/notes/{note['id']}", json={"title": f"second {token}", "body": "b"})
        assert updated.json()["title"] == f"second {token}"
        assert (await client.get(f"/notes/{note['id']}")).json()["title"] == f"second {token}"

        export = await client.get("/notes/export")
        assert export.headers["content-type"].startswith("application/x-ndjson")
        assert f"second {token}" in export.text

        assert (await client.delete(f"/notes/{note['id']}")).status_code == 204
        assert (await client.get(f"/notes/{note['id']}")).status_code == 404
        assert (await client.delete(f"/notes/{note['id']}")).status_code == 404
        assert (await client.put(f"/notes/{note['id']}", json={"title": "x"})).status_code == 404

        burst = (await client.post("/burst", params={"n": 30})).json()
        assert burst["status"] == {"200": 30}
        stats = (await client.get("/poolwarden/stats")).json()["db"]
        assert stats["in_use"] == 0
        assert stats["acquired"] == stats["released"]
        assert (await client.get("/", follow_redirects=True)).status_code == 200  # the dashboard
