"""A shared client has the pool's lifecycle and circuit (one implementation, lifecycle.py): it opens
again after a close, a cancelled open or close leaves it closed with nothing running, concurrent closes
share one outcome, and a half-open circuit probes every probe_interval (issue 8.1, issue 9, issue 7.3).

Connections are counted on the real Redis by client name (``CLIENT LIST``); outages go through the
TCP fault proxy, never by stopping the shared server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from poolwarden import BackendDown, PoolClosed, Warden
from tests.support.cancel import cancel_after
from tests.support.faultproxy import FaultProxy, fault_proxy

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_proxy(redis_url: str) -> Any:
    parts = urlsplit(redis_url)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        yield proxy


async def _connections(redis_url: str, name: str) -> int:
    admin = aioredis.Redis.from_url(redis_url)
    try:
        clients = await admin.client_list()
        return sum(1 for c in clients if c.get("name") == name)
    finally:
        await admin.aclose()


async def _until_no_connections(redis_url: str, name: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while (n := await _connections(redis_url, name)) != 0:
        assert time.monotonic() < deadline, f"{n} connection(s) named {name} still open"
        await asyncio.sleep(0.05)


async def test_a_client_serves_twenty_lifespans_in_a_row(redis_url: str) -> None:
    """The same client object opened by 20 lifespans answers in each and leaves no connection."""
    name = f"pw-{uuid.uuid4().hex[:8]}"
    warden = Warden()
    cache = warden.client("cache", redis_url, options={"client_name": name})
    for _ in range(20):
        async with warden.lifespan(None):
            assert await cache.get().ping()
        assert cache.state == "closed"
        with pytest.raises(PoolClosed):
            cache.get()
    await _until_no_connections(redis_url, name)


async def test_cancelled_open_and_close_leave_a_closed_client(
    redis_proxy: FaultProxy, redis_url: str,
) -> None:
    """open() cancelled while the backend refuses, and close() cancelled at each loop turn, leave the
    client closed with no watcher pinging: when Redis answers again nobody connects to it."""
    name = f"pw-{uuid.uuid4().hex[:8]}"
    url = redis_proxy.url_for(redis_url)
    redis_proxy.refuse(True)
    clients = []
    for turns in range(1, 8):
        cache = Warden().client("cache", url, options={"client_name": name}, startup_timeout=30,
                                backoff_initial=0.01, backoff_max=0.05, probe_interval=0.05)
        clients.append(cache)
        assert await cancel_after(turns, cache.open())
        assert cache.state == "closed", turns
    redis_proxy.refuse(False)
    for turns in range(1, 8):
        cache = Warden().client("cache", url, options={"client_name": name})
        await cache.open()
        await cancel_after(turns, cache.close())
        assert cache.state == "closed", turns
    await asyncio.sleep(0.3)
    await _until_no_connections(redis_url, name)
    await clients[0].open()  # and a client whose open was cancelled opens again
    assert clients[0].ready
    await clients[0].close()


async def test_concurrent_client_closes_share_one_outcome(redis_url: str) -> None:
    """Two close() calls at once both return after the one close, with the client closed."""
    cache = Warden().client("cache", redis_url)
    await cache.open()
    results = await asyncio.gather(cache.close(), cache.close())
    assert list(results) == [[], []]
    assert cache.state == "closed"


async def test_client_circuit_is_half_open_and_recovers_within_half_a_second(
    redis_proxy: FaultProxy, redis_url: str
) -> None:
    """While Redis refuses, callers get BackendDown with an honest retry_after (about one probe
    interval, never several seconds), and within 0.5 s of Redis accepting again it serves."""
    cache = Warden().client("cache", redis_proxy.url_for(redis_url), failure_threshold=2,
                            health_interval=0.05, connect_timeout=1, backoff_initial=0.01,
                            backoff_max=0.05)
    async with cache:
        redis_proxy.refuse(True)
        await redis_proxy.cut()
        deadline = time.monotonic() + 5
        while cache.stats().circuit == "closed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(3)  # a long outage must not stretch the probe interval
        with pytest.raises(BackendDown) as down:
            cache.get()
        assert 0 < down.value.retry_after <= 0.3
        assert cache.stats().circuit in ("open", "half_open")
        redis_proxy.refuse(False)
        back = time.monotonic()
        while not cache.ready:
            assert time.monotonic() - back < 0.5, "not serving within 0.5 s of Redis accepting"
            await asyncio.sleep(0.005)
        assert await cache.get().ping()
