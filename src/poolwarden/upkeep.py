"""The pool's state and upkeep: sizing, the sync state machine, and the background I/O.

Every change of sizing or waiter bookkeeping happens in plain sync methods (``_put_back``,
``_discard``, ``_grow``...) that never await, so no other task can observe a half-made change; the
I/O they ask for (connect, probe, keepalive ping, close) runs in tasks of its own. :class:`Pool`
builds acquire and release on top of this.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar, cast

from poolwarden.config import PoolConfig, Secrets, public_error
from poolwarden.connectors.base import Connector, ServerInfo
from poolwarden.errors import PoolwardenError
from poolwarden.lease import _Record
from poolwarden.lifecycle import CLOSED, DRAINING, NEW, OPEN, Lifecycle
from poolwarden.observe.events import emit
from poolwarden.observe.hooks import PoolListener
from poolwarden.observe.leaks import LeaseInfo, format_stack
from poolwarden.observe.stats import Histogram, HistogramSnapshot
from poolwarden.retry import Backoff
from poolwarden.waitqueue import WaitQueue, fail_in_batches

__all__ = ["CLOSED", "DRAINING", "NEW", "OPEN", "PoolUpkeep"]

C = TypeVar("C")

_monotonic = time.monotonic
_log = logging.getLogger("poolwarden")


class PoolUpkeep(Lifecycle, Generic[C]):
    """The state of a pool and everything that keeps it sized and healthy (see :class:`Pool`)."""

    def __init__(self, name: str, connector: Connector[C], config: PoolConfig | None = None, *,
                 secrets: Secrets | None = None) -> None:
        cfg = config or PoolConfig()
        self.name = name
        self.config = cfg
        self.connector = connector
        self._secrets = secrets or Secrets(cfg.secrets)
        self._init_lifecycle(cfg)
        self._run = 0  # one per open(): tasks of an earlier run must not touch this one's counts
        self._paused = False
        self._blocked = True  # not open, or paused: the hot path steps aside
        self._min_size = cfg.min_size
        self._max_size = cfg.max_size
        self._idle: deque[_Record[C]] = deque()
        self._in_use: set[_Record[C]] = set()
        # arrival order plus a deadline heap: every queue operation is O(log n) at most
        self._waiters: WaitQueue[_Record[C]] = WaitQueue(
            adaptive=cfg.adaptive_queue, target=cfg.queue_target, interval=cfg.queue_interval)
        # One timer per pool fails the waiters whose deadline passed (not one timer per acquire:
        # asyncio.timeout costs microseconds per call, more than the whole hot path).
        self._reaper: asyncio.TimerHandle | None = None
        self._reaper_at = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting = 0
        self._generation = 0
        self._invalid_before = -1.0  # connections not verified since this are checked before lending
        self._check_after = cfg.check_after_idle if cfg.check_after_idle is not None else float("inf")
        self._leak_on = cfg.leak_threshold is not None
        self._full_reset = cfg.reset == "full"
        self._is_closed = connector.is_closed
        self._in_transaction = connector.in_transaction
        self._shrinking = False  # set by resize() until the pool is back within max_size
        self._fast_lends = 0
        # leak stacks, listeners or DEBUG logging: the lend/return hooks must run. Re-read by the
        # housekeeper, so DEBUG switched on at runtime shows lend/return events within one tick.
        self._observed = False
        self._backoff = Backoff(cfg.backoff_initial, cfg.backoff_max)
        self._bg: set[asyncio.Task[Any]] = set()  # cancelled at close
        self._io: set[asyncio.Task[Any]] = set()  # resets and closes: awaited at close
        self._closes: dict[asyncio.Task[Any], C] = {}  # graceful closes in flight: terminated on abort
        self._drained = asyncio.Event()
        self._ever_connected = False
        self._listeners: list[PoolListener] = []
        #: read from the server once at start-up by Warden (None until then, or for SQLite)
        self.server_info: ServerInfo | None = None
        # counters
        self._acquired = 0  # slow-path lends; hot-path ones are counted in _fast_lends
        self._timeouts = 0
        self._overloaded = 0
        self._pings_failed = 0
        self._discarded: Counter[str] = Counter()
        self._wait_hist = Histogram()
        self._use_hist = Histogram()
        self._connect_hist = Histogram()
        self._last_check: float | None = None
        self._last_check_seconds: float | None = None

    def _touch(self, rec: _Record[C], now: float) -> None:
        """Known good at ``now``: no check needed until check_after_idle has passed again."""
        rec.checked_at = now
        fresh = now + self._check_after
        rec.fresh_until = fresh if fresh < rec.expires_at else rec.expires_at

    def _refresh_observed(self) -> None:
        self._observed = bool(self._leak_on or self._listeners or _log.isEnabledFor(logging.DEBUG))

    def _handle_lost(self, rec: _Record[C]) -> None:
        """Called from a handle's finaliser: recover the slot on the pool's loop, not inside the GC.

        The collector may run on any thread (``gc.collect()`` in ``asyncio.to_thread``), so the
        recovery is handed over with ``call_soon_threadsafe``, never through the current thread's loop.
        """
        loop = self._loop
        if self._state in (NEW, CLOSED) or loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._recover_lost, rec)
        except RuntimeError:  # the loop closed between the check and the call
            pass

    def _recover_lost(self, rec: _Record[C]) -> None:
        if rec not in self._in_use:
            return
        now = _monotonic()
        info = LeaseInfo(self.name, now - rec.lease_start, rec.route, format_stack(rec.stack))
        emit("leak.lost", self.name, "a lent connection was garbage collected without release; "
             + info.describe(), held=info.held_seconds, route=info.route)
        self._discard(rec, "lost")

    # -- the state machine (sync: never awaits) --------------------------------------------------

    def _size(self) -> int:
        return len(self._idle) + len(self._in_use) + self._connecting

    def _put_back(self, rec: _Record[C]) -> None:
        """A free connection goes to the oldest live waiter, else to the idle stack."""
        if self._state is not OPEN:
            self._in_use.discard(rec)
            self._close_conn(rec.conn, graceful=True)
            if not self._in_use:
                self._drained.set()
            return
        if self._shrinking:
            if self._size() + (rec not in self._in_use) > self._max_size:
                self._discard(rec, "resized", graceful=True)  # resize() shrank the pool while it was out
                return
            self._shrinking = False
        if not self._paused and self._waiters:
            waiter = self._waiters.take(_monotonic())
            if waiter is not None:
                self._in_use.add(rec)
                waiter.fut.set_result(rec)
                if self._waiters.mode == "lifo":
                    self._standing()
                return
        self._in_use.discard(rec)
        self._idle.append(rec)

    def _discard(self, rec: _Record[C], reason: str, *, graceful: bool = False) -> None:
        self._in_use.discard(rec)
        self._discarded[reason] += 1
        if reason in ("lifetime", "idle", "expired", "resized"):
            emit("connection.recycled", self.name, f"reason={reason}", reason=reason)
        else:
            emit("connection.discarded", self.name, f"reason={reason}", reason=reason)
        self._close_conn(rec.conn, graceful=graceful)
        if self._state is OPEN:
            self._grow()
        elif not self._in_use:
            self._drained.set()

    def _grow(self) -> None:
        """Start the connects that demand (waiters) and ``min_size`` call for, within ``max_size``."""
        if self._state is not OPEN or self._breaker.is_open:
            return
        size = self._size()
        if size >= self._max_size:
            return
        want = max(self._min_size - size, self._waiters.live - self._connecting)
        for _ in range(min(want, self._max_size - size)):
            self._spawn_connect()

    def _standing(self) -> None:
        """The queue stands (adaptive LIFO): the pool makes sure its reaper will shed in time."""

    def _fail_waiters(self, error: PoolwardenError) -> None:
        """Fail every queued caller, a batch per loop iteration (each one wakes a task)."""
        waiters = self._waiters.take_all(_monotonic())
        if waiters:
            fail_in_batches(self._loop or asyncio.get_running_loop(), waiters, error)

    def _retire_idle(self) -> None:
        for rec in list(self._idle):
            if rec.generation != self._generation:
                self._idle.remove(rec)
                self._discard(rec, "expired", graceful=True)

    # -- background I/O --------------------------------------------------------------------------

    def _spawn_bg(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = (self._loop or asyncio.get_running_loop()).create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    def _spawn_connect(self) -> None:
        self._connecting += 1  # counted before the task runs, so _grow never overshoots
        self._spawn_bg(self._connect_loop(self._run))

    async def _connect_loop(self, run: int) -> None:
        attempt = 0
        conn: C | None = None
        start = _monotonic()
        try:
            while True:
                if self._state is not OPEN or self._breaker.is_open or run != self._run:
                    return
                start = _monotonic()
                try:
                    conn = await self.connector.connect(self.config.connect_timeout)
                except Exception as exc:
                    self._connect_failed(exc)
                    if self._breaker.is_open or not self._still_wanted():
                        return
                    await asyncio.sleep(self._backoff.delay(attempt))
                    attempt += 1
                    continue
                break
        finally:
            if run == self._run:
                self._connecting -= 1
        self._connected(conn, start, run)

    def _still_wanted(self) -> bool:
        # this task's own slot is counted in _connecting, hence the -1
        return bool(self._waiters) or self._size() - 1 < max(self._min_size, 0 if self._ever_connected else 1)

    def _connected(self, conn: C, start: float, run: int) -> None:
        if self._state is not OPEN or run != self._run:
            self.connector.terminate(conn)  # closed (or closed and re-opened) while it connected
            return
        now = _monotonic()
        self._connect_hist.observe(now - start)
        for listener in self._listeners:
            listener.on_connected(self.name, now - start)
        self._mark_checked(now, now - start)
        self._backend_ok()
        self._ever_connected = True
        cfg = self.config
        lifetime = float("inf") if cfg.max_lifetime is None else cfg.max_lifetime * random.uniform(0.9, 1.1)
        keepalive = (float("inf") if cfg.keepalive_interval is None
                     else cfg.keepalive_interval * random.uniform(0.8, 1.0))
        rec = _Record(self, conn, now, now + lifetime, self._generation, keepalive, self._check_after)
        emit("connection.opened", self.name, f"in {now - start:.3f}s", seconds=now - start)
        self._put_back(rec)
        if not self._settled.is_set() and len(self._idle) + len(self._in_use) >= max(self._min_size, 1):
            self._settled.set()
            emit("pool.ready", self.name)

    def _connect_failed(self, exc: Exception) -> None:
        error = self._describe(exc)
        emit("connection.failed", self.name, self._secrets.describe(exc), error=error)
        self._backend_failed(error)

    def _circuit_opened(self) -> None:
        self._refused["backend_down"] += self._waiters.live
        self._fail_waiters(self._down_error(count=False))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _probe_once(self) -> None:
        """One connect while the circuit is open; its connection is lent at once on success."""
        run = self._run
        if self._size() >= self._max_size:
            self._breaker.record_failure(_monotonic())  # no room to probe now: next interval
            return
        self._connecting += 1
        start = _monotonic()
        try:
            conn = await self.connector.connect(self.config.connect_timeout)
        except Exception as exc:
            self._connect_failed(exc)
            return
        finally:
            if run == self._run:
                self._connecting -= 1
        self._connected(conn, start, run)
        self._grow()

    def _dead(self, rec: _Record[C], now: float) -> None:
        """A connection found dead: discard it, and check every older one before it is lent."""
        self._invalid_before = now
        self._discard(rec, "disconnect")

    def _ping_failed(self, rec: _Record[C], exc: Exception) -> None:
        self._pings_failed += 1
        self._last_error = self._describe(exc)
        self._invalid_before = _monotonic()  # older connections likely share its fate: check them
        # A disconnect here is a connection that died while idle, e.g. asyncpg's "cannot switch to
        # state N; another operation (2) is in progress": the server's FATAL (shutdown,
        # pg_terminate_backend) was read, its EOF not yet, so is_closed() still said open.
        dead = self.connector.is_disconnect(exc)
        emit("ping.failed", self.name, self._secrets.describe(exc)
             + (" (the connection was already dead)" if dead else ""), error=self._last_error)
        self._discard(rec, "ping_failed")

    def _close_conn(self, conn: C, *, graceful: bool) -> None:
        if not graceful:
            self.connector.terminate(conn)
            return
        if self._loop is None or self._loop.is_closed():
            self.connector.terminate(conn)
            return
        task = self._loop.create_task(self._close_gracefully(conn))
        self._io.add(task)
        self._closes[task] = conn
        task.add_done_callback(self._closed_one)

    def _closed_one(self, task: asyncio.Task[Any]) -> None:
        self._io.discard(task)
        self._closes.pop(task, None)

    async def _close_gracefully(self, conn: C) -> None:
        try:
            async with asyncio.timeout(self.config.reset_timeout):
                await self.connector.close(conn)
        except BaseException:
            self.connector.terminate(conn)

    def _housekeeping_interval(self) -> float | None:
        cfg = self.config
        candidates = [v / 2 for v in (cfg.keepalive_interval, cfg.max_idle, cfg.leak_threshold)
                      if v is not None]
        if cfg.max_lifetime is not None:
            candidates.append(cfg.max_lifetime / 10)
        candidates.append(5.0)  # min_size is restored at least this often
        return max(0.01, min(candidates))

    async def _housekeeper(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            self._maintain(_monotonic())

    def _maintain(self, now: float) -> None:
        """Retire expired and surplus idle connections, start keepalives, report leaks, refill."""
        cfg = self.config
        for rec in list(self._idle):
            if rec.generation != self._generation or now >= rec.expires_at:
                self._idle.remove(rec)
                self._discard(rec, "expired" if rec.generation != self._generation else "lifetime",
                              graceful=True)
        if cfg.max_idle is not None:
            excess = self._size() - self._min_size
            for rec in list(self._idle):  # oldest first: the stack's bottom has idled longest
                if excess <= 0:
                    break
                if now - rec.last_used > cfg.max_idle:
                    self._idle.remove(rec)
                    self._discard(rec, "idle", graceful=True)
                    excess -= 1
        for rec in list(self._idle):
            if now - rec.checked_at >= rec.keepalive_due:
                self._idle.remove(rec)
                self._in_use.add(rec)  # out of the idle stack, so no borrower can race the ping
                rec.lease_start = 0.0  # not a lease: leases() and leak detection skip it
                rec.stack = None
                self._spawn_bg(self._keepalive(rec))
        if self._leak_on:
            self._report_leaks(now)
        self._refresh_observed()
        self._grow()

    async def _keepalive(self, rec: _Record[C]) -> None:
        start = _monotonic()
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await self.connector.ping(rec.conn)
        except Exception as exc:
            self._ping_failed(rec, exc)
            return
        except BaseException:
            self._in_use.discard(rec)
            self.connector.terminate(rec.conn)
            if not self._in_use:
                self._drained.set()  # a drain may be waiting for this one
            raise
        now = _monotonic()
        rec.verified_at = now
        self._touch(rec, now)
        self._mark_checked(now, now - start)
        self._put_back(rec)

    def _report_leaks(self, now: float) -> None:
        threshold = cast(float, self.config.leak_threshold)
        for rec in self._in_use:
            if not rec.leak_reported and rec.stack is not None and now - rec.lease_start > threshold:
                rec.leak_reported = True
                info = LeaseInfo(self.name, now - rec.lease_start, rec.route, format_stack(rec.stack))
                emit("leak.suspected", self.name,
                     f"held longer than leak_threshold={threshold}s; " + info.describe(),
                     held=info.held_seconds, route=info.route)

    # -- helpers ---------------------------------------------------------------------------------

    def _wait_snapshot(self) -> HistogramSnapshot:
        # hot-path lends are counted, not observed: their wait is zero, in the first bucket
        snap = self._wait_hist.snapshot()
        counts = list(snap.counts)
        counts[0] += self._fast_lends
        return HistogramSnapshot(snap.bounds, tuple(counts), snap.count + self._fast_lends, snap.sum)

    def _mark_checked(self, now: float, seconds: float) -> None:
        self._last_check = now
        self._last_check_seconds = seconds

    def _describe(self, exc: BaseException) -> str:
        # public (stats, health, problem bodies, BackendDown): the class and SQLSTATE; the driver's
        # text goes to the log only, through self._secrets.describe
        return public_error(exc)

    def _retry_hint(self) -> float:
        wait = self._wait_hist
        return max(0.1, min(self.config.acquire_timeout, (wait.sum / wait.count) if wait.count else 1.0))

    def _timeout_message(self, limit: float) -> str:
        return (f"{self.name}: no connection free within {limit}s (size={self._size()}, "
                f"in_use={len(self._in_use)}, idle={len(self._idle)}, waiting={self._waiters.live}, "
                f"max_size={self._max_size})")
