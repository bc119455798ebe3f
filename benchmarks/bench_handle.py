"""What the lent handle costs a plain query, next to the driver's own connection, in one run.

For each driver, one pooled connection is lent once; the same query then runs alternately through
the handle and through the raw connection behind it (``unwrap``), in interleaved batches, and the
table shows the median microseconds per query of each and the difference. The query forms are the
plain ones each driver's users write:

* asyncpg: ``await conn.fetchval("SELECT 1")``  (a forwarded method; nothing lease-bound)
* psycopg: ``await (await conn.execute("SELECT 1")).fetchone()``  (the cursor is lease-bound)
* aiosqlite: ``await (await conn.execute("SELECT 1")).fetchone()``  (the cursor is lease-bound)
* asyncpg prepared: ``await stmt.fetchval()`` on a statement prepared through the handle

Also the bare forwarding cost, ``conn.is_closed()`` (asyncpg), in ns per call.

    .venv/bin/python benchmarks/bench_handle.py [--queries 2000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

from poolwarden import Warden, unwrap

PG = os.environ.get("POOLWARDEN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
Query = Callable[[Any], Awaitable[Any]]


async def _asyncpg(conn: Any) -> Any:
    return await conn.fetchval("SELECT 1")


async def _cursor(conn: Any) -> Any:
    return await (await conn.execute("SELECT 1")).fetchone()


async def _batch(conn: Any, query: Query, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await query(conn)
    return (time.perf_counter() - start) / n * 1e6


async def compare(name: str, url: str, query: Query, queries: int, rounds: int,
                  prepare: str | None = None) -> tuple[str, float, float]:
    """Median µs per query through the handle and on the raw connection, interleaved."""
    db = Warden().pool("bench", url, min_size=1, max_size=1, check_after_idle=None)
    async with db, db.acquire() as handle:
        raw = unwrap(handle)
        targets: list[Any] = [handle, raw]
        if prepare is not None:  # the statement made through the handle is lease-bound, the other not
            targets = [await handle.prepare(prepare), await raw.prepare(prepare)]
        for target in targets:  # warm-up: statement caches, handle and bound classes
            await _batch(target, query, max(50, queries // 10))
        through, direct = [], []
        for rnd in range(rounds):
            order = [(0, through), (1, direct)] if rnd % 2 == 0 else [(1, direct), (0, through)]
            for index, out in order:
                out.append(await _batch(targets[index], query, queries))
    return name, statistics.median(through), statistics.median(direct)


async def _prepared(stmt: Any) -> Any:
    return await stmt.fetchval()


async def forwarding_ns(calls: int) -> tuple[float, float]:
    db = Warden().pool("fwd", PG, min_size=1, max_size=1)
    async with db, db.acquire() as handle:
        raw = unwrap(handle)
        best = [min(timeit.repeat("c.is_closed()", globals={"c": c}, number=calls, repeat=7)) / calls * 1e9
                for c in (handle, raw)]
    return best[0], best[1]


async def amain(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            await compare("asyncpg fetchval", PG, _asyncpg, args.queries, args.rounds),
            await compare("asyncpg prepared", PG, _prepared, args.queries, args.rounds, prepare="SELECT 1"),
            await compare("psycopg execute+fetchone", PG.replace("postgresql://", "postgresql+psycopg://", 1),
                          _cursor, args.queries, args.rounds),
            await compare("aiosqlite execute+fetchone", f"sqlite:///{tmp}/bench.db", _cursor,
                          args.queries, args.rounds),
        ]
    print(f"# {args.rounds} interleaved rounds x {args.queries} queries each way; median us/query")
    print(f"{'query':<28} {'handle':>9} {'raw':>9} {'diff':>9} {'diff %':>7}")
    for name, through, direct in rows:
        print(f"{name:<28} {through:9.2f} {direct:9.2f} {through - direct:+9.2f} "
              f"{(through / direct - 1) * 100:+6.1f}%")
    handle_ns, raw_ns = await forwarding_ns(args.calls)
    print(f"forwarding, conn.is_closed(): handle {handle_ns:.0f} ns, raw {raw_ns:.0f} ns "
          f"(+{handle_ns - raw_ns:.0f} ns per call)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=100_000)
    return asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
