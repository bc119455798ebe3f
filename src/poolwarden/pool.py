"""Pool[C]: the backend-agnostic engine. Imports no driver, no web framework, no exporter.

The shape follows a small state machine: every change of sizing or waiter bookkeeping happens in
plain sync methods (``_put_back``, ``_discard``, ``_grow``...) that never await, so no other task can
observe a half-made change; the I/O they ask for (connect, ping, reset, close) runs in tasks of its
own. Callers only ever wait on the pool (a future in the FIFO queue), never on a connect or a retry
loop, the way HikariCP's user threads only block on its bag.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from bisect import bisect_left
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, TypeVar, cast

from poolwarden.bounded import bounded
from poolwarden.config import PoolConfig
from poolwarden.errors import PoolClosed, PoolOverloaded, PoolTimeout, PoolwardenError, Unavailable
from poolwarden.handle import Handle
from poolwarden.lease import AcquireContext, _Record
from poolwarden.observe.events import emit
from poolwarden.observe.hooks import PoolListener
from poolwarden.observe.leaks import LeaseInfo, capture_stack, current_route, format_stack
from poolwarden.observe.stats import PoolStats
from poolwarden.upkeep import OPEN, PoolUpkeep, _log, _monotonic
from poolwarden.waitqueue import BATCH, QUEUE_PER_CONNECTION, Waiter

__all__ = ["Pool"]

C = TypeVar("C")

_new = object.__new__
_bisect = bisect_left


class Pool(PoolUpkeep[C]):
    """A bounded pool of connections for one backend, lent one at a time.

    Use ``async with pool.acquire() as conn`` (or the FastAPI dependencies of a Warden resource).
    Acquire fails with :class:`PoolTimeout` after ``acquire_timeout``, :class:`PoolOverloaded` when
    ``max_waiting`` callers already wait, :class:`BackendDown` while the circuit is open, and
    :class:`PoolClosed` before open and from the start of close.
    """

    _kind = "pool"
    _probe_noun = "connects"

    def __repr__(self) -> str:
        return (f"<Pool {self.name!r} {self.connector.driver} {self._state} size={self._size()} "
                f"idle={len(self._idle)} in_use={len(self._in_use)} waiting={self._waiters.live}>")

    # -- lifecycle -------------------------------------------------------------------------------

    # open(), wait_ready() and close() come from Lifecycle (shared with Client); these are its hooks

    async def _start(self) -> None:
        self._state = OPEN
        self._run += 1
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

    @property
    def _started(self) -> bool:
        return self._settled.is_set() and self._ever_connected

    def _prepare_reopen(self) -> None:
        # Counters and histograms carry on across runs (metrics are cumulative); sizes start over.
        # Tasks of the last run may still be finishing their cancellation: _run tells them apart.
        self._connecting = 0
        self._ever_connected = False
        self._invalid_before = _monotonic()
        self._drained = asyncio.Event()
        self._bg, self._io, self._closes = set(), set(), {}
        self._loop = None
        self._shrinking = False

    def _stop_background(self) -> None:
        self._blocked = True
        self._refused["closed"] += self._waiters.live
        self._fail_waiters(PoolClosed(f"{self.name}: the pool is closing", resource=self.name))
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper, self._reaper_at = None, float("inf")
        for task in list(self._bg):
            task.cancel()

    async def _drain(self) -> list[LeaseInfo]:
        """Refuse new acquires, give leases ``drain_timeout`` to return, close the rest."""
        emit("drain.started", self.name, f"in_use={len(self._in_use)}", in_use=len(self._in_use))
        self._stop_background()  # connects and pings cancelled: they end while leases drain
        while self._idle:
            self._close_conn(self._idle.pop().conn, graceful=True)
        if self._in_use:
            self._drained.clear()
            try:
                async with asyncio.timeout(self.config.drain_timeout):
                    await self._drained.wait()
            except TimeoutError:
                pass
        abandoned = self._abandon_leases()
        # closes, resets and cancelled pings are each bounded by reset_timeout already; whatever
        # outlives this wait is terminated: close() ends within drain_timeout + this bound
        pending = [*self._io, *self._bg]
        if pending:
            await asyncio.wait(pending, timeout=min(self.config.drain_timeout, self.config.reset_timeout))
        self._abort_closes()
        emit("drain.finished", self.name, f"abandoned={len(abandoned)}", abandoned=len(abandoned))
        return abandoned

    def _abort(self) -> list[LeaseInfo]:
        """End everything now, without awaiting: leases, connections, background tasks."""
        self._stop_background()
        while self._idle:
            self.connector.terminate(self._idle.pop().conn)
        abandoned = self._abandon_leases()
        self._abort_closes()
        emit("drain.finished", self.name, f"abandoned={len(abandoned)} (cut short)",
             abandoned=len(abandoned))
        return abandoned

    def _abort_closes(self) -> None:
        # a graceful close still waiting on the server (or not even started: a task cancelled
        # before its first step never runs its except clause) is finished by terminating the socket
        for task, conn in list(self._closes.items()):
            task.cancel()
            self.connector.terminate(conn)
        self._closes.clear()

    def _abandon_leases(self) -> list[LeaseInfo]:
        """Close the connections of the leases still out, reporting each with where it was taken.

        A connection the pool itself was using (a ping, a reset) is closed too, but is no lease.
        """
        abandoned: list[LeaseInfo] = []
        now = _monotonic()
        for rec in list(self._in_use):
            self._in_use.discard(rec)
            self.connector.terminate(rec.conn)
            if not rec.lease_start:
                continue
            info = LeaseInfo(self.name, now - rec.lease_start, rec.route, format_stack(rec.stack))
            abandoned.append(info)
            emit("drain.abandoned", self.name, info.describe(), held=info.held_seconds,
                 route=info.route)
            self._discarded["drain"] += 1
            _detach_handles_of(rec)
        self._drained.set()
        return abandoned

    async def __aenter__(self) -> Pool[C]:
        await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- public operations -----------------------------------------------------------------------

    def acquire(self, *, timeout: float | None = None) -> AcquireContext[C]:
        """Lend a connection: ``async with pool.acquire() as conn:`` (released on exit, whatever
        happens), or ``conn = await pool.acquire()`` followed by ``await pool.release(conn)``."""
        return AcquireContext(self, timeout)

    async def release(self, conn: C, *, error: BaseException | None = None) -> None:
        """End the lease of a handle from ``await pool.acquire()``; a second call does nothing.

        Pass the exception that ended its use, if any, so a dead connection is discarded.
        """
        if not isinstance(conn, Handle) or conn._lg_pool is not self:
            raise PoolwardenError(f"{self.name}: release() takes a connection lent by this pool",
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
        self._blocked = self._state is not OPEN
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
        return (self._state == OPEN and not self._paused and not self._breaker.is_open
                and self._ever_connected)

    @property
    def state(self) -> str:
        return self._state

    def stats(self) -> PoolStats:
        """A frozen snapshot of sizes, counters and histograms; no I/O."""
        now = _monotonic()
        return PoolStats(
            resource=self.name, driver=self.connector.driver,
            state=cast(Any, self._state), circuit=self._breaker.state,
            size=self._size(), idle=len(self._idle), in_use=len(self._in_use),
            connecting=self._connecting, waiting=self._waiters.live,
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
            refused={"timeout": self._timeouts, "overloaded": self._overloaded,
                     "backend_down": self._refused["backend_down"], "closed": self._refused["closed"]},
            queue_mode=self._waiters.steer(now), queue_bound=self._queue_bound(),
            shed=dict(self._waiters.shed_counts), queue_time=self._waiters.sojourn.snapshot(),
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
        if self._state is not OPEN:
            raise self._closed_error()
        limit = self.config.acquire_timeout if timeout is None else timeout
        deadline = start + limit
        retry = False
        try:
            while True:
                queued = self._enqueue(deadline, limit, front=retry)
                retry = True  # a caller whose connection failed its check keeps its place in line
                if isinstance(queued, Waiter):
                    # awaited here, not in a helper coroutine: one frame less per queued acquire
                    try:
                        rec = await queued.fut
                    except BaseException:
                        self._unqueue(queued)
                        raise
                else:
                    rec = queued
                now = _monotonic()
                if not self._usable(rec, now):
                    continue
                if now >= rec.fresh_until or rec.verified_at <= self._invalid_before:
                    if not await self._check_before_lend(rec, deadline - now, limit):
                        continue
                    if self._state is not OPEN:  # close() began during the ping
                        self._put_back(rec)
                        raise self._closed_error()
                    now = _monotonic()
                self._wait_hist.observe(now - start)
                return self._lend(rec, now, now - start)
        except Unavailable as exc:
            if self._observed:  # tracing records why this caller got no connection, and after how long
                self._observe_refusal(exc, start)
            raise

    def _enqueue(self, deadline: float, limit: float, *,
                 front: bool = False) -> _Record[C] | Waiter[_Record[C]]:
        """A free connection now, or this caller's place in the queue (see waitqueue.py)."""
        if self._state is not OPEN:
            raise self._closed_error()
        waiters = self._waiters
        if self._idle and not waiters and not self._paused:
            return self._idle.pop()  # freed while this caller was checking another one
        if self._breaker.is_open:
            raise self._down_error()
        now = _monotonic()
        bound = self.config.max_waiting
        if bound is None:
            bound = QUEUE_PER_CONNECTION * self._max_size
        if bound and waiters.live >= bound and not front:
            # full: while the queue stands the oldest waiter (served last) gives up its place,
            # otherwise the newcomer is refused at once
            bumped = waiters.make_room(now)
            if bumped is None:
                waiters.refused()
                self._overloaded += 1
                raise PoolOverloaded(
                    f"{self.name}: {waiters.live} callers already waiting (max_waiting={bound})",
                    resource=self.name, retry_after=self._drain_hint(now))
            bumped.fut.set_exception(self._shed_error(bumped, now))
        loop = self._loop or asyncio.get_running_loop()
        waiter: Waiter[_Record[C]] = _new(Waiter)  # slots filled here: no __init__ call per acquire
        waiter.fut, waiter.deadline, waiter.limit = loop.create_future(), deadline, limit
        waiters.push(waiter, now, front=front)
        if deadline < self._reaper_at:
            self._arm_reaper(deadline)
        elif waiters.mode == "lifo":
            self._standing()  # the queue stands: shed who can no longer be served in time
        self._grow()
        return waiter

    def _standing(self) -> None:
        shed_at = self._waiters.next_shed(_monotonic())
        if shed_at < self._reaper_at:
            self._arm_reaper(shed_at)

    def _queue_bound(self) -> int:
        """``max_waiting``, or QUEUE_PER_CONNECTION per connection when it is None; 0 is no bound."""
        max_waiting = self.config.max_waiting
        return QUEUE_PER_CONNECTION * self._max_size if max_waiting is None else max_waiting

    def _unqueue(self, waiter: Waiter[_Record[C]]) -> None:
        """A queued caller gave up (cancelled, timed out, refused): undo its place in the queue."""
        fut = waiter.fut
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            # granted, then cancelled before this task ran: the grant goes to the next waiter
            self._put_back(fut.result())
        else:
            fut.cancel()
            self._waiters.discard(waiter, _monotonic())  # O(1): marked, dropped when reached

    def _arm_reaper(self, at: float) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._reaper_at = at
        self._reaper = loop.call_later(max(0.0, at - _monotonic()), self._reap)

    def _reap(self) -> None:
        """Fail the waiters past their deadline and shed, while the queue stands, those that cannot
        be served in time; at most BATCH per loop iteration, then re-arm for what is due next."""
        self._reaper, self._reaper_at = None, float("inf")
        waiters = self._waiters
        now = _monotonic()
        expired = waiters.expire(now)
        for waiter in expired:
            waiter.fut.set_exception(self._timed_out(waiter.limit))
        budget = BATCH - len(expired)
        shed = waiters.shed(now, waiters.drain_rate(now), budget) if budget > 0 else []
        for waiter in shed:
            waiter.fut.set_exception(self._shed_error(waiter, now))
        if not waiters:
            return
        at = now if budget <= len(shed) else waiters.next_due()  # a full batch: go on next turn
        if waiters.mode == "lifo":  # sheds grouped a few ms apart, not one timer per waiter
            at = min(at, max(waiters.next_shed(now), now + 0.005))
        self._arm_reaper(at)

    def _timed_out(self, limit: float) -> PoolTimeout:
        self._timeouts += 1
        for listener in self._listeners:
            listener.on_timeout(self.name)
        return PoolTimeout(self._timeout_message(limit), resource=self.name,
                           retry_after=self._drain_hint(_monotonic()))

    def _shed_error(self, waiter: Waiter[_Record[C]], now: float) -> PoolOverloaded:
        self._overloaded += 1
        waited = now - (waiter.deadline - waiter.limit)
        return PoolOverloaded(
            f"{self.name}: shed after waiting {waited:.3f}s: the queue has stood above "
            f"queue_target={self.config.queue_target}s for queue_interval={self.config.queue_interval}s "
            f"({self._waiters.live} waiting, newest served first)",
            resource=self.name, retry_after=self._drain_hint(now))

    def _drain_hint(self, now: float) -> float:
        """Retry-After: how long the callers queued now take to be served at the measured rate."""
        rate = self._waiters.drain_rate(now)
        if rate <= 0.0:
            return self._retry_hint()
        return max(0.1, min(self.config.acquire_timeout, (self._waiters.live + 1) / rate))

    def _limit_lease(self, handle: C, route: str) -> asyncio.TimerHandle | None:
        """End the lease of ``handle`` once it has lasted ``max_response_lease`` (a
        ``release="response"`` stream whose reader stalls must not pin a connection); the caller
        cancels the returned timer when the lease ends in time. None when there is no limit."""
        limit = self.config.max_response_lease
        h: Any = handle
        if limit is None or not isinstance(handle, Handle) or h._lg_conn is None:
            return None
        rec = h._lg_rec
        loop = self._loop or asyncio.get_running_loop()
        return loop.call_later(limit, self._lease_overdue, h, rec, rec.lease_start, limit, route)

    def _lease_overdue(self, handle: Any, rec: _Record[C], start: float, limit: float, route: str) -> None:
        if handle._lg_conn is None or rec not in self._in_use or rec.lease_start != start:
            return  # the lease ended in time
        handle._lg_conn = None  # its holder gets LeaseEnded from now on
        held = _monotonic() - start
        self._use_hist.observe(held)
        emit("lease.overdue", self.name,
             f"{route} held a connection {held:.3f}s, past max_response_lease={limit}s: lease ended, "
             "connection closed", held=held, route=route)
        self._discard(rec, "max_lease")  # terminated: it may be mid-query, so no reset can be trusted

    def _usable(self, rec: _Record[C], now: float) -> bool:
        """Sync checks on a connection about to be lent; False when it was recycled or found dead."""
        if rec.generation != self._generation or now >= rec.expires_at:
            self._discard(rec, "expired" if rec.generation != self._generation else "lifetime",
                          graceful=True)
            return False
        if self._is_closed(rec.conn):
            self._dead(rec, now)
            return False
        return True

    async def _check_before_lend(self, rec: _Record[C], budget: float, limit: float) -> bool:
        """Ping ``rec`` in a task of the pool's own; True when it may be lent to this caller.

        The caller waits at most ``budget`` (the rest of its acquire_timeout) and returns at once when
        cancelled: it never waits for a driver's cancel protocol (psycopg may hold a cancelled query
        for seconds). The ping goes on alone: a healthy connection goes back to the pool instead of
        being thrown away, a stalled one is terminated after connect_timeout.
        """
        self._in_use.add(rec)  # counted while the pool itself uses it
        rec.lease_start = 0.0  # but not a lease (yet): leases() and leak detection skip it
        rec.stack = None
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(self._ping(rec))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        try:
            async with asyncio.timeout(budget):
                return await asyncio.shield(task)
        except BaseException as exc:
            task.add_done_callback(lambda t: self._ping_settled(t, rec))
            if isinstance(exc, TimeoutError):
                raise self._timed_out(limit) from None
            raise

    def _ping_settled(self, task: asyncio.Task[bool], rec: _Record[C]) -> None:
        """A ping whose caller gave up has ended: a healthy connection serves the next caller."""
        if not task.cancelled() and task.exception() is None and task.result():
            self._put_back(rec)

    async def _ping(self, rec: _Record[C]) -> bool:
        """Ping a connection due a check; False (and discarded) when it failed."""
        start = _monotonic()
        loop = self._loop or asyncio.get_running_loop()
        # past connect_timeout the socket is cut, not the ping cancelled: a driver's cancel
        # protocol on a stalled network is itself what stalls
        cut = loop.call_later(self.config.connect_timeout, self.connector.terminate, rec.conn)
        try:
            await self.connector.ping(rec.conn)
        except Exception as exc:
            self._ping_failed(rec, exc)
            return False
        except BaseException:
            # cancelled mid-ping (close): the protocol state is unknown, so the connection goes
            self._discard(rec, "cancelled")
            raise
        finally:
            cut.cancel()
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

    def _observe_refusal(self, exc: Unavailable, start: float) -> None:
        wait = _monotonic() - start
        for listener in self._listeners:
            on_refused = getattr(listener, "on_refused", None)
            if on_refused is not None:
                on_refused(self.name, exc, wait)

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
            if cancelled:
                return None  # a cancelled caller leaves now; the reset goes on, bounded, in its task
            return asyncio.shield(task)  # the reset finishes even if the releasing task is cancelled
        if self._blocked or self._shrinking or now >= rec.expires_at or rec.generation != self._generation:
            self._free(rec, now)  # recycling, draining, paused: the general path
            return None
        rec.last_used = rec.checked_at = now
        fresh = now + self._check_after
        rec.fresh_until = fresh if fresh < rec.expires_at else rec.expires_at
        if self._waiters:  # straight to the next waiter, which stays counted in use
            waiter = self._waiters.take(now)
            if waiter is not None:
                waiter.fut.set_result(rec)
                if self._waiters.mode == "lifo":
                    self._standing()
                return None
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
            # bounded() terminates the connection at the bound instead of waiting on the driver's
            # own cancellation (psycopg's adds seconds on a stalled network)
            await bounded(self._restore(rec.conn, cancelled), self.config.reset_timeout,
                          lambda: connector.terminate(rec.conn), "the reset")
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

    async def _restore(self, conn: C, cancelled: bool) -> None:
        connector = self.connector
        if cancelled:
            await self._resync(conn)
        if self._full_reset:
            await connector.reset(conn)
        elif connector.in_transaction(conn):
            await connector.rollback(conn)

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


def _detach_handles_of(rec: _Record[Any]) -> None:
    """End the lease of whatever handle still points at ``rec``, so its holder gets LeaseEnded.

    Records keep no reference to their handle (that would cost the hot path and keep a dropped
    handle alive); at drain, a once-per-abandoned-lease scan of the referrers finds it instead.
    """
    for obj in gc.get_referrers(rec):
        if isinstance(obj, Handle) and obj._lg_rec is rec:
            obj._lg_conn = None
