"""SQLAlchemy on poolwarden's pool: ORM round trips, session dependencies and their guarantees,
against the real PostgreSQL, MariaDB and SQLite."""

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from sqlalchemy import String, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from poolwarden import LeaseEnded, Warden
from poolwarden.orm import AsyncSQLAlchemy, SQLAlchemyResource, SyncSQLAlchemy
from tests.support.servers import MYSQL_URL, POSTGRES_URL, require


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "pw_orm_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100), unique=True)


def _pg(driver: str) -> str:
    return POSTGRES_URL.replace("postgresql://", f"postgresql+{driver}://", 1)


def _my(driver: str) -> str:
    return MYSQL_URL.replace("mysql://", f"mysql+{driver}://", 1)


BACKENDS = [
    pytest.param(("pg", "asyncpg", False), id="asyncpg"),
    pytest.param(("pg", "psycopg", False), id="psycopg-async"),
    pytest.param(("pg", "psycopg", True), id="psycopg-sync"),
    pytest.param(("sqlite", "aiosqlite", False), id="aiosqlite"),
    pytest.param(("sqlite", "pysqlite", True), id="sqlite3-sync"),
    pytest.param(("my", "asyncmy", False), id="asyncmy"),
    pytest.param(("my", "pymysql", True), id="pymysql-sync"),
]


def _url(kind: str, driver: str, tmp_path: Any) -> str:
    if kind == "pg":
        require(POSTGRES_URL, "PostgreSQL")
        return _pg(driver)
    if kind == "my":
        require(MYSQL_URL, "MariaDB/MySQL")
        return _my(driver)
    return f"sqlite+{driver}:///{tmp_path}/orm.db"


async def _in(orm: SQLAlchemyResource[Any], fn: Any) -> Any:
    """Run a sync-session call in a thread (as a sync endpoint would), an async one directly."""
    if isinstance(orm, SyncSQLAlchemy):
        return await asyncio.to_thread(fn)
    return await fn()


@pytest.fixture(params=BACKENDS)
async def orm(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[SQLAlchemyResource[Any]]:
    kind, driver, sync = request.param
    warden = Warden()
    url = _url(kind, driver, tmp_path)
    settings: dict[str, Any] = {"min_size": 1, "max_size": 3, "drain_timeout": 0.3}
    resource: SQLAlchemyResource[Any] = (warden.sqlalchemy("db", url, sync=True, **settings)
                                         if sync else warden.sqlalchemy("db", url, **settings))
    async with warden:
        if isinstance(resource, SyncSQLAlchemy):
            engine = resource.engine

            def ddl() -> None:
                Base.metadata.drop_all(engine)
                Base.metadata.create_all(engine)
            await asyncio.to_thread(ddl)
        else:
            assert isinstance(resource, AsyncSQLAlchemy)
            async with resource.engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
                await conn.run_sync(Base.metadata.create_all)
        yield resource
        assert resource.leases() == []
    # A connection terminated by drain is closed by aiosqlite's worker thread, which then reports to the
    # loop: let it finish before this test's loop closes, or it raises in the thread.
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 5)


async def test_round_trip_commit_and_rollback(orm: SQLAlchemyResource[Any]) -> None:
    """A committed session's rows are seen by the next; a rolled-back one's are not; no lease stays out."""
    async with orm.session_scope(transaction=True) as s:
        s.add(Note(id=1, body="kept"))
    async def failing() -> None:
        async with orm.session_scope(transaction=True) as s:
            s.add(Note(id=2, body="dropped"))
            await _in(orm, s.flush)
            raise RuntimeError("endpoint failed")
    with pytest.raises(RuntimeError):
        await failing()
    async with orm.session_scope() as s:
        rows = await _in(orm, lambda: s.scalars(select(Note.body)))
        assert list(rows) == ["kept"]
    stats = orm.stats()
    assert stats.in_use == 0
    assert stats.size <= 3


async def test_session_after_its_scope_raises_lease_ended(orm: SQLAlchemyResource[Any]) -> None:
    """A session kept past its block refuses work with LeaseEnded naming the resource."""
    async with orm.session_scope() as s:
        kept = s
    with pytest.raises(LeaseEnded, match="db: session used after"):
        await _in(orm, lambda: kept.execute(text("SELECT 1")))


