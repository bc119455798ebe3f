"""Pool benchmark: poolwarden against asyncpg, psycopg_pool, SQLAlchemy and a hand-written floor.

Everything runs in one process, one event loop and one run: each round runs every contender once
per scenario, in an order that rotates from round to round, and the table reports the median of
the rounds. Every contender holds 10 connections to the same local PostgreSQL the whole time.

    .venv/bin/python benchmarks/bench_pools.py              # 7 rounds, about 3 minutes
    .venv/bin/python benchmarks/bench_pools.py --quick      # 1 short round, a smoke test
    .venv/bin/python benchmarks/bench_pools.py --json out.json
    .venv/bin/python benchmarks/bench_pools.py --profile a  # cProfile poolwarden in scenario (a)

POOLWARDEN_BENCH_PG overrides the server URL (default postgresql://postgres@127.0.0.1:5432/test).
See benchmarks/README.md for what each contender and scenario means.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from floor import FloorPool

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SIZE = 10
clock = time.perf_counter

Query = Callable[[Any], Awaitable[Any]]


# -- scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    tasks: int
    query: str | None  # None: acquire+release only; "select1"; "sleep"
    wait_latency: bool = False  # report the acquire wait, not the whole op
    hold_yield: bool = False  # yield to the loop once while holding the connection
    note: str = ""


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("a", "acquire+release, 1 task", 1, None),
        Scenario("b", "acquire+release, 64 tasks", 64, None, hold_yield=True,
                 note="each lease yields to the loop once (asyncio.sleep(0)), or 64 tasks run as 1"),
        Scenario("c", "SELECT 1, 1 task", 1, "select1"),
        Scenario("d", "SELECT 1, 64 tasks", 64, "select1"),
        Scenario("e", "pg_sleep(5ms), 200 tasks", 200, "sleep", wait_latency=True,
                 note="p50/p99 of (e) are the acquire wait; per op elsewhere"),
    )
}

# the no-op-listener variant of poolwarden only runs where the pool itself is the whole cost
LISTENER_SCENARIOS = ("a", "b")


# -- contenders --------------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    acquire: Callable[[], Any]  # returns an async context manager yielding a connection
    select1: Query
    sleep: Query
    close: Callable[[], Awaitable[Any]]
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    extra: dict[str, Any] = field(default_factory=dict)
    repair: Callable[[], Awaitable[None]] | None = None


async def _apg_select1(conn: Any) -> Any:
    return await conn.fetchval("SELECT 1")


async def _apg_sleep(conn: Any) -> Any:
    return await conn.fetchval("SELECT pg_sleep(0.005)")


async def _psy_select1(conn: Any) -> Any:
    cur = await conn.execute("SELECT 1")
    return await cur.fetchone()


async def _psy_sleep(conn: Any) -> Any:
    cur = await conn.execute("SELECT pg_sleep(0.005)")
    return await cur.fetchone()


async def _sa_select1(conn: Any) -> Any:
    return (await conn.exec_driver_sql("SELECT 1")).scalar()


async def _sa_sleep(conn: Any) -> Any:
    return (await conn.exec_driver_sql("SELECT pg_sleep(0.005)")).scalar()


class NoopListener:
    """A PoolListener that does nothing: what remains is the cost of calling it."""

    def on_acquired(self, resource: str, wait: float) -> None:
        pass

    def on_released(self, resource: str, use: float) -> None:
        pass

    def on_connected(self, resource: str, seconds: float) -> None:
        pass

    def on_timeout(self, resource: str) -> None:
        pass


def _scheme_url(url: str, scheme: str) -> str:
    rest = url.split("://", 1)[1]
    return f"{scheme}://{rest}"


async def make_poolwarden(url: str, *, listener: bool = False) -> Contender:
    from poolwarden import Warden

    warden = Warden()
    db = warden.pool("db", _scheme_url(url, "postgresql"), min_size=SIZE, max_size=SIZE)
    if listener:
        db.add_listener(NoopListener())
    await warden.open()
    return Contender(
        "poolwarden+listener" if listener else "poolwarden", db.acquire, _apg_select1, _apg_sleep,
        warden.close, LISTENER_SCENARIOS if listener else tuple(SCENARIOS), {"pool": db},
    )


async def make_asyncpg(url: str) -> Contender:
    import asyncpg

    pool = await asyncpg.create_pool(_scheme_url(url, "postgresql"), min_size=SIZE, max_size=SIZE)
    return Contender("asyncpg", pool.acquire, _apg_select1, _apg_sleep, pool.close, extra={"pool": pool})


async def make_psycopg(url: str) -> Contender:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(_scheme_url(url, "postgresql"), min_size=SIZE, max_size=SIZE,
                               kwargs={"autocommit": True}, open=False)
    await pool.open(wait=True)
    return Contender("psycopg_pool", pool.connection, _psy_select1, _psy_sleep, pool.close)


async def make_sqlalchemy(url: str) -> Contender:
    from sqlalchemy.ext.asyncio import create_async_engine

    # AUTOCOMMIT, like psycopg's autocommit=True: without it SQLAlchemy sends BEGIN before the
    # SELECT and ROLLBACK at release, three round trips where the others make one.
    engine = create_async_engine(_scheme_url(url, "postgresql+asyncpg"), pool_size=SIZE,
                                 max_overflow=0, isolation_level="AUTOCOMMIT")
    # SQLAlchemy connects lazily: fill the pool now so no connect lands in a measured run
    conns = [await engine.connect().__aenter__() for _ in range(SIZE)]
    for conn in conns:
        await conn.close()

    return Contender("sqlalchemy", engine.connect, _sa_select1, _sa_sleep, engine.dispose)


async def make_floor(url: str) -> Contender:
    pool = await FloorPool.connect(_scheme_url(url, "postgresql"), SIZE)
    return Contender("floor", pool.acquire, _apg_select1, _apg_sleep, pool.close, repair=pool.repair)


FACTORIES: dict[str, Callable[[str], Awaitable[Contender]]] = {
    "poolwarden": make_poolwarden,
    "asyncpg": make_asyncpg,
    "psycopg_pool": make_psycopg,
    "sqlalchemy": make_sqlalchemy,
    "floor": make_floor,
}


# -- the measured loops ------------------------------------------------------------------------
# One clock read per op: the gap between consecutive reads is the op's latency for that task.


async def _loop_bare(acquire: Callable[[], Any], deadline: float, out: list[float]) -> None:
    append = out.append
    prev = clock()
    while prev < deadline:
        async with acquire():
            pass
        now = clock()
        append(now - prev)
        prev = now


async def _loop_hold(acquire: Callable[[], Any], deadline: float, out: list[float]) -> None:
    append = out.append
    pause = asyncio.sleep
    prev = clock()
    while prev < deadline:
        async with acquire():
            await pause(0)
        now = clock()
        append(now - prev)
        prev = now


async def _loop_query(acquire: Callable[[], Any], query: Query, deadline: float,
                      out: list[float]) -> None:
    append = out.append
    prev = clock()
    while prev < deadline:
        async with acquire() as conn:
            await query(conn)
        now = clock()
        append(now - prev)
        prev = now


async def _loop_wait(acquire: Callable[[], Any], query: Query, deadline: float,
                     out: list[float]) -> None:
    append = out.append
    while clock() < deadline:
        start = clock()
        async with acquire() as conn:
            got = clock()
            await query(conn)
        append(got - start)


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_one(c: Contender, s: Scenario, duration: float) -> dict[str, float]:
    gc.collect()
    samples: list[float] = []
    query = None if s.query is None else (c.select1 if s.query == "select1" else c.sleep)
    start = clock()
    deadline = start + duration

    def worker() -> Awaitable[None]:
        if query is None:
            if s.hold_yield:
                return _loop_hold(c.acquire, deadline, samples)
            return _loop_bare(c.acquire, deadline, samples)
        if s.wait_latency:
            return _loop_wait(c.acquire, query, deadline, samples)
        return _loop_query(c.acquire, query, deadline, samples)

    if s.tasks == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(s.tasks)))
    elapsed = clock() - start
    samples.sort()
    return {"ops": len(samples), "seconds": elapsed, "ops_s": len(samples) / elapsed,
            "p50": _pct(samples, 0.50), "p99": _pct(samples, 0.99)}


# -- surviving a server restart ----------------------------------------------------------------
# The machine is shared: a test elsewhere may restart PostgreSQL in the middle of a run. Then the
# whole (round, scenario) block is measured again, after every pool has recovered, so that the
# per-round ratios still compare runs made under the same conditions.

BLOCK_ATTEMPTS = 3


async def wait_for_server(url: str, limit: float = 120.0) -> bool:
    import asyncpg

    deadline = clock() + limit
    while True:
        try:
            conn = await asyncpg.connect(_scheme_url(url, "postgresql"), timeout=5)
            await conn.close()
            return True
        except Exception:
            if clock() > deadline:
                return False
            await asyncio.sleep(1.0)


async def heal(contenders: list[Contender], limit: float = 60.0) -> None:
    """Use every pool until two short runs in a row succeed: each pool replaces its dead
    connections its own way (poolwarden's circuit breaker may need a backoff period)."""
    for c in contenders:
        if c.repair is not None:
            await c.repair()
        deadline = clock() + limit
        ok = 0
        while ok < 2:
            try:
                await run_one(c, SCENARIOS["d"], 0.1)
                ok += 1
            except Exception:
                ok = 0
                if clock() > deadline:
                    raise
                await asyncio.sleep(0.5)
                if c.repair is not None:
                    await c.repair()


async def run_block(url: str, contenders: list[Contender], here: list[Contender], s: Scenario,
                    duration: float, label: str) -> dict[str, dict[str, float]]:
    for attempt in range(1, BLOCK_ATTEMPTS + 1):
        out: dict[str, dict[str, float]] = {}
        try:
            for c in here:
                out[c.name] = await run_one(c, s, duration)
            return out
        except Exception as exc:
            print(f"# {label}: {c.name} failed ({type(exc).__name__}: {exc}); attempt {attempt}/"
                  f"{BLOCK_ATTEMPTS}, waiting for the server and the pools to recover",
                  file=sys.stderr, flush=True)
            if attempt == BLOCK_ATTEMPTS or not await wait_for_server(url):
                raise
            await heal(contenders)
    raise AssertionError("unreachable")


# -- micro-measurements of poolwarden's own costs -----------------------------------------------


def _best_ns(stmt: str, env: dict[str, Any], number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat)) / number * 1e9


