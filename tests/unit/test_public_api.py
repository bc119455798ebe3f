"""The public names of ``poolwarden``: pinned, importable, and errors shaped as documented."""

from __future__ import annotations

import importlib

import pytest

import poolwarden

PUBLIC = [
    "DSN",
    "BackendDown",
    "BackendLost",
    "Client",
    "ClientConfig",
    "ConfigError",
    "Connector",
    "HistogramSnapshot",
    "LeaseEnded",
    "LeaseInfo",
    "Override",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolOverloaded",
    "PoolStats",
    "PoolTimeout",
    "PoolwardenError",
    "Resource",
    "ServerInfo",
    "TransactionFailed",
    "Unavailable",
    "Warden",
    "unwrap",
]

ERRORS = ["PoolwardenError", "ConfigError", "LeaseEnded", "PoolClosed", "Unavailable", "PoolTimeout",
          "PoolOverloaded", "BackendDown", "BackendLost", "TransactionFailed"]


def test_all_is_pinned() -> None:
    """``poolwarden.__all__`` is exactly the documented public set, in order."""
    assert poolwarden.__all__ == PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_is_importable(name: str) -> None:
    """``from poolwarden import <name>`` works for every public name."""
    module = importlib.import_module("poolwarden")
    assert getattr(module, name) is not None


def test_init_only_reexports() -> None:
    """Nothing is defined in ``poolwarden/__init__.py``: every public object lives in a submodule."""
    for name in PUBLIC:
        obj = getattr(poolwarden, name)
        home = getattr(obj, "__module__", "")
        if name in ERRORS:
            continue  # errors present themselves as ``poolwarden.X`` on purpose
        assert home.startswith("poolwarden."), (name, home)


@pytest.mark.parametrize("name", ERRORS)
def test_errors_present_themselves_as_poolwarden(name: str) -> None:
    """Every error's ``__module__`` is "poolwarden", so tracebacks show ``poolwarden.PoolTimeout``."""
    error = getattr(poolwarden, name)
    assert error.__module__ == "poolwarden"
    assert issubclass(error, poolwarden.PoolwardenError)


def test_error_hierarchy() -> None:
    """The tree of DESIGN.md: generic handlers catch the right errors."""
    assert issubclass(poolwarden.PoolTimeout, TimeoutError)
    assert issubclass(poolwarden.ConfigError, ValueError)
    for name in ("PoolTimeout", "PoolOverloaded", "BackendDown"):
        assert issubclass(getattr(poolwarden, name), poolwarden.Unavailable)
    for name in ("ConfigError", "LeaseEnded", "PoolClosed"):
        assert not issubclass(getattr(poolwarden, name), poolwarden.Unavailable)


def test_errors_carry_resource_and_retry_after() -> None:
    """Errors take keyword data; retry_after is never negative."""
    err = poolwarden.PoolTimeout("db: no connection", resource="db", retry_after=2.5)
    assert (str(err), err.resource, err.retry_after) == ("db: no connection", "db", 2.5)
    assert poolwarden.BackendDown("x", retry_after=-3).retry_after == 0.0
    assert poolwarden.PoolClosed("x", resource="cache").resource == "cache"
