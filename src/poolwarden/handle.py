"""The lent handle: forwards to the driver's connection and detaches when the lease ends.

Forwarding methods are built once per driver connection class, so a call costs one slot read and
one function call instead of a failed attribute lookup through ``__getattr__``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from poolwarden.errors import LeaseEnded

if TYPE_CHECKING:
    from poolwarden.lease import _Record
    from poolwarden.upkeep import PoolUpkeep

__all__ = ["Handle", "handle_class_for", "unwrap"]


class Handle:
    """A connection on lease. Use it like the driver's connection; it stops working at release."""

    # the pool fills the slots directly (no __init__ call on the hot path)
    __slots__ = ("_lg_conn", "_lg_rec")

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


def _ended(handle: Handle, name: str) -> LeaseEnded:
    resource = handle._lg_pool.name
    return LeaseEnded(
        f"{resource}: connection used after its lease ended (.{name}); "
        "acquire a new one instead of keeping it past the request",
        resource=resource,
    )


def _forwarder(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def forward(self: Handle, /, *args: Any, **kwargs: Any) -> Any:
        conn = self._lg_conn
        if conn is None:
            raise _ended(self, name)
        return func(conn, *args, **kwargs)

    forward.__name__ = name
    forward.__qualname__ = f"Handle.{name}"
    forward.__doc__ = func.__doc__
    return forward


_classes: dict[type[Any], type[Handle]] = {}


def handle_class_for(conn_class: type[Any]) -> type[Handle]:
    """The handle class for one driver connection class, built on first use."""
    cls = _classes.get(conn_class)
    if cls is None:
        methods: dict[str, Any] = {"__slots__": ()}
        for klass in reversed(conn_class.__mro__[:-1]):
            for name, value in vars(klass).items():
                if name.startswith("_") or name in _RESERVED:
                    continue
                plain = not isinstance(value, (staticmethod, classmethod, property, type))
                if plain and callable(value) and not inspect.isdatadescriptor(value):
                    methods[name] = _forwarder(name, getattr(conn_class, name))
                else:
                    methods.pop(name, None)  # a property or attribute: __getattr__ reads it live
        cls = type(f"{conn_class.__name__}Handle", (Handle,), methods)
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
