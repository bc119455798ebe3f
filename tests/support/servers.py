"""Where the real servers are, and what to do when one is missing (skip loudly, or fail in CI)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get("POOLWARDEN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("POOLWARDEN_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("POOLWARDEN_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def reachable(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=timeout):
            return True
    except OSError:
        return False


def require(url: str, what: str) -> str:
    """Return ``url`` if its server answers; else skip loudly, or fail when CI=true."""
    if not reachable(url):
        message = f"{what} is not reachable at {urlsplit(url).hostname}:{urlsplit(url).port}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing server is a failure)", pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {message}")
    return url
