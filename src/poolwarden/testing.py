"""Testing support: a fake connector that fails, hangs, dies or stalls on command, and a pytest plugin.

The pool's own unit tests run on :class:`FakeConnector`; users can run theirs on it too, to test
how their service behaves when the database misbehaves, without a database.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from poolwarden.config import PoolConfig
from poolwarden.connectors.base import ServerInfo
from poolwarden.pool import Pool
from poolwarden.retry import set_testing
from poolwarden.rollback import Rollback, RollbackLease
from poolwarden.testing_orm import poolwarden_orm_session  # noqa: F401 - registers the ORM fixture

if TYPE_CHECKING:
    from fastapi import FastAPI

    from poolwarden.warden import Resource

__all__ = [
    "FakeConnection",
    "FakeConnector",
    "FakeDisconnect",
    "Rollback",
    "RollbackLease",
    "assert_no_leases",
    "fake_pool",
    "no_backoff",
    "poolwarden_rollback",
]


class FakeDisconnect(ConnectionError):
    """What a fake connection raises once the fake server dropped it."""


class FakeQueryError(Exception):
    """An ordinary query error: the connection stays usable."""


class FakeConnection:
    """A connection to nowhere that keeps the state a pool cares about."""

    def __init__(self, connector: FakeConnector, ident: int) -> None:
        self.connector = connector
        self.id = ident
        self.closed = False
        self.dead = False
        self.in_tx = False
        self.session: dict[str, str] = {}
        self.queries = 0
        self.busy = False
        #: every statement run, in order
        self.log: list[str] = []

    async def execute(self, sql: str = "SELECT 1") -> str:
        """Run a fake statement: BEGIN/COMMIT/ROLLBACK, SET k=v, FAIL (a query error), anything else."""
        self._check()
        self.busy = True
        try:
            if self.connector.query_delay:
                await asyncio.sleep(self.connector.query_delay)
            self._check()
        finally:
            self.busy = False
        self.queries += 1
        self.log.append(sql)
        word = sql.strip().split(" ", 1)[0].upper()
        if word == "BEGIN":
            self.in_tx = True
        elif word in ("COMMIT", "ROLLBACK") and " TO " not in sql.upper():
            self.in_tx = False
        elif word == "SET":
            key, _, value = sql.strip()[4:].partition("=")
            self.session[key.strip()] = value.strip()
        elif word == "FAIL":
            raise FakeQueryError(sql)
        return "OK"

    def _check(self) -> None:
        if self.closed:
            raise FakeDisconnect(f"fake connection {self.id} is closed")
        if self.dead:
            raise FakeDisconnect(f"fake connection {self.id} was dropped by the server")

    def __repr__(self) -> str:
        return f"<FakeConnection {self.id}{' dead' if self.dead else ''}{' closed' if self.closed else ''}>"


@dataclass
class FakeConnector:
    """A connector whose faults are set by the test: ``fail_connects``, ``hang_connect``, ``kill_all()``..."""

    driver: str = "fake"
    connection_class: type[FakeConnection] = FakeConnection
    connect_delay: float = 0.0
    ping_delay: float = 0.0
    query_delay: float = 0.0
    close_delay: float = 0.0
    #: fail this many next connects (-1: every connect until set back to 0)
    fail_connects: int = 0
    hang_connect: bool = False
    hang_ping: bool = False
    fail_pings: bool = False
    connections: list[FakeConnection] = field(default_factory=list)
    connects: int = 0
    pings: int = 0
    rollbacks: int = 0
    resets: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def open_connections(self) -> list[FakeConnection]:
        """The connections the fake server still counts (not closed by the client)."""
        return [c for c in self.connections if not c.closed]

    def kill_all(self) -> None:
        """Drop every connection server-side, as a restart or pg_terminate_backend would."""
        for conn in self.connections:
            conn.dead = True

    async def connect(self, timeout: float) -> FakeConnection:
        self.connects += 1
        async with asyncio.timeout(timeout):
            if self.connect_delay:
                await asyncio.sleep(self.connect_delay)
            if self.hang_connect:
                await asyncio.Event().wait()
        if self.fail_connects:
            if self.fail_connects > 0:
                self.fail_connects -= 1
            raise ConnectionRefusedError("fake server refused the connection")
        conn = FakeConnection(self, next(self._ids))
        self.connections.append(conn)
        return conn

    async def close(self, conn: FakeConnection) -> None:
        if self.close_delay:
            await asyncio.sleep(self.close_delay)
        conn.closed = True

    def terminate(self, conn: FakeConnection) -> None:
        conn.closed = True

    async def ping(self, conn: FakeConnection) -> None:
        self.pings += 1
        if self.ping_delay:
            await asyncio.sleep(self.ping_delay)
        # a stalled network: only cutting the socket ends it (polled: close() sets no event to wait on)
        while self.hang_ping and not conn.closed:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        conn._check()
        if self.fail_pings:
            raise FakeDisconnect("fake ping failed")
        await conn.execute("SELECT 1")

    def is_closed(self, conn: FakeConnection) -> bool:
        return conn.closed

    def in_transaction(self, conn: FakeConnection) -> bool:
        return conn.in_tx

    async def rollback(self, conn: FakeConnection) -> None:
        self.rollbacks += 1
        await conn.execute("ROLLBACK")

    async def reset(self, conn: FakeConnection) -> None:
        self.resets += 1
        await conn.execute("ROLLBACK")
        conn.session.clear()

    @asynccontextmanager
    async def transaction(self, conn: FakeConnection) -> AsyncIterator[object]:
        await conn.execute("BEGIN")
        try:
            yield conn
        except BaseException:
            if not conn.dead and not conn.closed:
                await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, (FakeDisconnect, ConnectionRefusedError))

    async def server_info(self, conn: FakeConnection) -> ServerInfo:
        return ServerInfo("fake", "1.0", 100)


def fake_pool(name: str = "fake", connector: FakeConnector | None = None, **settings: Any) -> Pool[Any]:
    """A Pool on a FakeConnector; ``settings`` are PoolConfig keywords."""
    settings.setdefault("check_after_idle", None)
    return Pool(name, connector or FakeConnector(), PoolConfig(**settings))


def assert_no_leases(pool: Pool[Any]) -> None:
    """Fail with where each lease was taken if any connection of ``pool`` is still lent."""
    leases = pool.leases()
    if leases:
        raise AssertionError("leases still out:\n" + "\n".join(info.describe() for info in leases))


@pytest.fixture
def no_backoff() -> Iterator[None]:
    """Zero every retry delay for the duration of a test."""
    set_testing(True)
    try:
        yield
    finally:
        set_testing(False)


@pytest.fixture
def poolwarden_rollback() -> Iterator[Callable[..., Rollback]]:
    """Call ``poolwarden_rollback(app)`` before the app serves: every pool of the warden bound to
    ``app`` (or only those named or passed: ``poolwarden_rollback(app, "db")``) then lends one
    connection for the whole test, inside a transaction rolled back when the test ends, and its
    transaction dependencies become SAVEPOINTs. The returned :class:`Rollback` gives each
    :class:`RollbackLease` by name (for a fixture of your own: an ORM session on its connection).
    Works with ``with TestClient(app)`` (per test or per module) and with httpx's ASGITransport.
    """
    made: list[Rollback] = []

    def bind(app: FastAPI, *pools: str | Resource[Any]) -> Rollback:
        from poolwarden.fastapi import bound_warden

        resources: list[Resource[Any]] = []
        for pool in pools or tuple(bound_warden(app).resources):
            resources.append(bound_warden(app).resources[pool] if isinstance(pool, str) else pool)
        leases = {r.name: RollbackLease(r) for r in resources}
        rollback = Rollback(leases, [lease.override(app) for lease in leases.values()])
        made.append(rollback)
        return rollback

    yield bind
    for rollback in made:
        rollback.close()
