"""``poolwarden check | top | demo``: a thin shell over the library.

* ``poolwarden check URL...`` connects to each database the way a pool would, pings it and reads what
  the server says about itself; one line per URL (the URL redacted), exit 0 when every one answered.
* ``poolwarden top URL`` watches a running service's pools through its ``/poolwarden/stats`` route.
* ``poolwarden demo`` runs the example notes service (``poolwarden.demo.app``) with uvicorn.

rich and httpx come with the ``cli`` extra, uvicorn with ``demo``; they are imported only by the
subcommand that needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from poolwarden.config import DSN, PoolConfig, Secrets
from poolwarden.errors import ConfigError
from poolwarden.observe.stats import HistogramSnapshot

__all__ = ["main"]

_EXTRA = {"rich": "cli", "httpx": "cli", "uvicorn": "demo"}


class _Missing(Exception):
    """A subcommand's optional dependency is not installed."""


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.partition(".")[0]
        raise _Missing(f"poolwarden needs {top} for this: pip install 'poolwarden[{_EXTRA[top]}]'") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 healthy, 1 not, 2 usage or setup error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except _Missing as exc:
        print(f"poolwarden: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    from poolwarden import __version__

    parser = argparse.ArgumentParser(prog="poolwarden", description="Check databases, watch pools, run the "
                                     "demo.")
    parser.add_argument("--version", action="version", version=f"poolwarden {__version__}")
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="connect to databases, ping them and show what they are",
                           description="Connect to each URL as a pool would, ping it, read the server's "
                           "version and connection limit. Exit 0 when every one answered, else 1.")
    check.add_argument("urls", nargs="+", metavar="URL",
                       help="postgresql://, postgresql+psycopg://, mysql://, mariadb:// or sqlite:/// URL")
    check.add_argument("--timeout", type=_seconds, default=10.0,
                       help="seconds to wait for each database (default: 10)")
    check.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    check.add_argument("--pgbouncer", action="store_true",
                       help="connect as a pgbouncer=True pool does (no named prepared statements)")
    check.set_defaults(run=_check)

    top = sub.add_parser("top", help="watch the pools of a running service",
                         description="Read URL/poolwarden/stats (the route warden.install adds) and show "
                         "each pool, refreshed every --interval seconds. Exit 1 when it cannot be read.")
    top.add_argument("url", metavar="URL", help="the service, e.g. http://127.0.0.1:8000")
    top.add_argument("--interval", type=_seconds, default=1.0, help="seconds between refreshes (default: 1)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.set_defaults(run=_top)

    demo = sub.add_parser("demo", help="run the example notes service",
                          description="Run the notes service of poolwarden.demo.app with uvicorn "
                          "(SQLite unless NOTES_DATABASE_URL says otherwise).")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    demo.add_argument("--app", type=Path, default=None, metavar="PATH",
                      help="run this file's `app` instead of the packaged demo")
    demo.set_defaults(run=_demo)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    return value


# -- check ------------------------------------------------------------------------------------------


@dataclass
class _Result:
    url: str  # redacted
    ok: bool
    product: str | None = None
    version: str | None = None
    max_connections: int | None = None
    connect_ms: float | None = None
    ping_ms: float | None = None
    error: str | None = None

    def line(self) -> str:
        if not self.ok:
            return f"FAIL  {self.url}  {self.error}"
        limit = "n/a" if self.max_connections is None else str(self.max_connections)
        return (f"ok    {self.url}  {self.product} {self.version}  max_connections={limit}  "
                f"connect={self.connect_ms:.1f}ms  ping={self.ping_ms:.2f}ms")


def _check(args: argparse.Namespace) -> int:
    rich_console = _need("rich.console")
    err = rich_console.Console(stderr=True)
    with err.status(f"connecting to {len(args.urls)} database(s)…", spinner="dots"):
        results = asyncio.run(_check_all(args.urls, args.timeout, args.pgbouncer))
    if args.json:
        rows = [{k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(r).items()}
                for r in results]
        print(json.dumps(rows, indent=2))
    else:
        for r in results:
            print(r.line())
    return 0 if all(r.ok for r in results) else 1


async def _check_all(urls: Sequence[str], timeout: float, pgbouncer: bool = False) -> list[_Result]:
    return list(await asyncio.gather(*(_check_one(url, timeout, pgbouncer) for url in urls)))


async def _check_one(url: str, timeout: float, pgbouncer: bool = False) -> _Result:
    from poolwarden.connectors import connector_for

    try:
        dsn = DSN(url)
    except ConfigError as exc:
        return _Result(url="(unparsable URL)", ok=False, error=f"ConfigError: {exc}")
    config = PoolConfig(pgbouncer=pgbouncer and dsn.scheme in ("postgresql", "postgres"))
    secrets = Secrets((*dsn.secrets.values, *config.secrets))
    result = _Result(url=dsn.redacted, ok=False)
    conn: Any = None
    try:
        connector = connector_for(dsn, config)
        async with asyncio.timeout(timeout):
            start = time.perf_counter()
            conn = await connector.connect(timeout)
            result.connect_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            await connector.ping(conn)
            result.ping_ms = (time.perf_counter() - start) * 1000
            info = await connector.server_info(conn)
        result.product, result.version, result.max_connections = (
            info.product, info.version, info.max_connections)
        result.ok = True
    except TimeoutError:
        result.error = f"no answer within {timeout:g}s"
    except Exception as exc:
        result.error = secrets.scrub(f"{type(exc).__name__}: {exc}".strip())
    finally:
        if conn is not None:
            try:
                async with asyncio.timeout(min(timeout, 5.0)):
                    await connector.close(conn)
            except Exception:
                connector.terminate(conn)
    return result


# -- top --------------------------------------------------------------------------------------------


def _stats_url(url: str) -> str:
    url = url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/poolwarden/stats") else url + "/poolwarden/stats"


def _top(args: argparse.Namespace) -> int:
    httpx = _need("httpx")
    rich_console = _need("rich.console")
    rich_live = _need("rich.live")
    url = _stats_url(args.url)
    out = rich_console.Console()
    err = rich_console.Console(stderr=True)
    shown = DSN(url).redacted if "@" in url else url
    with httpx.Client(timeout=max(args.interval, 2.0)) as client:
        try:
            frame = _Frame.read(client, url)
        except Exception as exc:
            err.print(f"poolwarden top: cannot read {shown}: {type(exc).__name__}: {exc}", markup=False)
            return 1
        if args.once:
            out.print(frame.table(None, shown))
            return 0
        previous: _Frame | None = None
        with rich_live.Live(frame.table(previous, shown), console=out, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(args.interval)
                    try:
                        previous, frame = frame, _Frame.read(client, url)
                        live.update(frame.table(previous, shown), refresh=True)
                    except Exception as exc:  # keep watching: the service may be restarting
                        error = f"cannot read {shown}: {type(exc).__name__}: {exc}"
                        live.update(frame.table(previous, shown, error=error), refresh=True)
            except KeyboardInterrupt:  # Ctrl-C is how one leaves top
                return 0


@dataclass
class _Frame:
    """One reading of ``/poolwarden/stats``, and how to draw it next to the previous one."""

    at: float
    pools: Mapping[str, Mapping[str, Any]]

    @classmethod
    def read(cls, client: Any, url: str) -> _Frame:
        response = client.get(url)
        response.raise_for_status()
        pools = response.json()
        if not isinstance(pools, dict):
            raise ValueError("the answer is not a JSON object of pools")
        return cls(time.monotonic(), pools)

    def table(self, previous: _Frame | None, url: str, error: str | None = None) -> Any:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        window = "over the last interval" if previous else "since start"
        caption = (f"{url}\nbar: used, idle, connecting of max · queue: callers waiting · "
                   f"acq/s and wait quantiles {window}")
        table = Table(title="poolwarden top", caption=error or caption, box=box.SIMPLE_HEAD, padding=(0, 0),
                      caption_style="red" if error else "dim")
        table.add_column("pool", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("connections", no_wrap=True)
        for column in ("size", "idle", "used", "conn", "queue", "max", "acq/s", "timeouts", "discards",
                       "p50 wait", "p99 wait"):
            table.add_column(column, justify="right", no_wrap=True)
        for name, s in self.pools.items():
            before = previous.pools.get(name) if previous else None
            rate = "-"
            wait = _histogram(s.get("wait_time"))
            if before is not None and previous is not None:
                elapsed = max(self.at - previous.at, 1e-9)
                rate = f"{(int(s.get('acquired', 0)) - int(before.get('acquired', 0))) / elapsed:.1f}"
                wait = _minus(wait, _histogram(before.get("wait_time")))
            discarded = s.get("discarded") or {}
            circuit = str(s.get("circuit", "?"))
            state = Text(str(s.get("state", "?")))
            state.append("\ncircuit " + circuit, style="bold red" if circuit == "open" else "dim")
            table.add_row(
                Text(name).append("\n" + str(s.get("driver", "?")), style="dim"), state,
                _bar(int(s.get("in_use", 0)), int(s.get("idle", 0)), int(s.get("connecting", 0)),
                     int(s.get("max_size", 0))),
                *(str(s.get(k, "?")) for k in _NUMBERS),
                rate, str(s.get("timeouts", 0)), str(sum(int(v) for v in discarded.values())),
                _quantile(wait, 0.5), _quantile(wait, 0.99),
            )
        return table


_NUMBERS = ("size", "idle", "in_use", "connecting", "waiting", "max_size")


def _bar(used: int, idle: int, connecting: int, maximum: int, width: int = 12) -> Any:
    from rich.text import Text

    text = Text()
    if maximum <= 0:
        return text
    cells = [round(width * n / maximum) for n in (used, idle, connecting)]
    for n, style in zip(cells, ("yellow", "green", "blue"), strict=True):
        text.append("█" * n, style=style)
    text.append("░" * max(0, width - sum(cells)), style="dim")
    return text


def _histogram(data: Any) -> HistogramSnapshot | None:
    if not isinstance(data, Mapping):
        return None
    try:
        bounds = tuple(float(b) for b in data["bounds"])
        counts = tuple(int(c) for c in data["counts"])
        return HistogramSnapshot(bounds, counts, int(data["count"]), float(data["sum"]))
    except (KeyError, TypeError, ValueError):
        return None


def _minus(now: HistogramSnapshot | None, before: HistogramSnapshot | None) -> HistogramSnapshot | None:
    """The observations made between two snapshots (those since start when they do not line up)."""
    if now is None or before is None or now.bounds != before.bounds or now.count < before.count:
        return now
    return HistogramSnapshot(now.bounds, tuple(a - b for a, b in zip(now.counts, before.counts, strict=True)),
                             now.count - before.count, now.sum - before.sum)


def _quantile(h: HistogramSnapshot | None, q: float) -> str:
    if h is None or not h.count:
        return "-"
    bound = h.quantile(q)
    if bound == float("inf"):
        return f">{h.bounds[-1]:g}s"
    return f"≤{bound * 1000:g}ms" if bound < 1 else f"≤{bound:g}s"


# -- demo -------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    uvicorn = _need("uvicorn")
    try:
        module = _demo_module(args.app)
    except ConfigError as exc:  # e.g. NOTES_DATABASE_URL names a database whose driver is missing
        print(f"poolwarden demo: {exc}", file=sys.stderr)
        return 2
    if module is None:
        return 2
    print(f"poolwarden demo: http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(module.app, host=args.host, port=args.port)
    return 0


def _demo_module(path: Path | None) -> Any:
    """The packaged demo app's module, or the module of the file at ``path``; None when it cannot load."""
    if path is None:
        try:
            return importlib.import_module("poolwarden.demo.app")
        except ImportError as exc:  # fastapi, aiosqlite... come with the extra
            raise _Missing(f"the demo needs {exc.name or 'its dependencies'}: "
                           "pip install 'poolwarden[demo]'") from None
    spec = importlib.util.spec_from_file_location("poolwarden_demo_app", path)
    if not path.is_file() or spec is None or spec.loader is None:
        print(f"poolwarden demo: cannot import {path}", file=sys.stderr)
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