async def test_one_wrapper_per_connection(orm: SQLAlchemyResource[Any]) -> None:
    """Many sessions on one pooled connection reuse one SQLAlchemy record (connect events run once)."""
    for _ in range(5):
        async with orm.session_scope() as s:
            await _in(orm, lambda: s.execute(text("SELECT 1")))
    assert len(orm.bridge._records) == orm.stats().size


async def test_dispose_expires_every_connection(orm: SQLAlchemyResource[Any]) -> None:
    """engine.dispose() maps onto expire(): the pool replaces its connections."""
    async with orm.session_scope() as s:
        await _in(orm, lambda: s.execute(text("SELECT 1")))
    before = orm.stats().discarded.get("expired", 0)
    if isinstance(orm, AsyncSQLAlchemy):
        await orm.engine.dispose()
    else:
        assert isinstance(orm, SyncSQLAlchemy)
        orm.engine.dispose()
    assert orm.stats().discarded.get("expired", 0) > before
    async with orm.session_scope() as s:
        assert (await _in(orm, lambda: s.scalar(text("SELECT 1")))) == 1


async def test_engine_used_directly_takes_and_ends_leases(orm: SQLAlchemyResource[Any]) -> None:
    """orm.engine.connect() outside any dependency borrows from, and returns to, poolwarden."""
    if isinstance(orm, AsyncSQLAlchemy):
        async with orm.engine.connect() as conn:
            assert orm.stats().in_use == 1
            assert (await conn.scalar(text("SELECT 2"))) == 2
    else:
        assert isinstance(orm, SyncSQLAlchemy)
        engine = orm.engine

        def use() -> int:
            with engine.connect() as conn:
                assert orm.stats().in_use == 1
                return int(conn.scalar(text("SELECT 2")) or 0)
        assert await asyncio.to_thread(use) == 2
    await asyncio.sleep(0.01)
    assert orm.stats().in_use == 0


def _app(orm: SQLAlchemyResource[Any], warden_install: Warden | None = None) -> FastAPI:
    app = FastAPI()
    if isinstance(orm, AsyncSQLAlchemy):
        ASession = Annotated[AsyncSession, orm.session]
        ATx = Annotated[AsyncSession, orm.transaction]

        @app.post("/notes/{nid}")
        async def add(nid: int, body: str, s: ATx) -> dict[str, int]:
            s.add(Note(id=nid, body=body))
            if body == "refuse":
                raise HTTPException(409)
            return {"id": nid}

        @app.post("/swallow/{nid}")
        async def swallow(nid: int, s: ATx) -> dict[str, int]:
            s.add(Note(id=nid, body=f"swallowed {nid}"))
            await s.flush()
            try:
                await s.execute(text("SELECT * FROM pw_no_such_table"))
            except DBAPIError:
                pass  # the endpoint carries on as if nothing happened
            return {"id": nid}

        @app.get("/notes")
        async def notes(s: ASession) -> list[str]:
            return list((await s.scalars(select(Note.body).order_by(Note.id))).all())
    else:
        SSession = Annotated[Session, orm.session]
        STx = Annotated[Session, orm.transaction]

        @app.post("/notes/{nid}")
        def add_sync(nid: int, body: str, s: STx) -> dict[str, int]:
            s.add(Note(id=nid, body=body))
            if body == "refuse":
                raise HTTPException(409)
            return {"id": nid}

        @app.post("/swallow/{nid}")
        def swallow_sync(nid: int, s: STx) -> dict[str, int]:
            s.add(Note(id=nid, body=f"swallowed {nid}"))
            s.flush()
            try:
                s.execute(text("SELECT * FROM pw_no_such_table"))
            except DBAPIError:
                pass
            return {"id": nid}

        @app.get("/notes")
        def notes_sync(s: SSession) -> list[str]:
            return list(s.scalars(select(Note.body).order_by(Note.id)).all())
    return app


async def test_session_dependencies_commit_roll_back_and_never_lie(orm: SQLAlchemyResource[Any]) -> None:
    """orm.transaction commits on success, rolls back on HTTPException, and a failed commit is a 500."""
    app = _app(orm)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/notes/1", params={"body": "a"})).status_code == 200
        assert (await client.post("/notes/2", params={"body": "refuse"})).status_code == 409
        # the unique body fails at COMMIT, after the endpoint returned: an error, never a 2xx
        assert (await client.post("/notes/3", params={"body": "a"})).status_code == 500
        assert (await client.get("/notes")).json() == ["a"]
    assert orm.stats().in_use == 0


