"""Run one code block of the docs as a script: ``python run_block.py BLOCK.py``.

Top-level ``await`` / ``async with`` are allowed (the block runs in an event loop, as in ``python -m
asyncio``). When the block leaves a Starlette/FastAPI application in ``app``, it is driven through its
lifespan with TestClient (which opens its pools against the real servers), its OpenAPI schema must
build, and ``/readyz``, when mounted, must answer 200. Prints ``ok`` last.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
from pathlib import Path
from typing import Any


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


def main(path: str) -> None:
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


if __name__ == "__main__":
    main(sys.argv[1])
