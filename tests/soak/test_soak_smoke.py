"""A short run of the soak, so the soak itself keeps working; the long one is run by hand:
``python -m tests.soak.soak --requests 100000``."""

from __future__ import annotations

import pytest

from tests.soak import soak

pytestmark = [pytest.mark.postgres]


async def test_soak_smoke(postgres_url: str) -> None:
    """3,000 requests with client disconnects, handler errors, cancellations and a backend killed
    every 100 ms leave every lease ended, no connection leaked and no unexpected error."""
    report = await soak.run(3000, url=postgres_url)
    assert report.requests == 3000
    assert report.kills >= 5
    assert report.violations == [], report.render()
