"""The listener protocol that exporters implement to see every acquire, release and connect."""

from __future__ import annotations

from typing import Protocol

__all__ = ["PoolListener"]


class PoolListener(Protocol):
    """Called synchronously by the pool; must be fast and must not raise.

    Optional methods, looked up by name: ``on_closed(resource)`` once a resource has closed (from the
    warden), and ``on_refused(resource, exc, wait)`` when an acquire ends in
    :class:`~poolwarden.Unavailable` (``exc``: PoolTimeout, PoolOverloaded or BackendDown) after
    ``wait`` seconds, called in the task of the caller that was refused (tracing relies on this).
    """

    def on_acquired(self, resource: str, wait: float) -> None: ...
    def on_released(self, resource: str, use: float) -> None: ...
    def on_connected(self, resource: str, seconds: float) -> None: ...
    def on_timeout(self, resource: str) -> None: ...
