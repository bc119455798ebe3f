"""The canary sweep: a password given to poolwarden never comes out again, nor anything about it.

Real roles with real passwords: a PostgreSQL role on a private server that checks passwords
(scram-sha-256; the shared one trusts everybody), a MariaDB user and a Redis ACL user on the shared
servers, and an HTTP server that checks Basic credentials, each created here and dropped afterwards.
Every password is tried right (the query runs as that role) and wrong (the driver's authentication
error), written raw, percent-encoded and in the query string, through every output: log records of
every logger at DEBUG, reprs, exceptions and their chains, /readyz, /poolwarden/stats and /health,
/metrics, problem bodies, ``poolwarden check`` (text and --json) and ``poolwarden top``.

Two properties:

* a long password (every special character, non-ASCII, things that look like URL parts) appears in
  no output in any encoding, nor either of the markers at its two ends;
* short passwords (1-3 characters, and substrings of common words: 'a', 'on', 'ion', 'Error', 'user')
  leave no oracle: every output is the same, digits aside, whichever short password was used, and
  nothing is starred inside a word.
"""

# No `from __future__ import annotations`: FastAPI must resolve the endpoints' local Annotated aliases.
import asyncio
import base64
import io
import json
import logging
import re
import shutil
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, redirect_stderr, redirect_stdout
from typing import Annotated, Any
from urllib.parse import quote, quote_plus

import asyncmy
import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from poolwarden import BackendDown, PoolwardenError, Warden
from poolwarden.cli import main as cli_main
from poolwarden.sync import connector as sync_connector
from tests.support.private_pg import PrivatePostgres, private_postgres
from tests.support.servers import MYSQL_URL, REDIS_URL, require

HEAD, TAIL = "Qz7K", "W9vX"
SPECIALS = "#?/@:%&=+ ;'\"\\`~!$^*()[]{}<>|,.\t"
LONG = [
    f"{HEAD}{SPECIALS}{TAIL}",
    f"{HEAD}@db:5432/test?sslmode=disable#x{TAIL}",  # looks like the rest of a URL
    f"{HEAD}%41%2F%zz{TAIL}",  # percent escapes: to mean them literally the URL must encode them
    f"{HEAD}\u00e9\u20ac\u00df\u6f22{TAIL}",
]
SHORT = ["a", "on", "ion", "tion", "Error", "user", "#", "@/", "?:", "%", "\u00e9"]
OTHER = "Other-pw-9tr0ng!"  # the real password of the role that wrong passwords are tried on
ROLE, BAD_ROLE = "pwcanary", "pwcanary_bad"

pytestmark = [pytest.mark.slow]


def forms(password: str) -> list[str]:
    """How a password is written in a URL: raw (unless a raw '%XX' would mean an escape), encoded and
    in the query string; a short one (the oracle sweep) raw only, the form a parser gets wrong."""
    raw = [] if re.search(r"%[0-9A-Fa-f]{2}", password) else ["raw"]
    return raw if password in SHORT else [*raw, "encoded", "query"]


def url(scheme: str, user: str, password: str, hostport: str, path: str, form: str) -> str:
    if form == "query":
        sep = "&" if "?" in path else "?"
        return f"{scheme}://{hostport}{path}{sep}user={quote(user)}&password={quote(password, safe='')}"
    written = quote(password, safe="") if form == "encoded" else password
    return f"{scheme}://{user}:{written}@{hostport}{path}"


def spellings(user: str, password: str) -> set[str]:
    """Every way the password could show up in a text."""
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {password, quote(password, safe=""), quote(password), quote_plus(password),
            repr(password)[1:-1], json.dumps(password)[1:-1], basic, HEAD, TAIL}


