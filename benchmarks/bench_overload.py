"""Overload benchmark: open-loop Poisson load against FastAPI on uvicorn, poolwarden next to the anchors.

Each contender is a FastAPI app on uvicorn (its own process) with a pool of 10 PostgreSQL connections;
every request runs ``SELECT pg_sleep(S)`` (fixed server time, 0.2 s by default), so the capacity is
about 10 / S requests a second. This process is the load generator: arrivals are a Poisson process at
a fixed rate, independent of the responses (open loop), and every client gives up after 1 s, as a
load balancer would, closing its connection; connections that answered in time are kept alive for
the next request (so the HTTP server's CPU goes to requests, not to TCP handshakes). The rates are
0.5x, 1x, 2x and 4x the capacity measured first (closed loop, poolwarden); for each rate every
contender runs once, in a rotating order (interleaved).

Per rate and contender it prints: goodput (2xx received within 1 s, per second), p50/p99 of those,
503s received within 1 s, clients that gave up, the server's peak RSS and its growth over the run,
and the worst latency of ``/livez`` probed every 50 ms.

    .venv/bin/python benchmarks/bench_overload.py                      # 20 s per run, ~9 minutes
    .venv/bin/python benchmarks/bench_overload.py --duration 5         # a quicker look
    .venv/bin/python benchmarks/bench_overload.py --contenders poolwarden,asyncpg --rates 2,4
    .venv/bin/python benchmarks/bench_overload.py --json out.json

POOLWARDEN_BENCH_PG overrides the server URL (default postgresql://postgres@127.0.0.1:5432/test).
No ``from __future__ import annotations``: FastAPI must see the routes' annotations as objects.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SIZE = 10
GIVE_UP = 1.0  # seconds a client waits before it hangs up
CONTENDERS = ("poolwarden", "poolwarden-fifo", "asyncpg", "psycopg_pool", "sqlalchemy")
clock = time.monotonic
SCRIPT = os.path.abspath(__file__)


# -- the servers (run in their own process: `bench_overload.py serve <contender> <port>`) ------------


def build_app(contender: str, url: str, sleep: float) -> Any:
    """The FastAPI app of one contender: GET /q runs the query, GET /livez touches nothing."""
    from contextlib import asynccontextmanager
    from typing import Annotated

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    query = f"SELECT pg_sleep({sleep})"
    busy = JSONResponse({"detail": "no connection free"}, status_code=503, headers={"Retry-After": "1"})

    if contender.startswith("poolwarden"):
        import asyncpg

        from poolwarden import Warden

        warden = Warden()
        db = warden.pool("db", url, min_size=SIZE, max_size=SIZE,
                         adaptive_queue=contender == "poolwarden")
        app = FastAPI(lifespan=warden.lifespan)
        warden.install(app, metrics=False)

        @app.get("/q")
        async def q(conn: Annotated[asyncpg.Connection, db.connection]) -> Response:
            await conn.execute(query)
            return Response(b"ok")

        @app.get("/queue")
        async def queue_stats() -> dict[str, object]:
            s = db.stats()
            return {"mode": s.queue_mode, "waiting": s.waiting, "shed": dict(s.shed)}

        return app

    if contender == "asyncpg":
        import asyncpg

        state: dict[str, Any] = {}

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> Any:
            state["pool"] = await asyncpg.create_pool(url, min_size=SIZE, max_size=SIZE)
            yield
            await state["pool"].close()

        app = FastAPI(lifespan=lifespan)

        @app.get("/q")
        async def q_asyncpg() -> Response:
            try:
                async with state["pool"].acquire(timeout=10) as conn:
                    await conn.execute(query)
            except TimeoutError:
                return busy
            return Response(b"ok")

    elif contender == "psycopg_pool":
        from psycopg_pool import AsyncConnectionPool, PoolTimeout

        pool = AsyncConnectionPool(url, min_size=SIZE, max_size=SIZE, timeout=10, open=False,
                                   kwargs={"autocommit": True})

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> Any:
            await pool.open(wait=True)
            yield
            await pool.close()

        app = FastAPI(lifespan=lifespan)

        @app.get("/q")
        async def q_psycopg() -> Response:
            try:
                async with pool.connection() as conn:
                    await conn.execute(query)
            except PoolTimeout:
                return busy
            return Response(b"ok")

    elif contender == "sqlalchemy":
        from sqlalchemy import text
        from sqlalchemy.exc import TimeoutError as PoolTimeoutError
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1),
                                     pool_size=SIZE, max_overflow=0, pool_timeout=10,
                                     isolation_level="AUTOCOMMIT")
        stmt = text(query)

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> Any:
            yield
            await engine.dispose()

        app = FastAPI(lifespan=lifespan)

        @app.get("/q")
        async def q_sqlalchemy() -> Response:
            try:
                async with engine.connect() as conn:
                    await conn.execute(stmt)
            except PoolTimeoutError:
                return busy
            return Response(b"ok")

    else:
        raise SystemExit(f"unknown contender {contender!r}")

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "pass"}

    return app


def serve(contender: str, port: int, url: str, sleep: float) -> None:
    import uvicorn

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvicorn.run(build_app(contender, url, sleep), host="127.0.0.1", port=port, log_level="error",
                access_log=False, http="h11", ws="none", backlog=4096, timeout_keep_alive=30)


# -- the load generator ---------------------------------------------------------------------------


@dataclass
class Run:
    contender: str
    factor: float
    rate: float
    duration: float
    sent: int = 0
    served: list[float] = field(default_factory=list)  # latencies of 2xx within GIVE_UP
    refused: int = 0  # 503 within GIVE_UP
    gave_up: int = 0  # no answer within GIVE_UP
    errors: int = 0  # connection errors, other statuses
    livez: list[float] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0

    def row(self) -> dict[str, Any]:
        served = sorted(self.served)
        q = statistics.quantiles(served, n=100) if len(served) >= 2 else [0.0] * 99
        return {
            "contender": self.contender, "load": f"{self.factor:g}x", "rate": round(self.rate, 1),
            "goodput": round(len(served) / self.duration, 1),
            "p50_ms": round(q[49] * 1000), "p99_ms": round(q[98] * 1000),
            "503_per_s": round(self.refused / self.duration, 1),
            "gave_up_per_s": round(self.gave_up / self.duration, 1),
            "errors": self.errors,
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "rss_growth_mb": round(self.rss_end_mb - self.rss_start_mb, 1),
            "livez_max_ms": round(max(self.livez, default=0.0) * 1000),
        }


_idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}


async def request(port: int, path: str, limit: float = GIVE_UP) -> tuple[int, float]:
    """One GET over a kept-alive connection (a new one when none is free); (status, seconds), status
    0 when the client gave up (its connection is then closed, as a load balancer's would be)."""
    start = clock()
    idle = _idle.setdefault(port, [])
    conn = None
    try:
        async with asyncio.timeout(limit):
            conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        idle.append(conn)
        conn = None
        return int(status_line.split()[1]), clock() - start
    except TimeoutError:
        return 0, clock() - start
    except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
        return -1, clock() - start
    finally:
        if conn is not None:
            conn[1].close()


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def server(contender: str, url: str, sleep: float) -> Any:
    port = free_port()
    proc = await asyncio.to_thread(subprocess.Popen, [sys.executable, SCRIPT, "serve", contender,
                                                      str(port), "--url", url, "--sleep", str(sleep)])
    try:
        deadline = clock() + 30
        while (await request(port, "/livez"))[0] != 200:
            if proc.poll() is not None or clock() > deadline:
                raise RuntimeError(f"{contender} server did not start")
            await asyncio.sleep(0.1)
        # warm up: every connection used once, the routes compiled
        await asyncio.gather(*(request(port, "/q", 5.0) for _ in range(SIZE * 2)))
        yield proc, port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


async def open_loop(run: Run, proc: subprocess.Popen[bytes], port: int, seed: int) -> None:
    rng = random.Random(seed)
    pending: set[asyncio.Task[None]] = set()
    stop = False

    async def one() -> None:
        run.sent += 1
        status, seconds = await request(port, "/q")
        if status == 200:
            run.served.append(seconds)
        elif status == 503:
            run.refused += 1
        elif status == 0:
            run.gave_up += 1
        else:
            run.errors += 1

    async def probe() -> None:
        while not stop:
            _status, seconds = await request(port, "/livez", 5.0)
            run.livez.append(seconds)
            await asyncio.sleep(0.05)

    async def memory() -> None:
        while not stop:
            run.rss_peak_mb = max(run.rss_peak_mb, rss_mb(proc.pid))
            await asyncio.sleep(0.25)

    run.rss_start_mb = rss_mb(proc.pid)
    watchers = [asyncio.create_task(probe()), asyncio.create_task(memory())]
    start = clock()
    at = start
    while True:
        at += rng.expovariate(run.rate)
        if at - start >= run.duration:
            break
        delay = at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    stop = True
    await asyncio.gather(*watchers)
    run.rss_end_mb = rss_mb(proc.pid)


async def capacity(url: str, sleep: float, seconds: float) -> float:
    """Requests served per second by poolwarden under a closed loop of 3 x pool size clients."""
    async with server("poolwarden", url, sleep) as (_, port):
        done = 0
        end = clock() + seconds

        async def client() -> None:
            nonlocal done
            while clock() < end:
                if (await request(port, "/q", 10.0))[0] == 200:
                    done += 1

        start = clock()
        await asyncio.gather(*(client() for _ in range(SIZE * 3)))
        return done / (clock() - start)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("load", "contender", "goodput/s", "p50 ms", "p99 ms", "503/s", "gave up/s", "RSS peak MB",
            "RSS growth MB", "/livez max ms")
    keys = ("load", "contender", "goodput", "p50_ms", "p99_ms", "503_per_s", "gave_up_per_s",
            "rss_peak_mb", "rss_growth_mb", "livez_max_ms")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    contenders = args.contenders.split(",")
    factors = [float(f) for f in args.rates.split(",")]
    cap = args.capacity or await capacity(args.url, args.sleep, 8.0)
    print(f"capacity: {cap:.1f} requests/s (pool of {SIZE}, pg_sleep({args.sleep})); "
          f"{args.duration:g} s per run; clients give up after {GIVE_UP:g} s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows: list[dict[str, Any]] = []
    for i, factor in enumerate(factors):
        order = contenders[i % len(contenders):] + contenders[:i % len(contenders)]
        for contender in order:
            run = Run(contender, factor, factor * cap, args.duration)
            async with server(contender, args.url, args.sleep) as (proc, port):
                await open_loop(run, proc, port, seed=i)
            row = run.row()
            row["loadavg"] = round(os.getloadavg()[0], 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    rows.sort(key=lambda r: (float(r["load"][:-1]), contenders.index(r["contender"])))
    print()
    print(table(rows))
    if args.json:
        save(args.json, {"capacity": cap, "duration": args.duration, "sleep": args.sleep, "rows": rows})


def save(path: str, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        p = argparse.ArgumentParser()
        p.add_argument("cmd")
        p.add_argument("contender")
        p.add_argument("port", type=int)
        p.add_argument("--url", default=DEFAULT_URL)
        p.add_argument("--sleep", type=float, default=0.2)
        a = p.parse_args()
        serve(a.contender, a.port, a.url, a.sleep)
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--rates", default="0.5,1,2,4", help="multiples of the measured capacity")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--sleep", type=float, default=0.2, help="server time of the query")
    parser.add_argument("--capacity", type=float, default=0.0, help="skip measuring it")
    parser.add_argument("--url", default=os.environ.get("POOLWARDEN_BENCH_PG", DEFAULT_URL))
    parser.add_argument("--json", help="also write the rows to this file")
    asyncio.run(main(parser.parse_args()))
