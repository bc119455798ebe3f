"""Open, close, re-open and the circuit: the lifecycle a Pool and a Client share.

One implementation, so both behave the same under cancellation and outages:

* ``open()`` cancelled or failed at any await leaves the resource closed (no background task, no
  connection), never half-open; a closed resource opens again (a new FastAPI lifespan, a new test).
* ``close()`` runs once: a second concurrent ``close()`` waits for the first and returns the same
  abandoned leases. Cancelling ``close()`` does not stop the cleanup, it hurries it: what the drain
  was waiting for is ended at once (leases abandoned, connections terminated, sync), the resource is
  closed, and only then does the cancellation propagate.
* The circuit (:class:`~poolwarden.retry.CircuitBreaker`) opens after ``failure_threshold``
  consecutive failures and is then probed every ``probe_interval`` (sooner while callers are
  refused), whatever the reconnect backoff has grown to: the first probe after the backend accepts
  again closes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, ClassVar, Literal, Protocol

from poolwarden.errors import BackendDown, PoolClosed, PoolwardenError
from poolwarden.observe.events import emit
from poolwarden.observe.leaks import LeaseInfo
from poolwarden.retry import MAX_PROBES, CircuitBreaker

__all__ = ["CLOSED", "DRAINING", "NEW", "OPEN", "OPENING", "Lifecycle", "State"]

State = Literal["new", "opening", "open", "draining", "closed"]
NEW: State = "new"
OPENING: State = "opening"
OPEN: State = "open"
DRAINING: State = "draining"
CLOSED: State = "closed"

_monotonic = time.monotonic


class _Settings(Protocol):
    @property
    def startup(self) -> str: ...
    @property
    def startup_timeout(self) -> float: ...
    @property
    def failure_threshold(self) -> int: ...
    @property
    def probe_interval(self) -> float: ...


class Lifecycle:
    """State, open/close/re-open and circuit of one resource; subclasses do the I/O.

    A subclass implements ``_start`` (begin: connect, start background tasks, set ``_state`` to
    OPEN), ``_drain`` (the graceful end, awaitable), ``_abort`` (the immediate end, sync: cancel
    tasks, terminate connections, end leases), ``_prepare_reopen`` (forget the last run),
    ``_probe_once`` (one probe of an open circuit) and ``_started`` (the first success came).
    """

    _kind: ClassVar[str] = "pool"
    _probe_noun: ClassVar[str] = "connects"
    name: str

    def _init_lifecycle(self, settings: _Settings) -> None:
        self._settings = settings
        self._state: State = NEW
        self._breaker = CircuitBreaker(settings.failure_threshold, settings.probe_interval)
        self._closing: asyncio.Future[list[LeaseInfo]] | None = None
        self._open_loop: asyncio.AbstractEventLoop | None = None  # the loop of the current run
        self._probe: asyncio.Task[None] | None = None
        self._probe_wake: asyncio.Event | None = None  # set when a refused caller hurries the probe
        self._settled = asyncio.Event()  # set on the first success, and by close(): wakes open()
        self._last_error: str | None = None
        self._connect_errors = 0
        self._refused: Counter[str] = Counter()  # acquires refused, by reason

    # -- hooks -----------------------------------------------------------------------------------

    async def _start(self) -> None:
        raise NotImplementedError

    async def _drain(self) -> list[LeaseInfo]:
        raise NotImplementedError

    def _abort(self) -> list[LeaseInfo]:
        raise NotImplementedError

    def _prepare_reopen(self) -> None:
        raise NotImplementedError

    async def _probe_once(self) -> None:
        """One probe of an open circuit; reports through ``_backend_ok``/``_backend_failed``."""
        raise NotImplementedError

    @property
    def _started(self) -> bool:
        raise NotImplementedError

    # -- open / close ----------------------------------------------------------------------------

    async def open(self, wait: bool | None = None) -> None:
        """Start; with ``wait`` (default: ``startup == "wait"``) block until the first success, or
        close and raise :class:`BackendDown` after ``startup_timeout``. Cancelled or failed, it
        leaves the resource closed (and openable again). A closed resource opens again."""
        if self._state in (OPEN, OPENING):
            if self._open_loop is not asyncio.get_running_loop():
                # its futures and tasks belong to that loop: sharing it would fail with untyped
                # RuntimeErrors, and this caller's close() would drain it under the other's feet
                raise PoolwardenError(f"{self.name}: already open on another event loop (a second app, "
                                      "TestClient or lifespan?); declare one Warden per loop",
                                      resource=self.name)
            return
        closing = self._closing
        if closing is not None and not closing.done():
            await asyncio.shield(closing)  # the previous run ends before the next one begins
            if self._state in (OPEN, OPENING):
                return
        if self._state == CLOSED:
            self._prepare_reopen()
            self._breaker = CircuitBreaker(self._settings.failure_threshold, self._settings.probe_interval)
            self._settled = asyncio.Event()
            self._probe = None
            self._probe_wake = None
        self._closing = None
        if wait is None:
            wait = self._settings.startup == "wait"
        try:
            self._open_loop = asyncio.get_running_loop()
            await self._start()
            if wait and not await self.wait_ready(self._settings.startup_timeout):
                if self._state != OPEN:
                    raise self._closed_error("closed while opening")
                cause = self._last_error or "no connection completed"
                raise BackendDown(
                    f"{self.name}: not ready within startup_timeout={self._settings.startup_timeout}s; "
                    f"last error: {cause}", resource=self.name, retry_after=self._settings.probe_interval)
        except BaseException:
            self._abort_now()
            raise

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first success; False if there was none (or the
        resource was closed meanwhile)."""
        if not self._started:
            try:
                async with asyncio.timeout(timeout):
                    await self._settled.wait()
            except TimeoutError:
                return False
        return self._started and self._state == OPEN

    async def close(self) -> list[LeaseInfo]:
        """Drain and close; returns the leases still out at the deadline (closed under them).

        Runs once: a concurrent call waits for the first and returns the same list. Cancelled, it
        ends everything at once (sync), marks the resource closed, then re-raises.
        """
        if self._state == NEW:
            self._state = CLOSED
            return []
        if self._state == CLOSED:
            return []
        closing = self._closing
        if closing is not None:
            # shielded: a cancelled second caller must not cancel the first one's outcome
            return list(await asyncio.shield(closing))
        closing = self._closing = asyncio.get_running_loop().create_future()
        self._state = DRAINING
        self._settled.set()
        try:
            abandoned = await self._drain()
        except BaseException:
            self._finish_close(closing, self._abort())
            raise
        self._finish_close(closing, abandoned)
        return abandoned

    def _abort_now(self) -> None:
        """End a run at once (sync): after a failed or cancelled open(), or a cancelled close()."""
        if self._state in (NEW, CLOSED):
            return
        closing = self._closing
        if closing is None:
            closing = self._closing = asyncio.get_running_loop().create_future()
        self._state = DRAINING
        self._settled.set()
        self._finish_close(closing, self._abort())

    def _finish_close(self, closing: asyncio.Future[list[LeaseInfo]], abandoned: list[LeaseInfo]) -> None:
        self._state = CLOSED
        if not closing.done():
            closing.set_result(abandoned)

    # -- circuit ---------------------------------------------------------------------------------

    def _backend_ok(self) -> None:
        if self._breaker.record_success():
            emit("circuit.closed", self.name, "the backend answers again")

    def _backend_failed(self, error: str, *, count: bool = True) -> None:
        """One failed connect (or ping, for a client): count it, and open the circuit at the threshold."""
        if count:
            self._connect_errors += 1
        self._last_error = error
        now = _monotonic()
        if self._breaker.record_failure(now):
            emit("circuit.opened", self.name,
                 f"{self._breaker.failures} {self._probe_noun} failed in a row; probing every "
                 f"{self._breaker.probe_interval}s", failures=self._breaker.failures,
                 retry_after=self._breaker.retry_after(now))
            self._circuit_opened()
            if self._state == OPEN and (self._probe is None or self._probe.done()):
                self._probe = asyncio.get_running_loop().create_task(self._probe_loop())
                self._track(self._probe)

    def _circuit_opened(self) -> None:
        """Hook: the circuit just opened (a pool fails its waiters)."""

    def _track(self, task: asyncio.Task[Any]) -> None:
        """Hook: a background task to cancel at close."""

    async def _probe_loop(self) -> None:
        """While the circuit is open: one probe every probe_interval until one closes it."""
        breaker = self._breaker
        wake = self._probe_wake = asyncio.Event()
        while self._state == OPEN and breaker.is_open:
            now = _monotonic()
            if breaker.begin_probe(now):
                probe = asyncio.get_running_loop().create_task(self._run_probe(breaker, wake))
                self._track(probe)
                continue
            wake.clear()
            # woken by a refused caller (hurry) or a probe that ended; at capacity only by the latter
            delay = None if breaker.in_flight >= MAX_PROBES else max(0.0, breaker.next_probe - now)
            try:
                async with asyncio.timeout(delay):
                    await wake.wait()
            except TimeoutError:
                pass

    async def _run_probe(self, breaker: CircuitBreaker, wake: asyncio.Event) -> None:
        try:
            await self._probe_once()
        finally:
            breaker.probe_ended()
            wake.set()

    # -- errors ----------------------------------------------------------------------------------

    def _down_error(self, *, count: bool = True) -> BackendDown:
        """The refusal while the circuit is open; ``retry_after`` is when the next probe ends."""
        now = _monotonic()
        if count:
            self._refused["backend_down"] += 1
            if self._breaker.hurry(now) and self._probe_wake is not None:
                self._probe_wake.set()
        retry = self._breaker.retry_after(now)
        return BackendDown(
            f"{self.name}: backend down after {self._breaker.failures} failed {self._probe_noun}; "
            f"next probe in {retry:.2f}s; last error: {self._last_error}",
            resource=self.name, retry_after=retry)

    def _closed_error(self, why: str | None = None) -> PoolClosed:
        if why is None:
            self._refused["closed"] += 1
        else:
            return PoolClosed(f"{self.name}: {why}", resource=self.name)
        if self._state in (NEW, OPENING):
            return PoolClosed(f"{self.name}: the {self._kind} is not open (use `async with`, open() or "
                              "the Warden lifespan)", resource=self.name)
        return PoolClosed(f"{self.name}: the {self._kind} is {self._state}", resource=self.name)