async def test_a_caught_error_never_reports_a_commit(orm: SQLAlchemyResource[Any]) -> None:
    """A statement that failed inside orm.transaction (its error caught by the endpoint) makes the
    request fail: on PostgreSQL the COMMIT would silently roll back; elsewhere the rest commits."""
    app = _app(orm)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/swallow/7")
        notes = (await client.get("/notes")).json()
    if orm.engine.dialect.name == "postgresql":
        assert response.status_code == 500
        assert notes == []
    else:  # MySQL and SQLite roll back only the failed statement: the rest is really committed
        assert response.status_code == 200
        assert notes == ["swallowed 7"]


async def test_dependency_overrides_replace_the_session(orm: SQLAlchemyResource[Any]) -> None:
    """app.dependency_overrides (through override_sessions) hands the test's own session to endpoints."""
    app = _app(orm)
    async with orm.session_scope() as mine:
        async def give() -> Any:
            return mine
        with orm.override_sessions(app, give):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.get("/notes")).json() == []
        assert orm.stats().in_use == 1  # only the test's own


async def test_an_apps_own_engine_is_handed_over(tmp_path: Any) -> None:
    """warden.sqlalchemy(name, engine=engine): the app keeps its create_async_engine; poolwarden lends."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/own.db")
    warden = Warden()
    orm = warden.sqlalchemy("db", engine=engine, max_size=2)
    assert orm.engine is engine
    async with warden:
        async with engine.connect() as conn:
            assert (await conn.scalar(text("SELECT 3"))) == 3
            assert orm.stats().in_use == 1
        assert orm.stats().in_use == 0


async def test_sqlmodel_sessions(tmp_path: Any) -> None:
    """sqlmodel=True gives SQLModel's Session, with its exec()."""
    from sqlmodel import Field, SQLModel
    from sqlmodel import Session as SQLModelSession

    class Hero(SQLModel, table=True):
        __tablename__ = f"hero_{uuid.uuid4().hex[:8]}"
        id: int | None = Field(default=None, primary_key=True)
        name: str

    warden = Warden()
    orm = warden.sqlalchemy("db", f"sqlite:///{tmp_path}/sm.db", sync=True, sqlmodel=True)
    async with warden:
        await asyncio.to_thread(SQLModel.metadata.create_all, orm.engine, tables=[Hero.__table__])  # type: ignore[attr-defined]
        async with orm.session_scope(transaction=True) as s:
            assert isinstance(s, SQLModelSession)
            s.add(Hero(name="Deadpond"))
        async with orm.session_scope() as s:
            from sqlmodel import select as sm_select
            assert [h.name for h in s.exec(sm_select(Hero)).all()] == ["Deadpond"]

    from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

    warden = Warden()
    aorm = warden.sqlalchemy("db", f"sqlite+aiosqlite:///{tmp_path}/sm.db", sqlmodel=True)
    async with warden, aorm.session_scope() as s:
        assert isinstance(s, SQLModelAsyncSession)
        assert [h.name for h in (await s.exec(sm_select(Hero))).all()] == ["Deadpond"]


async def test_rollback_session_turns_commits_into_savepoints(orm: SQLAlchemyResource[Any]) -> None:
    """Inside rollback_session, commits (the test's and orm.transaction's) are SAVEPOINTs; the test's
    end rolls everything back, and a failing endpoint rolls back only its own work."""
    from poolwarden.testing_orm import rollback_session

    app = _app(orm)
    async with rollback_session(orm, app) as s:
        s.add(Note(id=1, body="mine"))
        await _in(orm, s.commit)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.post("/notes/2", params={"body": "theirs"})).status_code == 200
            assert (await client.post("/notes/3", params={"body": "refuse"})).status_code == 409
            assert (await client.get("/notes")).json() == ["mine", "theirs"]
    async with orm.session_scope() as s:
        assert list(await _in(orm, lambda: s.scalars(select(Note.body)))) == []
    assert orm.stats().in_use == 0


@pytest.fixture
async def sqlite_orm(tmp_path: Any) -> AsyncIterator[AsyncSQLAlchemy]:
    warden = Warden()
    orm = warden.sqlalchemy("db", f"sqlite+aiosqlite:///{tmp_path}/fx.db")
    async with warden:
        async with orm.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield orm
        async with orm.session_scope() as s:
            assert (await s.scalar(select(Note.body))) is None  # the fixture rolled it back


