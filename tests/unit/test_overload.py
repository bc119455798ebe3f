"""The pool under overload, on the fake connector: a bounded queue by default, adaptive LIFO and
shedding, and tens of thousands of waiters timing out or leaving without stalling the event loop."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from poolwarden import PoolOverloaded, PoolTimeout
from poolwarden.pool import Pool
from poolwarden.testing import FakeConnector, fake_pool
from poolwarden.waitqueue import QUEUE_PER_CONNECTION

MakePool = Callable[..., Pool[Any]]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[Pool[Any]] = []

    def make(**settings: Any) -> Pool[Any]:
        settings.setdefault("drain_timeout", 0.5)
        pool = fake_pool("db", FakeConnector(), **settings)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


class LoopLag:
    """Samples the event loop every millisecond. ``worst`` is the most CPU time the loop's thread
    spent between two samples (work that kept the loop from running anything else); ``worst_wall``
    the longest wall-clock gap, which also counts time the process was not scheduled at all (on a
    shared 2-core machine, tens of milliseconds that are no fault of the code under test)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.worst_wall = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.thread_time() - cpu)
            self.worst_wall = max(self.worst_wall, time.perf_counter() - wall - 0.001)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def queue_up(pool: Pool[Any], n: int, deadline: float | None = None) -> list[asyncio.Task[Any]]:
    """``n`` acquires queued on ``pool``, started a few hundred per loop turn; with ``deadline``,
    their timeouts are chosen so that they all expire at that same monotonic instant."""
    tasks: list[asyncio.Task[Any]] = []
    while len(tasks) < n:
        for _ in range(min(500, n - len(tasks))):
            timeout = None if deadline is None else deadline - time.monotonic()
            tasks.append(asyncio.create_task(pool._acquire(timeout)))
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    return tasks


# -- bounded by default -------------------------------------------------------------------------


async def test_the_queue_is_bounded_by_default_from_max_size(make_pool: MakePool) -> None:
    """With max_waiting unset the bound is QUEUE_PER_CONNECTION x max_size, refused at once past it."""
    pool = make_pool(min_size=1, max_size=2, acquire_timeout=5, adaptive_queue=False)
    await pool.open()
    held = [await pool.acquire(), await pool.acquire()]
    bound = QUEUE_PER_CONNECTION * 2
    queued = await queue_up(pool, bound)
    assert pool.stats().waiting == bound
    assert pool.stats().queue_bound == bound
    start = time.monotonic()
    with pytest.raises(PoolOverloaded, match=f"max_waiting={bound}") as info:
        await pool.acquire()
    assert time.monotonic() - start < 0.05
    assert info.value.retry_after > 0
    assert pool.stats().shed["full"] == 1
    for handle in held:
        await pool.release(handle)
    for task in queued:
        await pool.release(await task)


async def test_max_waiting_zero_is_unbounded(make_pool: MakePool) -> None:
    """max_waiting=0 keeps the old meaning: no bound at all."""
    pool = make_pool(min_size=1, max_size=1, max_waiting=0, acquire_timeout=5)
    await pool.open()
    held = await pool.acquire()
    queued = await queue_up(pool, QUEUE_PER_CONNECTION * 3)
    assert pool.stats().waiting == QUEUE_PER_CONNECTION * 3
    assert pool.stats().queue_bound == 0
    await pool.release(held)
    for task in queued:
        await pool.release(await task)


async def test_retry_after_comes_from_the_measured_drain_rate(make_pool: MakePool) -> None:
    """A refusal's Retry-After is the time the queue ahead takes to drain at the rate measured."""
    pool = make_pool(min_size=1, max_size=1, max_waiting=20, acquire_timeout=30, adaptive_queue=False)
    await pool.open()
    held = await pool.acquire()
    queued = await queue_up(pool, 20)
    for _ in range(20):  # serve one every 50 ms: a drain rate of about 20 a second
        await asyncio.sleep(0.05)
        await pool.release(held)
        held = await queued.pop(0)
        queued.append(asyncio.create_task(pool._acquire(None)))
        await asyncio.sleep(0)
    with pytest.raises(PoolOverloaded) as info:
        await pool.acquire()
    assert 0.5 <= info.value.retry_after <= 2.0  # 21 ahead at ~20/s: about a second
    await pool.release(held)
    for task in queued:
        await pool.release(await task)


# -- adaptive LIFO --------------------------------------------------------------------------------


