"""Tools the tests drive (promtool, Debian's chromium): installed by the project's scripts when missing.

On a developer's machine a tool that still cannot be had skips loudly; with CI=true it fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.servers import IN_CI

ROOT = Path(__file__).resolve().parents[2]


def require_tool(script: str, binary: str) -> str:
    """The path of ``binary``, after running ``scripts/<script>`` (apt-get) when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    try:
        done = subprocess.run([str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=900)
        path = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        path, done = "", None
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = (done.stderr or "").strip()[-500:]
    if path and Path(path).exists():
        return path
    message = f"{binary} is missing and scripts/{script} could not install it: {reason}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing tool is a failure)", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")