async def test_the_orm_session_fixture(sqlite_orm: AsyncSQLAlchemy, poolwarden_orm_session: Any) -> None:
    """The poolwarden_orm_session fixture gives a session whose work is rolled back at teardown."""
    session = await poolwarden_orm_session(sqlite_orm)
    session.add(Note(id=1, body="x"))
    await session.commit()
    assert (await session.scalar(select(Note.body))) == "x"


async def test_the_orm_resource_is_a_pool_in_readyz_and_stats(tmp_path: Any) -> None:
    """The resource shows in /readyz and /poolwarden/stats like any pool, its leases counted."""
    warden = Warden()
    orm = warden.sqlalchemy("db", f"sqlite+aiosqlite:///{tmp_path}/ready.db")
    app = FastAPI()
    warden.install(app, metrics=False, stats=True)
    transport = httpx.ASGITransport(app=app)
    async with warden, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        async with orm.session_scope() as s:
            await s.execute(text("SELECT 1"))
            stats = (await client.get("/poolwarden/stats")).json()
        ready = await client.get("/readyz")
    assert stats["db"]["in_use"] == 1, stats
    assert ready.status_code == 200
    assert any(key.startswith("db:") for key in ready.json()["checks"]), ready.json()


async def test_an_apps_own_sync_engine_is_handed_over(tmp_path: Any) -> None:
    """A sync create_engine handed over: its Engine, events kept, lends from poolwarden in threads."""
    from sqlalchemy import create_engine, event

    engine = create_engine(f"sqlite:///{tmp_path}/own_sync.db")
    connects: list[object] = []
    event.listen(engine, "connect", lambda dbapi_conn, record: connects.append(dbapi_conn))
    warden = Warden()
    orm = warden.sqlalchemy("db", engine=engine, max_size=2)
    assert isinstance(orm, SyncSQLAlchemy)
    async with warden:
        for _ in range(3):
            async with orm.session_scope() as s:
                assert (await asyncio.to_thread(s.scalar, text("SELECT 4"))) == 4
    assert len(connects) == 1  # the app's own listener, run once for the one pooled connection


def test_declaration_errors_are_config_errors(tmp_path: Any) -> None:
    """A bad declaration fails at once with a ConfigError naming the problem."""
    from poolwarden import ConfigError

    warden = Warden()
    with pytest.raises(ConfigError, match="autocommit=True cannot be set under SQLAlchemy"):
        warden.sqlalchemy("a", "postgresql+psycopg://app@db/app", options={"autocommit": True})
    with pytest.raises(ConfigError, match="url or engine, not both"):
        warden.sqlalchemy("b", "sqlite:///x.db", engine=create_async_engine("sqlite+aiosqlite:///x.db"))
    with pytest.raises(ConfigError, match="no sync driver"):
        warden.sqlalchemy("c", "sqlite+aiosqlite:///x.db", sync=True)
    with pytest.raises(ConfigError, match="a transaction released after the response"):
        warden.sqlalchemy("d", f"sqlite:///{tmp_path}/d.db").session_depends(release="response",
                                                                          transaction=True)


async def test_a_failure_rolled_back_to_its_savepoint_still_commits(orm: SQLAlchemyResource[Any]) -> None:
    """A statement that failed inside a SAVEPOINT the code rolled back leaves the transaction
    committable: the rest of it is saved."""
    bad = text("SELECT * FROM pw_no_such_table")
    async with orm.session_scope(transaction=True) as s:
        s.add(Note(id=1, body="kept"))
        if isinstance(orm, SyncSQLAlchemy):
            def work() -> None:
                s.flush()
                try:
                    with s.begin_nested():
                        s.execute(bad)
                except DBAPIError:
                    pass
            await asyncio.to_thread(work)
        else:
            await s.flush()
            try:
                async with s.begin_nested():
                    await s.execute(bad)
            except DBAPIError:
                pass
    async with orm.session_scope() as s:
        assert list(await _in(orm, lambda: s.scalars(select(Note.body)))) == ["kept"]


