"""A SQLAlchemy ``AsyncEngine``, whose connection pool SQLAlchemy keeps (``kind="sqlalchemy"``).

The URL is SQLAlchemy's own (``postgresql+asyncpg://``, ``mysql+asyncmy://``, ``sqlite+aiosqlite://``)
and must name an async driver: checked at declaration. ``options`` go to ``create_async_engine``
(``pool_size``, ``max_overflow``, ``pool_pre_ping``, ``connect_args``...). The ping checks a connection
out of the engine's pool and runs ``SELECT 1``; close is ``dispose()``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as saexc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from poolwarden.clients.base import Occupancy
from poolwarden.clients.config import ClientConfig
from poolwarden.config import DSN
from poolwarden.errors import ConfigError

__all__ = ["SqlAlchemyDriver", "create"]

_SELECT_1 = text("SELECT 1")


def create(dsn: DSN, config: ClientConfig) -> SqlAlchemyDriver:
    """The engine driver for ``dsn``; raises ConfigError for a URL SQLAlchemy cannot use asynchronously."""
    return SqlAlchemyDriver(dsn, config)


# SQLAlchemy's async driver names -> the poolwarden extra that installs the driver
_EXTRAS = {"asyncpg": "postgres", "psycopg_async": "psycopg", "psycopg": "psycopg", "aiosqlite": "sqlite",
           "asyncmy": "mysql"}


class SqlAlchemyDriver:
    """Makes, pings and disposes a ``sqlalchemy.ext.asyncio.AsyncEngine``."""

    driver = "sqlalchemy"

    def __init__(self, dsn: DSN, config: ClientConfig) -> None:
        self._options = dict(config.options)
        error: str | None = None
        try:
            # a URL object with the password set apart: SQLAlchemy renders it as *** in reprs and logs
            self._url = make_url(dsn.url()).set(username=dsn.username, password=dsn.password)
            # the async variant of a dialect that has one (postgresql+psycopg -> psycopg_async)
            dialect: Any = self._url.get_dialect(_is_async=True)
        except Exception as exc:  # its message may quote the URL: name the type and the safe URL only
            error = f"SQLAlchemy cannot load a dialect for {dsn} ({type(exc).__name__})"
        if error is not None:
            raise ConfigError(error)  # outside the except block: no driver text in the chain
        if not getattr(dialect, "is_async", False):
            raise ConfigError(f"kind='sqlalchemy' needs an async driver, e.g. postgresql+asyncpg:// "
                              f"(got {dsn.scheme}{'+' + dsn.driver if dsn.driver else ''}://)")
        try:
            dialect.import_dbapi()
        except ImportError as exc:
            extra = _EXTRAS.get(dialect.driver)
            fix = f"pip install 'poolwarden[sqlalchemy,{extra}]'" if extra else (exc.name or "import failed")
            raise ConfigError(f"the {dialect.driver} driver for SQLAlchemy is not installed: {fix}") from None

    def __repr__(self) -> str:
        return "<SqlAlchemyDriver>"

    async def open(self) -> AsyncEngine:
        return create_async_engine(self._url, **self._options)

    async def ping(self, client: AsyncEngine) -> None:
        async with client.connect() as conn:
            await conn.execute(_SELECT_1)

    async def close(self, client: AsyncEngine) -> None:
        await client.dispose()

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, saexc.DBAPIError):
            return bool(exc.connection_invalidated)
        return isinstance(exc, (OSError, TimeoutError))

    def occupancy(self, client: AsyncEngine) -> Occupancy | None:
        pool: Any = client.pool
        if not hasattr(pool, "checkedout"):
            return None  # NullPool, StaticPool: nothing kept
        overflow = getattr(pool, "_max_overflow", -1)
        limit = pool.size() + overflow if overflow >= 0 else 0
        return Occupancy(idle=pool.checkedin(), in_use=pool.checkedout(), max_size=limit)
