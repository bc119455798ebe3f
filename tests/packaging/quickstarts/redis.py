"""poolwarden[redis]: a shared client on the real Redis."""

import asyncio

from _common import REDIS

from poolwarden import Warden


async def main() -> None:
    warden = Warden()
    cache = warden.client("cache", REDIS)
    async with warden:
        assert await cache.get().ping()


asyncio.run(main())
print("ok")
