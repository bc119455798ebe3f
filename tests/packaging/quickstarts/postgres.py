"""poolwarden[postgres]: a pool on the real PostgreSQL through asyncpg."""

import asyncio

from _common import POSTGRES, absent

from poolwarden import Warden


async def main() -> None:
    warden = Warden()
    db = warden.pool("db", POSTGRES, min_size=1, max_size=2)
    async with warden, db.acquire() as conn:
        assert await conn.fetchval("SELECT 40 + 2") == 42
    absent("fastapi", "psycopg", "aiosqlite", "asyncmy", "prometheus_client")


asyncio.run(main())
print("ok")
