"""The lent handle: forwards to the driver's connection, detaches at release, never reaches another lease."""

from __future__ import annotations

from typing import Any

import pytest

from poolwarden import LeaseEnded, PoolwardenError, unwrap
from poolwarden.handle import Handle, handle_class_for
from poolwarden.testing import FakeConnection, FakeDisconnect
from tests.unit.test_pool import MakePool, assert_quiet, make_pool

__all__ = ["make_pool"]  # the fixture, imported for pytest


class Driverish:
    """A driver connection class with the kinds of members real drivers have."""

    kind = "plain attribute"

    def __init__(self) -> None:
        self.state = "fresh"

    def query(self, sql: str, *, arg: int = 0) -> str:
        """Run a query."""
        return f"{sql}:{arg}"

    @property
    def status(self) -> str:
        return self.state

    @staticmethod
    def version() -> str:
        return "1.0"

    def unwrap(self) -> str:  # a driver method with the reserved name must not shadow ours
        return "driver's own"


def test_handle_class_forwards_methods_built_once_per_driver_class() -> None:
    """Plain methods get a forwarder on a handle class made once per driver class."""
    cls = handle_class_for(Driverish)
    assert cls is handle_class_for(Driverish)
    assert issubclass(cls, Handle)
    assert "query" in vars(cls)
    assert vars(cls)["query"].__doc__ == "Run a query."
    for name in ("status", "version", "kind", "unwrap"):
        assert name not in vars(cls)  # read live through __getattr__, or reserved


async def test_handle_forwards_calls_and_reads_attributes_live(make_pool: MakePool) -> None:
    """A lent handle behaves like the driver's connection, attributes read at the time of access."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    async with pool.acquire() as conn:
        assert isinstance(conn, Handle)
        assert type(conn).__name__ == "FakeConnectionHandle"
        assert await conn.execute("BEGIN") == "OK"
        assert conn.in_tx is True
        await conn.execute("COMMIT")
        assert conn.in_tx is False
        assert conn.queries == 2
    assert_quiet(pool)


async def test_use_after_release_raises_lease_ended_naming_the_resource(make_pool: MakePool) -> None:
    """Calling a method or reading an attribute of a released handle raises LeaseEnded naming the resource."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    async with pool.acquire() as conn:
        kept = conn
    with pytest.raises(LeaseEnded, match=r"^db: connection used after its lease ended \(\.execute\)") as info:
        await kept.execute("SELECT 1")
    assert info.value.resource == "db"
    with pytest.raises(LeaseEnded, match=r"\(\.in_tx\)"):
        _ = kept.in_tx
    assert "ended" in repr(kept)


async def test_a_released_handle_never_reaches_the_next_borrower(make_pool: MakePool) -> None:
    """After release, the old handle cannot touch the connection now lent to someone else."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    old = await pool.acquire()
    raw = unwrap(old)
    await pool.release(old)
    async with pool.acquire() as new:
        assert unwrap(new) is raw  # the same driver connection, lent again
        before = raw.queries
        with pytest.raises(LeaseEnded):
            await old.execute("SET role = attacker")
        with pytest.raises(LeaseEnded):
            unwrap(old)
        assert raw.queries == before
        assert raw.session == {}
        assert await new.execute("SELECT 1") == "OK"


async def test_unwrap_gives_the_driver_connection_only_during_the_lease(make_pool: MakePool) -> None:
    """unwrap() returns the raw connection while lent and raises LeaseEnded after release."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    conn = await pool.acquire()
    raw = unwrap(conn)
    assert type(raw) is FakeConnection
    assert unwrap(raw) is raw  # not a handle: returned as is
    await pool.release(conn)
    with pytest.raises(LeaseEnded, match=r"\(\.unwrap\)"):
        unwrap(conn)


async def test_repr_names_the_resource_and_state_only(make_pool: MakePool) -> None:
    """A handle's repr says which pool lent it and whether the lease is live, nothing from the driver."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    conn = await pool.acquire()
    assert repr(conn) == "<poolwarden handle of 'db' (lent)>"
    await pool.release(conn)
    assert repr(conn) == "<poolwarden handle of 'db' (ended)>"


async def test_release_twice_is_harmless(make_pool: MakePool) -> None:
    """A lease ends exactly once: a second release does nothing and counts nothing."""
    pool = make_pool(min_size=1, max_size=2)
    await pool.open()
    conn = await pool.acquire()
    await pool.release(conn)
    await pool.release(conn)
    s = pool.stats()
    assert (s.acquired, s.released, s.idle, s.in_use) == (1, 1, 1, 0)


async def test_release_refuses_what_this_pool_did_not_lend(make_pool: MakePool) -> None:
    """release() of a raw connection or of another pool's handle raises, naming the pool."""
    pool = make_pool(min_size=1, max_size=1)
    other = make_pool(min_size=1, max_size=1)
    await pool.open()
    await other.open()
    foreign = await other.acquire()
    with pytest.raises(PoolwardenError, match="release"):
        await pool.release(unwrap(foreign))
    with pytest.raises(PoolwardenError, match="release"):
        await pool.release(foreign)
    await other.release(foreign)


