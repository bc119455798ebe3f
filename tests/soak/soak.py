"""A bounded soak: a FastAPI app on a real PostgreSQL, under load and under fire.

    python -m tests.soak.soak --requests 100000

Requests go through ``httpx.ASGITransport`` (the app runs in the client's task, so cancelling the
request task is a client disconnect that reaches the endpoint mid-flight). The mix: plain queries,
row fetches, transactions (some failing inside), handler errors, queries cancelled by the handler's
own timeout, slow queries, and clients that disconnect at a random moment. Meanwhile a random
pooled backend is killed with ``pg_terminate_backend`` every 100 ms.

At the end it prints requests, successes, errors by kind, latency percentiles, the pool's final
stats and the server's count of the pool's connections, and exits 0 only if every invariant holds:
no unexpected error, no hang, at most one failed request per killed backend, every lease ended
exactly once (in_use 0, no lease out, acquired == released, none lost), the pool's size equal to the
server's count, and no background task left running after close.

Not collected by pytest (the file name has no ``test_`` prefix); ``test_soak_smoke.py`` runs a short one.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from poolwarden import Resource, Warden, unwrap

DEFAULT_URL = os.environ.get("POOLWARDEN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

# path -> weight. Client disconnects are drawn separately, on top of any of these.
MIX: dict[str, int] = {
    "/q": 55,
    "/rows": 10,
    "/tx": 8,
    "/tx?fail=true": 4,
    "/boom": 6,
    "/timeout": 5,
    "/slow": 12,
}
DISCONNECT_RATE = 0.08  # share of requests whose client goes away after a random 0-30 ms
HANG_LIMIT = 30.0  # a request taking longer than this is a hang, an invariant violation


class Boom(Exception):
    """An endpoint's own bug: the pool must take the connection back all the same."""


def build_app(warden: Warden, db: Resource[Any]) -> FastAPI:
    """The soak's service: one endpoint per behaviour in ``MIX``.

    (No ``from __future__ import annotations`` in this module: FastAPI must see the local aliases.)
    """
    app = FastAPI()
    warden.install(app, metrics=False, stats=False)

    # on_error (below) wants the driver's connection a request was lent, even when the lease
    # failed inside the transaction dependency's BEGIN: remember it where both aliases pass.
    lent_conn: ContextVar[Any] = ContextVar("lent_conn", default=None)
    begin = db.connector.transaction

    def remembering_begin(conn: Any) -> Any:
        lent_conn.set(conn)
        return begin(conn)

    db.connector.transaction = remembering_begin  # type: ignore[method-assign]

    async def lent(conn: Annotated[Any, db.connection]) -> Any:
        lent_conn.set(unwrap(conn))
        return conn

    DB = Annotated[Any, Depends(lent)]
    Tx = Annotated[Any, db.transaction]

    @app.get("/q")
    async def q(conn: DB) -> dict[str, int]:
        return {"v": await conn.fetchval("SELECT 1")}

    @app.get("/rows")
    async def rows(conn: DB) -> dict[str, int]:
        return {"n": len(await conn.fetch("SELECT g FROM generate_series(1, 50) g"))}

    @app.get("/tx")
    async def tx(conn: Tx, fail: bool = False) -> dict[str, int]:
        xid = await conn.fetchval("SELECT txid_current()")
        if fail:
            raise Boom("failed inside a transaction")
        return {"xid": xid}

    @app.get("/boom")
    async def boom(conn: DB) -> dict[str, int]:
        await conn.fetchval("SELECT 1")
        raise Boom("the handler failed")

    @app.get("/timeout")
    async def timeout(conn: DB) -> Response:
        try:
            async with asyncio.timeout(0.005):  # the handler gives up on its own query
                await conn.fetchval("SELECT pg_sleep(0.05)")
        except TimeoutError:
            return JSONResponse({"kind": "query-timeout"}, status_code=504)
        return JSONResponse({"kind": "finished"})

    @app.get("/slow")
    async def slow(conn: DB) -> dict[str, bool]:
        await conn.fetchval("SELECT pg_sleep(0.02)")
        return {"ok": True}

    async def on_error(request: Request, exc: Exception) -> Response:
        disconnect = db.connector.is_disconnect(exc)
        raw = lent_conn.get()
        client_side = isinstance(exc, (asyncpg.InternalClientError, asyncpg.InterfaceError))
        if not disconnect and client_side and raw is not None:
            # asyncpg can report a backend killed mid-operation as a protocol error (an
            # InternalClientError, when the server's FATAL message lands between two operations);
            # the socket closing within a few ms tells that apart from a real protocol bug.
            for _ in range(5):
                await asyncio.sleep(0.01)
                if disconnect := raw.is_closed():
                    break
        body = {"kind": type(exc).__name__, "disconnect": disconnect,
                "detail": f"{request.url.path}: {exc}"[:200]}
        return JSONResponse(body, status_code=500)

    for cls in (Boom, asyncpg.PostgresError, asyncpg.InterfaceError, Exception):
        app.add_exception_handler(cls, on_error)
    return app


