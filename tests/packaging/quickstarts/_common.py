"""Helpers shared by the quick-start scripts (copied next to each script; stdlib only)."""

import importlib.util
import os

POSTGRES = os.environ["POOLWARDEN_TEST_POSTGRES"]
MYSQL = os.environ["POOLWARDEN_TEST_MYSQL"]
REDIS = os.environ["POOLWARDEN_TEST_REDIS"]


def absent(*modules: str) -> None:
    """The extra installed only what it declares: none of ``modules`` is importable."""
    present = [m for m in modules if importlib.util.find_spec(m) is not None]
    assert not present, f"installed without being asked for: {present}"
