"""poolwarden[fastapi]: install() on an app; /livez answers through the raw ASGI interface."""

import asyncio
import json
from typing import Any

from fastapi import FastAPI

from poolwarden import Warden


async def get(app: Any, path: str) -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


warden = Warden()
app = FastAPI(lifespan=warden.lifespan)
warden.install(app)
status, body = asyncio.run(get(app, "/livez"))
assert status == 200, (status, body)
assert body["status"] == "pass", body
print("ok")