@dataclass
class Report:
    """What one soak run saw; ``violations`` lists every invariant that did not hold."""

    app_name: str = ""
    requests: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    kills: int = 0
    disconnect_errors: int = 0
    max_size_seen: int = 0
    stats: Any = None
    leases: int = 0
    server_connections: int = -1
    stray_tasks: list[str] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)  # one message per unexpected kind
    violations: list[str] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return self.outcomes["ok"]

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def render(self) -> str:
        s = self.stats
        lines = [
            f"soak: {self.requests} requests in {self.seconds:.1f} s "
            f"({self.requests / max(self.seconds, 1e-9):.0f} req/s)",
            f"  successes: {self.successes}",
            "  outcomes by kind:",
            *(f"    {kind:<34} {n}" for kind, n in sorted(self.outcomes.items(), key=lambda kv: -kv[1])),
            f"  backends killed: {self.kills}; requests failed by a disconnect: {self.disconnect_errors}",
            f"  latency (completed requests): p50 {self.percentile(50) * 1000:.2f} ms, "
            f"p99 {self.percentile(99) * 1000:.2f} ms, max {max(self.latencies, default=0) * 1000:.1f} ms",
            f"  final stats: size={s.size} idle={s.idle} in_use={s.in_use} connecting={s.connecting} "
            f"waiting={s.waiting} leases={self.leases} max_size={s.max_size} "
            f"(largest size seen {self.max_size_seen})",
            f"    acquired={s.acquired} released={s.released} timeouts={s.timeouts} "
            f"connect_errors={s.connect_errors} pings_failed={s.pings_failed} circuit={s.circuit}",
            f"    discarded={dict(sorted(s.discarded.items()))}",
            f"    last_error={s.last_error}",
            f"  server connections (application_name={self.app_name}): {self.server_connections} "
            f"(pool size {s.size})",
        ]
        for kind, example in sorted(self.examples.items()):
            lines.append(f"  e.g. {kind}: {example}")
        if self.violations:
            lines.append("INVARIANTS VIOLATED:")
            lines.extend(f"  - {v}" for v in self.violations)
        else:
            lines.append("invariants: all hold")
        return "\n".join(lines)


