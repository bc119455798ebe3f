"""poolwarden[otel,sqlite]: instrument() against the OpenTelemetry API alone (no SDK)."""

import asyncio
import tempfile

from _common import absent

from poolwarden import Warden
from poolwarden.observe.otel import instrument


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        warden = Warden()
        db = warden.pool("db", f"sqlite:///{tmp}/app.db")
        instrument(warden)
        async with warden, db.acquire():
            pass
    absent("opentelemetry.sdk")


asyncio.run(main())
print("ok")
