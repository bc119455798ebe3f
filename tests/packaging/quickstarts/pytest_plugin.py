"""poolwarden[sqlite] + pytest: the plugin pytest loads by itself needs no FastAPI or SQLAlchemy."""

import subprocess
import sys
from pathlib import Path

from _common import absent

absent("fastapi", "sqlalchemy", "pytest_asyncio")
Path("test_user.py").write_text('''
import asyncio

from poolwarden.testing import FakeConnector, assert_no_leases, fake_pool


def test_a_fake_pool(no_backoff):
    async def main():
        pool = fake_pool(connector=FakeConnector())
        async with pool, pool.acquire() as conn:
            await conn.execute("SELECT 1")
        assert_no_leases(pool)

    asyncio.run(main())
''')
result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider",
                         "test_user.py"], capture_output=True, text=True)
assert result.returncode == 0, result.stdout + result.stderr
print("ok")
