"""Stats snapshots, the lifecycle event log, leak detection and metric exporters."""

from __future__ import annotations

import importlib
from types import ModuleType

# The exporters import nothing heavy themselves, but they are not imported with the package: reach
# them as ``poolwarden.observe.otel`` / ``.prometheus`` after a plain ``import poolwarden`` (PEP 562).
_LAZY = frozenset({"otel", "prometheus"})


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
