"""Client[T]: one shared, self-pooling driver client with a lifecycle, a health check and a circuit.

A Redis client, an httpx client or a SQLAlchemy engine pools its connections itself, so poolwarden lends
no leases here: every request gets the same object. What poolwarden adds is what a pool has around its
connections: ordered start-up that waits (with backoff) for the backend, a background ping whose
consecutive failures open a circuit (``BackendDown``, so FastAPI answers 503 without touching the
backend), readiness and stats in the same shape as a pool's, and a bounded close.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from functools import cached_property
from types import TracebackType
from typing import Any, Generic, TypeVar

from poolwarden.clients.base import ClientDriver, Occupancy
from poolwarden.clients.config import ClientConfig
from poolwarden.config import DSN, Secrets, public_error
from poolwarden.errors import ConfigError
from poolwarden.lifecycle import OPEN, OPENING, Lifecycle
from poolwarden.observe.events import emit
from poolwarden.observe.leaks import LeaseInfo
from poolwarden.observe.stats import Histogram, PoolStats
from poolwarden.retry import Backoff

__all__ = ["Client"]

T = TypeVar("T")

_monotonic = time.monotonic
_EMPTY = Histogram().snapshot()  # no leases, so no wait, use or connect times of our own
_NONE = Occupancy()


class Client(Lifecycle, Generic[T]):
    """A shared driver client declared with ``warden.client(...)``; opened and closed by the lifespan.

    In FastAPI use ``Annotated[Redis, cache.depends]`` (or ``cache.client``); elsewhere ``cache.get()``.
    Both raise :class:`PoolClosed` before open and from the start of close, and :class:`BackendDown`
    (with ``retry_after``) while the circuit is open, which ``warden.install`` turns into a 503.
    ``open()`` with ``startup="wait"`` raises :class:`BackendDown` when no ping succeeded within
    ``startup_timeout``.
    """

    _kind = "client"
    _probe_noun = "pings"

    def __init__(self, name: str, driver: ClientDriver[T], config: ClientConfig | None = None,
                 dsn: DSN | None = None) -> None:
        cfg = config or ClientConfig()
        self.name = name
        self.driver = driver
        self.config = cfg
        self.dsn = dsn  # str() and repr() of a DSN are redacted
        self._secrets = Secrets((*(dsn.secrets.values if dsn else ()), *cfg.secrets))
        self._pings = bool(getattr(driver, "pings", True))
        self._init_lifecycle(cfg)
        self._client: T | None = None
        self._backoff = Backoff(cfg.backoff_initial, cfg.backoff_max)
        self._watcher: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[Any]] = set()  # pings of an open circuit, run by the watcher
        self._wake = asyncio.Event()  # a request saw a disconnect: check now rather than at the next tick
        self._ever_ok = False
        self._handed = 0
        self._pings_failed = 0
        self._last_check: float | None = None
        self._last_check_seconds: float | None = None

    def __repr__(self) -> str:
        return (f"<Client {self.name!r} {self.driver.driver} {self._state} ready={self.ready} "
                f"circuit={self._breaker.state}>")

    # -- lifecycle: open(), wait_ready() and close() come from Lifecycle (shared with Pool) ----------

    async def _start(self) -> None:
        self._state = OPENING
        failed: ConfigError | None = None
        try:
            client = await self.driver.open()
        except Exception as exc:
            failed = ConfigError(f"{self.name}: could not make the {self.driver.driver} client: "
                                 f"{self._describe(exc)}", resource=self.name)
        if failed is not None:
            raise failed  # outside the except block: the driver's error (its text) is not its __context__
        if self._state != OPENING:  # closed while the driver was making it
            _close_later(self.driver, client, self.config.connect_timeout, None)
            raise self._closed_error("closed while opening")
        self._client = client
        self._state = OPEN
        emit("client.opened", self.name, f"driver={self.driver.driver}", driver=self.driver.driver)
        if not self._pings:
            self._became_ready()
            return
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name=f"poolwarden {self.name}")
        self._probe = self._watcher  # the watcher probes the open circuit itself

    @property
    def _started(self) -> bool:
        return self._ever_ok

    def _prepare_reopen(self) -> None:
        self._ever_ok = False
        self._wake = asyncio.Event()
        self._watcher = None

    async def _drain(self) -> list[LeaseInfo]:
        """Stop the health check and close the driver client within ``connect_timeout``."""
        watcher = self._watcher
        tasks = [t for t in (watcher, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        # cancelled here, close() calls _abort(), which still finds the watcher and the client
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watcher = None
        client, self._client = self._client, None
        if client is None:
            return []
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await self.driver.close(client)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                _close_later(self.driver, client, self.config.connect_timeout, None)
                raise
            self._last_error = self._describe(exc)
            emit("client.closed", self.name, f"close failed: {self._secrets.describe(exc)}",
                 level=logging.WARNING, error=self._last_error)
        else:
            emit("client.closed", self.name)
        return []  # a client lends no leases; the list keeps the shape of Pool.close

    def _abort(self) -> list[LeaseInfo]:
        watcher, self._watcher = self._watcher, None
        client, self._client = self._client, None
        for task in (watcher, *self._probes):
            if task is not None:
                task.cancel()
        if client is not None:
            _close_later(self.driver, client, self.config.connect_timeout, watcher)
        emit("client.closed", self.name, "cut short")
        return []

    async def __aenter__(self) -> Client[T]:
        await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- use -------------------------------------------------------------------------------------

    def get(self) -> T:
        """The driver client, for code outside FastAPI; raises PoolClosed or BackendDown (see above)."""
        client = self._client
        if self._state != "open" or client is None:
            raise self._closed_error()
        if self._breaker.is_open:
            raise self._down_error()
        self._handed += 1
        return client

    @cached_property
    def depends(self) -> Any:
        """A FastAPI ``Depends`` yielding the driver client; a disconnect error raised by the endpoint
        makes the health check run at once."""
        from poolwarden._requires import require_fastapi

        require_fastapi()  # FastAPI is imported only by those who use it, and must be recent enough
        from fastapi import Depends

        async def use() -> AsyncIterator[T]:
            client = self.get()
            try:
                yield client
            except Exception as exc:
                if self.driver.is_disconnect(exc):
                    self._suspect()
                raise

        use.__name__ = f"{self.name}_client"
        return Depends(use, scope="function")

    @property
    def client(self) -> Any:
        """The same ``Depends`` as :attr:`depends`."""
        return self.depends

    @property
    def ready(self) -> bool:
        """True when the client can serve: open, a ping succeeded, the circuit is closed."""
        return self._state == "open" and self._ever_ok and not self._breaker.is_open

    @property
    def state(self) -> str:
        return self._state

    def stats(self) -> PoolStats:
        """A frozen snapshot in a pool's shape (sizes from the driver's own pool when it tells); no I/O."""
        now = _monotonic()
        occ = self._occupancy()
        return PoolStats(
            resource=self.name, driver=self.driver.driver, state=self._state,
            circuit=self._breaker.state,
            size=occ.idle + occ.in_use, idle=occ.idle, in_use=occ.in_use, connecting=0, waiting=0,
            min_size=0, max_size=occ.max_size, acquired=self._handed, released=self._handed,
            discarded={}, timeouts=0, overloaded=0, connect_errors=self._connect_errors,
            pings_failed=self._pings_failed, wait_time=_EMPTY, use_time=_EMPTY, connect_time=_EMPTY,
            retry_after=self._breaker.retry_after(now), last_error=self._last_error,
            last_check_seconds=self._last_check_seconds,
            last_check_age=None if self._last_check is None else now - self._last_check,
            ready=self.ready, optional=self.config.optional, extra={"kind": "client"},
            refused=dict(self._refused),
        )

    # -- health ----------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Ping: with backoff until one succeeds, every health_interval while healthy, every
        probe_interval (the shared circuit's probe loop) while the circuit is open."""
        attempt = 0
        while self._state == OPEN:
            if self._breaker.is_open:
                await self._probe_loop()
                attempt = 0
                continue
            if await self._check():
                attempt = 0
                interval = self.config.health_interval
                await self._sleep(None if interval is None else interval * random.uniform(0.9, 1.1),
                                  wakeable=True)
            elif not self._breaker.is_open:
                await self._sleep(self._backoff.delay(attempt), wakeable=False)
                attempt += 1

    async def _probe_once(self) -> None:
        await self._check()

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _sleep(self, delay: float | None, *, wakeable: bool) -> None:
        # Only a healthy client is woken early: while failing, the backoff paces the pings, not the
        # rate at which requests fail.
        try:
            if not wakeable:
                await asyncio.sleep(delay or 0.0)
                return
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
        finally:
            self._wake.clear()

    def _suspect(self) -> None:
        if self._state == "open" and not self._breaker.is_open:
            self._wake.set()

    async def _check(self) -> bool:
        client = self._client
        if client is None:  # pragma: no cover - the watcher is cancelled before the client goes
            return False
        start = _monotonic()
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await self.driver.ping(client)
        except Exception as exc:
            self._check_failed(exc)
            return False
        now = _monotonic()
        self._last_check, self._last_check_seconds = now, now - start
        self._backend_ok()
        if not self._ever_ok:
            self._became_ready()
        return True

    def _check_failed(self, exc: Exception) -> None:
        self._pings_failed += 1
        if isinstance(exc, TimeoutError) and not str(exc):
            error = f"TimeoutError: no answer within connect_timeout={self.config.connect_timeout}s"
        else:
            error = self._describe(exc)
        emit("ping.failed", self.name, self._secrets.describe(exc) if str(exc) else error, error=error)
        # failing to (re)reach the backend counts as a connect error, not a blip of a healthy one
        self._backend_failed(error, count=not self.ready)

    def _became_ready(self) -> None:
        self._ever_ok = True
        self._settled.set()
        emit("client.ready", self.name)

    # -- helpers ---------------------------------------------------------------------------------

    def _occupancy(self) -> Occupancy:
        read = getattr(self.driver, "occupancy", None)
        client = self._client
        if read is None or client is None:
            return _NONE
        try:
            occ = read(client)
        except Exception:  # stats are advisory: a driver's internals may move
            return _NONE
        return occ if isinstance(occ, Occupancy) else _NONE

    def _describe(self, exc: BaseException) -> str:
        # public (stats, health, problem bodies, BackendDown): the class and SQLSTATE; the driver's
        # text goes to the log only, through self._secrets.describe
        return public_error(exc)


_closing: set[asyncio.Task[None]] = set()  # closes that outlive their caller, kept from the GC


def _close_later(driver: ClientDriver[Any], client: Any, timeout: float,
                 watcher: asyncio.Task[None] | None) -> None:
    """Close ``client`` in a task of its own (bounded): for a caller that cannot wait (cancelled).
    The cancelled ``watcher`` ends first: a ping it had under way may still hold a connection."""

    async def close() -> None:
        try:
            async with asyncio.timeout(timeout):
                if watcher is not None:
                    await asyncio.wait([watcher])
                await driver.close(client)
        except BaseException:  # nothing left to tell it to: the run that owned it has ended
            pass

    task = asyncio.get_running_loop().create_task(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
