"""What the connector modules share: the driver's URL, option checks and a transaction block."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any

from poolwarden.config import DSN
from poolwarden.errors import ConfigError, PoolwardenError, TransactionFailed


def driver_url(dsn: DSN) -> str:
    """The URL for the driver: no ``+driver`` suffix (the drivers' own parsers reject it) and no user
    name or password, which go to the driver as parameters (:meth:`DSN.credentials`), so that no driver
    error or log line can echo them as part of a URL."""
    return dsn.url(scheme=dsn.scheme)


def network_error(exc: BaseException) -> bool:
    """A socket error or a timeout: the connection's state is unknown, so it counts as lost.

    Not poolwarden's own errors: a ``PoolTimeout`` (a ``TimeoutError``) raised by another acquire
    inside a lease says nothing about the connection lent.
    """
    return isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, PoolwardenError)


def check_options(driver: str, options: Mapping[str, Any], allowed: Collection[str]) -> dict[str, Any]:
    """A copy of ``options``; raises ConfigError naming (never showing the value of) unknown keys.

    Checked at declaration so that a typo fails at start-up, not at the first connect.
    """
    unknown = sorted(key for key in options if key not in allowed)
    if unknown:
        raise ConfigError(
            f"unknown {driver} option{'s' if len(unknown) > 1 else ''}: {', '.join(map(repr, unknown))}"
        )
    return dict(options)


def conflict(driver: str, key: str, reason: str) -> ConfigError:
    return ConfigError(f"{driver} option {key!r} cannot be set {reason}")


@asynccontextmanager
async def transaction_block(
    begin: Callable[[], Awaitable[object]],
    commit: Callable[[], Awaitable[object]],
    rollback: Callable[[], Awaitable[object]],
    is_open: Callable[[], bool],
) -> AsyncIterator[None]:
    """BEGIN, then COMMIT on a clean exit or ROLLBACK on any exception (cancellation included).

    Before the COMMIT, ``is_open`` must still say a transaction is open: the server may have ended it
    under the block (MySQL rolls back the whole transaction on a deadlock and commits it implicitly
    before DDL, SQLite rolls it back on some errors), after which the statements ran in autocommit
    and a COMMIT would report a success that the transaction never had.
    """
    await begin()
    try:
        yield
        if not is_open():
            raise TransactionFailed(
                "the transaction ended before its COMMIT (the server rolled it back after an error "
                "such as a deadlock, or committed it implicitly, e.g. before DDL); statements after "
                "that point ran outside any transaction")
    except BaseException as exc:
        try:
            await rollback()
        except Exception as rollback_exc:
            # The connection is most likely gone; the caller's own error is the one worth raising,
            # and the pool learns about the connection from is_disconnect/is_closed.
            exc.add_note(f"poolwarden: the rollback failed too ({type(rollback_exc).__name__})")
        raise
    await commit()
