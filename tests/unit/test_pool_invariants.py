"""The pool's invariants under random workloads: sizes bounded at every step, FIFO hand-offs, every
lease ended exactly once, no connection lent to two callers, nothing left open after close."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from poolwarden import Unavailable
from poolwarden.handle import Handle
from poolwarden.pool import Pool
from poolwarden.testing import FakeConnector, FakeDisconnect, FakeQueryError, fake_pool


class Watch:
    """Instruments a pool: checks the bookkeeping after every state-machine call and records each lease."""

    #: the sync methods through which every change of sizes or waiters passes
    WRAPPED = ("_put_back", "_discard", "_grow", "_spawn_connect", "_connected", "_lend", "_lend_nowait",
               "_retire_idle", "_fail_waiters", "_maintain", "_connect_failed", "_ping_failed")

    def __init__(self, pool: Pool[Any]) -> None:
        self.pool = pool
        self.violations: list[str] = []
        self.handles: list[Handle] = []
        self.holder: dict[int, Handle] = {}  # id(record) -> the handle last lent on it
        self.checks = 0
        self.handoffs = 0
        for name in self.WRAPPED:
            if hasattr(pool, name):
                setattr(pool, name, self._wrap(name, getattr(pool, name)))

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        pool = self.pool

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            pending = [w.fut for w in pool._waiters if not w.fut.done()] if name == "_put_back" else []
            lifo = pool._waiters.mode == "lifo"
            result = original(*args, **kwargs)
            lifo = lifo or pool._waiters.mode == "lifo"  # a standing queue serves the newest first
            if name in ("_lend", "_lend_nowait") and result is not None:
                self._lent(result)
            if pending:
                granted = [f for f in pending if f.done() and not f.cancelled() and f.exception() is None]
                if granted:
                    self.handoffs += 1
                    if granted != [pending[0]] and not (lifo and granted == [pending[-1]]):
                        self.violations.append("a returned connection skipped the oldest waiter")
            self.check(name)
            return result

        return wrapper

    def _lent(self, handle: Handle) -> None:
        rec = handle._lg_rec
        previous = self.holder.get(id(rec))
        if previous is not None and previous._lg_conn is not None:
            self.violations.append("a connection was lent while an earlier lease on it was still open")
        self.handles.append(handle)
        self.holder[id(rec)] = handle

    def check(self, where: str) -> None:
        """The size and membership invariants, which must hold after any step."""
        p = self.pool
        self.checks += 1
        size = len(p._idle) + len(p._in_use) + p._connecting
        if size > p._max_size:
            self.violations.append(f"after {where}: size {size} > max_size {p._max_size}")
        if p._connecting < 0:
            self.violations.append(f"after {where}: connecting={p._connecting}")
        if len({id(r) for r in p._idle}) != len(p._idle):
            self.violations.append(f"after {where}: a record is twice in idle")
        if any(r in p._in_use for r in p._idle):
            self.violations.append(f"after {where}: a record is both idle and in use")

    def check_between_steps(self) -> None:
        """Also true whenever no task is mid-step: nobody waits while a connection sits idle."""
        self.check("a loop iteration")
        p = self.pool
        if p._state == "open" and not p._paused and p._idle and any(not w.fut.done() for w in p._waiters):
            self.violations.append("a caller waits while a connection is idle")

    async def poll(self) -> None:
        while True:
            self.check_between_steps()
            await asyncio.sleep(0)

    def assert_every_lease_ended_once(self) -> None:
        s = self.pool.stats()
        assert all(h._lg_conn is None for h in self.handles), "a lease never ended"
        assert s.acquired == len(self.handles)
        assert s.released == s.acquired, (s.released, s.acquired)


async def _quiesce(pool: Pool[Any], timeout: float = 1.5) -> None:
    deadline = time.monotonic() + timeout
    while pool._in_use or pool._connecting or pool._io or any(not w.fut.done() for w in pool._waiters):
        assert time.monotonic() < deadline, f"pool never went quiet: {pool!r}"
        await asyncio.sleep(0.002)


# -- a seeded random workload ---------------------------------------------------------------------


async def _workload(seed: int, duration: float) -> Watch:
    rng = random.Random(seed)
    connector = FakeConnector()
    pool = fake_pool(
        "db", connector,
        min_size=rng.choice([0, 1, 2]), max_size=rng.choice([1, 2, 3]) + 1,
        acquire_timeout=0.05, max_waiting=rng.choice([0, 6]),
        check_after_idle=rng.choice([None, 0, 0.003]),
        max_lifetime=rng.choice([None, 0.05]), keepalive_interval=rng.choice([None, 0.02]),
        failure_threshold=3, backoff_initial=0.001, backoff_max=0.004, probe_interval=0.005,
        connect_timeout=0.05, reset_timeout=0.05, drain_timeout=0.5,
    )
    watch = Watch(pool)
    poller = asyncio.create_task(watch.poll())
    await pool.open(wait=False)

    async def worker() -> None:
        while True:
            try:
                async with pool.acquire(timeout=rng.choice([0.005, 0.02, 0.1])) as conn:
                    roll = rng.random()
                    if roll < 0.3:
                        await conn.execute("BEGIN")
                    if roll < 0.05:
                        raise FakeDisconnect("the client saw the server go")
                    if roll < 0.1:
                        await conn.execute("FAIL")
                    await conn.execute("SELECT 1")
                    await asyncio.sleep(rng.choice([0, 0, 0.001, 0.003]))
            except (Unavailable, FakeDisconnect, FakeQueryError):
                await asyncio.sleep(0.001)

    workers = [asyncio.create_task(worker()) for _ in range(rng.choice([3, 6, 10]))]
    start = time.monotonic()
    # at least ``duration``, and on a slow machine long enough for a fair number of leases
    while (time.monotonic() < start + duration
           or (len(watch.handles) < 100 and time.monotonic() < start + 6 * duration)):
        await asyncio.sleep(rng.choice([0, 0.001, 0.004]))
        action = rng.random()
        if action < 0.3:
            victim = rng.randrange(len(workers))
            workers[victim].cancel()
            workers[victim] = asyncio.create_task(worker())
        elif action < 0.38:
            connector.fail_connects = rng.choice([1, 2, 4, -1, 0])
        elif action < 0.42:
            connector.kill_all()
        elif action < 0.5:
            connector.fail_pings = not connector.fail_pings
        elif action < 0.58:
            connector.connect_delay = rng.choice([0, 0.002, 0.01])
            connector.query_delay = rng.choice([0, 0, 0.001])
            connector.ping_delay = rng.choice([0, 0.001])
        elif action < 0.62:
            pool.expire()
        elif action < 0.66:
            pool.pause()
            await asyncio.sleep(0.002)
            pool.resume()
    connector.fail_connects = 0
    connector.fail_pings = False
    connector.connect_delay = connector.query_delay = connector.ping_delay = 0
    for task in workers:
        task.cancel()
    results = await asyncio.gather(*workers, return_exceptions=True)
    unexpected = [r for r in results if not isinstance(r, asyncio.CancelledError)]
    assert not unexpected, unexpected
    await _quiesce(pool)
    poller.cancel()
    await asyncio.gather(poller, return_exceptions=True)
    watch.check_between_steps()
    assert watch.violations == []
    watch.assert_every_lease_ended_once()
    s = pool.stats()
    assert s.size == s.idle + s.in_use + s.connecting
    assert (s.in_use, s.waiting) == (0, 0)
    assert await pool.close() == []
    assert connector.open_connections == []
    return watch


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_random_workload_keeps_every_invariant(seed: int) -> None:
    """Under a random mix of leases, failures, kills, cancellations and slow I/O, sizes stay bounded at
    every step, hand-offs are FIFO, and every lease ends exactly once."""
    watch = await _workload(seed, duration=0.5)
    assert watch.checks > 1000
    assert len(watch.handles) > 20


async def test_watch_catches_a_size_violation() -> None:
    """The instrumentation itself notices an over-full pool (so a green run means something)."""
    pool = fake_pool("db", FakeConnector(), min_size=0, max_size=1)
    watch = Watch(pool)
    await pool.open()
    await asyncio.sleep(0.01)
    pool._connecting += 1  # pretend a connect started beyond max_size
    pool._grow()
    pool._connecting -= 1
    assert any("size 2 > max_size 1" in v for v in watch.violations)
    await pool.close()


# -- a hypothesis state machine -------------------------------------------------------------------


class _User:
    """One caller: acquires, holds until told how to end its lease, then ends it."""

    _seq = itertools.count()

    def __init__(self, pool: Pool[Any], timeout: float) -> None:
        self.n = next(self._seq)
        self.pool = pool
        self.timeout = timeout
        self.state = "waiting"
        self.handle: Any = None
        self.go = asyncio.Event()
        self.mode = "clean"
        self.task = asyncio.get_running_loop().create_task(self.main())

    async def main(self) -> None:
        try:
            async with self.pool.acquire(timeout=self.timeout) as conn:
                self.handle = conn
                self.state = "holding"
                await self.go.wait()
                if self.mode == "released":  # ended from outside: the handle is dead now
                    return
                if self.mode == "tx":
                    await conn.execute("BEGIN")
                elif self.mode == "disconnect":
                    raise FakeDisconnect("dropped")
                elif self.mode == "query_error":
                    await conn.execute("FAIL")
                await conn.execute("SELECT 1")
        except (Unavailable, FakeDisconnect, FakeQueryError):
            pass
        finally:
            self.state = "done"


class PoolMachine(RuleBasedStateMachine):
    """Drives one pool through random acquires, releases, cancels and backend faults."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.connector = FakeConnector()
        self.users: list[_User] = []

    @initialize(min_size=st.integers(0, 2), extra=st.integers(0, 2),
                check_after_idle=st.sampled_from([None, 0, 0.002]))
    def open_pool(self, min_size: int, extra: int, check_after_idle: float | None) -> None:
        self.pool = fake_pool(
            "db", self.connector, min_size=min_size, max_size=max(min_size, 1) + extra,
            acquire_timeout=0.05, check_after_idle=check_after_idle,
            failure_threshold=2, backoff_initial=0.001, backoff_max=0.002, connect_timeout=0.05,
            reset_timeout=0.05, drain_timeout=0.2, max_lifetime=None, keepalive_interval=None,
        )
        self.watch = Watch(self.pool)
        self.loop.run_until_complete(self.pool.open(wait=False))

    def run(self, seconds: float = 0.0) -> None:
        async def step() -> None:
            for _ in range(5):
                await asyncio.sleep(0)
                self.watch.check_between_steps()
            if seconds:
                await asyncio.sleep(seconds)
                self.watch.check_between_steps()

        self.loop.run_until_complete(step())

    def _pick(self, index: int, state: str | None = None) -> _User | None:
        live = [u for u in self.users if u.state != "done" and (state is None or u.state == state)]
        return live[index % len(live)] if live else None

    @rule(timeout=st.sampled_from([0.005, 0.03, 1.0]))
    def acquire(self, timeout: float) -> None:
        async def start() -> None:
            self.users.append(_User(self.pool, timeout))

        self.loop.run_until_complete(start())
        self.run()

    @rule(index=st.integers(0, 10), mode=st.sampled_from(["clean", "tx", "disconnect", "query_error"]))
    def release(self, index: int, mode: str) -> None:
        user = self._pick(index, "holding")
        if user is not None:
            user.mode = mode
            user.go.set()
        self.run()

    @rule(index=st.integers(0, 10), victim=st.integers(0, 10))
    def release_and_cancel_a_waiter_at_once(self, index: int, victim: int) -> None:
        """A lease ends and, before any task runs, a waiter (maybe the one just granted) is cancelled."""
        holder = self._pick(index, "holding")
        waiter = self._pick(victim, "waiting")
        if holder is None or waiter is None:
            return

        async def race() -> None:
            await self.pool.release(holder.handle)  # the holder's own exit later is a no-op
            waiter.task.cancel()

        holder.mode = "released"
        self.loop.run_until_complete(race())
        holder.go.set()
        self.run()

    @rule(delay=st.sampled_from([0, 0.01]))
    def ping_speed(self, delay: float) -> None:
        self.connector.ping_delay = delay
        self.run()

    @rule(index=st.integers(0, 10))
    def cancel(self, index: int) -> None:
        user = self._pick(index)
        if user is not None:
            user.task.cancel()
        self.run()

    @rule(n=st.sampled_from([0, 1, 2, -1]))
    def fail_connects(self, n: int) -> None:
        self.connector.fail_connects = n
        self.run()

    @rule()
    def kill_all(self) -> None:
        self.connector.kill_all()
        self.run()

    @rule()
    def toggle_failing_pings(self) -> None:
        self.connector.fail_pings = not self.connector.fail_pings
        self.run()

    @rule()
    def expire(self) -> None:
        async def expire() -> None:  # a sync method of the pool, but called on its loop
            self.pool.expire()

        self.loop.run_until_complete(expire())
        self.run()

    @rule(seconds=st.sampled_from([0.001, 0.004, 0.02]))
    def wait(self, seconds: float) -> None:
        self.run(seconds)

    @invariant()
    def bookkeeping_holds(self) -> None:
        self.watch.check_between_steps()
        assert self.watch.violations == []

    @invariant()
    def no_connection_has_two_holders(self) -> None:
        raws = [u.handle._lg_conn for u in self.users
                if u.state == "holding" and u.handle is not None and u.handle._lg_conn is not None]
        assert len(raws) == len({id(c) for c in raws})
        in_use = {id(r.conn) for r in self.pool._in_use}
        assert all(id(c) in in_use for c in raws)

    def teardown(self) -> None:
        try:
            self.connector.fail_connects = 0
            self.connector.fail_pings = False
            self.connector.ping_delay = 0
            for user in self.users:
                user.go.set()

            async def finish() -> None:
                results = await asyncio.gather(*(u.task for u in self.users), return_exceptions=True)
                unexpected = [r for r in results if isinstance(r, BaseException)
                              and not isinstance(r, asyncio.CancelledError)]
                assert not unexpected, unexpected
                await _quiesce(self.pool)
                self.watch.check_between_steps()
                assert self.watch.violations == []
                self.watch.assert_every_lease_ended_once()
                assert await self.pool.close() == []
                assert self.connector.open_connections == []

            self.loop.run_until_complete(finish())
        finally:
            if hasattr(self, "pool"):
                self.loop.run_until_complete(self.pool.close())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