async def run(requests: int, *, url: str = DEFAULT_URL, concurrency: int = 64, max_size: int = 16,
              kill_every: float = 0.1, seed: int | None = None, app_name: str | None = None) -> Report:
    """Run the soak and return its report (``report.violations`` empty when every invariant held)."""
    rng = random.Random(seed)
    app_name = app_name or f"lg-soak-{uuid.uuid4().hex[:10]}"
    warden = Warden()
    db = warden.pool("db", url, min_size=4, max_size=max_size, acquire_timeout=10,
                    options={"server_settings": {"application_name": app_name}})
    app = build_app(warden, db)
    report = Report(app_name=app_name)
    paths = list(MIX)
    weights = list(MIX.values())
    issued = 0
    stop = asyncio.Event()
    admin = await asyncpg.connect(url, timeout=10)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    def record(resp: httpx.Response, started: float) -> None:
        report.latencies.append(time.perf_counter() - started)
        if resp.status_code == 200:
            report.outcomes["ok"] += 1
            return
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code == 500 and body.get("disconnect"):
            report.disconnect_errors += 1
            report.outcomes[f"500 disconnect: {body['kind']}"] += 1
            report.examples.setdefault(f"500 disconnect: {body['kind']}", body.get("detail", ""))
        elif resp.status_code == 500:
            report.outcomes[f"500 {body.get('kind', '?')}"] += 1
            report.examples.setdefault(f"500 {body.get('kind', '?')}", body.get("detail", ""))
        elif resp.status_code == 503 and body.get("type", "").endswith("backend-lost"):
            # a disconnect that escaped the endpoint: poolwarden's own 503 for it (the connection is
            # discarded), counted against the backends killed like the endpoint's own 500s
            report.disconnect_errors += 1
            report.outcomes["503 backend-lost"] += 1
        elif resp.status_code == 503:
            report.outcomes[f"503 {body.get('type', '?').rpartition(':')[2]}"] += 1
        else:
            report.outcomes[f"{resp.status_code} {body.get('kind', '?')}"] += 1

    async def client_worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests:
            issued += 1
            path = rng.choices(paths, weights)[0]
            gone_after = rng.uniform(0, 0.03) if rng.random() < DISCONNECT_RATE else None
            started = time.perf_counter()
            task = asyncio.ensure_future(client.get(path))
            try:
                if gone_after is not None:
                    done, _ = await asyncio.wait({task}, timeout=gone_after)
                    if not done:
                        task.cancel()  # the client hangs up mid-flight
                        try:
                            await task
                        except asyncio.CancelledError:
                            report.outcomes["client disconnected mid-flight"] += 1
                            continue
                async with asyncio.timeout(HANG_LIMIT):
                    resp = await task
            except TimeoutError:
                report.outcomes["hang"] += 1
                continue
            except Exception as exc:  # the transport itself failed: never expected
                report.outcomes[f"client error: {type(exc).__name__}"] += 1
                continue
            record(resp, started)

    async def killer() -> None:
        """Every ``kill_every`` seconds until the load stops, kill one pooled backend (0: never)."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), kill_every or 0.1)
                return
            except TimeoutError:
                pass
            report.max_size_seen = max(report.max_size_seen, db.stats().size)
            if not kill_every:
                continue
            killed = await admin.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 "
                "ORDER BY random() LIMIT 1", app_name)
            report.kills += bool(killed)

    started = time.perf_counter()
    try:
        async with warden, httpx.AsyncClient(transport=transport, base_url="http://soak") as client:
            kill_task = asyncio.create_task(killer())
            try:
                await asyncio.gather(*(client_worker(client) for _ in range(concurrency)))
            finally:
                stop.set()
                await kill_task
            report.requests = issued
            report.seconds = time.perf_counter() - started
            await _settle(db, admin, app_name, report)
        await asyncio.sleep(0.2)  # let the loop reap what close() finished
        me = asyncio.current_task()
        report.stray_tasks = [repr(t) for t in asyncio.all_tasks() if t is not me and not t.done()]
    finally:
        await admin.close()
    _judge(report, requests)
    return report


async def _settle(db: Resource[Any], admin: asyncpg.Connection, app_name: str, report: Report) -> None:
    """Let the pool come to rest and compare it with the server.

    A backend killed while idle stays counted until the pool next looks at it, so first every
    pooled connection is lent once (all at the same time): the dead ones are found and replaced.
    """
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(db.stats().max_size):
            conn = await stack.enter_async_context(db.acquire(timeout=10))
            await conn.fetchval("SELECT 1")
    deadline = time.monotonic() + 10
    while True:
        stats = db.stats()
        server: int = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name)
        at_rest = stats.connecting == 0 and stats.in_use == 0 and server == stats.size
        if at_rest or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    report.stats = stats
    report.leases = len(db.leases())
    report.server_connections = server


def _judge(report: Report, requests: int) -> None:
    s, v = report.stats, report.violations
    expected = {"ok", "500 Boom", "504 query-timeout", "client disconnected mid-flight"}
    for kind, n in report.outcomes.items():
        if kind not in expected and not kind.startswith("500 disconnect: ") and kind != "503 backend-lost":
            example = report.examples.get(kind)
            v.append(f"{n} unexpected outcome(s): {kind}" + (f" (e.g. {example})" if example else ""))
    if report.requests != requests or sum(report.outcomes.values()) != requests:
        ended = sum(report.outcomes.values())
        v.append(f"{requests} requests asked, {report.requests} issued, {ended} ended")
    if report.disconnect_errors > report.kills:
        v.append(f"{report.disconnect_errors} requests failed by a disconnect but only "
                 f"{report.kills} backends were killed: a dead connection was lent")
    if s.in_use != 0 or report.leases != 0 or s.waiting != 0:
        v.append(f"leases still out: in_use={s.in_use} leases={report.leases} waiting={s.waiting}")
    if s.acquired != s.released:
        v.append(f"acquired={s.acquired} != released={s.released}: a lease did not end exactly once")
    if s.discarded.get("lost"):
        v.append(f"{s.discarded['lost']} lease(s) lost (handle collected without release)")
    if report.server_connections != s.size:
        v.append(f"server counts {report.server_connections} connections, the pool {s.size}")
    if report.max_size_seen > s.max_size or s.size > s.max_size:
        v.append(f"size exceeded max_size={s.max_size}: {max(report.max_size_seen, s.size)}")
    if s.circuit != "closed" or s.timeouts:
        v.append(f"circuit={s.circuit} timeouts={s.timeouts}")
    if report.stray_tasks:
        v.append(f"tasks left running after close: {report.stray_tasks[:5]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-size", type=int, default=16)
    parser.add_argument("--kill-every", type=float, default=0.1,
                        help="seconds between backend kills (0: none)")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--events", action="store_true",
                        help="show poolwarden's event log (hundreds of discards under fire)")
    args = parser.parse_args(argv)
    if not args.events:
        logging.getLogger("poolwarden").setLevel(logging.ERROR)
    report = asyncio.run(run(args.requests, url=args.url, concurrency=args.concurrency,
                             max_size=args.max_size, kill_every=args.kill_every, seed=args.seed))
    print(report.render())
    return 0 if not report.violations else 1


if __name__ == "__main__":
    sys.exit(main())