class Seen:
    """What poolwarden (and the drivers through it) showed, by password and by place."""

    def __init__(self) -> None:
        self.texts: dict[str, list[tuple[str, str]]] = defaultdict(list)

    def add(self, password: str, place: str, text: object) -> None:
        self.texts[password].append((place, str(text)))

    def error(self, password: str, place: str, exc: BaseException) -> None:
        self.add(password, f"{place} traceback", "".join(traceback.format_exception(exc)))
        todo, done = [exc], set()
        while todo:  # the whole chain, suppressed contexts included
            e = todo.pop()
            if id(e) in done:
                continue
            done.add(id(e))
            notes = getattr(e, "__notes__", "")
            self.add(password, f"{place} chain", f"{type(e).__name__}: {e!s} {e!r} {notes}")
            todo += [c for c in (e.__cause__, e.__context__) if c is not None]

    def check(self) -> None:
        starred = re.compile(r"[A-Za-z0-9]\*\*\*|\*\*\*[A-Za-z0-9]")
        for password, texts in self.texts.items():
            for place, text in texts:
                found = starred.search(text)
                if found:
                    around = text[max(0, found.start() - 40):found.end() + 40]
                    raise AssertionError(f"{place}: a password starred inside a word: ...{around}")
            if password in LONG:
                for place, text in texts:
                    for spelling in spellings(ROLE, password) | spellings(BAD_ROLE, password):
                        assert spelling not in text, f"{place} shows {spelling!r}: {text[:2000]}"
        shorts = {p: self.normalized(p) for p in SHORT if p in self.texts}
        first = next(iter(shorts.values()))
        for password, shown in shorts.items():
            assert shown == first, f"password {password!r} changed what is shown: {_first_diff(first, shown)}"

    def normalized(self, password: str) -> dict[str, set[str]]:
        """Per place, the distinct texts, digits blurred: how many times a connect failed before the
        circuit opened is timing, not a property of the password."""
        out: dict[str, set[str]] = defaultdict(set)
        for place, text in self.texts[password]:
            if place.endswith("traceback"):
                continue  # its source lines follow the code path; its exception texts are compared apart
            text = re.sub(r"0x[0-9a-f]+", "ADDR", text)
            out[place].add(re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", text))
        return dict(out)


def _first_diff(one: dict[str, set[str]], two: dict[str, set[str]]) -> str:
    for place in sorted(set(one) | set(two)):
        a, b = one.get(place, set()), two.get(place, set())
        if a != b:
            return f"\n{place}: {sorted(a - b)[:3]}\n---\n{sorted(b - a)[:3]}"
    return "?"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """Every record of every logger at DEBUG, taken since the last call, as the texts a handler sees."""
    caplog.set_level(logging.DEBUG)
    taken = 0

    def take() -> list[str]:
        nonlocal taken
        records = caplog.records[taken:]
        taken = len(caplog.records)
        texts = []
        for r in records:
            if r.name.startswith(("asyncio", "hpack", "urllib3")):
                continue
            extra = {k: v for k, v in vars(r).items() if k.startswith("poolwarden.")}
            text = f"{r.name} {r.levelname} {r.getMessage()} {extra}"
            if r.exc_info and r.exc_info[1] is not None:
                text += "".join(traceback.format_exception(r.exc_info[1]))
            texts.append(text)
        return texts

    return take


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


FAST_FAIL: dict[str, Any] = {"startup": "lazy", "failure_threshold": 1, "backoff_initial": 0.02,
                             "backoff_max": 0.05, "connect_timeout": 5.0}


# -- the servers and their roles ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL that checks passwords over TCP (postgres itself stays trusted)."""
    with private_postgres() as pg:
        hba = pg.datadir / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n")
        if pg.user:
            shutil.chown(hba, pg.user)

        async def setup() -> None:
            conn = await asyncpg.connect(pg.url)
            try:
                await conn.execute("SELECT pg_reload_conf()")
                for role in (ROLE, BAD_ROLE):
                    await conn.execute(f"CREATE ROLE {role} LOGIN")
                await conn.execute(f"ALTER ROLE {BAD_ROLE} PASSWORD {await _pg_literal(conn, OTHER)}")
            finally:
                await conn.close()

        asyncio.run(setup())
        yield pg


async def _pg_literal(conn: asyncpg.Connection, text: str) -> str:
    literal: str = await conn.fetchval("SELECT quote_literal($1::text)", text)
    return literal


async def set_pg_password(pg: PrivatePostgres, password: str) -> None:
    conn = await asyncpg.connect(pg.url)
    try:
        await conn.execute(f"ALTER ROLE {ROLE} PASSWORD {await _pg_literal(conn, password)}")
    finally:
        await conn.close()


@asynccontextmanager
async def mariadb_users(password: str) -> AsyncIterator[str]:
    """Users ROLE (with ``password``) and BAD_ROLE on the shared MariaDB, dropped afterwards."""
    base = require(MYSQL_URL, "MariaDB/MySQL")
    hostport = base.split("@", 1)[1].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    admin = await asyncmy.connect(host=host, port=int(port or 3306), user="root", password="",
                                  autocommit=True)
    hosts = ("%", "localhost", "127.0.0.1")
    try:
        async with admin.cursor() as cur:
            for user, secret in ((ROLE, password), (BAD_ROLE, OTHER)):
                for h in hosts:
                    await cur.execute("DROP USER IF EXISTS %s@%s", (user, h))
                    await cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, h, secret))
                    await cur.execute("GRANT SELECT ON test.* TO %s@%s", (user, h))
        yield hostport
    finally:
        async with admin.cursor() as cur:
            for user in (ROLE, BAD_ROLE):
                for h in hosts:
                    await cur.execute("DROP USER IF EXISTS %s@%s", (user, h))
        await admin.ensure_closed()


