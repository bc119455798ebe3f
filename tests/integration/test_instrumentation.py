"""Instrumentations applied after the pool exists still see every call made through a handle.

OpenTelemetry's asyncpg instrumentor patches ``asyncpg.Connection``'s methods on the class; the
handle looks its methods up at call time (as asyncpg's own pool proxy does), so a pool opened and
used before ``instrument()`` produces spans afterwards. psycopg's instrumentor wraps
``AsyncConnection.connect`` and gives new connections a traced cursor factory; the pool connects
through the class at connect time, and the handle's lease-bound cursors wrap the traced ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from poolwarden import Warden


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield spans, provider
    provider.shutdown()


def _statements(spans: InMemorySpanExporter) -> list[str]:
    return [" ".join(str(v) for v in (span.attributes or {}).values()) + " " + span.name
            for span in spans.get_finished_spans()]


async def test_asyncpg_instrumented_after_the_pool_was_used_still_traces_handle_calls(
        postgres_url: str, exporter: tuple[InMemorySpanExporter, TracerProvider]) -> None:
    """A handle class built before AsyncPGInstrumentor().instrument() still produces a span per query."""
    spans, provider = exporter
    db = Warden().pool("db", postgres_url, min_size=1, max_size=1)
    async with db:
        async with db.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1  # the handle class exists before the patch
        instrumentor = AsyncPGInstrumentor()
        instrumentor.instrument(tracer_provider=provider)
        try:
            async with db.acquire() as conn:
                assert await conn.fetchval("SELECT 4242") == 4242
                await conn.execute("SELECT 4343")
        finally:
            instrumentor.uninstrument()
    seen = _statements(spans)
    assert any("SELECT 4242" in s for s in seen), seen
    assert any("SELECT 4343" in s for s in seen), seen


async def test_psycopg_instrumented_after_the_pool_was_declared_traces_handle_queries(
        postgres_url: str, exporter: tuple[InMemorySpanExporter, TracerProvider]) -> None:
    """A pool declared before PsycopgInstrumentor().instrument() traces queries through its handles,
    cursors included."""
    spans, provider = exporter
    db = Warden().pool("db", postgres_url.replace("postgresql://", "postgresql+psycopg://", 1),
                       min_size=1, max_size=1)
    instrumentor = PsycopgInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        async with db, db.acquire() as conn:
            cur = await conn.execute("SELECT 4242")
            assert await cur.fetchone() == (4242,)
            async with conn.cursor() as made:
                await made.execute("SELECT 4343")
                assert await made.fetchone() == (4343,)
    finally:
        instrumentor.uninstrument()
    seen = _statements(spans)
    assert any("SELECT 4242" in s for s in seen), seen
    assert any("SELECT 4343" in s for s in seen), seen
