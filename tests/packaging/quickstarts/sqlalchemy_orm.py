"""poolwarden[sqlalchemy,sqlite]: warden.sqlalchemy() puts poolwarden's pool under an AsyncEngine."""

import asyncio
import tempfile

from sqlalchemy import text

from poolwarden import Warden


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        warden = Warden()
        orm = warden.sqlalchemy("db", f"sqlite+aiosqlite:///{tmp}/app.db", max_size=2)
        async with warden:
            async with orm.session_scope(transaction=True) as session:
                await session.execute(text("CREATE TABLE t (n int)"))
                await session.execute(text("INSERT INTO t VALUES (42)"))
            async with orm.session_scope() as session:
                assert await session.scalar(text("SELECT n FROM t")) == 42


asyncio.run(main())
print("ok")