@asynccontextmanager
async def redis_users(password: str) -> AsyncIterator[str]:
    """ACL users ROLE (with ``password``) and BAD_ROLE on the shared Redis, deleted afterwards."""
    base = require(REDIS_URL, "Redis")
    admin = aioredis.Redis.from_url(base)
    try:
        await admin.acl_setuser(ROLE, enabled=True, reset_passwords=True, passwords=[f"+{password}"],
                                keys=["*"], commands=["+@all"])
        await admin.acl_setuser(BAD_ROLE, enabled=True, reset_passwords=True, passwords=[f"+{OTHER}"],
                                keys=["*"], commands=["+@all"])
        yield base.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    finally:
        await admin.acl_deluser(ROLE, BAD_ROLE)
        await admin.aclose()


@asynccontextmanager
async def basic_auth_server(user: str, password: str) -> AsyncIterator[int]:
    """An HTTP server on loopback that answers 200 to the right Basic credentials, 401 otherwise."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                pairs = (line.partition(":") for line in lines[1:] if line)
                headers = {k.lower(): v.strip() for k, _, v in pairs}
                ok = headers.get("authorization") == expected
                body = b"ok" if ok else b"who are you?"
                status = "200 OK" if ok else "401 Unauthorized"
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# -- the flows -----------------------------------------------------------------------------------------


async def pool_flow(seen: Seen, password: str, place: str, target: str, expect_user: str | None,
                    logs: Callable[[], list[str]], blocking: bool = False) -> None:
    """A pool on ``target`` through a FastAPI app: every route, every repr, every error, every log;
    ``blocking``: on the sync driver's connector (psycopg, PyMySQL), with a sync endpoint."""
    ok = expect_user is not None
    connector = (lambda: sync_connector(target)) if blocking else (lambda: None)
    warden = Warden(environ={})
    db = warden.pool("db", target, connector=connector(), min_size=1, max_size=2, **({} if ok else FAST_FAIL))
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, stats=True, metrics=True)

    @app.get("/whoami-sync")
    def whoami_sync(conn: Annotated[Any, db.connection]) -> dict[str, str]:
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER")
        return {"user": str(cur.fetchone()[0]).partition("@")[0]}

    @app.get("/whoami")
    async def whoami(conn: Annotated[Any, db.connection]) -> dict[str, str]:
        raw: Any = conn
        if hasattr(raw, "fetchval"):
            return {"user": await raw.fetchval("SELECT current_user")}
        if hasattr(raw, "execute"):  # psycopg
            cur = await raw.execute("SELECT current_user")
            return {"user": (await cur.fetchone())[0]}
        async with raw.cursor() as cur:
            await cur.execute("SELECT CURRENT_USER()")
            return {"user": (await cur.fetchone())[0].partition("@")[0]}

    async with LifespanManager(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                       base_url="http://app") as client:
        if not ok:
            await eventually(lambda: db.stats().circuit == "open" and db.stats().last_error is not None)
        r = await client.get("/whoami-sync" if blocking else "/whoami")
        if ok:
            assert r.status_code == 200, r.text
            assert r.json() == {"user": expect_user}  # the password parsed right: we are that role
        else:
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
        seen.add(password, f"{place} /whoami", r.text + str(r.headers))
        for path in ("/readyz?verbose", "/readyz", "/livez", "/metrics", "/poolwarden/stats",
                     "/poolwarden/health"):
            r = await client.get(path)
            seen.add(password, f"{place} {path}", r.text)
        if not ok:
            with pytest.raises(BackendDown) as down:
                await db.acquire()
            seen.error(password, f"{place} acquire", down.value)
            public = db.stats().last_error or ""
            assert re.fullmatch(r"\w+( \((SQLSTATE \w{5}|MySQL error \d+|HTTP \d+)\))?", public), public
        for text in (repr(db), repr(db.dsn), str(db.dsn), repr(db.connector), repr(db.config),
                     repr(db.stats()), str(db.stats().to_dict()), repr(warden)):
            seen.add(password, f"{place} repr", text)
    if not ok and not blocking:  # (a blocking connect, in a thread, may not even fail within 0.2 s)
        waiting = Warden(environ={})
        waiting.pool("db", target, connector=connector(), startup_timeout=0.2,
                     **{**FAST_FAIL, "startup": "wait"})
        with pytest.raises(PoolwardenError) as failed:
            await waiting.open()
        seen.error(password, f"{place} open", failed.value)
    for text in logs():
        seen.add(password, f"{place} log", text)


