"""A PgBouncer in transaction mode for the tests: started by ``scripts/pgbouncer`` once per session.

``ensure()`` runs the script (which installs PgBouncer with apt-get when it is missing, and does
nothing when it already listens), waits until the port answers, and returns the URL of database
``test`` through it. When that cannot be done the test is skipped loudly, or fails under CI=true,
like a missing server in :mod:`tests.support.servers`.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.servers import IN_CI, POSTGRES_URL, reachable, require

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pgbouncer"
PORT = int(os.environ.get("POOLWARDEN_PGBOUNCER_PORT", "6432"))
PGBOUNCER_URL = os.environ.get("POOLWARDEN_TEST_PGBOUNCER", f"postgresql://postgres@127.0.0.1:{PORT}/test")
# What the bouncer itself answers as (SHOW POOLS, SHOW SERVERS): only the simple query protocol.
ADMIN_URL = PGBOUNCER_URL.rsplit("/", 1)[0] + "/pgbouncer"


def _start() -> str | None:
    """Run the script and wait for the port; None on success, else what went wrong."""
    if os.environ.get("POOLWARDEN_TEST_PGBOUNCER"):
        # someone else's bouncer: only wait for it
        if _wait(PGBOUNCER_URL, 5.0):
            return None
        return f"POOLWARDEN_TEST_PGBOUNCER={PGBOUNCER_URL} does not answer"
    try:
        # the first run may install the package with apt-get
        done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "POOLWARDEN_PGBOUNCER_PORT": str(PORT)})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SCRIPT.relative_to(ROOT)} could not run: {type(exc).__name__}: {exc}"
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        return f"{SCRIPT.relative_to(ROOT)} exited with {done.returncode}: {output}"
    if not _wait(PGBOUNCER_URL, 10.0):
        return f"{SCRIPT.relative_to(ROOT)} ran but 127.0.0.1:{PORT} does not answer: {done.stdout.strip()}"
    return None


def _wait(url: str, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not reachable(url, timeout=0.5):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def running() -> bool:
    """True when a bouncer already answers on the port (one this session did not start)."""
    return reachable(PGBOUNCER_URL, timeout=0.5)


def stop() -> None:
    """Stop the bouncer scripts/pgbouncer started (the session that started it stops it)."""
    subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=30,
                   env={**os.environ, "POOLWARDEN_PGBOUNCER_PORT": str(PORT)})


def ensure() -> str:
    """The URL of database ``test`` through PgBouncer, started if needed; else skip (or fail in CI).

    Called by the session-scoped ``pgbouncer_url`` fixture, so the script runs once per session
    (pytest also keeps a skip or failure for the rest of the session).
    """
    require(POSTGRES_URL, "PostgreSQL")  # the bouncer is no use without the server behind it
    problem = _start()
    if problem is not None:
        message = f"PgBouncer is not available: {problem}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing server is a failure)", pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {message}")
    return PGBOUNCER_URL
