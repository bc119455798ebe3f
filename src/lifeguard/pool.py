"""Pool[C]: the backend-agnostic engine. Imports no driver, no web framework, no exporter.

The shape follows a small state machine: every change of sizing or waiter bookkeeping happens in
plain sync methods (``_put_back``, ``_discard``, ``_grow``...) that never await, so no other task can
observe a half-made change; the I/O they ask for (connect, ping, reset, close) runs in tasks of its
own. Callers only ever wait on the pool (a future in the FIFO queue), never on a connect or a retry
loop, the way HikariCP's user threads only block on its bag.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Awaitable, Coroutine
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from lifeguard.config import PoolConfig, Secrets
from lifeguard.connectors.base import Connector, ServerInfo
from lifeguard.errors import BackendDown, LifeguardError, PoolClosed, PoolOverloaded, PoolTimeout
from lifeguard.handle import Handle, handle_class_for
from lifeguard.observe.events import emit
from lifeguard.observe.hooks import PoolListener
from lifeguard.observe.leaks import LeaseInfo, capture_stack, current_route, format_stack
from lifeguard.observe.stats import Histogram, HistogramSnapshot, PoolStats
from lifeguard.retry import Backoff, CircuitBreaker

__all__ = ["Pool"]

C = TypeVar("C")

_NEW, _OPEN, _DRAINING, _CLOSED = "new", "open", "draining", "closed"
_monotonic = time.monotonic
_log = logging.getLogger("lifeguard")
_new = object.__new__
_bisect = bisect_left


class _Record(Generic[C]):
    """One pooled connection and the facts the pool keeps about it."""

    __slots__ = (
        "checked_at",
        "conn",
        "created_at",
        "expires_at",
        "fresh_until",
        "generation",
        "handle_cls",
        "keepalive_due",
        "last_used",
        "leak_reported",
        "lease_start",
        "pool",
        "route",
        "stack",
        "verified_at",
    )

    def __init__(self, pool: Pool[C], conn: C, now: float, expires_at: float, generation: int,
                 keepalive_due: float, check_after: float) -> None:
        self.pool = pool
        self.conn = conn
        self.created_at = now
        self.verified_at = now  # connected or last pinged: compared with the pool's _invalid_before
        self.expires_at = expires_at
        self.generation = generation
        self.last_used = now
        self.checked_at = now
        # lendable without a check until then: min(expiry, last check + check_after_idle)
        self.fresh_until = min(expires_at, now + check_after)
        self.keepalive_due = keepalive_due
        self.lease_start = 0.0
        self.handle_cls = handle_class_for(type(conn))
        self.stack: Any = None
        self.route: str | None = None
        self.leak_reported = False


class _Waiter(Generic[C]):
    """A caller queued for a connection: its future and when it gives up."""

    __slots__ = ("deadline", "fut", "limit")

    def __init__(self, fut: asyncio.Future[_Record[C]], deadline: float, limit: float) -> None:
        self.fut = fut
        self.deadline = deadline
        self.limit = limit


class _AcquireContext(Generic[C]):
    """What ``pool.acquire()`` returns: ``async with`` it, or ``await`` it and release yourself."""

    __slots__ = ("_handle", "_pool", "_timeout")

    def __init__(self, pool: Pool[C], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._handle: C | None = None

    def __await__(self) -> Any:
        return self._pool._acquire(self._timeout).__await__()

    async def __aenter__(self) -> C:
        pool = self._pool
        handle = pool._lend_nowait()
        if handle is None:
            handle = await pool._acquire_slow(_monotonic(), self._timeout)
        self._handle = handle
        return handle

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            slow = self._pool._release_nowait(handle, exc)
            if slow is not None:
                await slow


class Pool(Generic[C]):
    """A bounded pool of connections for one backend, lent one at a time.

    Use ``async with pool.acquire() as conn`` (or the FastAPI dependencies of a Lifeguard resource).
    Acquire fails with :class:`PoolTimeout` after ``acquire_timeout``, :class:`PoolOverloaded` when
    ``max_waiting`` callers already wait, :class:`BackendDown` while the circuit is open, and
    :class:`PoolClosed` before open and from the start of close.
    """

    def __init__(self, name: str, connector: Connector[C], config: PoolConfig | None = None, *,
                 secrets: Secrets | None = None) -> None:
        cfg = config or PoolConfig()
        self.name = name
        self.config = cfg
        self.connector = connector
        self._secrets = secrets or Secrets(cfg.secrets)
        self._state = _NEW
        self._paused = False
        self._blocked = True  # not open, or paused: the hot path steps aside
        self._min_size = cfg.min_size
        self._max_size = cfg.max_size
        self._idle: deque[_Record[C]] = deque()
        self._in_use: set[_Record[C]] = set()
        self._waiters: deque[_Waiter[C]] = deque()
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
        self._breaker = CircuitBreaker(cfg.failure_threshold, Backoff(cfg.backoff_initial, cfg.backoff_max))
        self._backoff = Backoff(cfg.backoff_initial, cfg.backoff_max)
        self._bg: set[asyncio.Task[Any]] = set()  # cancelled at close
        self._io: set[asyncio.Task[Any]] = set()  # resets and closes: awaited at close
        self._probe: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._ever_connected = False
        self._listeners: list[PoolListener] = []
        #: read from the server once at start-up by Lifeguard (None until then, or for SQLite)
        self.server_info: ServerInfo | None = None
        # counters
        self._acquired = 0  # slow-path lends; hot-path ones are counted in _fast_lends
        self._timeouts = 0
        self._overloaded = 0
        self._connect_errors = 0
        self._pings_failed = 0
        self._discarded: Counter[str] = Counter()
        self._wait_hist = Histogram()
        self._use_hist = Histogram()
        self._connect_hist = Histogram()
        self._last_error: str | None = None
        self._last_check: float | None = None
        self._last_check_seconds: float | None = None

    def __repr__(self) -> str:
        return (f"<Pool {self.name!r} {self.connector.driver} {self._state} size={self._size()} "
                f"idle={len(self._idle)} in_use={len(self._in_use)} waiting={len(self._waiters)}>")

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self, wait: bool | None = None) -> None:
        """Start connecting; with ``wait`` (default: ``startup == "wait"``) block until ``min_size``
        connections are up, or raise :class:`BackendDown` after ``startup_timeout``."""
        if self._state == _OPEN:
            return
        if self._state != _NEW:
            raise PoolClosed(f"{self.name}: a closed pool cannot be opened again", resource=self.name)
        self._state = _OPEN
        self._loop = asyncio.get_running_loop()
        self._blocked = self._paused
        self._refresh_observed()
        emit("pool.opened", self.name, f"min_size={self._min_size} max_size={self._max_size}")
        interval = self._housekeeping_interval()
        if interval is not None:
            self._spawn_bg(self._housekeeper(interval))
        if self._min_size == 0:
            self._spawn_connect()  # one trial connection proves the backend and credentials
        self._grow()
        if wait is None:
            wait = self.config.startup == "wait"
        if wait and not await self.wait_ready(self.config.startup_timeout):
            cause = self._last_error or "no connection completed"
            await self.close()
            raise BackendDown(
                f"{self.name}: could not open {max(self._min_size, 1)} connection(s) within "
                f"startup_timeout={self.config.startup_timeout}s; last error: {cause}",
                resource=self.name, retry_after=self.config.backoff_max,
            ) from None

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first ``min_size`` connections; False if they did not."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> list[LeaseInfo]:
        """Drain: refuse new acquires, give leases ``drain_timeout`` to return, close the rest.

        Returns the leases that were still out at the deadline (each also logged with where it
        was acquired); their connections are closed under them.
        """
        if self._state in (_DRAINING, _CLOSED):
            return []
        was_new = self._state == _NEW
        self._state = _DRAINING
        self._blocked = True if self._state is not _OPEN else self._paused
        if was_new:
            self._state = _CLOSED
            return []
        emit("drain.started", self.name, f"in_use={len(self._in_use)}", in_use=len(self._in_use))
        self._fail_waiters(PoolClosed(f"{self.name}: the pool is closing", resource=self.name))
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper, self._reaper_at = None, float("inf")
        for task in list(self._bg):
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        while self._idle:
            self._close_conn(self._idle.pop().conn, graceful=True)
        try:
            if self._in_use:
                self._drained.clear()
                try:
                    async with asyncio.timeout(self.config.drain_timeout):
                        await self._drained.wait()
                except TimeoutError:
                    pass
            abandoned = self._abandon_leases()
            if self._io:
                await asyncio.wait(list(self._io), timeout=self.config.drain_timeout)
        except BaseException:
            # close itself cancelled (a second Ctrl-C): still end every lease, or a driver's
            # thread (aiosqlite) keeps the process alive
            self._abandon_leases()
            self._state = _CLOSED
            raise
        self._state = _CLOSED
        emit("drain.finished", self.name, f"abandoned={len(abandoned)}", abandoned=len(abandoned))
        return abandoned

    def _abandon_leases(self) -> list[LeaseInfo]:
        """Close the connections of the leases still out, reporting each with where it was taken."""
        abandoned: list[LeaseInfo] = []
        now = _monotonic()
        for rec in list(self._in_use):
            info = LeaseInfo(self.name, now - rec.lease_start if rec.lease_start else 0.0, rec.route,
                             format_stack(rec.stack))
            abandoned.append(info)
            emit("drain.abandoned", self.name, info.describe(), held=info.held_seconds,
                 route=info.route)
            self._in_use.discard(rec)
            self._discarded["drain"] += 1
            self.connector.terminate(rec.conn)
        return abandoned

    async def __aenter__(self) -> Pool[C]:
        await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- public operations -----------------------------------------------------------------------

    def acquire(self, *, timeout: float | None = None) -> _AcquireContext[C]:
        """Lend a connection: ``async with pool.acquire() as conn:`` (released on exit, whatever
        happens), or ``conn = await pool.acquire()`` followed by ``await pool.release(conn)``."""
        return _AcquireContext(self, timeout)

    async def release(self, conn: C, *, error: BaseException | None = None) -> None:
        """End the lease of a handle from ``await pool.acquire()``; a second call does nothing.

        Pass the exception that ended its use, if any, so a dead connection is discarded.
        """
        if not isinstance(conn, Handle) or conn._lg_pool is not self:
            raise LifeguardError(f"{self.name}: release() takes a connection lent by this pool",
                                 resource=self.name)
        await self._release(cast(C, conn), error)

    def expire(self) -> None:
        """Replace every connection: idle ones now, lent ones when they come back (O(1))."""
        self._generation += 1
        emit("pool.expired", self.name, f"generation={self._generation}")
        self._retire_idle()

    def resize(self, min_size: int, max_size: int) -> None:
        """Change the bounds at runtime; growing starts connects, shrinking retires idle connections."""
        PoolConfig(min_size=min_size, max_size=max_size)  # validates, with the usual messages
        self._min_size, self._max_size = min_size, max_size
        emit("pool.resized", self.name, f"min_size={min_size} max_size={max_size}")
        excess = self._size() - max_size
        while excess > 0 and self._idle:
            self._discard(self._idle.popleft(), "resized", graceful=True)
            excess -= 1
        self._shrinking = excess > 0  # lent connections are closed as they come back
        self._grow()

    def pause(self) -> None:
        """Stop lending: acquires queue (and time out) until :meth:`resume`."""
        self._paused = True
        self._blocked = True
        emit("pool.paused", self.name)

    def resume(self) -> None:
        """Lend again, serving queued callers in order."""
        self._paused = False
        self._blocked = self._state is not _OPEN
        emit("pool.resumed", self.name)
        while self._idle and self._waiters:
            self._put_back(self._idle.pop())
        self._grow()

    def add_listener(self, listener: PoolListener) -> None:
        """Call ``listener`` on every acquire, release, connect and timeout (for metric exporters)."""
        self._listeners.append(listener)
        self._refresh_observed()

    @property
    def ready(self) -> bool:
        """True when the pool can lend now: open, not paused, circuit closed, connected once."""
        return (self._state == _OPEN and not self._paused and not self._breaker.is_open
                and self._ever_connected)

    @property
    def state(self) -> str:
        return self._state

    def stats(self) -> PoolStats:
        """A frozen snapshot of sizes, counters and histograms; no I/O."""
        now = _monotonic()
        return PoolStats(
            resource=self.name, driver=self.connector.driver,
            state=cast(Any, self._state), circuit="open" if self._breaker.is_open else "closed",
            size=self._size(), idle=len(self._idle), in_use=len(self._in_use),
            connecting=self._connecting, waiting=len(self._waiters),
            min_size=self._min_size, max_size=self._max_size,
            acquired=self._acquired + self._fast_lends, released=self._use_hist.count,
            discarded=dict(self._discarded),
            timeouts=self._timeouts, overloaded=self._overloaded,
            connect_errors=self._connect_errors, pings_failed=self._pings_failed,
            wait_time=self._wait_snapshot(), use_time=self._use_hist.snapshot(),
            connect_time=self._connect_hist.snapshot(),
            retry_after=self._breaker.retry_after(now), last_error=self._last_error,
            last_check_seconds=self._last_check_seconds,
            last_check_age=None if self._last_check is None else now - self._last_check,
            ready=self.ready, optional=self.config.optional,
        )

    def leases(self) -> list[LeaseInfo]:
        """The leases out now, with how long each has been held and where it was taken."""
        now = _monotonic()
        return [LeaseInfo(self.name, now - r.lease_start, r.route, format_stack(r.stack))
                for r in self._in_use if r.lease_start]

    # -- acquire ---------------------------------------------------------------------------------

    async def _acquire(self, timeout: float | None) -> C:
        handle = self._lend_nowait()
        if handle is None:
            handle = await self._acquire_slow(_monotonic(), timeout)
        return handle

    def _lend_nowait(self) -> C | None:
        """The hot path: lend the top idle connection if nothing is due; no I/O, no timer.

        Kept flat on purpose: every call saved here is measurable against the raw driver.
        """
        idle = self._idle
        if not idle or self._waiters or self._blocked:
            return None
        rec = idle[-1]
        now = _monotonic()
        if (now >= rec.fresh_until or rec.verified_at <= self._invalid_before
                or rec.generation != self._generation or self._is_closed(rec.conn)):
            return None  # the slow path checks, replaces or recycles it
        idle.pop()
        self._in_use.add(rec)
        rec.lease_start = now
        self._fast_lends += 1  # a zero wait, folded into the wait histogram's first bucket
        if self._observed:
            self._observe_lend(rec, 0.0)
        handle: Any = _new(rec.handle_cls)
        handle._lg_conn = rec.conn
        handle._lg_rec = rec
        return handle  # type: ignore[no-any-return]

    async def _acquire_slow(self, start: float, timeout: float | None) -> C:
        if self._state is not _OPEN:
            raise self._closed_error()
        limit = self.config.acquire_timeout if timeout is None else timeout
        deadline = start + limit
        retry = False
        while True:
            rec = await self._wait(deadline, limit, front=retry)
            retry = True  # a caller whose connection failed its check keeps its place in line
            if not self._usable(rec):
                continue
            now = _monotonic()
            if now >= rec.fresh_until or rec.verified_at <= self._invalid_before:
                try:
                    async with asyncio.timeout(deadline - now):
                        ok = await self._ping(rec)
                except TimeoutError:
                    raise self._timed_out(limit) from None
                if not ok:
                    continue
                if self._state is not _OPEN:  # close() began during the ping
                    self._put_back(rec)
                    raise self._closed_error()
                now = _monotonic()
            self._wait_hist.observe(now - start)
            return self._lend(rec, now, now - start)

    async def _wait(self, deadline: float, limit: float, *, front: bool = False) -> _Record[C]:
        """Queue for the next free connection, first come first served."""
        if self._state is not _OPEN:
            raise self._closed_error()
        if self._idle and not self._waiters and not self._paused:
            return self._idle.pop()  # freed while this caller was checking another one
        if self._breaker.is_open:
            raise self._down_error()
        max_waiting = self.config.max_waiting
        if max_waiting and len(self._waiters) >= max_waiting:
            self._overloaded += 1
            raise PoolOverloaded(
                f"{self.name}: {len(self._waiters)} callers already waiting (max_waiting={max_waiting})",
                resource=self.name, retry_after=self._retry_hint())
        loop = self._loop or asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), deadline, limit)
        if front:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        if deadline < self._reaper_at:
            self._arm_reaper(deadline)
        self._grow()
        fut = waiter.fut
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # granted, then cancelled before this task ran: the grant goes to the next waiter
                self._put_back(fut.result())
            else:
                fut.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass  # already taken off by the reaper or a failure broadcast
            raise

    def _arm_reaper(self, at: float) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._reaper_at = at
        self._reaper = loop.call_later(max(0.0, at - _monotonic()), self._reap)

    def _reap(self) -> None:
        """Fail every waiter past its deadline with PoolTimeout; re-arm for the next deadline."""
        self._reaper, self._reaper_at = None, float("inf")
        now = _monotonic()
        expired = [w for w in self._waiters if w.deadline <= now]
        for waiter in expired:
            self._waiters.remove(waiter)
            if not waiter.fut.done():
                waiter.fut.set_exception(self._timed_out(waiter.limit))
        if self._waiters:
            self._arm_reaper(min(w.deadline for w in self._waiters))

    def _timed_out(self, limit: float) -> PoolTimeout:
        self._timeouts += 1
        for listener in self._listeners:
            listener.on_timeout(self.name)
        return PoolTimeout(self._timeout_message(limit), resource=self.name, retry_after=self._retry_hint())

    def _usable(self, rec: _Record[C]) -> bool:
        """Sync checks on a connection about to be lent; False when it was recycled or found dead."""
        if rec.generation != self._generation or _monotonic() >= rec.expires_at:
            self._discard(rec, "expired" if rec.generation != self._generation else "lifetime",
                          graceful=True)
            return False
        if self._is_closed(rec.conn):
            self._dead(rec, _monotonic())
            return False
        return True

    async def _ping(self, rec: _Record[C]) -> bool:
        """Ping a connection due a check; False (and discarded) when it failed."""
        start = _monotonic()
        self._in_use.add(rec)  # counted while the pool itself uses it
        rec.lease_start = 0.0  # but not a lease (yet): leases() and leak detection skip it
        rec.stack = None
        try:
            await self.connector.ping(rec.conn)
        except Exception as exc:
            self._ping_failed(rec, exc)
            return False
        except BaseException:
            # cancelled mid-ping: the protocol state is unknown, so the connection goes
            self._discard(rec, "cancelled")
            raise
        done = _monotonic()
        rec.verified_at = done
        self._touch(rec, done)
        self._mark_checked(done, done - start)
        return True

    def _lend(self, rec: _Record[C], now: float, wait: float) -> C:
        self._in_use.add(rec)
        rec.lease_start = now
        self._acquired += 1
        if self._observed:
            self._observe_lend(rec, wait)
        handle = _new(rec.handle_cls)
        handle._lg_conn = rec.conn
        handle._lg_rec = rec
        return cast(C, handle)

    def _refresh_observed(self) -> None:
        self._observed = bool(self._leak_on or self._listeners or _log.isEnabledFor(logging.DEBUG))

    def _observe_lend(self, rec: _Record[C], wait: float) -> None:
        if self._leak_on:
            rec.stack = capture_stack()
            rec.route = current_route.get()
            rec.leak_reported = False
        for listener in self._listeners:
            listener.on_acquired(self.name, wait)
        if _log.isEnabledFor(logging.DEBUG):
            emit("connection.lent", self.name, f"wait={wait:.6f}s", wait=wait)

    # -- release ---------------------------------------------------------------------------------

    async def _release(self, handle: C, exc: BaseException | None) -> None:
        slow = self._release_nowait(handle, exc)
        if slow is not None:
            await slow

    def _release_nowait(self, handle: C, exc: BaseException | None) -> Awaitable[None] | None:
        """End a lease; returns what is left to await when the connection needs a round trip.

        Flat for the same reason as ``_lend_nowait``; anything unusual leaves through a helper.
        """
        h: Any = handle
        conn = h._lg_conn
        if conn is None:
            return None  # already ended: a lease ends exactly once
        h._lg_conn = None
        rec: _Record[C] = h._lg_rec
        in_use = self._in_use
        if rec not in in_use:
            return None  # taken back by drain or after its handle was lost
        now = _monotonic()
        use = now - rec.lease_start
        hist = self._use_hist
        hist.counts[_bisect(hist.bounds, use)] += 1
        hist.count += 1
        hist.sum += use
        if self._observed:
            self._observe_release(rec, use)
        # A connection that died quietly is caught by the is_closed check at its next lend; here
        # only the error that ended the lease tells, which costs nothing when there is none.
        if exc is not None and self.connector.is_disconnect(exc):
            self._dead(rec, now)
            return None
        cancelled = exc is not None and not isinstance(exc, Exception)
        if cancelled or self._full_reset or self._in_transaction(conn):
            task = (self._loop or asyncio.get_running_loop()).create_task(self._reset(rec, cancelled))
            self._io.add(task)
            task.add_done_callback(self._io.discard)
            return asyncio.shield(task)  # the reset finishes even if the releasing task is cancelled
        if (self._waiters or self._blocked or self._shrinking or now >= rec.expires_at
                or rec.generation != self._generation):
            self._free(rec, now)  # hand-off to a waiter, recycling, draining: the general path
            return None
        rec.last_used = rec.checked_at = now
        fresh = now + self._check_after
        rec.fresh_until = fresh if fresh < rec.expires_at else rec.expires_at
        in_use.remove(rec)
        self._idle.append(rec)
        return None

    def _observe_release(self, rec: _Record[C], use: float) -> None:
        for listener in self._listeners:
            listener.on_released(self.name, use)
        if rec.leak_reported:
            rec.leak_reported = False
            emit("leak.returned", self.name, f"returned after {use:.3f}s", held=use, route=rec.route)
        if _log.isEnabledFor(logging.DEBUG):
            emit("connection.returned", self.name, f"use={use:.6f}s", use=use)

    async def _reset(self, rec: _Record[C], cancelled: bool) -> None:
        """Roll back (and fully reset, or re-check after a cancel) under a bounded shield."""
        connector = self.connector
        if cancelled and connector.is_closed(rec.conn):
            # the driver closed it on the cancel (asyncmy does): nothing wrong with the backend
            self._discard(rec, "cancelled")
            return
        try:
            async with asyncio.timeout(self.config.reset_timeout):
                if cancelled:
                    await self._resync(rec.conn)
                if self._full_reset:
                    await connector.reset(rec.conn)
                elif connector.in_transaction(rec.conn):
                    await connector.rollback(rec.conn)
        except Exception as exc:
            if connector.is_disconnect(exc):
                self._invalid_before = _monotonic()
            self._last_error = self._describe(exc)
            self._discard(rec, "reset_failed")
            return
        except BaseException:
            self._discard(rec, "reset_failed")
            raise
        self._free(rec, _monotonic())

    async def _resync(self, conn: C) -> None:
        """After a cancel: a ping waits until the protocol is in sync again (aiosqlite's statement
        even goes on in its thread), so the transaction state read after it is the true one."""
        connector = self.connector
        try:
            await connector.ping(conn)
        except Exception as exc:
            # an aborted transaction refuses the ping, yet the server answered: the rollback that
            # follows clears it; anything else means the connection is gone
            if connector.is_disconnect(exc) or not connector.in_transaction(conn):
                raise

    def _free(self, rec: _Record[C], now: float) -> None:
        """A lease ended cleanly: recycle the connection if it is due, else put it back."""
        rec.last_used = now
        if rec.generation != self._generation:
            self._discard(rec, "expired", graceful=True)
        elif now >= rec.expires_at:
            self._discard(rec, "lifetime", graceful=True)
        else:
            self._touch(rec, now)
            self._put_back(rec)

    def _touch(self, rec: _Record[C], now: float) -> None:
        """Known good at ``now``: no check needed until check_after_idle has passed again."""
        rec.checked_at = now
        fresh = now + self._check_after
        rec.fresh_until = fresh if fresh < rec.expires_at else rec.expires_at

    def _handle_lost(self, rec: _Record[C]) -> None:
        """Called from a handle's finaliser: recover the slot on the loop, not inside the GC."""
        if self._state in (_NEW, _CLOSED):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon(self._recover_lost, rec)

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
        if self._state is not _OPEN:
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
        if not self._paused:
            waiters = self._waiters
            while waiters:
                fut = waiters.popleft().fut
                if not fut.done():
                    self._in_use.add(rec)
                    fut.set_result(rec)
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
        if self._state is _OPEN:
            self._grow()
        elif not self._in_use:
            self._drained.set()

    def _grow(self) -> None:
        """Start the connects that demand (waiters) and ``min_size`` call for, within ``max_size``."""
        if self._state is not _OPEN or self._breaker.is_open:
            return
        size = self._size()
        if size >= self._max_size:
            return
        want = max(self._min_size - size, len(self._waiters) - self._connecting)
        for _ in range(min(want, self._max_size - size)):
            self._spawn_connect()

    def _fail_waiters(self, error: LifeguardError) -> None:
        while self._waiters:
            fut = self._waiters.popleft().fut
            if not fut.done():
                fut.set_exception(error)

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
        self._spawn_bg(self._connect_loop())

    async def _connect_loop(self) -> None:
        attempt = 0
        conn: C | None = None
        start = _monotonic()
        try:
            while True:
                if self._state is not _OPEN or self._breaker.is_open:
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
            self._connecting -= 1
        self._connected(conn, start)

    def _still_wanted(self) -> bool:
        # this task's own slot is counted in _connecting, hence the -1
        return bool(self._waiters) or self._size() - 1 < max(self._min_size, 0 if self._ever_connected else 1)

    def _connected(self, conn: C, start: float) -> None:
        now = _monotonic()
        self._connect_hist.observe(now - start)
        for listener in self._listeners:
            listener.on_connected(self.name, now - start)
        self._mark_checked(now, now - start)
        if self._breaker.record_success():
            emit("circuit.closed", self.name, "the backend answers again")
        if self._state is not _OPEN:
            self.connector.terminate(conn)
            return
        self._ever_connected = True
        cfg = self.config
        lifetime = float("inf") if cfg.max_lifetime is None else cfg.max_lifetime * random.uniform(0.9, 1.1)
        keepalive = (float("inf") if cfg.keepalive_interval is None
                     else cfg.keepalive_interval * random.uniform(0.8, 1.0))
        rec = _Record(self, conn, now, now + lifetime, self._generation, keepalive, self._check_after)
        emit("connection.opened", self.name, f"in {now - start:.3f}s", seconds=now - start)
        self._put_back(rec)
        if not self._ready.is_set() and len(self._idle) + len(self._in_use) >= max(self._min_size, 1):
            self._ready.set()
            emit("pool.ready", self.name)

    def _connect_failed(self, exc: Exception) -> None:
        self._connect_errors += 1
        self._last_error = self._describe(exc)
        now = _monotonic()
        emit("connection.failed", self.name, self._last_error, error=self._last_error)
        if self._breaker.record_failure(now):
            retry = self._breaker.retry_after(now)
            emit("circuit.opened", self.name,
                 f"{self._breaker.failures} connects failed in a row; next probe in {retry:.2f}s",
                 failures=self._breaker.failures, retry_after=retry)
            self._fail_waiters(self._down_error())
            if self._probe is None or self._probe.done():
                self._probe = self._spawn_bg(self._probe_loop())

    async def _probe_loop(self) -> None:
        """While the circuit is open, one connect at a time on the backoff schedule closes it."""
        while self._state is _OPEN and self._breaker.is_open:
            await asyncio.sleep(max(0.0, self._breaker.next_probe - _monotonic()))
            if self._size() >= self._max_size:
                self._breaker.next_probe = _monotonic() + self.config.backoff_initial
                continue
            self._connecting += 1
            start = _monotonic()
            try:
                conn = await self.connector.connect(self.config.connect_timeout)
            except Exception as exc:
                self._connect_failed(exc)
                continue
            finally:
                self._connecting -= 1
            self._connected(conn, start)
            self._grow()
            return

    def _dead(self, rec: _Record[C], now: float) -> None:
        """A connection found dead: discard it, and check every older one before it is lent."""
        self._invalid_before = now
        self._discard(rec, "disconnect")

    def _ping_failed(self, rec: _Record[C], exc: Exception) -> None:
        self._pings_failed += 1
        self._last_error = self._describe(exc)
        self._invalid_before = _monotonic()  # older connections likely share its fate: check them
        emit("ping.failed", self.name, self._last_error, error=self._last_error)
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
        task.add_done_callback(self._io.discard)

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
        return self._secrets.scrub(f"{type(exc).__name__}: {exc}")

    def _retry_hint(self) -> float:
        wait = self._wait_hist
        return max(0.1, min(self.config.acquire_timeout, (wait.sum / wait.count) if wait.count else 1.0))

    def _timeout_message(self, limit: float) -> str:
        return (f"{self.name}: no connection free within {limit}s (size={self._size()}, "
                f"in_use={len(self._in_use)}, idle={len(self._idle)}, waiting={len(self._waiters)}, "
                f"max_size={self._max_size})")

    def _down_error(self) -> BackendDown:
        # never 0: while a probe is due or in flight, clients should still back off a little
        retry = max(self._breaker.retry_after(_monotonic()), self.config.backoff_initial)
        return BackendDown(f"{self.name}: backend down after {self._breaker.failures} failed connects; "
                           f"last error: {self._last_error}", resource=self.name, retry_after=retry)

    def _closed_error(self) -> PoolClosed:
        if self._state is _NEW:
            return PoolClosed(f"{self.name}: the pool is not open (use `async with`, open() or the "
                              "Lifeguard lifespan)", resource=self.name)
        return PoolClosed(f"{self.name}: the pool is {self._state}", resource=self.name)

