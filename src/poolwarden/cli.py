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
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from poolwarden.config import DSN, PoolConfig
from poolwarden.errors import ConfigError

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
                       help="postgresql://, postgresql+psycopg://, mysql://, mariadb://, sqlite:/// or "
                       "redis:// URL")
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
    top.add_argument("-H", "--header", action="append", default=[], metavar="NAME:VALUE",
                     help="send this header, e.g. 'Authorization: Bearer ...' for operator routes behind "
                          "install(dependencies=...); repeatable; POOLWARDEN_TOP_HEADER is read too, so "
                          "a token need not appear in the process list. Values are never printed")
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
    try:
        dsn = DSN(url)
    except ConfigError as exc:
        return _Result(url="(unparsable URL)", ok=False, error=f"ConfigError: {exc}")
    result = _Result(url=dsn.redacted, ok=False)
    secrets = dsn.secrets
    try:
        if dsn.scheme in _REDIS_SCHEMES:
            checked = await _check_redis(dsn, timeout, result)
        else:
            checked = await _check_database(dsn, timeout, pgbouncer, result)
        if checked:
            result.ok = True
    except TimeoutError:
        result.error = f"no answer within {timeout:g}s"
    except ConfigError as exc:  # built from the redacted URL and option names: never holds a secret
        result.error = f"ConfigError: {exc}"
    except Exception as exc:
        # the driver's class, SQLSTATE and message, the whole message withheld if it could show a secret
        result.error = secrets.describe(exc)
    return result


_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def _sqlite_missing(dsn: DSN) -> str | None:
    """Why ``check`` does not open this SQLite URL: connecting would create a file that is not there."""
    path = dsn.path[1:] if dsn.path.startswith("/") else dsn.path
    if path in ("", ":memory:") or dsn.query.get("mode") == "memory" or Path(path).exists():
        return None
    return f"no such database file: {path} (check never creates one)"


async def _check_database(dsn: DSN, timeout: float, pgbouncer: bool, result: _Result) -> bool:
    from poolwarden.connectors import connector_for

    if dsn.scheme == "sqlite":
        result.error = _sqlite_missing(dsn)
        if result.error:
            return False
        # read-only: a check must not switch the journal mode or write anything
        query = dsn.raw_query
        dsn = DSN(dsn.url().partition("?")[0] + "?" + (query + "&" if query else "") + "mode=ro")
    config = PoolConfig(pgbouncer=pgbouncer and dsn.scheme in ("postgresql", "postgres"))
    connector = connector_for(dsn, config)
    conn: Any = None
    try:
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
        return True
    finally:
        if conn is not None:
            try:
                async with asyncio.timeout(min(timeout, 5.0)):
                    await connector.close(conn)
            except Exception:
                connector.terminate(conn)


async def _check_redis(dsn: DSN, timeout: float, result: _Result) -> bool:
    """PING a Redis server through the client driver a ``warden.client`` would use, and read INFO."""
    from poolwarden.clients import ClientConfig, driver_for

    driver = driver_for(dsn, ClientConfig(connect_timeout=timeout))
    client: Any = None
    try:
        async with asyncio.timeout(timeout):
            start = time.perf_counter()
            client = await driver.open()
            await driver.ping(client)  # the first command also connects
            result.connect_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            await driver.ping(client)
            result.ping_ms = (time.perf_counter() - start) * 1000
            server = await client.info("server")
            clients = await client.info("clients")
        result.product = "Valkey" if "valkey_version" in server else "Redis"
        result.version = str(server.get("valkey_version") or server.get("redis_version"))
        limit = clients.get("maxclients")
        result.max_connections = int(limit) if limit is not None else None
        return True
    finally:
        if client is not None:
            try:
                async with asyncio.timeout(min(timeout, 5.0)):
                    await driver.close(client)
            except Exception:
                pass


# -- top --------------------------------------------------------------------------------------------


def _stats_url(url: str) -> str:
    url = url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/poolwarden/stats") else url + "/poolwarden/stats"


def _top(args: argparse.Namespace) -> int:
    """Draw ``poolwarden.observe.top`` frames; every byte from the service goes through its validation."""
    from poolwarden.observe import top

    httpx = _need("httpx")
    try:
        target = DSN(_stats_url(args.url))  # parsed once: any credentials go as Basic auth, never in a URL
    except ConfigError as exc:
        print(f"poolwarden top: {exc}", file=sys.stderr)
        return 2
    url = target.url()
    shown = top.clean(target.redacted, 200)
    headers: dict[str, str] = {}
    for raw in [*args.header, *filter(None, [os.environ.get("POOLWARDEN_TOP_HEADER")])]:
        name, sep, value = raw.partition(":")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name) or any(c in value for c in "\r\n"):
            # nothing of it is echoed: a malformed header may be the token itself
            print("poolwarden top: a header must be NAME:VALUE, e.g. 'Authorization: Bearer ...'",
                  file=sys.stderr)
            return 2
        headers[name] = value.strip()
    auth = (httpx.BasicAuth(target.username or "", target.password or "")
            if target.username is not None or target.password is not None else None)

    def read(client: Any) -> top.Frame:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise top.Garbage(f"HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > top.MAX_BODY:
                    break
        return top.parse(bytes(body))

    def failure(exc: Exception) -> str:
        reason = str(exc) if isinstance(exc, top.Garbage) else type(exc).__name__
        return f"poolwarden top: cannot read {shown}: {reason}"

    with httpx.Client(timeout=max(args.interval, 2.0), auth=auth, headers=headers) as client:
        try:
            frame = read(client)
        except Exception as exc:
            print(top.clean(failure(exc), 300), file=sys.stderr)
            return 1
        if args.once:
            print("\n".join(top.render(frame, None, shown)))
            return 0
        rich_console = _need("rich.console")
        rich_live = _need("rich.live")
        rich_text = _need("rich.text")
        out = rich_console.Console(markup=False, highlight=False, emoji=False)

        def screen(lines: list[str]) -> Any:
            return rich_text.Text("\n".join(lines), no_wrap=True, overflow="crop")  # Text: never markup

        previous: Any = None
        with rich_live.Live(screen(top.render(frame, None, shown)), console=out, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(args.interval)
                    try:
                        previous, frame = frame, read(client)
                        live.update(screen(top.render(frame, previous, shown)), refresh=True)
                    except Exception as exc:  # keep watching: the service may be restarting
                        live.update(screen(top.render(frame, previous, shown, error=failure(exc))),
                                    refresh=True)
            except KeyboardInterrupt:  # Ctrl-C is how one leaves top
                return 0


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