async def measure_handle(lg: Contender, apg: Contender | None, calls: int) -> dict[str, float]:
    """ns per ``conn.is_closed()`` through poolwarden's handle, on the raw connection, and through
    asyncpg's own pool proxy (which forwards the same way)."""
    from poolwarden import unwrap

    out: dict[str, float] = {}
    async with lg.acquire() as handle:
        raw = unwrap(handle)
        out["raw_ns"] = _best_ns("c.is_closed()", {"c": raw}, calls)
        out["handle_ns"] = _best_ns("c.is_closed()", {"c": handle}, calls)
    if apg is not None:
        async with apg.acquire() as proxy:
            out["asyncpg_proxy_ns"] = _best_ns("c.is_closed()", {"c": proxy}, calls)
    out["calls"] = calls
    return out


def measure_stats_keeping() -> tuple[float, float]:
    """ns per acquire+release that poolwarden's always-on stats cost, timed on its Histogram.

    First the fast path's form (one inlined use-time histogram update and one counter; a fast lend
    is a zero wait, counted instead of observed), then the general path's (two ``observe()`` calls
    and two counters).
    """
    from bisect import bisect_left

    from poolwarden.observe.stats import Histogram

    class Counters:
        acquired = 0
        released = 0

    env = {"w": Histogram(), "u": Histogram(), "k": Counters(), "bis": bisect_left}
    inline = ("v = 3e-06; u.counts[bis(u.bounds, v)] += 1; u.count += 1; u.sum += v; "
              "k.acquired += 1")
    general = "w.observe(2e-06); k.acquired += 1; u.observe(3e-06); k.released += 1"
    empty = _best_ns("pass", env, 200_000)
    return _best_ns(inline, env, 200_000) - empty, _best_ns(general, env, 200_000) - empty