async def test_standing_queue_serves_newest_first_then_fifo_again(make_pool: MakePool) -> None:
    """Once the queue has stood above target and grown over a whole interval after the one that
    formed it, the newest waiter is served first and an old one whose deadline can still be met
    waits on (it is served, not shed); after it drains, arrival order again."""
    pool = make_pool(min_size=1, max_size=1, acquire_timeout=5, queue_target=0.001, queue_interval=0.2)
    await pool.open()
    held = await pool.acquire()
    (stale,) = await queue_up(pool, 1)
    await asyncio.sleep(0.25)  # past the interval that formed the queue: its trend is judged
    (grower,) = await queue_up(pool, 1)  # callers keep coming while nobody is served
    await asyncio.sleep(0.08)
    middle = await queue_up(pool, 2)
    await asyncio.sleep(0.08)
    (newest,) = await queue_up(pool, 1)  # the queue has stood and grown for an interval: LIFO
    assert pool.stats().queue_mode == "lifo"
    await pool.release(held)
    await pool.release(await asyncio.wait_for(newest, 1))  # newest first
    assert not stale.done()  # 410 ms in the queue, but its 5 s deadline can be met: not shed
    assert not middle[0].done()
    await pool.release(await middle[1])
    await pool.release(await middle[0])
    assert not grower.done()
    await pool.release(await grower)
    await pool.release(await stale)
    assert pool.stats().queue_mode == "fifo"
    assert pool.stats().shed["overload"] == 0
    # drained: first come, first served again
    held = await pool.acquire()
    order: list[int] = []

    async def user(i: int) -> None:
        async with pool.acquire():
            order.append(i)

    users = []
    for i in range(3):
        users.append(asyncio.create_task(user(i)))
        await asyncio.sleep(0)
    await pool.release(held)
    await asyncio.gather(*users)
    assert order == [0, 1, 2]


async def test_full_standing_queue_sheds_the_oldest_for_a_newcomer(make_pool: MakePool) -> None:
    """At the bound while the queue stands, the oldest waiter gets PoolOverloaded, not the newcomer."""
    pool = make_pool(min_size=1, max_size=1, max_waiting=4, acquire_timeout=5, queue_target=0.001,
                     queue_interval=0.1)
    await pool.open()
    held = await pool.acquire()
    (oldest,) = await queue_up(pool, 1)
    await asyncio.sleep(0.15)
    seconds = await queue_up(pool, 3)
    await asyncio.sleep(0.06)
    newcomer = asyncio.create_task(pool._acquire(None))  # full, and the queue stood and grew
    with pytest.raises(PoolOverloaded, match="shed after waiting"):
        await oldest
    assert pool.stats().shed == {"full": 0, "overload": 1, "timeout": 0}
    await pool.release(held)
    await pool.release(await newcomer)
    for task in reversed(seconds):  # newest first
        await pool.release(await task)


async def test_adaptive_off_keeps_fifo_under_a_standing_queue(make_pool: MakePool) -> None:
    """adaptive_queue=False: the oldest waiter is served first however long the queue stands."""
    pool = make_pool(min_size=1, max_size=1, acquire_timeout=5, adaptive_queue=False,
                     queue_target=0.001, queue_interval=0.01)
    await pool.open()
    held = await pool.acquire()
    old = await queue_up(pool, 2)
    await asyncio.sleep(0.03)
    new = await queue_up(pool, 1)
    assert pool.stats().queue_mode == "fifo"
    await pool.release(held)
    for task in (*old, *new):  # oldest first
        await pool.release(await asyncio.wait_for(task, 1))


# -- O(log n) under load ------------------------------------------------------------------------


@pytest.mark.slow
async def test_fifty_thousand_waiters_time_out_together_without_stalling_the_loop(
        make_pool: MakePool) -> None:
    """50,000 acquires expiring at the same instant are failed a batch per loop turn: no single
    stall of the event loop over 50 ms, and every caller gets its PoolTimeout."""
    pool = make_pool(min_size=1, max_size=1, max_waiting=0, acquire_timeout=30, adaptive_queue=False)
    await pool.open()
    held = await pool.acquire()
    n = 50_000
    gc.collect()
    gc.disable()  # a full collection over 50,000 tasks is a stall of the collector, not of the pool
    try:
        deadline = time.monotonic() + 3.0
        tasks = await queue_up(pool, n, deadline)
        assert pool.stats().waiting == n
        await asyncio.sleep(max(0.0, deadline - time.monotonic() - 0.2))
        with LoopLag() as lag:
            results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        gc.enable()
    assert all(isinstance(r, PoolTimeout) for r in results)
    assert pool.stats().waiting == 0
    assert pool.stats().shed["timeout"] == n
    assert lag.worst < 0.05, f"the loop stalled {lag.worst * 1000:.1f} ms (wall {lag.worst_wall * 1000:.1f})"
    await pool.release(held)


