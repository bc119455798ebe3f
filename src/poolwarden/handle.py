"""The lent handle: forwards to the driver's connection and detaches when the lease ends.

Forwarding methods are built once per driver connection class, so a call costs one slot read, one
class attribute lookup and one function call instead of a failed attribute lookup through
``__getattr__``. The method is looked up on the connection's class at call time, as asyncpg's own
pool proxy does, so an instrumentation that patches the driver's class after the pool was created
(OpenTelemetry's asyncpg instrumentor) still sees every call.

Driver objects that hold the connection (a prepared statement, a cursor, a transaction) are handed
out wrapped in a :class:`LeaseBound` proxy that stops working with the lease, and callbacks
registered through a handle receive the handle, never the raw connection. What is wrapped is
declared by each connector through :func:`register_driver`, so a plain query pays nothing for it.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Callable, Collection, Generator, Mapping
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from poolwarden.errors import LeaseEnded

if TYPE_CHECKING:
    from poolwarden.lease import _Record
    from poolwarden.upkeep import PoolUpkeep

__all__ = ["Handle", "LeaseBound", "handle_class_for", "register_driver", "unwrap"]


class Handle:
    """A connection on lease. Use it like the driver's connection; it stops working at release."""

    # the pool fills the slots directly (no __init__ call on the hot path); weakly referenced by
    # the callbacks registered through it, so a dropped handle still gives its slot back
    __slots__ = ("__weakref__", "_lg_conn", "_lg_rec")

    _lg_conn: Any
    _lg_rec: _Record[Any]

    @property
    def _lg_pool(self) -> PoolUpkeep[Any]:
        return self._lg_rec.pool

    def __getattr__(self, name: str) -> Any:
        conn = self._lg_conn
        if conn is None:
            raise _ended(self, name)
        return getattr(conn, name)

    def __repr__(self) -> str:
        state = "lent" if self._lg_conn is not None else "ended"
        return f"<poolwarden handle of {self._lg_pool.name!r} ({state})>"

    def __del__(self) -> None:
        # a handle dropped while its lease is still open: give the slot back to the pool
        if getattr(self, "_lg_conn", None) is not None:
            try:
                self._lg_pool._handle_lost(self._lg_rec)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


class LeaseBound:
    """A driver object made from a handle (cursor, prepared statement, transaction); it forwards to
    the object while the lease lasts and raises :class:`LeaseEnded` once it has ended."""

    __slots__ = ("_lg_handle", "_lg_obj")

    _lg_handle: Handle
    _lg_obj: Any

    def __getattr__(self, name: str) -> Any:
        handle = self._lg_handle
        conn = handle._lg_conn
        if conn is None:
            raise _ended(handle, name)
        value = getattr(self._lg_obj, name)
        return handle if value is conn else value  # cursor.connection is the handle, not the driver's

    def __repr__(self) -> str:
        state = "lent" if self._lg_handle._lg_conn is not None else "ended"
        return f"<poolwarden {type(self._lg_obj).__name__} of {self._lg_handle._lg_pool.name!r} ({state})>"


def _ended(handle: Handle, name: str) -> LeaseEnded:
    resource = handle._lg_pool.name
    return LeaseEnded(
        f"{resource}: connection used after its lease ended (.{name}); "
        "acquire a new one instead of keeping it past the request",
        resource=resource,
    )


# -- what each driver declares ------------------------------------------------------------------------


class _Driver:
    __slots__ = ("base", "bound", "callbacks", "resources")

    def __init__(self, base: type[Any] | None, bound: frozenset[str], callbacks: Mapping[str, bool],
                 resources: tuple[type[Any], ...]) -> None:
        self.base = base
        self.bound = bound
        self.callbacks = callbacks
        self.resources = resources


_drivers: dict[type[Any], _Driver] = {}
_NO_DRIVER = _Driver(None, frozenset(), {}, ())


def register_driver(conn_class: type[Any], *, base: type[Any] | None = None, bound: Collection[str] = (),
                    callbacks: Mapping[str, bool] | None = None,
                    resources: tuple[type[Any], ...] = ()) -> None:
    """Tell the handle about one driver's connection class (and its subclasses).

    ``base``: an extra base class for handles, so they pass the driver's own ``isinstance`` checks
    where the driver's pool proxy does. ``bound``: methods whose result (awaited if need be) holds
    the connection and must end with the lease. ``resources``: the classes of such objects, so that
    those made from a bound object (a cursor from a prepared statement) are bound too.
    ``callbacks``: methods whose last positional argument is a callback, mapped to whether the
    driver passes that callback the connection first (it then receives the handle instead).
    """
    _drivers[conn_class] = _Driver(base, frozenset(bound), dict(callbacks or {}), resources)