# -- report ------------------------------------------------------------------------------------


def _med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _fmt_lat(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    if seconds >= 0.01:
        return f"{seconds * 1e3:.1f}ms"
    if seconds >= 0.001:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds * 1e6:.1f}us"


def _paired(rows: list[dict[str, float]], floor: list[dict[str, float]], metric: str) -> list[float]:
    """Per-round ratios to the floor's run of the same round (run next to it, so the load the
    machine was under is shared)."""
    return [r[metric] / f[metric] for r, f in zip(rows, floor, strict=True) if f[metric]]


Results = dict[str, dict[str, list[dict[str, float]]]]
Summary = dict[str, dict[str, dict[str, float]]]


def summarize(results: Results) -> Summary:
    """Medians across rounds, and the median of the per-round ratios to the floor (x_floor for
    ops/s, p99_x_floor for p99), with the lowest and highest of those ratios."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, per in results.items():
        out[key] = {}
        floor = per.get("floor")
        for name, rows in per.items():
            if not rows:
                continue
            m = {k: _med(rows, k) for k in ("ops_s", "p50", "p99", "ops")}
            m["rounds"] = len(rows)
            if floor and len(floor) == len(rows):
                for metric, label in (("ops_s", "x_floor"), ("p99", "p99_x_floor")):
                    ratios = _paired(rows, floor, metric)
                    m[label] = statistics.median(ratios)
                    m[label + "_min"] = min(ratios)
                    m[label + "_max"] = max(ratios)
            out[key][name] = m
    return out


def print_table(summary: dict[str, dict[str, dict[str, float]]], order: list[str]) -> None:
    print()
    print(f"{'scenario':<30} {'contender':<19} {'ops/s':>9} {'p50':>9} {'p99':>9} {'x floor':>8} "
          f"{'(per round)':>13}")
    print("-" * 103)
    for key, per in summary.items():
        s = SCENARIOS[key]
        label = f"({key}) {s.title}"
        for name in order:
            if name not in per:
                continue
            m = per[name]
            ratio, spread = "-", ""
            if "x_floor" in m:
                ratio = f"{m['x_floor']:.2f}"
                spread = f"{m['x_floor_min']:.2f}..{m['x_floor_max']:.2f}"
            print(f"{label:<30} {name:<19} {m['ops_s']:>9,.0f} {_fmt_lat(m['p50']):>9} "
                  f"{_fmt_lat(m['p99']):>9} {ratio:>8} {spread:>13}")
            label = ""
        if s.note:
            print(f"{'':<30} ({s.note})")
        print()


def check_targets(summary: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Judged on the median of the per-round ratios poolwarden/floor."""
    def ratio(key: str, label: str) -> tuple[float, float, float] | None:
        m = summary.get(key, {}).get("poolwarden")
        if m is None or label not in m:
            return None
        return m[label], m[label + "_min"], m[label + "_max"]

    targets: list[tuple[str, tuple[float, float, float] | None, Callable[[float], bool]]] = [
        ("(a) acquire+release 1 task: ops/s >= 0.5x floor", ratio("a", "x_floor"), lambda r: r >= 0.5),
        ("(b) acquire+release 64 tasks: ops/s >= 0.5x floor", ratio("b", "x_floor"), lambda r: r >= 0.5),
        ("(d) SELECT 1 64 tasks: ops/s >= 0.9x floor", ratio("d", "x_floor"), lambda r: r >= 0.9),
        ("(e) 200 tasks: wait p99 <= 1.1x floor's", ratio("e", "p99_x_floor"), lambda r: r <= 1.1),
    ]
    out = []
    for text, value, ok in targets:
        out.append({"target": text, "ratio": None if value is None else value[0],
                    "per_round": None if value is None else [value[1], value[2]],
                    "passed": None if value is None else bool(ok(value[0]))})
    return out


