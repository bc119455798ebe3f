"""WardenPool: a ``sqlalchemy.pool.Pool`` whose connections are lent by a poolwarden pool.

SQLAlchemy keeps its dialect, events, ORM and transactions; poolwarden decides which connection is
lent, when, and what happens to it afterwards. The mapping, from SQLAlchemy's pool API:

* ``_do_get`` takes a poolwarden lease: the one a dependency already took on the event loop (a
  *reservation*, so a sync endpoint never waits for a slot inside its thread), or a new one (awaited
  through SQLAlchemy's greenlet bridge for an ``AsyncEngine``, or from a worker thread onto the loop
  for a sync ``Engine``).
* One SQLAlchemy connection record (and so one dialect wrapper, with its prepared-statement cache and
  its ``connect`` events run once) per pooled connection, kept while poolwarden keeps the connection.
* ``_do_return_conn`` ends the lease in poolwarden's release (shielded; a rollback only when a
  transaction is still open). SQLAlchemy's own reset-on-return is off so the two never both roll
  back, and pre-ping is off: poolwarden checks connections that idled, before it lends them.
* SQLAlchemy's invalidation (a disconnect it detected, a cancel, ``conn.invalidate()``) drops the
  wrapper; a disconnect discards the connection in poolwarden too, which then checks every older
  one before lending it. ``dispose()`` is poolwarden's ``expire()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry, Pool
from sqlalchemy.util.concurrency import await_only, in_greenlet

from poolwarden.errors import PoolwardenError
from poolwarden.handle import unwrap
from poolwarden.sync import acquire_blocking, on_loop

if TYPE_CHECKING:
    from poolwarden.warden import Resource

__all__ = ["ConnectionDropped", "Lease", "WardenPool"]


class ConnectionDropped(ConnectionError):
    """Given to poolwarden's release when SQLAlchemy found the connection dead or could not clean it."""


class Lease:
    """One poolwarden lease as SQLAlchemy sees it: the handle, who ends it, and what befell it."""

    __slots__ = ("dead", "error", "handle", "owned", "pool", "raw", "record", "returned")

    def __init__(self, pool: WardenPool | None, handle: Any, *, owned: bool) -> None:
        self.pool = pool
        self.handle = handle
        self.raw: Any = None
        self.owned = owned  # taken by SQLAlchemy itself (True) or reserved by a dependency (False)
        self.record: ConnectionPoolEntry | None = None
        self.dead = False  # SQLAlchemy saw a disconnect on it
        self.error: BaseException | None = None  # what made SQLAlchemy invalidate it
        self.returned = False

    def release_error(self) -> BaseException | None:
        """The exception poolwarden's release should see: a disconnect discards, a cancel resyncs."""
        if self.dead:
            return ConnectionDropped("SQLAlchemy detected a disconnect")
        if self.error is not None and not isinstance(self.error, Exception):
            return self.error
        return None


_reserved: ContextVar[Lease | None] = ContextVar("poolwarden_reserved_lease", default=None)


