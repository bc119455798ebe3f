"""The ClientDriver protocol: everything a :class:`~poolwarden.clients.Client` needs of one driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["ClientDriver", "Occupancy"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Occupancy:
    """Connections inside a driver's own pool, as far as the driver tells; ``max_size`` 0 is unbounded."""

    idle: int = 0
    in_use: int = 0
    max_size: int = 0


class ClientDriver(Protocol[T]):
    """How to make, check and close one shared, self-pooling driver client (pass one as ``factory=``).

    A driver holds the revealed URL; it must never put it into an exception, a log line or a repr.
    Two members are optional and read with ``getattr``: ``pings`` (``False`` when the client has no
    health check, so it is ready as soon as it is made; default ``True``) and
    ``occupancy(client) -> Occupancy`` (the driver pool's counts for stats; default zeros).
    """

    #: The driver's name, e.g. ``"redis"``; shown in stats and logs.
    driver: str

    async def open(self) -> T:
        """Make the client; no round trip needed (the first ping proves the backend)."""
        ...

    async def ping(self, client: T) -> None:
        """One cheap round trip; raises when the backend cannot serve (the caller bounds the time)."""
        ...

    async def close(self, client: T) -> None:
        """Close the client and every connection of its pool (the caller bounds the time)."""
        ...

    def is_disconnect(self, exc: BaseException) -> bool:
        """True when ``exc`` means the backend or the network is gone, not an error of the request."""
        ...
