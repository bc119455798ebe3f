"""The public names of ``lifeguard``: pinned, importable, and errors shaped as documented."""

from __future__ import annotations

import importlib

import pytest

import lifeguard

PUBLIC = [
    "DSN",
    "BackendDown",
    "Client",
    "ClientConfig",
    "ConfigError",
    "Connector",
    "HistogramSnapshot",
    "LeaseEnded",
    "LeaseInfo",
    "Lifeguard",
    "LifeguardError",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolOverloaded",
    "PoolStats",
    "PoolTimeout",
    "Resource",
    "ServerInfo",
    "Unavailable",
    "unwrap",
]

ERRORS = ["LifeguardError", "ConfigError", "LeaseEnded", "PoolClosed", "Unavailable", "PoolTimeout",
          "PoolOverloaded", "BackendDown"]


def test_all_is_pinned() -> None:
    """``lifeguard.__all__`` is exactly the documented public set, in order."""
    assert lifeguard.__all__ == PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_is_importable(name: str) -> None:
    """``from lifeguard import <name>`` works for every public name."""
    module = importlib.import_module("lifeguard")
    assert getattr(module, name) is not None


def test_init_only_reexports() -> None:
    """Nothing is defined in ``lifeguard/__init__.py``: every public object lives in a submodule."""
    for name in PUBLIC:
        obj = getattr(lifeguard, name)
        home = getattr(obj, "__module__", "")
        if name in ERRORS:
            continue  # errors present themselves as ``lifeguard.X`` on purpose
        assert home.startswith("lifeguard."), (name, home)


@pytest.mark.parametrize("name", ERRORS)
def test_errors_present_themselves_as_lifeguard(name: str) -> None:
    """Every error's ``__module__`` is "lifeguard", so tracebacks show ``lifeguard.PoolTimeout``."""
    error = getattr(lifeguard, name)
    assert error.__module__ == "lifeguard"
    assert issubclass(error, lifeguard.LifeguardError)


def test_error_hierarchy() -> None:
    """The tree of DESIGN.md: generic handlers catch the right errors."""
    assert issubclass(lifeguard.PoolTimeout, TimeoutError)
    assert issubclass(lifeguard.ConfigError, ValueError)
    for name in ("PoolTimeout", "PoolOverloaded", "BackendDown"):
        assert issubclass(getattr(lifeguard, name), lifeguard.Unavailable)
    for name in ("ConfigError", "LeaseEnded", "PoolClosed"):
        assert not issubclass(getattr(lifeguard, name), lifeguard.Unavailable)


def test_errors_carry_resource_and_retry_after() -> None:
    """Errors take keyword data; retry_after is never negative."""
    err = lifeguard.PoolTimeout("db: no connection", resource="db", retry_after=2.5)
    assert (str(err), err.resource, err.retry_after) == ("db: no connection", "db", 2.5)
    assert lifeguard.BackendDown("x", retry_after=-3).retry_after == 0.0
    assert lifeguard.PoolClosed("x", resource="cache").resource == "cache"
