"""A PostgreSQL outage under load: poolwarden next to hand-written ``asyncpg.create_pool`` glue.

Two copies of the same FastAPI app (``GET /q`` runs ``SELECT 1``) are served by uvicorn, each in a
process of its own on a real socket: one borrows through a poolwarden pool's dependency, the other
through the usual glue (``app.state.pool = await asyncpg.create_pool(...)`` and a ``yield`` dependency
around ``pool.acquire()``). Both use 10 connections to the same private PostgreSQL cluster
(tests/support/private_pg.py, its own port: no shared server is touched). The same load - N clients
per app, each sending one request after another on a keep-alive connection - runs against both at
once, and the server is stopped (fast shutdown) for ``--outage`` seconds in the middle of the run.

Printed per app: 2xx and 5xx counts (and the 5xx kinds), p50/p99 latency over all requests, the
slowest failure, and the seconds from the server accepting connections again (the first successful
connect of a 10 ms poll) to the first 2xx response.

    .venv/bin/python benchmarks/bench_outage.py                       # 64 clients, 5 s outage
    .venv/bin/python benchmarks/bench_outage.py --clients 16 --outage 2 --json out.json
"""

# (No ``from __future__ import annotations``: FastAPI must resolve the endpoints' local aliases.)
import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_monotonic = time.monotonic


# -- the two apps (run in a subprocess: ``bench_outage.py serve <kind> <port> <dsn>``) -----------


def poolwarden_app(dsn: str, settings: dict[str, Any]) -> Any:
    """The app on poolwarden: a pool declared once, its dependency in the endpoint's signature."""
    from typing import Annotated

    import asyncpg
    from fastapi import FastAPI

    from poolwarden import Warden

    warden = Warden()
    db = warden.pool("db", dsn, min_size=10, max_size=10, **settings)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)

    @app.get("/q")
    async def q(conn: Annotated[asyncpg.Connection, db.connection]) -> dict[str, int]:
        return {"v": await conn.fetchval("SELECT 1")}

    return app


def glue_app(dsn: str) -> Any:
    """The same app on hand-written glue, as the asyncpg and FastAPI docs suggest."""
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager
    from typing import Annotated

    import asyncpg
    from fastapi import Depends, FastAPI, Request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
        yield
        await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    async def connection(request: Request) -> AsyncIterator[asyncpg.Connection]:
        async with request.app.state.pool.acquire() as conn:
            yield conn

    @app.get("/q")
    async def q(conn: Annotated[asyncpg.Connection, Depends(connection)]) -> dict[str, int]:
        return {"v": await conn.fetchval("SELECT 1")}

    return app


def serve(kind: str, port: int, dsn: str, settings: str) -> None:
    import uvicorn

    app = poolwarden_app(dsn, json.loads(settings)) if kind == "poolwarden" else glue_app(dsn)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """Every request one app answered: (started, ended, status, kind of failure)."""

    name: str
    port: int
    samples: list[tuple[float, float, int, str]] = field(default_factory=list)


_REQUEST = b"GET /q HTTP/1.1\r\nHost: bench\r\n\r\n"