def _driver_of(conn_class: type[Any]) -> _Driver:
    for klass in conn_class.__mro__:
        driver = _drivers.get(klass)
        if driver is not None:
            return driver
    return _NO_DRIVER


# -- handle classes -----------------------------------------------------------------------------------


def _named(forward: Callable[..., Any], name: str, doc: str | None, owner: str) -> Callable[..., Any]:
    forward.__name__ = name
    forward.__qualname__ = f"{owner}.{name}"
    forward.__doc__ = doc
    return forward


def _forwarder(name: str, doc: str | None) -> Callable[..., Any]:
    def forward(self: Handle, /, *args: Any, **kwargs: Any) -> Any:
        conn = self._lg_conn
        if conn is None:
            raise _ended(self, name)
        # looked up now, not when the class was built: instrumentations patch the driver's class
        return getattr(type(conn), name)(conn, *args, **kwargs)

    return _named(forward, name, doc, "Handle")


def _bound_forwarder(name: str, doc: str | None, resources: tuple[type[Any], ...]) -> Callable[..., Any]:
    def forward(self: Handle, /, *args: Any, **kwargs: Any) -> Any:
        conn = self._lg_conn
        if conn is None:
            raise _ended(self, name)
        return _bind(getattr(type(conn), name)(conn, *args, **kwargs), self, resources)

    return _named(forward, name, doc, "Handle")


def _callback_forwarder(name: str, doc: str | None, gets_conn: bool) -> Callable[..., Any]:
    def forward(self: Handle, /, *args: Any, **kwargs: Any) -> Any:
        conn = self._lg_conn
        if conn is None:
            raise _ended(self, name)
        if "callback" in kwargs:
            kwargs["callback"] = _Callback(kwargs["callback"], self, gets_conn)
        elif args:
            args = (*args[:-1], _Callback(args[-1], self, gets_conn))
        return getattr(type(conn), name)(conn, *args, **kwargs)

    return _named(forward, name, doc, "Handle")


class _Callback:
    """A callback registered through a handle: called with the handle instead of the driver's
    connection, and silent once the lease has ended (the pool removes it at release).

    Equal to (and hashed as) the user's callback, so the driver's ``remove_*`` finds it.
    """

    __slots__ = ("cb", "gets_conn", "handle")

    def __init__(self, cb: Callable[..., Any], handle: Handle, gets_conn: bool) -> None:
        self.cb = cb
        # weak: the driver's connection holds this callback, the pool holds the connection, and a
        # strong reference would keep a dropped handle (and its pool slot) alive for ever
        self.handle = weakref.ref(handle)
        self.gets_conn = gets_conn

    def __call__(self, *args: Any) -> None:
        handle = self.handle()
        if handle is None or handle._lg_conn is None:
            return
        if self.gets_conn:
            args = (handle, *args[1:])
        result = self.cb(*args)
        if inspect.isawaitable(result):  # an async callback: run in a task, as the driver does
            task = asyncio.ensure_future(result)
            _callback_tasks.add(task)
            task.add_done_callback(_callback_tasks.discard)

    def __eq__(self, other: object) -> bool:
        return other is self or other == self.cb

    def __hash__(self) -> int:
        return hash(self.cb)


_callback_tasks: set[asyncio.Future[Any]] = set()  # referenced until done, or asyncio may drop them
_classes: dict[type[Any], type[Handle]] = {}


def _public_methods(target: type[Any]) -> dict[str, Any]:
    """Plain public methods of ``target`` by name; properties and attributes are left out."""
    methods: dict[str, Any] = {}
    for klass in reversed(target.__mro__[:-1]):
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            plain = not isinstance(value, (staticmethod, classmethod, property, type))
            if plain and callable(value) and not inspect.isdatadescriptor(value):
                methods[name] = value
            else:
                methods.pop(name, None)  # a property or attribute: __getattr__ reads it live
    return methods