async def client_flow(seen: Seen, password: str, place: str, target: str, ok: bool,
                      logs: Callable[[], list[str]], **settings: Any) -> Any:
    use = settings.pop("use", _nothing)
    warden = Warden(environ={})
    client = warden.client("c", target, **settings, **({} if ok else FAST_FAIL))
    result = None
    async with warden:
        if ok:
            result = await use(client.get())
        else:
            await eventually(lambda: client.stats().circuit == "open" and bool(client.stats().last_error))
            with pytest.raises(BackendDown) as down:
                client.get()
            seen.error(password, f"{place} get", down.value)
            public = client.stats().last_error or ""
            assert re.fullmatch(r"\w+( \((SQLSTATE \w{5}|MySQL error \d+|HTTP \d+)\))?", public), public
        for text in (repr(client), repr(client.dsn), repr(client.driver), repr(client.config),
                     repr(client.stats()), str(client.stats().to_dict())):
            seen.add(password, f"{place} repr", text)
    for text in logs():
        seen.add(password, f"{place} log", text)
    return result


async def orm_flow(seen: Seen, password: str, place: str, target: str,
                   logs: Callable[[], list[str]]) -> None:
    """warden.sqlalchemy(): the engine's URL and the pool under it both get the credentials right."""
    from sqlalchemy import text

    warden = Warden(environ={})
    db = warden.sqlalchemy("db", target, min_size=1, max_size=2)
    async with warden, db.session_scope() as session:
        assert (await session.execute(text("SELECT current_user"))).scalar() == ROLE
        for shown in (repr(db), repr(db.dsn), repr(db.connector), repr(session.bind), repr(db.stats())):
            seen.add(password, f"{place} repr", shown)
    for line in logs():
        seen.add(password, f"{place} log", line)


async def _nothing(client: Any) -> None:
    return None