async def _client(run: Run, stop: asyncio.Event) -> None:
    """One keep-alive HTTP/1.1 client sending requests back to back (a few lines, not httpx: the
    load generator shares the machine with both servers and must cost as little as it can)."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while not stop.is_set():
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", run.port)
        assert reader is not None
        started = _monotonic()
        try:
            async with asyncio.timeout(60):
                writer.write(_REQUEST)
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    key, _, value = line.partition(b":")
                    if key.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError, TimeoutError) as exc:
            run.samples.append((started, _monotonic(), 599, type(exc).__name__))
            writer.close()
            writer = None
            continue
        kind = ""
        if status >= 300:
            try:
                kind = str(json.loads(body).get("type", "") or "").rpartition(":")[2] or "error"
            except ValueError:
                kind = "text"
        run.samples.append((started, _monotonic(), status, kind))
    if writer is not None:
        writer.close()


async def _wait_serving(port: int, limit: float = 60) -> None:
    deadline = _monotonic() + limit
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_REQUEST)
            ok = b" 200 " in await reader.readline()
            writer.close()
            if ok:
                return
        except OSError:
            pass
        if _monotonic() > deadline:
            raise RuntimeError(f"the app on port {port} does not serve")
        await asyncio.sleep(0.1)


async def _first_accept(dsn: str, since: float) -> float:
    """When the server first accepted a connection (and authenticated it) after ``since``."""
    import asyncpg

    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=1)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            await asyncio.sleep(0.01)
            continue
        accepted = _monotonic()
        await conn.close()
        return max(accepted, since)


def _figures(run: Run, stopped: float, down: float, back: float, end: float) -> dict[str, Any]:
    samples = [s for s in run.samples if s[1] <= end]
    ok = [s for s in samples if 200 <= s[2] < 300]
    failed = [s for s in samples if s[2] >= 500]
    latencies = sorted(s[1] - s[0] for s in samples)
    # the first success of a request sent once the server was down (not one finishing the stop)
    first_ok = min((s[1] for s in ok if s[0] >= down), default=float("nan"))
    outage_failures = [s[1] - s[0] for s in failed if s[0] >= stopped]
    return {
        "app": run.name,
        "2xx": len(ok),
        "2xx_before": len([s for s in ok if s[1] < stopped]),
        "2xx_after": len([s for s in ok if s[0] >= back]),
        "5xx": len(failed),
        "5xx_kinds": dict(Counter(f"{s[2]} {s[3]}".strip() for s in failed).most_common()),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "slowest_failure_ms": 1000 * max(outage_failures, default=0.0),
        "recovery_s": first_ok - back,
    }


async def measure(dsn: str, ports: dict[str, int], *, clients: int, outage: float, warmup: float,
                  after: float, stop_server: Any, start_server: Any) -> list[dict[str, Any]]:
    """Load both apps, stop the server for ``outage`` s, start it, go on for ``after`` s."""
    runs = [Run(name, port) for name, port in ports.items()]
    for run in runs:
        await _wait_serving(run.port)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_client(run, stop)) for run in runs for _ in range(clients)]
    try:
        await asyncio.sleep(warmup)
        stopped = _monotonic()
        await stop_server()
        down = _monotonic()
        await asyncio.sleep(outage)
        starting = _monotonic()
        watch = asyncio.create_task(_first_accept(dsn, starting))
        await start_server()
        back = await watch
        await asyncio.sleep(after)
        end = _monotonic()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [_figures(run, stopped, down, back, end) for run in runs]


def _print(results: list[dict[str, Any]], clients: int, outage: float) -> None:
    print(f"\nPostgreSQL stopped for {outage:.0f} s under {clients} concurrent clients per app "
          "(uvicorn, real sockets, one private server):\n")
    print(f"{'app':<12}{'2xx':>8}{'5xx':>8}{'p50 ms':>9}{'p99 ms':>9}{'slowest 5xx ms':>16}"
          f"{'recovery s':>12}")
    for r in results:
        print(f"{r['app']:<12}{r['2xx']:>8}{r['5xx']:>8}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['slowest_failure_ms']:>16.1f}{r['recovery_s']:>12.3f}")
    for r in results:
        print(f"  {r['app']}: 2xx before the stop {r['2xx_before']}, after the restart "
              f"{r['2xx_after']}; 5xx {r['5xx_kinds']}")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start a private server and both apps, measure, stop everything."""
    sys.path.insert(0, str(ROOT))
    from tests.support.private_pg import free_port, private_postgres

    with private_postgres() as pg:
        ports = {"poolwarden": free_port(), "glue": free_port()}
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        procs = [subprocess.Popen([sys.executable, __file__, "serve", name, str(port), pg.url, args.settings],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, port in ports.items()]
        try:
            return asyncio.run(measure(pg.url, ports, clients=args.clients, outage=args.outage,
                                       warmup=args.warmup, after=args.after, stop_server=pg.astop,
                                       start_server=pg.astart))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1], int(argv[2]), argv[3], argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients per app")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the server is down")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the stop")
    parser.add_argument("--after", type=float, default=3.0, help="seconds of load after the start")
    parser.add_argument("--settings", default="{}",
                        help='extra pool settings for the poolwarden app, as JSON: {"adaptive_queue": false}')
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    results = run(args)
    _print(results, args.clients, args.outage)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
