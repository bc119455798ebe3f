"""Version floors of optional dependencies, checked where they are first used.

An extra's minimum version (``fastapi>=0.121`` in ``poolwarden[fastapi]``) is not enforced when FastAPI
came from somewhere else (an application's own pin), so the feature poolwarden needs is checked at
declaration and a too-old FastAPI is a ConfigError naming the fix, not a TypeError at first use.
"""

from __future__ import annotations

import functools
import inspect

from poolwarden.errors import ConfigError

__all__ = ["require_fastapi"]


@functools.cache
def require_fastapi() -> None:
    """Raise ConfigError unless FastAPI is installed and has ``Depends(scope=...)`` (FastAPI >= 0.121)."""
    try:
        import fastapi
    except ImportError:
        raise ConfigError("poolwarden needs FastAPI for this: pip install 'poolwarden[fastapi]'") from None
    if "scope" not in inspect.signature(fastapi.Depends).parameters:
        raise ConfigError(
            f"poolwarden needs FastAPI >= 0.121 for Depends(scope=...), found FastAPI {fastapi.__version__}: "
            "pip install -U 'poolwarden[fastapi]'")
