"""poolwarden[sqlalchemy,postgres]: a SQLAlchemy async engine on the real PostgreSQL."""

import asyncio

from _common import POSTGRES
from sqlalchemy import text

from poolwarden import Warden


async def main() -> None:
    warden = Warden()
    url = POSTGRES.replace("postgresql://", "postgresql+asyncpg://", 1)
    orm = warden.client("orm", url, kind="sqlalchemy")
    async with warden, orm.get().connect() as conn:
        assert (await conn.execute(text("SELECT 40 + 2"))).scalar() == 42


asyncio.run(main())
print("ok")
