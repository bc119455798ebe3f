"""The settings as typed keywords: ``warden.pool("db", url, **settings: Unpack[PoolSettings])``.

A misspelt or mistyped setting (``max_sise=2``, ``acquire_timeout="5s"``) then fails mypy --strict and
pyright before it fails at declaration. Each key mirrors a field of :class:`~poolwarden.PoolConfig` or
:class:`~poolwarden.ClientConfig` (a unit test keeps them in step: add a key here with each new field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from poolwarden.config import Reset, Startup

__all__ = ["ClientSettings", "PoolSettings"]


class PoolSettings(TypedDict, total=False):
    """The keyword settings of ``warden.pool()``; see :class:`~poolwarden.PoolConfig`."""

    min_size: int
    max_size: int
    acquire_timeout: float
    max_waiting: int | None
    adaptive_queue: bool
    queue_target: float
    queue_interval: float
    max_response_lease: float | None
    max_lifetime: float | None
    max_idle: float | None
    check_after_idle: float | None
    keepalive_interval: float | None
    connect_timeout: float
    backoff_initial: float
    backoff_max: float
    failure_threshold: int
    probe_interval: float
    startup: Startup
    startup_timeout: float
    optional: bool
    leak_threshold: float | None
    drain_timeout: float
    reset: Reset
    reset_timeout: float
    pgbouncer: bool
    options: Mapping[str, Any]


class ClientSettings(TypedDict, total=False):
    """The keyword settings of ``warden.client()``; see :class:`~poolwarden.ClientConfig`."""

    startup: Startup
    startup_timeout: float
    optional: bool
    connect_timeout: float
    health_interval: float | None
    health_path: str | None
    failure_threshold: int
    probe_interval: float
    backoff_initial: float
    backoff_max: float
    options: Mapping[str, Any]
