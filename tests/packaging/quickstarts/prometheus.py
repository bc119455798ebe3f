"""poolwarden[prometheus,sqlite]: the pool's metrics in the Prometheus exposition."""

import asyncio
import tempfile

from poolwarden import Warden
from poolwarden.observe.prometheus import render


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        warden = Warden()
        warden.pool("db", f"sqlite:///{tmp}/app.db", min_size=1)
        async with warden:
            body, _ = render(warden)
    assert b'db_client_connection_count{' in body, body[:500]
    assert b'db_client_connection_pool_name="db"' in body


asyncio.run(main())
print("ok")
