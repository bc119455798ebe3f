"""RollbackLease on the fake connector: one connection per test in a transaction, savepoints, and an
end that comes before the pool's drain."""

from __future__ import annotations

import time

import pytest

from poolwarden import LeaseEnded, Warden
from poolwarden.testing import FakeConnection, FakeConnector, RollbackLease


def _db(connector: FakeConnector) -> Warden:
    warden = Warden(environ={})
    warden.pool("db", connector=connector, check_after_idle=None, drain_timeout=5)
    return warden


async def test_one_connection_in_a_transaction_until_the_end() -> None:
    """Every call gives the same connection, inside a transaction; end() rolls it back and returns it."""
    connector = FakeConnector()
    warden = _db(connector)
    async with warden:
        lease: RollbackLease[FakeConnection] = RollbackLease(warden["db"])
        first = await lease.connection()
        assert await lease.connection() is first
        assert first.in_tx
        assert warden["db"].stats().in_use == 1
        await lease.end()
        await lease.end()  # idempotent
        assert warden["db"].stats().in_use == 0
        assert not connector.connections[0].in_tx


async def test_a_savepoint_is_released_or_rolled_back_to() -> None:
    """A savepoint is released on success and rolled back to on an error, inside the outer transaction."""
    connector = FakeConnector()
    warden = _db(connector)
    async with warden, RollbackLease(warden["db"]) as conn:
        lease = RollbackLease(warden["db"])
        async with lease.savepoint() as inner:
            assert inner is not conn  # a second lease is a second connection
        with pytest.raises(KeyError):
            async with lease.savepoint():
                raise KeyError("x")
        log = connector.connections[-1].log
        assert log[-6:] == ["BEGIN", "SAVEPOINT poolwarden_1", "RELEASE SAVEPOINT poolwarden_1",
                            "SAVEPOINT poolwarden_2", "ROLLBACK TO SAVEPOINT poolwarden_2",
                            "RELEASE SAVEPOINT poolwarden_2"]
        assert connector.connections[-1].in_tx
        await lease.end()
        assert log[-1] == "ROLLBACK"


async def test_closing_the_pool_ends_a_held_lease_first() -> None:
    """A lease still held when the pool closes (a TestClient's lifespan ending) is rolled back and
    returned before the drain, so close does not wait for drain_timeout."""
    connector = FakeConnector()
    warden = _db(connector)
    await warden.open()
    lease = RollbackLease(warden["db"])
    conn = await lease.connection()
    started = time.monotonic()
    assert await warden.close() == {}
    assert time.monotonic() - started < 1
    assert not lease.held
    assert connector.connections[0].log[-1] == "ROLLBACK"
    with pytest.raises(LeaseEnded):
        await conn.execute("SELECT 1")
