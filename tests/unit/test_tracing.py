"""Acquires are traced: a span per acquire, in the caller's trace, with the wait, pool name and outcome."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from poolwarden import BackendDown, PoolOverloaded, PoolTimeout, Warden
from poolwarden.observe import tracing
from poolwarden.testing import FakeConnector


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _warden(**settings: object) -> tuple[Warden, FakeConnector]:
    warden = Warden(environ={})
    fake = FakeConnector()
    warden.pool("db", connector=fake, min_size=1, max_size=1, **settings)
    return warden, fake


async def test_a_lend_after_a_wait_is_a_child_span_lasting_the_wait(
        spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    """The acquire span is a child of the caller's span, named for the pool, as long as the wait."""
    provider, exporter = spans
    warden, _ = _warden()
    tracing.instrument(warden, tracer_provider=provider)
    tracing.instrument(warden, tracer_provider=provider)  # idempotent: one span per acquire, not two
    tracer = provider.get_tracer("test")
    async with warden:
        pool = warden["db"]
        held = await pool.acquire()
        exporter.clear()

        async def give_back() -> None:
            await asyncio.sleep(0.05)
            await pool._release(held, None)

        with tracer.start_as_current_span("GET /users") as request:
            task = asyncio.create_task(give_back())
            async with pool.acquire():
                pass
            await task
    acquire = next(s for s in exporter.get_finished_spans() if s.name == "acquire db")
    assert [s.name for s in exporter.get_finished_spans()].count("acquire db") == 1
    assert acquire.parent is not None
    assert acquire.parent.span_id == request.get_span_context().span_id
    assert acquire.attributes is not None
    assert acquire.attributes["db.client.connection.pool.name"] == "db"
    assert acquire.attributes["poolwarden.acquire.outcome"] == "lent"
    wait = acquire.attributes["poolwarden.acquire.wait"]
    assert isinstance(wait, float)
    assert wait >= 0.04
    assert acquire.end_time is not None
    assert acquire.start_time is not None
    assert (acquire.end_time - acquire.start_time) / 1e9 == pytest.approx(wait, abs=0.005)


@pytest.mark.parametrize("outcome", ["timeout", "overloaded", "backend_down"])
async def test_a_refusal_is_an_error_span_naming_why(
        spans: tuple[TracerProvider, InMemorySpanExporter], outcome: str) -> None:
    """Timeouts, overload refusals and an open circuit each end the span in ERROR with their outcome."""
    provider, exporter = spans
    warden, fake = _warden(acquire_timeout=0.05, max_waiting=1, failure_threshold=1)
    tracing.instrument(warden, tracer_provider=provider)
    async with warden:
        pool = warden["db"]
        expected: type[Exception]
        with provider.get_tracer("test").start_as_current_span("GET /x"):  # the request's span
            if outcome == "backend_down":
                fake.fail_connects = -1
                fake.kill_all()
                pool.expire()
                for _ in range(100):
                    if pool.stats().circuit != "closed":
                        break
                    await asyncio.sleep(0.01)
                expected = BackendDown
                with pytest.raises(expected):
                    await pool.acquire()
            else:
                async with pool.acquire():
                    if outcome == "overloaded":
                        async def wait_in_line() -> None:
                            await pool.acquire()

                        queued = asyncio.create_task(wait_in_line())
                        await asyncio.sleep(0)
                        expected = PoolOverloaded
                        with pytest.raises(expected):
                            await pool.acquire()
                        queued.cancel()
                        await asyncio.gather(queued, return_exceptions=True)
                    else:
                        expected = PoolTimeout
                        with pytest.raises(expected):
                            await pool.acquire()
                fake.fail_connects = 0
    refused = [s for s in exporter.get_finished_spans()
               if s.attributes and s.attributes.get("poolwarden.acquire.outcome") == outcome]
    assert len(refused) == 1
    span = refused[0]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == expected.__name__


async def test_no_span_outside_a_sampled_trace(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    """An acquire with no recording span around it (a job outside any trace) makes no span."""
    provider, exporter = spans
    warden, _ = _warden()
    tracing.instrument(warden, tracer_provider=provider)
    async with warden, warden["db"].acquire():
        pass
    assert [s.name for s in exporter.get_finished_spans()] == []


async def test_without_instrument_the_pool_has_no_listener() -> None:
    """Tracing off costs nothing: no listener is attached, so the hot path does not observe at all."""
    warden, _ = _warden()
    async with warden:
        assert warden["db"]._listeners == []


async def test_a_slow_request_trace_shows_its_wait_for_the_pool(
        spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    """Through OpenTelemetry's ASGI middleware, the request's server span has the acquire as a child,
    lasting the time the request queued behind another one holding the only connection."""
    from fastapi import FastAPI
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    provider, exporter = spans
    warden, _ = _warden()
    db = warden["db"]
    tracing.instrument(warden, tracer_provider=provider)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)

    @app.get("/hold")
    async def hold(conn: object = db.connection) -> dict[str, bool]:  # a local alias: no Annotated here
        await asyncio.sleep(0.2)
        return {"ok": True}

    traced = OpenTelemetryMiddleware(app, tracer_provider=provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=traced)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first, second = await asyncio.gather(client.get("/hold"), client.get("/hold"))
    assert first.status_code == second.status_code == 200
    finished = exporter.get_finished_spans()
    servers = {s.context.span_id: s for s in finished if s.kind is SpanKind.SERVER}
    acquires = [s for s in finished if s.name == "acquire db"]
    assert len(acquires) == 2
    assert all(a.parent is not None and a.parent.span_id in servers for a in acquires)
    waits = sorted(float(a.attributes["poolwarden.acquire.wait"]) for a in acquires if a.attributes)
    assert waits[0] < 0.05  # the first request found the connection free
    assert waits[1] >= 0.15  # the second waited for it: visible in its own trace
