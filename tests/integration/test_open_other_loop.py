"""A Warden open on one event loop refuses to be opened again from another (a second TestClient or
lifespan of the same app): its pools' futures belong to the first loop, so sharing them failed with
untyped RuntimeErrors, and the second run's close drained the pools under the first one's requests."""

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from poolwarden import PoolwardenError, Warden

pytestmark = pytest.mark.postgres


@pytest.fixture
def other_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _on(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
    return future.result(10)


def test_second_open_from_another_loop_is_refused(postgres_url: str,
                                                  other_loop: asyncio.AbstractEventLoop) -> None:
    warden = Warden(environ={})
    db = warden.pool("db", postgres_url, min_size=1, max_size=2)

    async def select_one() -> int:
        async with db.acquire() as conn:
            return int(await conn.fetchval("SELECT 1"))

    _on(other_loop, warden.open())
    try:
        with pytest.raises(PoolwardenError, match="already open on another event loop") as info:
            asyncio.run(warden.open())
        assert info.value.resource == "db"
        assert db.state == "open"  # the first run goes on, untouched
        assert _on(other_loop, select_one()) == 1
    finally:
        _on(other_loop, warden.close())

    async def reopen() -> int:
        async with warden:  # closed, it opens on any loop again
            return await select_one()

    assert asyncio.run(reopen()) == 1
