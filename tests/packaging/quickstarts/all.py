"""poolwarden[all]: the README's quick start, driven through FastAPI against the real PostgreSQL."""

from typing import Annotated

import asyncpg
from _common import POSTGRES
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from poolwarden import Warden

warden = Warden()
db = warden.pool("db", POSTGRES, min_size=2, max_size=20)

app = FastAPI(lifespan=warden.lifespan)
warden.install(app)

DB = Annotated[asyncpg.Connection, db.connection]
Tx = Annotated[asyncpg.Connection, db.transaction]


@app.get("/users/{uid}")
async def get_user(uid: int, conn: DB) -> dict[str, object]:
    row = await conn.fetchrow("SELECT id, name FROM quickstart_users WHERE id = $1", uid)
    if row is None:
        raise HTTPException(404)
    return dict(row)


@app.post("/users")
async def create_user(name: str, conn: Tx) -> dict[str, int]:
    uid = await conn.fetchval("INSERT INTO quickstart_users (name) VALUES ($1) RETURNING id", name)
    return {"id": uid}


@app.post("/setup")
async def setup(conn: DB) -> None:
    await conn.execute("CREATE TABLE IF NOT EXISTS quickstart_users (id serial PRIMARY KEY, name text)")


with TestClient(app) as client:
    assert client.post("/setup").status_code == 200
    uid = client.post("/users", params={"name": "ada"}).json()["id"]
    assert client.get(f"/users/{uid}").json() == {"id": uid, "name": "ada"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
print("ok")