async def test_release_with_a_disconnect_error_discards(make_pool: MakePool) -> None:
    """release(conn, error=...) with a disconnect error discards the connection."""
    pool = make_pool(min_size=1, max_size=1)
    await pool.open()
    conn: Any = await pool.acquire()
    raw = unwrap(conn)
    await pool.release(conn, error=FakeDisconnect("gone"))
    assert raw.closed
    assert pool.stats().discarded == {"disconnect": 1}


# -- lease-bound driver objects, callbacks, isinstance, call-time lookup --------------------------------


class _Rec:
    """The least of a pool record a handle reads: its pool's name."""

    class pool:  # stands in for the record's pool attribute
        name = "db"


class DriverBase:
    """Stands in for asyncpg's _ConnectionProxy: the class the driver's isinstance checks accept."""

    __slots__ = ()


class Cursor:
    def __init__(self, conn: BoundDriver) -> None:
        self.connection = conn
        self.rows = [1, 2]

    async def execute(self, sql: str) -> Cursor:
        self.connection.log.append(sql)
        return self

    async def fetchall(self) -> list[int]:
        return list(self.rows)

    def child(self) -> Cursor:
        return Cursor(self.connection)

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> Cursor:
        self._it = iter(self.rows)
        return self

    async def __anext__(self) -> int:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


class BoundDriver:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.callbacks: list[Any] = []

    def cursor(self) -> Cursor:
        return Cursor(self)

    async def prepare(self, sql: str) -> Cursor:
        return Cursor(self)

    def add_listener(self, channel: str, callback: Any) -> None:
        self.callbacks.append(callback)

    def remove_listener(self, channel: str, callback: Any) -> None:
        self.callbacks.remove(callback)

    def notify(self, payload: str) -> None:
        for cb in self.callbacks:
            cb(self, payload)

    def ping(self) -> str:
        return "pong"


def _lend(raw: Any) -> Any:
    from poolwarden.handle import register_driver

    register_driver(BoundDriver, base=DriverBase, bound=("cursor", "prepare"),
                    callbacks={"add_listener": True}, resources=(Cursor,))
    handle: Any = object.__new__(handle_class_for(type(raw)))
    handle._lg_conn = raw
    handle._lg_rec = _Rec()
    return handle


async def test_objects_made_from_a_handle_end_with_its_lease() -> None:
    """Cursors (made, prepared, chained, entered, iterated) work during the lease and raise LeaseEnded
    after it; their .connection is the handle, never the driver's connection."""
    raw = BoundDriver()
    conn = _lend(raw)
    cur = conn.cursor()
    assert cur.connection is conn
    assert await cur.execute("one") is cur
    assert await cur.fetchall() == [1, 2]
    prepared = await conn.prepare("two")
    child = prepared.child()
    async with conn.cursor() as entered:
        assert [row async for row in entered] == [1, 2]
    conn._lg_conn = None  # what release does
    for stale in (cur, prepared, child, entered):
        with pytest.raises(LeaseEnded, match=r"^db: "):
            await stale.execute("after")
        with pytest.raises(LeaseEnded):
            _ = stale.rows
    assert raw.log == ["one"]


def test_callbacks_get_the_handle_and_fall_silent_when_the_lease_ends() -> None:
    """A callback registered through a handle receives the handle, can be removed with the same
    callable, and is never called once the lease has ended."""
    raw = BoundDriver()
    conn = _lend(raw)
    heard: list[tuple[Any, str]] = []

    def on(c: Any, payload: str) -> None:
        heard.append((c, payload))

    conn.add_listener("ch", on)
    raw.notify("one")
    assert heard == [(conn, "one")]
    conn._lg_conn = None
    raw.notify("two")
    assert heard == [(conn, "one")]
    conn2 = _lend(raw)
    conn2.add_listener("ch", on)
    conn2.remove_listener("ch", on)
    assert len(raw.callbacks) == 1  # only the first lease's, which the pool removes at release


def test_handle_passes_the_registered_isinstance_base() -> None:
    """A driver registered with a base (asyncpg's _ConnectionProxy) gets handles that are instances of it."""
    conn = _lend(BoundDriver())
    assert isinstance(conn, DriverBase)
    assert isinstance(conn, Handle)


def test_methods_are_looked_up_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method patched on the driver's class after the handle class was built is the one called
    (instrumentations patch classes after pools exist)."""
    conn = _lend(BoundDriver())
    assert conn.ping() == "pong"
    monkeypatch.setattr(BoundDriver, "ping", lambda self: "traced pong")
    assert conn.ping() == "traced pong"
