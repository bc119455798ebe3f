"""Shared, self-pooling clients with a lifecycle but no leases: Redis, httpx, a SQLAlchemy engine.

Each driver module is imported only when a client asks for it, so a missing driver is reported at
declaration as a :class:`~poolwarden.ConfigError` naming the extra to install.
"""

from __future__ import annotations

from typing import Any

from poolwarden.clients.base import ClientDriver, Occupancy
from poolwarden.clients.client import Client
from poolwarden.clients.config import ClientConfig
from poolwarden.config import DSN
from poolwarden.connectors import import_backend
from poolwarden.errors import ConfigError

__all__ = ["Client", "ClientConfig", "ClientDriver", "Occupancy", "driver_for"]

# kind -> (module, driver package, extra)
_KINDS: dict[str, tuple[str, str, str]] = {
    "redis": ("redis", "redis.asyncio", "redis"),
    "http": ("http", "httpx", "http"),
    "sqlalchemy": ("sqlalchemy", "sqlalchemy.ext.asyncio", "sqlalchemy"),
}
_SCHEMES = {"redis": "redis", "rediss": "redis", "unix": "redis", "http": "http", "https": "http"}


def driver_for(dsn: DSN, config: ClientConfig, kind: str | None = None) -> ClientDriver[Any]:
    """The driver for ``dsn`` (by scheme, or ``kind``); raises ConfigError for an unknown scheme or kind,
    a setting the kind has no use for, or a missing driver package."""
    by_scheme = _SCHEMES.get(dsn.scheme)
    if kind is None:
        if by_scheme is None:
            raise ConfigError(f"unsupported client URL scheme {dsn.scheme!r} (supported: "
                              f"{', '.join(sorted(_SCHEMES))}; "
                              "pass kind='sqlalchemy' for a SQLAlchemy engine)")
        kind = by_scheme
    elif kind not in _KINDS:
        raise ConfigError(f"kind must be one of {', '.join(map(repr, _KINDS))} (got kind={kind!r})")
    elif kind != "sqlalchemy" and by_scheme != kind:
        raise ConfigError(f"a {kind} client needs a "
                          f"{' or '.join(s + '://' for s, k in _SCHEMES.items() if k == kind)} URL "
                          f"(got {dsn.scheme}://)")
    if config.health_path is not None and kind != "http":
        raise ConfigError(f"health_path is for http clients (got health_path={config.health_path!r} "
                          f"for a {kind} client)")
    module_name, package, extra = _KINDS[kind]
    module = import_backend(f"poolwarden.clients.{module_name}", package, extra,
                            f"the {kind} client needs {package.partition('.')[0]}")
    driver: ClientDriver[Any] = module.create(dsn, config)
    return driver
