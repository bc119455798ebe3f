"""Typing checks of the settings keywords, run by mypy --strict and pyright (not by pytest).

A misspelt or mistyped setting must be a type error: each ignore comment below would be reported as
unused (mypy's ``warn_unused_ignores`` under --strict, pyright's ``reportUnnecessaryTypeIgnoreComment``)
if the checkers let the call through.
"""

from __future__ import annotations

from typing import Unpack

from poolwarden import PoolConfig
from poolwarden.clients import ClientConfig
from poolwarden.settings import ClientSettings, PoolSettings


def declare_pool(name: str, url: str, **settings: Unpack[PoolSettings]) -> PoolConfig:
    """How ``Warden.pool`` takes its settings."""
    return PoolConfig.from_settings(name, settings, environ={})


def declare_client(name: str, url: str, **settings: Unpack[ClientSettings]) -> ClientConfig:
    """How ``Warden.client`` takes its settings."""
    return ClientConfig.from_settings(name, settings, environ={})


def good_settings_check() -> None:
    declare_pool("db", "sqlite://", max_size=2, acquire_timeout=5, max_idle=None, startup="lazy",
                 options={"timeout": 1.0})
    declare_client("cache", "redis://localhost", health_interval=None, health_path="/health")


def bad_settings_fail() -> None:
    declare_pool("db", "sqlite://", max_sise=2)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    declare_pool("db", "sqlite://", acquire_timeout="5s")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    declare_pool("db", "sqlite://", startup="eager")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    declare_pool("db", "sqlite://", optional="yes")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    declare_client("cache", "redis://localhost", max_size=3)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
