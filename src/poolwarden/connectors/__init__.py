"""Connectors, one module per backend, chosen from the URL scheme.

Each backend module is imported only when a URL asks for it, so a missing driver is reported at
declaration as a :class:`~poolwarden.ConfigError` naming the extra to install.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors.base import Connector, ServerInfo
from poolwarden.errors import ConfigError

__all__ = ["Connector", "ServerInfo", "connector_for", "import_backend"]

# scheme[+driver] -> (module, driver package, extra)
_BACKENDS: dict[tuple[str, str | None], tuple[str, str, str]] = {
    ("postgresql", None): ("asyncpg", "asyncpg", "postgres"),
    ("postgres", None): ("asyncpg", "asyncpg", "postgres"),
    ("postgresql", "asyncpg"): ("asyncpg", "asyncpg", "postgres"),
    ("postgres", "asyncpg"): ("asyncpg", "asyncpg", "postgres"),
    ("postgresql", "psycopg"): ("psycopg", "psycopg", "psycopg"),
    ("postgres", "psycopg"): ("psycopg", "psycopg", "psycopg"),
    ("sqlite", None): ("sqlite", "aiosqlite", "sqlite"),
    ("sqlite", "aiosqlite"): ("sqlite", "aiosqlite", "sqlite"),
    ("mysql", None): ("mysql", "asyncmy", "mysql"),
    ("mariadb", None): ("mysql", "asyncmy", "mysql"),
    ("mysql", "asyncmy"): ("mysql", "asyncmy", "mysql"),
    ("mariadb", "asyncmy"): ("mysql", "asyncmy", "mysql"),
}


def connector_for(dsn: DSN, config: PoolConfig) -> Connector[Any]:
    """The connector for ``dsn``'s scheme; raises ConfigError for an unknown scheme or missing driver."""
    key = (dsn.scheme, dsn.driver)
    if key not in _BACKENDS:
        known = sorted({f"{s}+{d}" if d else s for s, d in _BACKENDS})
        given = dsn.scheme + ("+" + dsn.driver if dsn.driver else "")
        close = difflib.get_close_matches(given, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unsupported URL scheme {given!r} (supported: {', '.join(known)}){hint}")
    module_name, package, extra = _BACKENDS[key]
    module = import_backend(f"poolwarden.connectors.{module_name}", package, extra,
                            f"the {package} driver is not installed")
    connector: Connector[Any] = module.create(dsn, config)
    return connector


def import_backend(module: str, package: str, extra: str, missing: str) -> ModuleType:
    """Import poolwarden's ``module`` for a backend once its driver ``package`` imports; otherwise a
    ConfigError that starts with ``missing`` and names the extra to install."""
    try:
        importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"{missing}: pip install 'poolwarden[{extra}]'") from None
    return importlib.import_module(module)
