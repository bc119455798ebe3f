"""What the asyncmy and PyMySQL connectors share - the disconnect error codes and how a URL becomes
connect parameters - without importing either driver (so ``poolwarden[pymysql]`` works without
asyncmy, and ``poolwarden[mysql]`` without PyMySQL)."""

from __future__ import annotations

from typing import Any

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors._shared import check_options
from poolwarden.errors import ConfigError

__all__ = ["DISCONNECT_CODES", "connect_params"]

#: the URL query parameters both drivers take; others go in ``options=``
URL_PARAMETERS = frozenset({"charset", "unix_socket", "sql_mode", "init_command", "program_name"})

# the server ended the session, or the connection cannot be trusted any more
DISCONNECT_CODES = frozenset({
    1053,  # ER_SERVER_SHUTDOWN
    1152, 1158, 1159, 1160, 1161, 1184,  # aborted connection, network read/write errors
    1927,  # ER_CONNECTION_KILLED (MariaDB)
    2002, 2003,  # CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR: cannot reach the server
    2006,  # CR_SERVER_GONE_ERROR
    2013,  # CR_SERVER_LOST
    2014,  # CR_COMMANDS_OUT_OF_SYNC: the stream is desynced, the connection cannot be trusted
    2055,  # CR_SERVER_LOST_EXTENDED
    3169,  # ER_SESSION_WAS_KILLED (MySQL 8)
    4031,  # ER_CLIENT_INTERACTION_TIMEOUT: closed by the server after wait_timeout (MySQL 8)
})


def connect_params(driver: str, dsn: DSN, config: PoolConfig, allowed: set[str]) -> dict[str, Any]:
    """The driver's connect keywords: URL parts, credentials as parameters, URL query, then options
    (checked against ``allowed``); autocommit on unless the options say otherwise. Raises ConfigError
    for an unknown URL parameter or option."""
    options = check_options(driver, config.options, allowed)
    unknown = sorted(set(dsn.query) - URL_PARAMETERS)
    if unknown:
        raise ConfigError(f"unknown MySQL URL parameter{'s' if len(unknown) > 1 else ''}:"
                          f" {', '.join(map(repr, unknown))} (pass other settings in options=)")
    options.setdefault("autocommit", True)
    params: dict[str, Any] = {
        "host": dsn.host or "localhost",
        "port": dsn.port or 3306,
        "user": None,
        "password": "",
        "database": dsn.database or None,
        **dsn.credentials(options),
        **dsn.query,
        **options,
    }
    if isinstance(params["password"], str):
        # both drivers encode a str password as latin-1: 'é' would not match and '€' raise; the server
        # hashed the UTF-8 bytes that CREATE USER ... IDENTIFIED BY sent over a utf8mb4 session
        params["password"] = params["password"].encode()
    return params
