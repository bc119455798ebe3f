"""ORM benchmark: SQLAlchemy on its own pool vs SQLAlchemy on poolwarden's pool, in one run.

1. FastAPI + ``AsyncSession``, one ``SELECT 1`` per request (httpx's in-process ASGI transport, 50
   concurrent clients): plain SQLAlchemy (``async_sessionmaker`` on ``create_async_engine``, pool 10)
   beside ``warden.sqlalchemy(...)`` (max_size 10); req/s and p99 latency.
2. The same with a sync ``Session`` and a sync endpoint (plain ``create_engine`` pool 10 vs ``sync=True``),
   10 clients: with 50, the plain app stalls for 30 s on fastapi#3205 (QueuePool timeout).
3. Overload: 200 tasks on 10 connections, each ``async with engine.connect()`` + ``SELECT 1``; the
   p99 of the wait for a connection, beside the FIFO floor (benchmarks/floor.py, raw asyncpg).

poolwarden runs with ``adaptive_queue=False`` (first come, first served) unless a row says
"adaptive LIFO": the default queue control serves the newest waiter first while a queue stands,
which a closed loop of 50 or 200 clients always is, trading the oldest waiters' latency for the
newest's (see waitqueue.py); that row shows the cost in p99.

    .venv/bin/python benchmarks/bench_orm.py [--url postgresql://...] [--seconds 3] [--rounds 3]
"""

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).parent))
from floor import FloorPool

from poolwarden import Unavailable, Warden

SELECT1 = text("SELECT 1")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


Drive = tuple[float, float, int]  # served req/s, p99 latency, 503s


async def _drive(app: FastAPI, seconds: float, clients: int = 50) -> Drive:
    """req/s (200s only) and p99 latency of GET / with ``clients`` concurrent in-process clients."""
    latencies: list[float] = []
    refused = 0
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
        for _ in range(20):
            (await client.get("/")).raise_for_status()  # warm up
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal refused
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                r = await client.get("/")
                if r.status_code == 503:  # shed by poolwarden's adaptive queue control
                    refused += 1
                    continue
                latencies.append(time.perf_counter() - start)
                assert r.status_code == 200, r.status_code
        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, _pct(latencies, 0.99), refused


def _async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


def _sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


async def bench_plain_async(url: str, seconds: float) -> Drive:
    engine = create_async_engine(_async_url(url), pool_size=10, max_overflow=0)
    maker = async_sessionmaker(engine, expire_on_commit=False)

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with maker() as session:
            yield session

    app = FastAPI()

    @app.get("/")
    async def one(s: Annotated[AsyncSession, Depends(get_session)]) -> int:
        return int((await s.execute(SELECT1)).scalar_one())

    try:
        return await _drive(app, seconds)
    finally:
        await engine.dispose()


async def bench_warden_async(url: str, seconds: float, *, adaptive: bool = False) -> Drive:
    warden = Warden()
    orm = warden.sqlalchemy("db", _async_url(url), min_size=10, max_size=10, adaptive_queue=adaptive)
    app = FastAPI()
    warden.install(app, health=False, metrics=False, stats=False)  # a shed request is a 503

    @app.get("/")
    async def one(s: Annotated[AsyncSession, orm.session]) -> int:
        return int((await s.execute(SELECT1)).scalar_one())

    async with warden:
        return await _drive(app, seconds)


async def bench_plain_sync(url: str, seconds: float) -> Drive:
    engine = create_engine(_sync_url(url), pool_size=10, max_overflow=0)
    maker = sessionmaker(engine, expire_on_commit=False)

    def get_session() -> Iterator[Session]:
        with maker() as session:
            yield session

    app = FastAPI()

    @app.get("/")
    def one(s: Annotated[Session, Depends(get_session)]) -> int:
        return int(s.execute(SELECT1).scalar_one())

    try:
        # 10 clients, not 50: with 50, this plain app stalls on fastapi#3205 (QueuePool timeout)
        return await _drive(app, seconds, clients=10)
    finally:
        engine.dispose()


async def bench_warden_sync(url: str, seconds: float) -> Drive:
    warden = Warden()
    orm = warden.sqlalchemy("db", _sync_url(url), sync=True, min_size=10, max_size=10, adaptive_queue=False)
    app = FastAPI()

    @app.get("/")
    def one(s: Annotated[Session, orm.session]) -> int:
        return int(s.execute(SELECT1).scalar_one())

    async with warden:
        return await _drive(app, seconds, clients=10)


Wait = tuple[float, float]  # p99 and mean wait for a connection


