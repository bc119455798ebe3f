"""Sync drivers and sync code: connectors for blocking drivers, and the threadpool deadlock guard.

FastAPI runs sync endpoints and sync dependencies in a threadpool (40 threads by default). A sync
endpoint that waits for a pool slot *inside* its thread can starve the requests that hold the
connections of the threads they need to finish (fastapi/fastapi#3205). poolwarden's dependencies
take the slot on the event loop *before* the endpoint occupies a thread, so the threads never wait
on a dry pool; a request that cannot get a slot in time fails fast with a 503.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors import import_backend
from poolwarden.connectors.base import Connector
from poolwarden.errors import ConfigError, PoolwardenError
from poolwarden.observe.events import emit
from poolwarden.pool import Pool

__all__ = ["acquire_blocking", "connector", "connector_for", "is_blocking", "on_loop", "warn_threadpool"]

C = TypeVar("C")

# scheme[+driver] -> (module, driver package, extra)
_SYNC_BACKENDS: dict[tuple[str, str | None], tuple[str, str, str]] = {
    ("postgresql", None): ("sync_psycopg", "psycopg", "psycopg"),
    ("postgres", None): ("sync_psycopg", "psycopg", "psycopg"),
    ("postgresql", "psycopg"): ("sync_psycopg", "psycopg", "psycopg"),
    ("postgres", "psycopg"): ("sync_psycopg", "psycopg", "psycopg"),
    ("sqlite", None): ("sync_sqlite", "sqlite3", "sqlite"),
    ("sqlite", "pysqlite"): ("sync_sqlite", "sqlite3", "sqlite"),
    ("mysql", None): ("sync_pymysql", "pymysql", "pymysql"),
    ("mariadb", None): ("sync_pymysql", "pymysql", "pymysql"),
    ("mysql", "pymysql"): ("sync_pymysql", "pymysql", "pymysql"),
    ("mariadb", "pymysql"): ("sync_pymysql", "pymysql", "pymysql"),
}


def connector_for(dsn: DSN, config: PoolConfig) -> Connector[Any]:
    """The blocking-driver connector for ``dsn``: psycopg, sqlite3 or PyMySQL."""
    key = (dsn.scheme, dsn.driver)
    if key not in _SYNC_BACKENDS:
        known = sorted({f"{s}+{d}" if d else s for s, d in _SYNC_BACKENDS})
        raise ConfigError(f"no sync driver for URL scheme "
                          f"{dsn.scheme + ('+' + dsn.driver if dsn.driver else '')!r} "
                          f"(supported: {', '.join(known)})")
    module_name, package, extra = _SYNC_BACKENDS[key]
    module = import_backend(f"poolwarden.connectors.{module_name}", package, extra,
                            f"the {package} driver is not installed")
    made: Connector[Any] = module.create(dsn, config)
    return made


def connector(url: str, *, options: Mapping[str, Any] | None = None,
              pgbouncer: bool = False) -> Connector[Any]:
    """A blocking-driver connector for ``warden.pool(name, url, connector=...)``.

    The pool lends ``psycopg.Connection``, ``sqlite3.Connection`` or PyMySQL connections; its
    ``connection`` dependency takes the slot on the event loop, so a sync endpoint can use it safely.
    """
    return connector_for(DSN(url), PoolConfig(options=dict(options or {}), pgbouncer=pgbouncer))


def is_blocking(pool: Pool[Any]) -> bool:
    """True when ``pool`` lends connections of a blocking driver (meant for sync code)."""
    return bool(getattr(pool.connector, "blocking", False))


def _threadpool_size() -> int | None:
    try:
        anyio = importlib.import_module("anyio.to_thread")
        return int(anyio.current_default_thread_limiter().total_tokens)
    except Exception:  # no anyio, or not inside an anyio-compatible loop
        return None


def warn_threadpool(pool: Pool[Any]) -> None:
    """At start-up: warn when sync code holding a thread could wait on this pool (fastapi#3205)."""
    threads = _threadpool_size()
    if threads is None or pool.config.max_size >= threads:
        return
    emit("sync.threadpool", pool.name,
         f"sync pool max_size={pool.config.max_size} < threadpool size {threads}: a sync endpoint that "
         "takes a connection inside its thread (engine.connect(), Session(engine), pool.acquire from a "
         "thread) can stall every thread (fastapi#3205); take it through poolwarden's dependencies "
         "(orm.session, orm.transaction, the pool's connection), which wait on the event loop before "
         "a thread is occupied", level=logging.WARNING, max_size=pool.config.max_size, threads=threads)


_warned: set[str] = set()


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """True when the calling thread is the one running ``loop`` (any loop implementation)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def acquire_blocking(pool: Pool[C], timeout: float | None = None) -> C:
    """From a worker thread: wait for a connection of ``pool`` (its state stays on the event loop).

    Refused on the event loop's own thread, where waiting would block the loop that lends. This is
    the pattern that can stall a threadpool; prefer the dependencies (see :func:`warn_threadpool`).
    """
    loop = pool._loop
    if loop is None or loop.is_closed():
        raise pool._closed_error()
    if on_loop(loop):
        raise PoolwardenError(
            f"{pool.name}: a sync connection cannot be waited for on the event loop thread; use the "
            "orm.session / orm.transaction dependency, `async with orm.session_scope()`, or a thread",
            resource=pool.name)
    if pool.name not in _warned:
        _warned.add(pool.name)
        emit("sync.blocking_acquire", pool.name,
             "a thread waits for a connection (fastapi#3205 risk); take it through the dependencies",
             level=logging.WARNING)
    future = asyncio.run_coroutine_threadsafe(pool._acquire(timeout), loop)
    return future.result()