async def test_drain_abandons_a_session_still_out(orm: SQLAlchemyResource[Any]) -> None:
    """Close with a session still out: it is reported after drain_timeout, its connection closed,
    and the session's own end afterwards neither hangs nor lends anything."""
    held = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_request() -> None:
        async with orm.session_scope() as s:
            await _in(orm, lambda: s.execute(text("SELECT 1")))
            held.set()
            await go_on.wait()
            await _in(orm, lambda: s.execute(text("SELECT 1")))

    task = asyncio.create_task(slow_request())
    await held.wait()
    abandoned = await orm.close()
    assert len(abandoned) == 1
    go_on.set()
    async with asyncio.timeout(10):
        with pytest.raises((DBAPIError, LeaseEnded)):  # the driver's error for its closed connection
            await task
    assert orm.stats().in_use == 0


async def test_release_response_keeps_the_session_for_a_streaming_body(sqlite_orm: AsyncSQLAlchemy) -> None:
    """release="response": a streaming body reads through the session after the endpoint returned."""
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    Late = Annotated[AsyncSession, sqlite_orm.session_depends(release="response")]

    @app.get("/stream")
    async def stream(s: Late) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"{await s.scalar(text(f'SELECT {i}'))}\n".encode()
        return StreamingResponse(body())

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/stream")).text == "0\n1\n2\n"
    assert sqlite_orm.stats().in_use == 0


async def test_one_rollback_at_most_per_lease(orm: SQLAlchemyResource[Any]) -> None:
    """SQLAlchemy rolls back (through its wrapper, keeping it in step) and poolwarden adds none at
    release; SQLAlchemy's own reset-on-return and pre-ping are off."""
    from sqlalchemy.pool.base import ResetStyle

    rollbacks = 0
    real = orm.connector.rollback

    async def counted(conn: Any) -> None:
        nonlocal rollbacks
        rollbacks += 1
        await real(conn)
    orm.connector.rollback = counted  # type: ignore[method-assign]
    for transaction in (False, True):
        for _ in range(5):
            async with orm.session_scope(transaction=transaction) as s:
                await _in(orm, lambda: s.execute(text("SELECT 1")))
    assert rollbacks == 0
    assert orm.bridge._reset_on_return is ResetStyle.reset_none
    assert orm.bridge._pre_ping is False


async def test_a_session_held_too_long_is_reported_with_its_route(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """leak_threshold: a session dependency held past it is reported naming the route and the stack."""
    import logging

    caplog.set_level(logging.WARNING, logger="poolwarden")
    warden = Warden()
    orm = warden.sqlalchemy("db", f"sqlite+aiosqlite:///{tmp_path}/leak.db", leak_threshold=0.05)
    app = FastAPI()

    @app.get("/slow")
    async def slow(s: Annotated[AsyncSession, orm.session]) -> int:
        await asyncio.sleep(0.4)
        return int(await s.scalar(text("SELECT 1")) or 0)

    transport = httpx.ASGITransport(app=app)
    async with warden, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/slow")).status_code == 200
    leaks = [r.getMessage() for r in caplog.records if getattr(r, "poolwarden.event", "") == "leak.suspected"]
    assert leaks, [r.getMessage() for r in caplog.records]
    assert "GET /slow" in leaks[0]


def test_a_handed_over_engine_keeps_its_pool_size() -> None:
    """engine= carries the engine's pool_size + max_overflow into max_size unless max_size (keyword or
    environment) is given; an unbounded overflow or another pool class leaves the default."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    url = "postgresql+psycopg://app@127.0.0.1/app"
    warden = Warden(environ={"POOLWARDEN_E_MAX_SIZE": "4"})
    sized = warden.sqlalchemy("a", engine=create_engine(url, pool_size=5, max_overflow=0), sync=True)
    assert sized.stats().max_size == 5
    default = warden.sqlalchemy("b", engine=create_async_engine(url.replace("psycopg", "asyncpg")))
    assert default.stats().max_size == 15  # SQLAlchemy's own 5 + 10 overflow: what that engine would open
    given = warden.sqlalchemy("c", engine=create_engine(url, pool_size=3), sync=True, max_size=7)
    assert given.stats().max_size == 7
    from_env = warden.sqlalchemy("e", engine=create_engine(url, pool_size=3), sync=True)
    assert from_env.stats().max_size == 4
    unbounded = warden.sqlalchemy("f", engine=create_engine(url, max_overflow=-1), sync=True)
    null = warden.sqlalchemy("g", engine=create_engine(url, poolclass=NullPool), sync=True)
    assert unbounded.stats().max_size == null.stats().max_size == 10