async def _overload(acquire_and_query: Callable[[], Awaitable[float]], seconds: float,
                    tasks: int = 200) -> Wait:
    waits: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            try:
                waits.append(await acquire_and_query())
            except Unavailable:  # shed by the adaptive queue control: the caller would get a 503
                pass
    await asyncio.gather(*(loop() for _ in range(tasks)))
    return _pct(waits, 0.99), statistics.fmean(waits)


async def overload_sqlalchemy(url: str, seconds: float, *, warden: bool, adaptive: bool = False) -> Wait:
    if warden:
        w = Warden()
        orm = w.sqlalchemy("db", _async_url(url), min_size=10, max_size=10, acquire_timeout=60,
                           adaptive_queue=adaptive)
        engine = orm.engine
        await w.open()
    else:
        engine = create_async_engine(_async_url(url), pool_size=10, max_overflow=0, pool_timeout=60)

    async def one() -> float:
        start = time.perf_counter()
        async with engine.connect() as conn:
            waited = time.perf_counter() - start
            await conn.execute(SELECT1)
        return waited

    try:
        for _ in range(20):
            await one()
        return await _overload(one, seconds)
    finally:
        if warden:
            await w.close()
        else:
            await engine.dispose()


async def overload_floor(url: str, seconds: float) -> Wait:
    pool = await FloorPool.connect(url, 10)

    async def one() -> float:
        start = time.perf_counter()
        async with pool.acquire() as conn:
            waited = time.perf_counter() - start
            await conn.fetchval("SELECT 1")
        return waited

    try:
        return await _overload(one, seconds)
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[Drive]] = {}
    benches: dict[str, Callable[[str, float], Awaitable[Drive]]] = {
        "async: plain SQLAlchemy pool": bench_plain_async,
        "async: SQLAlchemy on poolwarden": bench_warden_async,
        "async: on poolwarden, adaptive LIFO": partial(bench_warden_async, adaptive=True),
        "sync: plain SQLAlchemy pool": bench_plain_sync,
        "sync: SQLAlchemy on poolwarden": bench_warden_sync,
    }
    floor_name, plain_name = "floor (FIFO, raw asyncpg)", "plain SQLAlchemy pool"
    ours_name, lifo_name = "SQLAlchemy on poolwarden", "on poolwarden, adaptive LIFO"
    waits: dict[str, list[Wait]] = {floor_name: [], plain_name: [], ours_name: [], lifo_name: []}
    for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits every contender alike
        for name, bench in benches.items():
            rows.setdefault(name, []).append(await bench(args.url, args.seconds))
        waits[floor_name].append(await overload_floor(args.url, args.seconds))
        waits[plain_name].append(await overload_sqlalchemy(args.url, args.seconds, warden=False))
        waits[ours_name].append(await overload_sqlalchemy(args.url, args.seconds, warden=True))
        waits[lifo_name].append(await overload_sqlalchemy(args.url, args.seconds, warden=True, adaptive=True))
    print(f"FastAPI, one SELECT 1 per request, 50 clients, pool 10 (median of {args.rounds} rounds)")
    print(f"{'contender':36} {'req/s':>8} {'p99 ms':>8} {'503s':>6}")
    for name, results in rows.items():
        rps = statistics.median(r[0] for r in results)
        p99 = statistics.median(r[1] for r in results)
        shed = sum(r[2] for r in results)
        print(f"{name:36} {rps:8.0f} {p99 * 1000:8.2f} {shed:6d}")
    # the same round's runs sit next to each other in time, so their ratio cancels a noisy neighbour
    for kind in ("async", "sync"):
        plain, ours = rows[f"{kind}: plain SQLAlchemy pool"], rows[f"{kind}: SQLAlchemy on poolwarden"]
        rps_ratio = statistics.median(o[0] / p[0] for o, p in zip(ours, plain, strict=True))
        p99_ratio = statistics.median(o[1] / p[1] for o, p in zip(ours, plain, strict=True))
        print(f"{kind}: poolwarden / plain, median of per-round ratios: req/s {rps_ratio:.2f}x, "
              f"p99 {p99_ratio:.2f}x")
    # SQLAlchemy's per-lease work is slower than raw asyncpg's, so raw p99s differ by the cycle time;
    # the tail over the mean (1.0 for a perfectly fair queue) is what fairness changes.
    print("\nOverload: 200 tasks on 10 connections, wait for a connection")
    print(f"{'contender':36} {'p99 ms':>8} {'mean ms':>8} {'p99/mean':>9} {'vs floor':>9}")
    floor = statistics.median(p / m for p, m in waits[floor_name])
    for name, values in waits.items():
        p99 = statistics.median(p for p, _ in values)
        mean = statistics.median(m for _, m in values)
        tail = statistics.median(p / m for p, m in values)
        print(f"{name:36} {p99 * 1000:8.2f} {mean * 1000:8.2f} {tail:9.2f} {tail / floor:8.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
