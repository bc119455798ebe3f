"""The Connector protocol: everything the pool needs to know about one backend."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["Connector", "ServerInfo"]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What ``poolwarden check`` and the open-time share warning read from a server."""

    product: str
    version: str
    max_connections: int | None


class Connector(Protocol[C]):
    """How to open, check, reset and close one connection of a backend.

    A connector holds the revealed DSN; it must never put it into an exception, a log line or a
    repr. Errors from ``connect``/``ping`` are the driver's own; the pool classifies them through
    :meth:`is_disconnect` and scrubs their text before showing it.
    """

    #: The driver's name, e.g. ``"asyncpg"``; shown in stats and logs.
    driver: str
    #: The class of the driver's connection, used to build the lent handle's forwarding methods.
    connection_class: type[C]

    async def connect(self, timeout: float) -> C:
        """Open one connection, giving up after ``timeout`` seconds."""
        ...

    async def close(self, conn: C) -> None:
        """Close gracefully (the caller bounds the time); may raise the driver's error."""
        ...

    def terminate(self, conn: C) -> None:
        """Close at once without waiting on the server; never raises."""
        ...

    async def ping(self, conn: C) -> None:
        """One cheap round trip; raises the driver's error when the connection is unusable."""
        ...

    def is_closed(self, conn: C) -> bool:
        """True when the driver already knows this connection is dead (no I/O)."""
        ...

    def in_transaction(self, conn: C) -> bool:
        """True when the default reset has work to do (no I/O): a transaction open or failed, or
        state a lease switched that the pool promises the next one (autocommit, asyncpg callbacks).

        Called on every release: it must stay a few attribute reads.
        """
        ...

    async def rollback(self, conn: C) -> None:
        """The default reset: roll back an open transaction and undo what ``in_transaction`` saw."""
        ...

    async def reset(self, conn: C) -> None:
        """The backend's full session reset (``reset="full"``): session settings, temp tables, locks."""
        ...

    def transaction(self, conn: C) -> AbstractAsyncContextManager[object]:
        """A transaction block: commit on a clean exit, roll back on any exception."""
        ...

    def is_disconnect(self, exc: BaseException) -> bool:
        """True when ``exc`` means the connection (or the server) is gone, not a query error."""
        ...

    async def server_info(self, conn: C) -> ServerInfo:
        """Product, version and connection limit of the server."""
        ...
