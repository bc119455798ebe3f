"""The "ping.failed InternalClientError: cannot switch to state 15; another operation (2) is in
progress" of issue 8, found: not two operations racing on one connection in the pool, but asyncpg's
state after the server ended an idle session.

At a fast shutdown (or ``pg_terminate_backend``) PostgreSQL sends each session a FATAL ErrorResponse
(57P01) and closes the socket. asyncpg reads the unsolicited error while idle, moves its protocol to
"consume until ReadyForQuery" (state 2) and only learns of the EOF a loop turn later: in between
``is_closed()`` is still False and the next query fails with that InternalClientError (and aborts
the connection). The FATAL is fed to the protocol here, so the window stays open as long as the test
needs. What the pool guarantees: a connection due a check is never lent in that state (the ping
fails, it is discarded as a disconnect, the caller gets another within its acquire_timeout), and one
lent without a check fails its first query with an error classified as a disconnect, so it is
discarded and every older connection is checked before its next lend.
"""

from __future__ import annotations

import struct
from typing import Any

import asyncpg
import pytest

from poolwarden import Warden, unwrap

pytestmark = pytest.mark.postgres


def _server_fatal(conn: Any) -> None:
    """Deliver what PostgreSQL sends a session it terminates, without the EOF that follows it."""
    body = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0"
    unwrap(conn)._protocol.data_received(b"E" + struct.pack("!i", len(body) + 4) + body)


async def test_a_connection_due_a_check_is_never_lent_after_the_servers_fatal(postgres_url: str) -> None:
    """check_after_idle=0: the acquire gets a working connection; the dead one is discarded, its
    failed ping logged as a connection that was already dead."""
    db = Warden().pool("db", postgres_url, min_size=1, max_size=1, check_after_idle=0)
    async with db:
        async with db.acquire() as conn:
            victim = unwrap(conn)
        _server_fatal(victim)
        assert not victim.is_closed()  # the window: the driver does not know yet
        async with db.acquire(timeout=5) as conn:
            assert unwrap(conn) is not victim
            assert await conn.fetchval("SELECT 1") == 1
        assert db.stats().discarded == {"ping_failed": 1}


async def test_a_connection_lent_without_a_check_fails_as_a_disconnect(postgres_url: str) -> None:
    """No check due: the first query fails with asyncpg's InternalClientError, which the pool
    classifies as a disconnect: the connection is discarded and the next caller gets a good one."""
    db = Warden().pool("db", postgres_url, min_size=1, max_size=1, check_after_idle=None)
    async with db:
        async with db.acquire() as conn:
            victim = unwrap(conn)
        _server_fatal(victim)
        with pytest.raises(asyncpg.exceptions.InternalClientError, match="another operation"):
            async with db.acquire() as conn:
                await conn.fetchval("SELECT 1")
        assert db.stats().discarded == {"disconnect": 1}
        async with db.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT 1") == 1
