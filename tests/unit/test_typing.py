"""The typing checks run under both checkers users run: mypy --strict and pyright (basedpyright, from
PyPI, in the dev extra). tests/typing must pass both; tests/typing_errors must fail both exactly on
the lines marked ``# E``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import IN_CI

ROOT = Path(__file__).resolve().parents[2]
TYPING = ROOT / "tests" / "typing"
ERRORS = ROOT / "tests" / "typing_errors" / "misuse.py"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        message = f"{name} is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(f"{message}; CI=true: a missing checker is a failure", pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {message}")
    return path


def _pyright(*args: str) -> dict[str, object]:
    run = subprocess.run([_tool("basedpyright"), "--pythonpath", sys.executable, "--outputjson", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    report: dict[str, object] = json.loads(run.stdout)
    return report


def _pyright_error_lines(report: dict[str, object]) -> set[int]:
    diagnostics = report["generalDiagnostics"]
    assert isinstance(diagnostics, list)
    return {d["range"]["start"]["line"] + 1 for d in diagnostics if d["severity"] == "error"}


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("mypy"), "--strict", "--no-error-summary", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def _marked(path: Path) -> set[int]:
    return {n for n, line in enumerate(path.read_text().splitlines(), 1) if line.rstrip().endswith("# E")}


def test_typing_checks_pass_pyright_strict() -> None:
    """Every assert_type in tests/typing holds under pyright in strict mode, with no other error."""
    report = _pyright("-p", str(TYPING / "pyrightconfig.json"))
    summary = report["summary"]
    assert isinstance(summary, dict)
    assert summary["filesAnalyzed"] >= 2
    assert report["generalDiagnostics"] == [], json.dumps(report["generalDiagnostics"], indent=1)


def test_typing_checks_pass_mypy_strict() -> None:
    """Every assert_type in tests/typing holds under mypy --strict."""
    run = _mypy(str(TYPING))
    assert run.returncode == 0, run.stdout + run.stderr


def test_misuse_is_rejected_by_both_checkers_on_the_marked_lines() -> None:
    """A wrong connection type, a bad release mode and a method the driver lacks fail both checkers."""
    expected = _marked(ERRORS)
    assert expected
    found = re.findall(rf"{re.escape(ERRORS.name)}:(\d+): error", _mypy(str(ERRORS)).stdout)
    mypy_lines = {int(m) for m in found}
    assert mypy_lines == expected
    report = _pyright("--project", str(TYPING / "pyrightconfig.json"), str(ERRORS))
    assert _pyright_error_lines(report) == expected
