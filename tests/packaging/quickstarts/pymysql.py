"""poolwarden[pymysql]: a pool of blocking PyMySQL connections on the real MariaDB, used from a thread."""

import asyncio
from typing import Any

from _common import MYSQL, absent

from poolwarden import Warden
from poolwarden.sync import connector


async def main() -> None:
    warden = Warden()
    db = warden.pool("db", connector=connector(MYSQL), min_size=1, max_size=2)
    async with warden, db.acquire() as conn:

        def query() -> Any:  # PyMySQL blocks: its calls belong in a worker thread
            with conn.cursor() as cur:
                cur.execute("SELECT 40 + 2")
                return cur.fetchone()

        assert await asyncio.to_thread(query) == (42,)
    absent("fastapi", "asyncmy", "sqlalchemy")


asyncio.run(main())
print("ok")
