"""What the lent handle costs a plain query, next to the driver's own connection.

Two measurements, because on a shared machine a real query's time swings by tens of percent from
one batch to the next, far more than the handle could add:

1. **The handle's own CPU cost per query**, exactly: the same query forms run against an instant
   in-memory driver (async methods that return at once, no event loop, driven with ``send(None)``),
   through a handle and directly; the fastest of many ``timeit`` repeats, in ns.
2. **A real query on loopback**, through the handle and on the raw connection behind it (``unwrap``),
   in small interleaved batches; the fastest batch of each, in µs per query, for scale.

The query forms are the plain ones each driver's users write:

* forwarded method (asyncpg): ``await conn.fetchval("SELECT 1")``
* lease-bound cursor (psycopg, aiosqlite): ``await (await conn.execute("SELECT 1")).fetchone()``
* lease-bound prepared statement (asyncpg): ``await stmt.fetchval()``

    .venv/bin/python benchmarks/bench_handle.py [--queries 200] [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
    """µs per query through the handle and on the raw connection: the fastest of interleaved batches."""
    db = Warden().pool("bench", url, min_size=1, max_size=1, check_after_idle=None)
    async with db, db.acquire() as handle:
        raw = unwrap(handle)
        targets: list[Any] = [handle, raw]
        if prepare is not None:  # the statement made through the handle is lease-bound, the other not
            targets = [await handle.prepare(prepare), await raw.prepare(prepare)]
        for target in targets:  # warm-up: statement caches, handle and bound classes
            await _batch(target, query, queries)
        through: list[float] = []
        direct: list[float] = []
        for rnd in range(rounds):
            order = [(0, through), (1, direct)] if rnd % 2 == 0 else [(1, direct), (0, through)]
            for index, out in order:
                out.append(await _batch(targets[index], query, queries))
    return name, min(through), min(direct)


# -- the handle's own CPU cost, on an instant driver -------------------------------------------------


class InstantCursor:
    async def fetchone(self) -> tuple[int]:
        return (1,)

    async def fetchval(self) -> int:
        return 1


class InstantConnection:
    async def fetchval(self, sql: str) -> int:
        return 1

    async def execute(self, sql: str) -> InstantCursor:
        return InstantCursor()

    async def prepare(self, sql: str) -> InstantCursor:
        return InstantCursor()


def _drive(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("an instant driver never suspends")


async def _fetchval(c: Any) -> Any:
    return await c.fetchval("SELECT 1")


async def _execute_fetchone(c: Any) -> Any:
    return await (await c.execute("SELECT 1")).fetchone()


async def _stmt_fetchval(stmt: Any) -> Any:
    return await stmt.fetchval()


def handle_cpu_ns(number: int) -> list[tuple[str, float, float]]:
    """ns per query form through a handle and directly, on the instant driver."""
    from poolwarden.handle import handle_class_for, register_driver

    register_driver(InstantConnection, bound=("execute", "prepare"), resources=(InstantCursor,))

    class Rec:
        class pool:  # what a handle reads of its record: the pool's name
            name = "bench"

    raw = InstantConnection()
    handle: Any = object.__new__(handle_class_for(InstantConnection))
    handle._lg_conn, handle._lg_rec = raw, Rec()
    stmt_through, stmt_direct = _drive(handle.prepare("SELECT 1")), _drive(raw.prepare("SELECT 1"))
    forms = [("forwarded method (asyncpg fetchval)", _fetchval, handle, raw),
             ("bound cursor (psycopg/aiosqlite execute+fetchone)", _execute_fetchone, handle, raw),
             ("bound prepared statement (asyncpg stmt.fetchval)", _stmt_fetchval, stmt_through, stmt_direct)]
    out = []
    for name, form, through, direct in forms:
        best = [min(timeit.repeat("drive(form(c))", globals={"drive": _drive, "form": form, "c": c},
                                  number=number, repeat=9)) / number * 1e9 for c in (through, direct)]
        out.append((name, best[0], best[1]))
    handle._lg_conn = None
    return out


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
    print("# 1. the handle's own CPU cost per query (instant in-memory driver; fastest of 9 repeats)")
    print(f"{'query form':<52} {'handle':>8} {'direct':>8} {'adds':>8}")
    for name, through, direct in handle_cpu_ns(args.calls):
        print(f"{name:<52} {through:6.0f}ns {direct:6.0f}ns {through - direct:+6.0f}ns")
    handle_ns, raw_ns = await forwarding_ns(args.calls)
    print(f"{'conn.is_closed() on a real asyncpg connection':<52} {handle_ns:6.0f}ns {raw_ns:6.0f}ns "
          f"{handle_ns - raw_ns:+6.0f}ns")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            await compare("asyncpg fetchval", PG, _asyncpg, args.queries, args.rounds),
            await compare("asyncpg prepared", PG, _prepared, args.queries, args.rounds, prepare="SELECT 1"),
            await compare("psycopg execute+fetchone", PG.replace("postgresql://", "postgresql+psycopg://", 1),
                          _cursor, args.queries, args.rounds),
            await compare("aiosqlite execute+fetchone", f"sqlite:///{tmp}/bench.db", _cursor,
                          args.queries, args.rounds),
        ]
    print(f"# 2. real queries on loopback: {args.rounds} interleaved batches of {args.queries} each way, "
          "fastest batch, us/query")
    print(f"{'query':<28} {'handle':>9} {'raw':>9} {'diff':>9}")
    for name, through, direct in rows:
        print(f"{name:<28} {through:9.2f} {direct:9.2f} {through - direct:+9.2f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=200, help="queries per batch (default 200)")
    p.add_argument("--rounds", type=int, default=40, help="batches each way (default 40)")
    p.add_argument("--calls", type=int, default=100_000)
    return asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
