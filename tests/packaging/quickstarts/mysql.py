"""poolwarden[mysql]: a pool on the real MariaDB through asyncmy."""

import asyncio

from _common import MYSQL, absent

from poolwarden import Warden


async def main() -> None:
    warden = Warden()
    db = warden.pool("db", MYSQL, min_size=1, max_size=2)
    async with warden, db.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT 40 + 2")
        assert await cur.fetchone() == (42,)
    absent("fastapi", "asyncpg")


asyncio.run(main())
print("ok")