def run_order(here: list[Contender], turn: int) -> list[Contender]:
    """Every contender once, in an order that rotates with ``turn``; the floor and the poolwarden
    variants always run back to back (alternating which goes first), so the per-round ratios
    compare runs made under the same machine load."""
    pair = [c for c in here if c.name == "floor" or c.name.startswith("poolwarden")]
    if turn % 2:
        pair.reverse()
    units: list[list[Contender]] = [pair] if pair else []
    units += [[c] for c in here if c not in pair]
    shift = turn % len(units)
    return [c for unit in units[shift:] + units[:shift] for c in unit]


# -- main --------------------------------------------------------------------------------------


def _source_digest() -> str:
    """A short digest of poolwarden's hot-path sources, to tell which code a result belongs to."""
    import hashlib

    import poolwarden

    root = os.path.dirname(os.path.abspath(poolwarden.__file__))
    h = hashlib.sha256()
    for rel in ("pool.py", "handle.py", "observe/stats.py", "connectors/asyncpg.py"):
        with open(os.path.join(root, rel), "rb") as fh:
            h.update(fh.read())
    return f"{poolwarden.__version__} pool/handle/stats/asyncpg sha256:{h.hexdigest()[:12]}"


async def profile_poolwarden(url: str, key: str, duration: float) -> None:
    lg = await make_poolwarden(url)
    try:
        s = SCENARIOS[key]
        await run_one(lg, s, 0.3)
        prof = cProfile.Profile()
        prof.enable()
        res = await run_one(lg, s, duration)
        prof.disable()
        print(f"poolwarden ({key}) {s.title} under cProfile: {res['ops_s']:,.0f} ops/s "
              f"(cProfile slows everything; read the shares, not the rate)")
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(25)
        print(buf.getvalue())
    finally:
        await lg.close()


