"""What observing costs: the event-loop watchdog on FastAPI requests/s, and acquire tracing on the pool.

    .venv/bin/python benchmarks/bench_observe.py            # 7 interleaved rounds, about a minute
    .venv/bin/python benchmarks/bench_observe.py --quick    # 2 short rounds: a smoke test

(1) FastAPI, requests per CPU second of the whole process (its threads included, so the watchdog's
    own work counts; CPU time rather than wall time, because other jobs on a shared machine move
    requests per wall second by tens of percent): an ``async def`` endpoint that borrows a connection
    of a poolwarden pool (the in-memory FakeConnector, so the database does not drown the difference)
    and runs one query, called by 50 concurrent clients calling the ASGI app in the same process (no
    sockets): every request is Python on the event loop's thread, the case most sensitive to a sampler
    thread taking the GIL. Variants: no watchdog, ``Warden(watchdog=0.1)`` (the documented setting:
    heartbeat and sampler every 100 ms), and ``watchdog=0.02`` (every 20 ms, five times as eager).
(2) Pool: ``async with pool.acquire()`` in a tight loop (fast path). Variants: no tracing (no listener
    at all), tracing with opentelemetry-api's no-op tracer, tracing with the SDK (a span processor that
    drops spans) outside any trace, and inside a sampled span, where each acquire makes a span.

Variants run back to back in each round, the order rotating; the table shows medians across rounds
and the median of the per-round ratios to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI

from poolwarden import Warden
from poolwarden.observe import tracing
from poolwarden.testing import FakeConnector

Run = Callable[[float], Awaitable[float]]


def fastapi_variant(watchdog: float | None) -> Run:
    async def run(duration: float) -> float:
        warden = Warden(environ={}, watchdog=watchdog)
        db = warden.pool("db", connector=FakeConnector(), min_size=10, max_size=10, check_after_idle=None)
        app = FastAPI(lifespan=warden.lifespan)

        @app.get("/item")
        async def item(conn: Any = db.connection) -> dict[str, str]:
            return {"value": await conn.execute("SELECT 1")}

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/item", "raw_path": b"/item", "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"bench")], "server": ("bench", 80),
                 "client": ("127.0.0.1", 1234)}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 200

        done = 0
        async with app.router.lifespan_context(app):
            async def worker(until: float) -> None:
                nonlocal done
                while time.perf_counter() < until:
                    await app(dict(scope), receive, send)
                    done += 1

            await worker(time.perf_counter() + 0.2)  # warm up
            done = 0
            start, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker(start + duration) for _ in range(50)))
            # CPU time of the whole process (the watchdog's thread included): requests per CPU second
            # hardly move with the load other jobs put on the machine; requests per wall second do.
            elapsed = time.process_time() - cpu
        return done / elapsed

    return run


class _Drop:
    """A span processor that keeps nothing: the cost of making spans, not of exporting them."""

    def on_start(self, span: Any, parent_context: Any = None) -> None: ...
    def on_end(self, span: Any) -> None: ...
    def shutdown(self) -> None: ...
    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def _on_ending(self, span: Any) -> None: ...


def pool_variant(mode: str) -> Run:
    async def run(duration: float) -> float:
        warden = Warden(environ={})
        db = warden.pool("db", connector=FakeConnector(), min_size=1, max_size=1, check_after_idle=None)
        provider: Any = None
        if mode == "api-only":
            from opentelemetry.trace import NoOpTracerProvider

            tracing.instrument(warden, tracer_provider=NoOpTracerProvider())
        elif mode in ("sdk", "sdk-in-trace"):
            from opentelemetry.sdk.trace import TracerProvider

            sdk = TracerProvider()
            provider = sdk if mode == "sdk-in-trace" else None
            sdk.add_span_processor(_Drop())  # type: ignore[arg-type]
            tracing.instrument(warden, tracer_provider=sdk)
        parent: Any = contextlib.nullcontext()
        if provider is not None:  # inside a sampled request span, where spans are made
            parent = provider.get_tracer("bench").start_as_current_span("request")
        async with warden:
            n = 0
            with parent:
                until = time.perf_counter() + duration
                start = time.process_time()  # CPU time: steadier than wall time on a shared machine
                while time.perf_counter() < until:
                    for _ in range(1000):
                        async with db.acquire():
                            pass
                    n += 1000
                elapsed = time.process_time() - start
        return n / elapsed

    return run


async def bench(name: str, variants: dict[str, Run], rounds: int, duration: float) -> None:
    results: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for key in order:
            results[key].append(await variants[key](duration))
    base = names[0]
    print(f"\n{name}  ({rounds} rounds x {duration:g} s per variant)")
    print(f"{'variant':<34}{'median/s':>12}{'x baseline':>12}{'cost':>9}{'range of ratios':>22}")
    for key in names:
        ratios = [a / b for a, b in zip(results[key], results[base], strict=True)]
        ratio = statistics.median(ratios)
        print(f"{key:<34}{statistics.median(results[key]):>12,.0f}{ratio:>12.3f}{(1 - ratio) * 100:>8.1f}%"
              f"{min(ratios):>11.3f} .. {max(ratios):.3f}")


async def watchdog_cpu(threshold: float | None, seconds: float) -> float:
    """CPU seconds per wall second the process spends on an idle loop, with or without the watchdog:
    what the watchdog itself burns, independent of how loaded the machine is."""
    warden = Warden(environ={}, watchdog=threshold)
    async with warden:
        await asyncio.sleep(0.2)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        return (time.process_time() - cpu) / (time.perf_counter() - wall)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, duration = (2, 0.5) if args.quick else (args.rounds, args.duration)
    await bench("(1) FastAPI requests per CPU second of the process, watchdog", {
        "no watchdog": fastapi_variant(None),
        "Warden(watchdog=0.1)": fastapi_variant(0.1),
        "Warden(watchdog=0.02)": fastapi_variant(0.02),
    }, rounds, duration)
    print("\n(3) CPU the watchdog burns, on an idle event loop (CPU seconds per second of wall time)")
    for threshold in (None, 0.1, 0.02):
        share = statistics.median([await watchdog_cpu(threshold, 1.0 if args.quick else 3.0)
                                   for _ in range(1 if args.quick else 3)])
        print(f"{'no watchdog' if threshold is None else f'Warden(watchdog={threshold})':<34}"
              f"{share * 100:>11.3f}% of one core")
    await bench("(2) pool acquire+release per CPU second, tracing", {
        "not instrumented": pool_variant("off"),
        "instrumented, API only (no SDK)": pool_variant("api-only"),
        "instrumented, SDK, no trace around": pool_variant("sdk"),
        "instrumented, SDK, in a sampled trace": pool_variant("sdk-in-trace"),
    }, rounds, duration)


if __name__ == "__main__":
    asyncio.run(main())
