"""Run one code block of the docs as a script, in a process forked from one that imported the libraries.

Top-level ``await`` / ``async with`` are allowed (the block runs in an event loop, as in ``python -m
asyncio``). When the block leaves a Starlette/FastAPI application in ``app``, it is driven through its
lifespan with TestClient (which opens its pools against the real servers), its OpenAPI schema must
build, and ``/readyz``, when mounted, must answer 200. A script prints ``ok`` last; a ``test_*.py``
block is run with pytest instead.

The blocks run in children of a multiprocessing *forkserver* that imported FastAPI, the drivers,
poolwarden and pytest once (:data:`PRELOAD`): each child starts with those imports done and with
nothing else of any other block, so a block costs its own work, not half a second of imports.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import multiprocessing
import os
import sys
import traceback
from pathlib import Path
from typing import Any

PRELOAD = ["asyncio", "fastapi", "fastapi.testclient", "pydantic", "httpx", "asyncpg", "psycopg",
           "aiosqlite", "asyncmy", "redis.asyncio", "sqlalchemy.ext.asyncio", "prometheus_client",
           "poolwarden", "poolwarden.fastapi", "poolwarden.testing", "pytest", "pytest_asyncio", "hypothesis"]

# A test block runs under the pytest configuration the testing guide recommends. Its plugins
# (poolwarden's, pytest-asyncio, hypothesis) were preloaded, so pytest cannot rewrite their asserts and
# says so: that warning alone is not an error here.
PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "-W", "error",
               "-W", "ignore::pytest.PytestAssertRewriteWarning", "-o", "asyncio_mode=auto",
               "-o", "asyncio_default_fixture_loop_scope=function"]


def context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _drive(app: Any) -> None:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        paths = {getattr(route, "path", None) for route in app.routes}
        if "/openapi.json" in paths:
            response = client.get("/openapi.json")
            assert response.status_code == 200, response.text
        if "/readyz" in paths:
            response = client.get("/readyz")
            assert response.status_code == 200, response.text


def run_script(path: str) -> None:
    source = Path(path).read_text()
    code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": path}
    result = eval(code, namespace)  # the block itself, a trusted file of this repository
    if inspect.iscoroutine(result):
        asyncio.run(result)
    app = namespace.get("app")
    if app is not None and type(app).__module__.startswith(("fastapi", "starlette")):
        _drive(app)
    print("ok")


def child(script: str, output: str) -> None:
    """The forked child: run ``script`` from its directory, everything it prints going to ``output``."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(Path(script).parent)
    sys.path.insert(0, str(Path(script).parent))
    code = 1
    try:
        if Path(script).name.startswith("test_"):
            import pytest

            code = int(pytest.main([*PYTEST_ARGS, Path(script).name]))
        else:
            run_script(script)
            code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # by hand: python tests/docs/run_block.py BLOCK.py
    run_script(sys.argv[1])