async def amain(args: argparse.Namespace) -> int:
    url = os.environ.get("POOLWARDEN_BENCH_PG", DEFAULT_URL)
    if args.profile:
        await profile_poolwarden(url, args.profile, args.duration)
        return 0

    names = [n for n in FACTORIES if n in args.contenders]
    keys = [k for k in SCENARIOS if k in args.scenarios]
    wall0 = clock()
    contenders: list[Contender] = []
    try:
        for name in names:
            contenders.append(await FACTORIES[name](url))
        if "poolwarden" in names and not args.no_listener:
            contenders.append(await make_poolwarden(url, listener=True))
        display = ["poolwarden", "poolwarden+listener", "asyncpg", "psycopg_pool", "sqlalchemy", "floor"]
        order = [n for n in display if any(c.name == n for c in contenders)]
        by_name = {c.name: c for c in contenders}

        import asyncpg
        import psycopg
        import sqlalchemy

        probe = await asyncpg.connect(_scheme_url(url, "postgresql"))
        server = await probe.fetchval("SHOW server_version")
        await probe.close()
        meta = {
            "poolwarden_src": _source_digest(),
            "loadavg_start": os.getloadavg()[0],
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} "
                       f"{platform.release()}",
            "python": platform.python_version(),
            "loop": type(asyncio.get_running_loop()).__name__,
            "postgresql": server,
            "asyncpg": asyncpg.__version__, "psycopg": psycopg.__version__,
            "psycopg_impl": psycopg.pq.__impl__, "sqlalchemy": sqlalchemy.__version__,
            "rounds": args.rounds, "duration": args.duration, "pool_size": SIZE,
        }
        print(f"# {meta['date']}  {meta['machine']}  Python {meta['python']}  "
              f"PostgreSQL {server}  asyncpg {meta['asyncpg']}  psycopg {meta['psycopg']} "
              f"({meta['psycopg_impl']})  SQLAlchemy {meta['sqlalchemy']}")
        print(f"# poolwarden source {meta['poolwarden_src']}")
        runs = sum(1 for c in contenders for k in keys if k in c.scenarios)
        print(f"# {args.rounds} round(s) x {runs} runs of ~{args.duration}s "
              f"(estimate {args.rounds * runs * args.duration + 10:.0f}s)", flush=True)

        # warm-up: prepared statements, handle classes, psycopg's auto-prepare, SQLAlchemy caches
        for key in keys:
            await run_block(url, contenders, [c for c in contenders if key in c.scenarios],
                            SCENARIOS[key], args.warmup, f"warm-up ({key})")

        results: dict[str, dict[str, list[dict[str, float]]]] = {
            k: {c.name: [] for c in contenders if k in c.scenarios} for k in keys}
        for rnd in range(args.rounds):
            t0 = clock()
            for si, key in enumerate(keys):
                here = run_order([c for c in contenders if key in c.scenarios], rnd + si)
                block = await run_block(url, contenders, here, SCENARIOS[key], args.duration,
                                        f"round {rnd + 1} ({key})")
                for name, res in block.items():
                    results[key][name].append(res)
            print(f"# round {rnd + 1}/{args.rounds} done in {clock() - t0:.1f}s", file=sys.stderr,
                  flush=True)

        summary = summarize(results)
        print_table(summary, order)

        overheads: dict[str, Any] = {}
        # the listener: per-round paired ratio, against poolwarden's own round-to-round spread
        if "poolwarden+listener" in by_name:
            print("poolwarden overheads")
            for key in LISTENER_SCENARIOS:
                if key not in results:
                    continue
                plain = results[key]["poolwarden"]
                lis = results[key]["poolwarden+listener"]
                ratios = [b["ops_s"] / a["ops_s"] for a, b in zip(plain, lis, strict=True)]
                spread = (max(r["ops_s"] for r in plain) - min(r["ops_s"] for r in plain)) \
                    / _med(plain, "ops_s")
                med = statistics.median(ratios)
                overheads[f"listener_{key}"] = {"ratio": med, "ratios": ratios, "noise": spread}
                print(f"  no-op PoolListener, ({key}): {_med(lis, 'ops_s'):,.0f} vs "
                      f"{_med(plain, 'ops_s'):,.0f} ops/s without = {(med - 1) * 100:+.1f}% "
                      f"(per-round {min(ratios):.3f}..{max(ratios):.3f}; poolwarden's own "
                      f"round-to-round spread {spread * 100:.1f}%)")
        if "poolwarden" in by_name:
            fast_ns, general_ns = measure_stats_keeping()
            overheads["stats_ns_per_op"] = {"fast_path": fast_ns, "general_path": general_ns}
            line = (f"  stats keeping (always on): {fast_ns:.0f} ns/op as the fast path keeps them "
                    f"(inline histogram + counter), {general_ns:.0f} ns/op via Histogram.observe() x2")
            if "a" in summary and "poolwarden" in summary["a"]:
                op_ns = 1e9 / summary["a"]["poolwarden"]["ops_s"]
                line += (f"; {fast_ns / op_ns * 100:.0f}%..{general_ns / op_ns * 100:.0f}% of "
                         f"poolwarden's {op_ns:.0f} ns acquire+release in (a)")
            print(line)
            h = await measure_handle(by_name["poolwarden"], by_name.get("asyncpg"), args.handle_calls)
            overheads["handle"] = h
            line = (f"  handle forwarding, {args.handle_calls:,} conn.is_closed(): raw "
                    f"{h['raw_ns']:.0f} ns/call, poolwarden handle {h['handle_ns']:.0f} ns/call "
                    f"(+{h['handle_ns'] - h['raw_ns']:.0f} ns)")
            if "asyncpg_proxy_ns" in h:
                line += (f", asyncpg pool proxy {h['asyncpg_proxy_ns']:.0f} ns/call "
                         f"(+{h['asyncpg_proxy_ns'] - h['raw_ns']:.0f} ns)")
            print(line)
            print()

        targets = check_targets(summary)
        for t in targets:
            verdict = "n/a " if t["passed"] is None else ("PASS" if t["passed"] else "FAIL")
            value = "-" if t["ratio"] is None else (
                f"{t['ratio']:.2f}x (per round {t['per_round'][0]:.2f}..{t['per_round'][1]:.2f})")
            print(f"{verdict}  {t['target']}: poolwarden = {value}")
        judged = [t for t in targets if t["passed"] is not None]
        failed = [t for t in judged if not t["passed"]]
        overall = "n/a" if not judged else ("FAIL" if failed else "PASS")
        print(f"TARGETS: {overall} ({len(judged) - len(failed)}/{len(judged)} met)")
        meta["loadavg_end"] = os.getloadavg()[0]
        print(f"# total wall time {clock() - wall0:.0f}s; 1-min load average {meta['loadavg_start']:.2f}"
              f" at start, {meta['loadavg_end']:.2f} at end (this process alone adds about 1)")

        args.payload = {"meta": meta, "results": results, "median": summary,
                        "overheads": overheads, "targets": targets}
        return 1 if (args.check and overall == "FAIL") else 0
    finally:
        for c in reversed(contenders):
            try:
                await c.close()
            except Exception as exc:  # pragma: no cover - best effort at exit
                print(f"# closing {c.name}: {exc!r}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--duration", type=float, default=0.9,
                   help="seconds per contender per scenario per round (default 0.9)")
    p.add_argument("--warmup", type=float, default=0.15, help="warm-up seconds per run (default 0.15)")
    p.add_argument("--quick", action="store_true", help="1 round of 0.3s runs: a smoke test")
    p.add_argument("--json", metavar="FILE", help="save every round and the medians as JSON")
    p.add_argument("--contenders", default=",".join(FACTORIES),
                   help=f"comma-separated subset of {','.join(FACTORIES)}")
    p.add_argument("--scenarios", default="abcde", help="subset of abcde (default all)")
    p.add_argument("--no-listener", action="store_true", help="skip the poolwarden+listener variant")
    p.add_argument("--handle-calls", type=int, default=100_000)
    p.add_argument("--profile", choices=list(SCENARIOS), metavar="SCENARIO",
                   help="instead: run poolwarden alone in one scenario under cProfile")
    p.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 0.3, 0.05
    args.contenders = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = set(args.contenders) - set(FACTORIES)
    if unknown:
        p.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    if set(args.scenarios) - set(SCENARIOS):
        p.error("--scenarios takes letters from abcde")
    args.payload = None
    code = asyncio.run(amain(args))
    if args.json and args.payload is not None:
        with open(args.json, "w") as fh:
            json.dump(args.payload, fh, indent=2)
        print(f"# results saved to {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
