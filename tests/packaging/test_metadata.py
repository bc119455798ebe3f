"""What a user sees of the package before running it: name, licence, changelog, metadata, logging."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import poolwarden

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OLD_NAME = "life" + "guard"  # spelt in two pieces so that this file does not contain it
# The changelog is the one place that must keep the old name: version 0.1.0 was released under it.
HISTORY = {"CHANGELOG.md"}
SKIP_DIRS = {".git", ".venv", ".venv-demo", "site", "node_modules", "dist", "build"}


def _project_files() -> list[Path]:
    """Every file of the project: git's tracked and untracked-but-not-ignored files, else a walk."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        return [path for path in ROOT.rglob("*") if path.is_file() and not _skipped(path)]
    return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def _skipped(path: Path) -> bool:
    return any(part in SKIP_DIRS or part.endswith("_cache") for part in path.relative_to(ROOT).parts)


def test_the_old_name_is_gone() -> None:
    """No file of the project (code, docs, scripts, CI) names the package by its old name."""
    found = []
    for path in _project_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in HISTORY:
            continue
        if OLD_NAME in rel.lower():
            found.append(rel)
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if OLD_NAME in line.lower():
                found.append(f"{rel}:{number}: {line.strip()[:100]}")
    assert not found, "the old name is still used:\n" + "\n".join(found)


def test_license_is_the_declared_mit() -> None:
    """LICENSE is the MIT text that pyproject.toml declares, and ships in the wheel's metadata."""
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text


def test_changelog_follows_keep_a_changelog() -> None:
    """CHANGELOG.md has an Unreleased section on top and the released version below it."""
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "keepachangelog.com" in text
    assert "semver.org" in text
    versions = re.findall(r"^## \[([^\]]+)\]", text, flags=re.MULTILINE)
    assert versions[0] == "Unreleased"
    assert poolwarden.__version__ in versions
    assert PYPROJECT["project"]["version"] == poolwarden.__version__


def test_project_urls() -> None:
    """The index page links the source, the docs, the issues and the changelog."""
    urls = PYPROJECT["project"]["urls"]
    assert set(urls) >= {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}
    assert all(url.startswith("https://") for url in urls.values())


def test_fastapi_floor_is_in_the_extra_and_the_readme() -> None:
    """The FastAPI floor needed for Depends(scope=...) is in the fastapi extra and stated in the README."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "fastapi>=0.121" in extras["fastapi"]
    assert "FastAPI 0.121" in (ROOT / "README.md").read_text()


def test_every_extra_is_in_dev() -> None:
    """dev pulls every extra, so the suite exercises all of them."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    dev = " ".join(extras["dev"])
    named = set(re.findall(r"poolwarden\[([^\]]+)\]", dev)[0].split(","))
    all_ = set(re.findall(r"poolwarden\[([^\]]+)\]", " ".join(extras["all"]))[0].split(","))
    assert set(extras) - {"dev"} <= named | all_


def test_library_logger_has_a_null_handler() -> None:
    """Importing poolwarden puts a NullHandler (and nothing else) on the poolwarden logger."""
    handlers = logging.getLogger("poolwarden").handlers
    assert any(type(h) is logging.NullHandler for h in handlers)
    assert all(type(h) is logging.NullHandler for h in handlers)


def test_unconfigured_logging_prints_nothing() -> None:
    """Without logging configured, a poolwarden WARNING does not reach stderr through lastResort."""
    code = "import logging, poolwarden; logging.getLogger('poolwarden').warning('pool.share [db] x')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_every_extra_has_an_install_test() -> None:
    """Each extra (but dev) is installed on its own and exercised by tests/packaging/test_extras.py."""
    from tests.packaging.test_extras import CASES

    extras = set(PYPROJECT["project"]["optional-dependencies"]) - {"dev"}
    # a case names its extra first, then at most a driver extra the feature needs for a pool to watch
    tested = {spec.split(",")[0] for spec, _, _ in CASES.values()}
    assert extras - tested - {"demo"} == set()  # demo: test_demo_from_the_wheel