class WardenPool(Pool):
    """The SQLAlchemy pool of an engine built by ``warden.sqlalchemy(...)`` (see the module docs)."""

    def __init__(self, resource: Resource[Any], *, is_async: bool, dialect: Any, dispatch: Any,
                 connect_args: tuple[Sequence[Any], Mapping[str, Any]] = ((), {}),
                 echo: Any = None, logging_name: str | None = None) -> None:
        super().__init__(cast(Any, self._create_dbapi_connection), reset_on_return=None, pre_ping=False,
                         dialect=dialect, _dispatch=dispatch, echo=echo,
                         logging_name=logging_name or resource.name)
        self.resource = resource
        self._async = is_async
        # the dialect's wrapper options (asyncpg's prepared_statement_cache_size...): the driver
        # connection itself comes from poolwarden, which ignores the rest
        self._connect_args = connect_args
        # after a full reset (DISCARD ALL, COM_RESET_CONNECTION) the wrapper's caches are stale
        self._forget_always = resource.config.reset == "full"
        self._pending: Any = None
        self._records: dict[int, tuple[Any, ConnectionPoolEntry]] = {}
        self._leases: dict[ConnectionPoolEntry, Lease] = {}
        self._is_closed: Callable[[Any], bool] = resource.connector.is_closed
        self._in_transaction: Callable[[Any], bool] = resource.connector.in_transaction
        event.listen(self, "invalidate", self._on_invalidate)

    def __repr__(self) -> str:
        return f"<WardenPool {self.resource.name!r}>"

    # -- lending ----------------------------------------------------------------------------------

    @contextmanager
    def reserve(self, handle: Any) -> Iterator[Lease]:
        """Make the next checkout in this context use ``handle``, a lease the caller already holds."""
        lease = Lease(self, handle, owned=False)
        token = _reserved.set(lease)
        try:
            yield lease
        finally:
            _reserved.reset(token)

    def _do_get(self) -> ConnectionPoolEntry:
        lease = _reserved.get()
        if lease is None or lease.pool is not self or lease.record is not None:
            lease = Lease(self, self._acquire(), owned=True)
        try:
            lease.raw = unwrap(lease.handle)
            record = self._record_for(lease.raw)
        except BaseException as exc:
            if lease.owned:
                self._end(lease, exc)
            raise
        lease.record = record
        self._leases[record] = lease
        return record

    def _acquire(self) -> Any:
        if self._async:
            return await_only(self.resource._acquire(None))
        return acquire_blocking(self.resource)

    def has_wrapper(self, raw: Any) -> bool:
        """True when a checkout of ``raw`` reuses its wrapper: no connect events, no I/O."""
        entry = self._records.get(id(raw))
        return entry is not None and entry[0] is raw and entry[1].dbapi_connection is not None

    def _record_for(self, raw: Any) -> ConnectionPoolEntry:
        if self.has_wrapper(raw):
            return self._records[id(raw)][1]
        self._prune()
        self._pending = raw
        try:
            record = self._create_connection()  # runs the dialect's connect events, once per connection
        finally:
            self._pending = None
        self._records[id(raw)] = (raw, record)
        return record

    def _create_dbapi_connection(self, record: ConnectionPoolEntry) -> Any:
        raw = self._pending
        if raw is None:
            raise PoolwardenError(f"{self.resource.name}: SQLAlchemy asked for a new connection outside "
                                  "a poolwarden lease (recycle and pool-wide invalidation are "
                                  "poolwarden's job here)", resource=self.resource.name)
        if not self._async:
            return raw  # a sync driver's connection is the DBAPI connection

        async def lent(*args: Any, **kwargs: Any) -> Any:
            return raw

        cargs, cparams = self._connect_args
        return self._dialect.connect(*cargs, **{**cparams, "async_creator_fn": lent})  # type: ignore[union-attr]

    def _prune(self) -> None:
        """Forget wrappers of connections poolwarden has closed (found on each new wrapper: rare)."""
        for key, (raw, record) in list(self._records.items()):
            if record.dbapi_connection is None or self._is_closed(raw):
                del self._records[key]

    def _forget(self, raw: Any) -> None:
        entry = self._records.get(id(raw))
        if entry is not None and entry[0] is raw:
            del self._records[id(raw)]

    # -- returning --------------------------------------------------------------------------------

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        lease = self._leases.pop(record, None)
        if lease is None:
            return
        lease.returned = True
        raw = lease.raw
        # A wrapper SQLAlchemy dropped, or a transaction it left open (poolwarden rolls it back under
        # the wrapper's feet), means the wrapper no longer matches the connection: make a new one.
        if (record.dbapi_connection is None or lease.error is not None or self._forget_always
                or self._safe_in_tx(raw)):
            self._forget(raw)
        if lease.owned:
            self._end(lease, lease.release_error())

    def _safe_in_tx(self, raw: Any) -> bool:
        try:
            return self._in_transaction(raw)
        except Exception:
            return True

    def _end(self, lease: Lease, exc: BaseException | None) -> None:
        """End a lease SQLAlchemy took itself, from whichever context SQLAlchemy returns it in."""
        resource = self.resource
        loop = resource._loop
        if loop is None or loop.is_closed():
            return
        if not on_loop(loop):
            loop.call_soon_threadsafe(_release_later, resource, lease.handle, exc)
            return
        pending = resource._release_nowait(lease.handle, exc)
        if pending is not None and in_greenlet():
            try:
                await_only(pending)  # the reset runs shielded; waiting keeps FIFO order honest
            except Exception:
                pass

    def _on_invalidate(self, dbapi_connection: Any, record: ConnectionPoolEntry,
                       exception: BaseException | None) -> None:
        lease = self._leases.get(record)
        if lease is not None:
            lease.error = exception or ConnectionDropped("invalidated by the application")

    def _invalidate(self, connection: Any, exception: BaseException | None = None,
                    _checkin: bool = True) -> None:
        # SQLAlchemy calls this for a disconnect only; instead of its pool-wide timestamp, poolwarden
        # discards this connection and checks every older one before lending it.
        record = getattr(connection, "_connection_record", None)
        lease = self._leases.get(record) if record is not None else None
        if lease is not None:
            lease.dead = True
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        # The driver connection belongs to poolwarden, which closes it (or keeps it) at release.
        pass

    # -- the rest of SQLAlchemy's pool API ---------------------------------------------------------

    def dispose(self) -> None:
        """``engine.dispose()``: poolwarden replaces every connection (idle now, lent at return)."""
        resource = self.resource
        loop = resource._loop
        self._records.clear()
        if loop is None or loop.is_closed() or resource.state != "open":
            return
        if on_loop(loop):
            resource.expire()
        else:
            loop.call_soon_threadsafe(resource.expire)

    def recreate(self) -> WardenPool:
        return self  # the same poolwarden pool goes on lending; dispose() already expired it

    def status(self) -> str:
        s = self.resource.stats()
        return (f"WardenPool {s.resource!r}: size={s.size} idle={s.idle} in_use={s.in_use} "
                f"waiting={s.waiting} max_size={s.max_size}")

    def checkedout(self) -> int:
        return len(self._leases)


def _release_later(resource: Resource[Any], handle: Any, exc: BaseException | None) -> None:
    resource._release_nowait(handle, exc)