@pytest.mark.slow
async def test_cancelling_a_waiter_costs_the_same_at_50000_as_at_100(make_pool: MakePool) -> None:
    """Leaving the queue is O(1): cancelling 200 waiters in the middle of 50,000 costs about what
    it costs in a queue of 300 (it used to be a scan of the queue each)."""

    async def cost(queued: int) -> float:
        pool = make_pool(min_size=1, max_size=1, max_waiting=0, acquire_timeout=60,
                         adaptive_queue=False)
        await pool.open()
        held = await pool.acquire()  # kept: a dropped handle is recovered and served to a waiter
        tasks = await queue_up(pool, queued)
        victims = tasks[queued // 2 - 100: queued // 2 + 100]
        start = time.perf_counter()
        for task in victims:
            task.cancel()
        await asyncio.gather(*victims, return_exceptions=True)
        spent = time.perf_counter() - start
        assert pool.stats().waiting == queued - 200
        assert held is not None
        await pool.close()  # the held connection is abandoned at once: drain_timeout is 0
        await asyncio.gather(*tasks, return_exceptions=True)
        return spent

    small = min([await cost(300) for _ in range(3)])
    large = await cost(50_000)
    assert large < max(5 * small, 0.01), f"{large * 1000:.2f} ms at 50,000 vs {small * 1000:.2f} ms at 300"


async def test_memory_per_waiter_is_small(make_pool: MakePool) -> None:
    """What the pool allocates for a queued caller (its slow-path frame, waiter, future, deadline,
    queue and heap slots) stays under 1,000 bytes (about 700 measured alone, up to 830 after other tests
    have shaped the allocator); the caller's own task and frames are not counted."""
    pool = make_pool(min_size=1, max_size=1, max_waiting=0, acquire_timeout=60)
    await pool.open()
    held = await pool.acquire()
    warm = await queue_up(pool, 100)  # the deque and heap have grown their first blocks
    tracemalloc.start(8)
    try:
        before = tracemalloc.take_snapshot()
        tasks = await queue_up(pool, 2000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "traceback")
                if any("poolwarden" in frame.filename and "tests" not in frame.filename
                       for frame in stat.traceback))
    per_waiter = grown / 2000
    assert per_waiter < 1000, f"{per_waiter:.0f} bytes per waiter"
    await pool.release(held)
    await pool.close()
    await asyncio.gather(*warm, *tasks, return_exceptions=True)


# -- visible ----------------------------------------------------------------------------------------


async def test_overload_shows_in_stats_and_prometheus(make_pool: MakePool) -> None:
    """Queue mode, sheds by reason and queue time reach stats() and the Prometheus exposition."""
    import prometheus_client

    from poolwarden.observe.prometheus import collector

    pool = make_pool(min_size=1, max_size=1, max_waiting=1, acquire_timeout=0.05, adaptive_queue=False)
    await pool.open()
    held = await pool.acquire()
    (waiter,) = await queue_up(pool, 1)
    with pytest.raises(PoolOverloaded):
        await pool.acquire()
    with pytest.raises(PoolTimeout):
        await waiter
    await pool.release(held)
    s = pool.stats()
    assert (s.queue_mode, s.queue_bound) == ("fifo", 1)
    assert dict(s.shed) == {"full": 1, "overload": 0, "timeout": 1}
    assert s.to_dict()["queue_time"] is not None

    class Source:
        def stats(self) -> dict[str, Any]:
            return {"db": pool.stats()}

        def add_listener(self, listener: Any) -> None:
            pass

    registry = prometheus_client.CollectorRegistry()
    registry.register(collector(Source()))
    text = prometheus_client.generate_latest(registry).decode()
    assert 'poolwarden_queue_shed_total{reason="full",resource="db"} 1.0' in text
    assert 'poolwarden_queue_shed_total{reason="timeout",resource="db"} 1.0' in text
    assert 'poolwarden_queue_lifo{resource="db"} 0.0' in text
    assert 'poolwarden_queue_time_seconds_count{resource="db"}' in text
