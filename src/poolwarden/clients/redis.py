"""Redis through ``redis.asyncio``: one ``Redis`` client whose connection pool redis-py keeps.

``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs go to ``Redis.from_url``; ``options`` are
``Redis`` keyword arguments (``max_connections``, ``decode_responses``...). ``socket_connect_timeout``
defaults to ``connect_timeout``. The ping is Redis's ``PING``.
"""

from __future__ import annotations

import inspect
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc

from poolwarden.clients.base import Occupancy
from poolwarden.clients.config import ClientConfig
from poolwarden.config import DSN
from poolwarden.connectors._shared import check_options

__all__ = ["RedisDriver", "create"]

_OWN_OPTIONS = frozenset({"self", "connection_pool", "url"})
_UNBOUNDED = 2**31  # redis-py's max_connections when none is given


def create(dsn: DSN, config: ClientConfig) -> RedisDriver:
    """The Redis driver for ``dsn``; raises ConfigError for an unknown option."""
    return RedisDriver(dsn, config)


class RedisDriver:
    """Makes, pings and closes a ``redis.asyncio.Redis``."""

    driver = "redis"

    def __init__(self, dsn: DSN, config: ClientConfig) -> None:
        allowed = set(inspect.signature(aioredis.Redis.__init__).parameters) - _OWN_OPTIONS
        self._options = check_options(self.driver, config.options, allowed)
        self._options.setdefault("socket_connect_timeout", config.connect_timeout)
        self._options.update(dsn.credentials(self._options, user_key="username"))
        self._url = dsn.url()  # no credentials: they go as parameters, which the URL's cannot override

    def __repr__(self) -> str:
        return "<RedisDriver>"

    async def open(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self._url, **self._options)

    async def ping(self, client: aioredis.Redis) -> None:
        await client.ping()

    async def close(self, client: aioredis.Redis) -> None:
        await client.aclose()

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, OSError))

    def occupancy(self, client: aioredis.Redis) -> Occupancy:
        pool: Any = client.connection_pool
        limit = int(pool.max_connections)
        return Occupancy(idle=len(pool._available_connections), in_use=len(pool._in_use_connections),
                         max_size=0 if limit >= _UNBOUNDED else limit)
