"""The private-server helper used by the outage tests fails (not skips) under CI when it cannot run."""

from __future__ import annotations

import glob
import shutil

import pytest

from tests.support import private_pg


def test_missing_initdb_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true and no initdb anywhere, asking for a private PostgreSQL is a test failure."""
    monkeypatch.setattr(private_pg, "IN_CI", True)
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="initdb"), private_pg.private_postgres():
        pass


def test_missing_initdb_skips_loudly_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside CI the same situation is a loud skip."""
    monkeypatch.setattr(private_pg, "IN_CI", False)
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="SKIPPED LOUDLY"), private_pg.private_postgres():
        pass
