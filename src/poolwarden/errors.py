"""The exception hierarchy: every failure poolwarden reports is one of these."""

from __future__ import annotations

__all__ = [
    "BackendDown",
    "BackendLost",
    "ConfigError",
    "LeaseEnded",
    "PoolClosed",
    "PoolOverloaded",
    "PoolTimeout",
    "PoolwardenError",
    "TransactionFailed",
    "Unavailable",
]


class PoolwardenError(Exception):
    """Base class of every error poolwarden raises itself."""

    __module__ = "poolwarden"

    def __init__(self, message: str, *, resource: str | None = None) -> None:
        super().__init__(message)
        self.resource = resource


class ConfigError(PoolwardenError, ValueError):
    """A bad URL, option or missing driver extra, raised when the resource is declared."""

    __module__ = "poolwarden"


class LeaseEnded(PoolwardenError):
    """A lent connection was used after its lease ended."""

    __module__ = "poolwarden"


class PoolClosed(PoolwardenError):
    """Acquire on a pool that is closed, draining or not yet open."""

    __module__ = "poolwarden"


class Unavailable(PoolwardenError):
    """The resource cannot serve now; retry after ``retry_after`` seconds."""

    __module__ = "poolwarden"

    def __init__(self, message: str, *, resource: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, resource=resource)
        self.retry_after = max(0.0, retry_after)


class PoolTimeout(Unavailable, TimeoutError):
    """No connection became free within ``acquire_timeout``."""

    __module__ = "poolwarden"


class PoolOverloaded(Unavailable):
    """``max_waiting`` callers were already queued, so this one was refused at once."""

    __module__ = "poolwarden"


class BackendDown(Unavailable):
    """The circuit is open: the backend failed to connect repeatedly."""

    __module__ = "poolwarden"


class BackendLost(Unavailable):
    """The connection broke mid-request (or a COMMIT/ROLLBACK outlived ``reset_timeout``): the
    request's effect on the server is unknown; the connection was discarded."""

    __module__ = "poolwarden"


class TransactionFailed(PoolwardenError):
    """A transaction block did not commit: COMMIT answered ROLLBACK (an error inside it was caught),
    or the transaction had already ended before its COMMIT."""

    __module__ = "poolwarden"
