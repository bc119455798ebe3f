"""poolwarden[sqlite]: a pool on a SQLite file through aiosqlite."""

import asyncio
import tempfile

from _common import absent

from poolwarden import Warden


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        warden = Warden()
        db = warden.pool("db", f"sqlite:///{tmp}/app.db", max_size=2)
        async with warden, db.acquire() as conn, conn.execute("SELECT 40 + 2") as cur:
            assert await cur.fetchone() == (42,)
    absent("fastapi", "asyncpg")


asyncio.run(main())
print("ok")
