"""The exception hierarchy: every failure lifeguard reports is one of these."""

from __future__ import annotations

__all__ = [
    "BackendDown",
    "ConfigError",
    "LeaseEnded",
    "LifeguardError",
    "PoolClosed",
    "PoolOverloaded",
    "PoolTimeout",
    "Unavailable",
]


class LifeguardError(Exception):
    """Base class of every error lifeguard raises itself."""

    __module__ = "lifeguard"

    def __init__(self, message: str, *, resource: str | None = None) -> None:
        super().__init__(message)
        self.resource = resource


class ConfigError(LifeguardError, ValueError):
    """A bad URL, option or missing driver extra, raised when the resource is declared."""

    __module__ = "lifeguard"


class LeaseEnded(LifeguardError):
    """A lent connection was used after its lease ended."""

    __module__ = "lifeguard"


class PoolClosed(LifeguardError):
    """Acquire on a pool that is closed, draining or not yet open."""

    __module__ = "lifeguard"


class Unavailable(LifeguardError):
    """The resource cannot serve now; retry after ``retry_after`` seconds."""

    __module__ = "lifeguard"

    def __init__(self, message: str, *, resource: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, resource=resource)
        self.retry_after = max(0.0, retry_after)


class PoolTimeout(Unavailable, TimeoutError):
    """No connection became free within ``acquire_timeout``."""

    __module__ = "lifeguard"


class PoolOverloaded(Unavailable):
    """``max_waiting`` callers were already queued, so this one was refused at once."""

    __module__ = "lifeguard"


class BackendDown(Unavailable):
    """The circuit is open: the backend failed to connect repeatedly."""

    __module__ = "lifeguard"