def run_cli(*args: str) -> str:
    """``poolwarden ARGS`` in this process (tests/integration/test_cli.py runs the real command): what
    it prints on stdout and stderr, and what it logs goes through the same capture as the rest."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        cli_main(list(args))
    return out.getvalue() + err.getvalue()


async def cli(seen: Seen, password: str, place: str, logs: Callable[[], list[str]], *args: str) -> None:
    """Run the command in a thread (the servers it talks to run on this loop); keep what it printed
    and logged."""
    seen.add(password, place, await asyncio.to_thread(run_cli, *args))
    for line in logs():
        seen.add(password, f"{place} log", line)


# -- the sweeps ----------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_canary_sweep(scram_pg: PrivatePostgres, logs: Callable[[], list[str]]) -> None:
    """asyncpg and psycopg pools, and a SQLAlchemy engine, on a role with each password, right and wrong."""
    seen = Seen()
    hostport = f"127.0.0.1:{scram_pg.port}"
    for password in LONG + SHORT:
        await set_pg_password(scram_pg, password)
        targets = []
        for form in forms(password):
            for scheme in ("postgresql", "postgresql+psycopg"):
                good = url(scheme, ROLE, password, hostport, "/postgres", form)
                bad = url(scheme, BAD_ROLE, password, hostport, "/postgres", form)
                await pool_flow(seen, password, f"{scheme} {form} right", good, ROLE, logs)
                await pool_flow(seen, password, f"{scheme} {form} wrong", bad, None, logs)
                targets += [good, bad]
            if form == "query":
                continue
            for name, ok, user in (("right", True, ROLE), ("wrong", False, BAD_ROLE)):
                target = url("postgresql", user, password, hostport, "/postgres", form)
                await pool_flow(seen, password, f"sync psycopg {form} {name}", target, ROLE if ok else None,
                                logs, blocking=True)
            await orm_flow(seen, password, f"orm {form}", url("postgresql", ROLE, password, hostport,
                                                                "/postgres", form), logs)
            engine = url("postgresql+asyncpg", ROLE, password, hostport, "/postgres", form)

            async def current_user(e: Any) -> str:
                from sqlalchemy import text

                async with e.connect() as conn:
                    return str((await conn.execute(text("SELECT current_user"))).scalar())

            got = await client_flow(seen, password, f"sqlalchemy {form} right", engine, True, logs,
                                    kind="sqlalchemy", use=current_user)
            assert got == ROLE
            await client_flow(seen, password, f"sqlalchemy {form} wrong",
                              url("postgresql+asyncpg", BAD_ROLE, password, hostport, "/postgres", form),
                              False, logs, kind="sqlalchemy")
        # poolwarden check, while the role still has this password
        await cli(seen, password, "check", logs, "check", "--json", *targets)
    seen.check()


@pytest.mark.mysql
async def test_mariadb_canary_sweep(logs: Callable[[], list[str]]) -> None:
    """asyncmy and PyMySQL pools on a MariaDB user with each password, right and wrong, and check."""
    seen = Seen()
    for password in LONG + SHORT:
        async with mariadb_users(password) as hostport:
            targets = []
            for form in forms(password):
                good = url("mysql", ROLE, password, hostport, "/test", form)
                bad = url("mysql", BAD_ROLE, password, hostport, "/test", form)
                await pool_flow(seen, password, f"mysql {form} right", good, ROLE, logs)
                await pool_flow(seen, password, f"mysql {form} wrong", bad, None, logs)
                await pool_flow(seen, password, f"pymysql {form} right", good, ROLE, logs, blocking=True)
                await pool_flow(seen, password, f"pymysql {form} wrong", bad, None, logs, blocking=True)
                targets += [good, bad]
            await cli(seen, password, "check", logs, "check", *targets)
    seen.check()


@pytest.mark.redis
async def test_redis_and_http_canary_sweep(logs: Callable[[], list[str]]) -> None:
    """Redis (ACL user) and httpx (Basic auth, httpx's own INFO request log) clients, and top."""
    seen = Seen()

    async def whoami(r: Any) -> str:
        name = await r.acl_whoami()
        return name.decode() if isinstance(name, bytes) else str(name)

    async def fetch(c: httpx.AsyncClient) -> int:
        return (await c.get("/data")).status_code

    for password in LONG + SHORT:
        async with redis_users(password) as hostport, basic_auth_server(ROLE, password) as port:
            targets = []
            for form in forms(password):
                good = url("redis", ROLE, password, hostport, "/0", form)
                bad = url("redis", BAD_ROLE, password, hostport, "/0", form)
                assert await client_flow(seen, password, f"redis {form} right", good, True, logs,
                                         use=whoami) == ROLE
                await client_flow(seen, password, f"redis {form} wrong", bad, False, logs)
                targets += [good, bad]
                if form == "query":
                    continue  # an http URL's credentials are its user info
                web = url("http", ROLE, password, f"127.0.0.1:{port}", "", form)
                assert await client_flow(seen, password, f"http {form} right", web, True, logs,
                                         health_path="/health", use=fetch) == 200
                await client_flow(seen, password, f"http {form} wrong",
                                  url("http", BAD_ROLE, password, f"127.0.0.1:{port}", "", form), False, logs,
                                  health_path="/health")
                # top against a service that refuses it: the error line must not carry the URL's password
                await cli(seen, password, f"top {form}", logs, "top", "--once", web)
            await cli(seen, password, "check", logs, "check", "--json", *targets)
    seen.check()