def handle_class_for(conn_class: type[Any]) -> type[Handle]:
    """The handle class for one driver connection class, built on first use."""
    cls = _classes.get(conn_class)
    if cls is None:
        driver = _driver_of(conn_class)
        ns: dict[str, Any] = {"__slots__": ()}
        for name, value in _public_methods(conn_class).items():
            if name in _RESERVED:
                continue
            doc = getattr(value, "__doc__", None)
            if name in driver.bound:
                ns[name] = _bound_forwarder(name, doc, driver.resources)
            elif name in driver.callbacks:
                ns[name] = _callback_forwarder(name, doc, driver.callbacks[name])
            else:
                ns[name] = _forwarder(name, doc)
        bases: tuple[type[Any], ...] = (Handle,) if driver.base is None else (Handle, driver.base)
        cls = type(f"{conn_class.__name__}Handle", bases, ns)
        _classes[conn_class] = cls
    return cls


_RESERVED = frozenset({"unwrap"})


def unwrap(handle: Any) -> Any:
    """The driver's own connection behind a handle (raises LeaseEnded once the lease is over).

    For driver APIs that check ``isinstance``; the raw connection must not be kept past the lease.
    """
    if not isinstance(handle, Handle):
        return handle
    conn = handle._lg_conn
    if conn is None:
        raise _ended(handle, "unwrap")
    return conn


# -- lease-bound driver objects -----------------------------------------------------------------------


def _bind(value: Any, handle: Handle, resources: tuple[type[Any], ...]) -> Any:
    """``value`` bound to the lease of ``handle`` if it holds the connection (or will, once awaited)."""
    if isinstance(value, resources):
        proxy: Any = object.__new__(_bound_class_for(type(value), resources))
        proxy._lg_handle = handle
        proxy._lg_obj = value
        return proxy
    if type(value) is CoroutineType:
        return _bind_later(value, handle, resources)
    return value


async def _bind_later(coro: Any, handle: Handle, resources: tuple[type[Any], ...]) -> Any:
    return _bind(await coro, handle, resources)


_bound_classes: dict[type[Any], type[LeaseBound]] = {}
# the protocols a driver object may implement; each forwarded only when the class has it
_DUNDERS = ("__aenter__", "__aexit__", "__aiter__", "__anext__", "__enter__", "__exit__", "__iter__",
            "__next__", "__len__")


def _bound_class_for(obj_class: type[Any], resources: tuple[type[Any], ...]) -> type[LeaseBound]:
    cls = _bound_classes.get(obj_class)
    if cls is not None:
        return cls
    ns: dict[str, Any] = {"__slots__": ()}
    for name, value in _public_methods(obj_class).items():
        ns[name] = _object_forwarder(name, getattr(value, "__doc__", None), resources)
    for name in _DUNDERS:
        if callable(getattr(obj_class, name, None)):
            ns[name] = _object_forwarder(name, None, resources)
    if callable(getattr(obj_class, "__await__", None)):
        def __await__(self: LeaseBound) -> Generator[Any, None, Any]:
            handle = self._lg_handle
            if handle._lg_conn is None:
                raise _ended(handle, "__await__")
            result = yield from self._lg_obj.__await__()
            return _rebind(self, result, resources)

        ns["__await__"] = __await__
    cls = type(f"LeaseBound{obj_class.__name__}", (LeaseBound,), ns)
    _bound_classes[obj_class] = cls
    return cls


def _rebind(proxy: LeaseBound, result: Any, resources: tuple[type[Any], ...]) -> Any:
    if result is proxy._lg_obj:
        return proxy  # cursor.execute() returns the cursor: the bound one
    return _bind(result, proxy._lg_handle, resources)


# methods of driver objects whose awaited result may be another one (cursor.execute() returns the
# cursor); the other coroutine methods return rows and are handed back unwrapped, a frame cheaper
_CHAINING = frozenset({"execute", "executemany", "executescript", "__aenter__"})


def _object_forwarder(name: str, doc: str | None, resources: tuple[type[Any], ...]) -> Callable[..., Any]:
    chaining = name in _CHAINING

    def forward(self: LeaseBound, /, *args: Any, **kwargs: Any) -> Any:
        handle = self._lg_handle
        if handle._lg_conn is None:
            raise _ended(handle, name)
        obj = self._lg_obj
        result = getattr(type(obj), name)(obj, *args, **kwargs)
        if type(result) is CoroutineType:
            return _rebind_later(self, result, resources) if chaining else result
        if result is obj:
            return self
        return _bind(result, handle, resources) if isinstance(result, resources) else result

    return _named(forward, name, doc, "LeaseBound")


async def _rebind_later(proxy: LeaseBound, coro: Any, resources: tuple[type[Any], ...]) -> Any:
    return _rebind(proxy, await coro, resources)
