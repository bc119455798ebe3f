"""poolwarden[psycopg]: a pool on the real PostgreSQL through psycopg 3."""

import asyncio

from _common import POSTGRES, absent

from poolwarden import Warden


async def main() -> None:
    warden = Warden()
    db = warden.pool("db", POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1), max_size=2)
    async with warden, db.acquire() as conn:
        cur = await conn.execute("SELECT 40 + 2")
        assert await cur.fetchone() == (42,)
    absent("fastapi", "asyncpg")


asyncio.run(main())
print("ok")
