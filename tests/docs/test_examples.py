"""Every Python code block of README.md and docs/ runs, against the real servers, so none can rot.

Each block is a complete script, run in a process of its own from an empty directory (see
``run_block.py``: top-level ``await`` is allowed; an ``app`` it defines is driven through its
lifespan). URLs in the examples read as a reader's would (``postgresql://app@localhost/app``); they are
pointed at the test servers before running: PostgreSQL, MariaDB and Redis URLs at the servers of
``tests/support/servers.py``, other http(s) hosts (but loopback and the reserved ``.test``,
``.example``, ``.invalid``, ``.localhost``) at a local stub that answers 200 to everything.

A block titled with a file name (```` ```python title="app.py" ````) is also saved under that name for
the later blocks of the same page, so a tutorial can build ``app.py`` and then import it; a block
titled ``test_*.py`` is run with pytest. A block may be skipped only with a reason, in its fence:
```` ```python title="not run: <reason>" ````.
"""

from __future__ import annotations

import multiprocessing.context
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.docs import run_block
from tests.support.servers import MYSQL_URL, POSTGRES_URL, REDIS_URL, reachable, require

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 90  # generous: the blocks run four at a time on a machine that may be busy

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
_NOT_RUN = re.compile(r'title="not run(?::\s*(?P<reason>[^"]*))?"')
_FILE_TITLE = re.compile(r'title="(?P<name>[\w/]+\.py)"')


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    source: str
    skip_reason: str | None
    title: str | None  # a file name the block is saved as, for the blocks after it

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def _blocks(path: Path) -> Iterator[Block]:
    """The python fenced blocks of a Markdown file (fences may be indented, e.g. inside a list)."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        language = info.split(maxsplit=1)[0].lstrip("{.").rstrip("}") if info else ""
        if language in ("python", "py"):
            skip = _NOT_RUN.search(info)
            reason = (skip["reason"] or "").strip() if skip else None
            title = _FILE_TITLE.search(info)
            yield Block(path, i + 1, "\n".join(body) + "\n", reason, title["name"] if title else None)
        i = j + 1


def _files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


BLOCKS = [block for path in _files() for block in _blocks(path)]


class _Stub(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    """A local HTTP server standing in for the external APIs the examples call."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _netloc_path(url: str) -> str:
    """``user@host:port/db`` of a server URL (its scheme left off)."""
    return url.split("://", 1)[1]


_RESERVED = (".test", ".example", ".invalid", ".localhost")  # RFC 2606 names: never on the network


def localize(source: str, stub: str) -> tuple[str, set[str]]:
    """The block with its server URLs pointed at the test servers, and which servers it needs."""
    needs: set[str] = set()

    def pg(m: re.Match[str]) -> str:
        needs.add("postgres")
        return f"{m['scheme']}://{_netloc_path(POSTGRES_URL)}"

    def my(m: re.Match[str]) -> str:
        needs.add("mysql")
        return f"{m['scheme']}://{_netloc_path(MYSQL_URL)}"

    def rd(m: re.Match[str]) -> str:
        needs.add("redis")
        return REDIS_URL

    def web(m: re.Match[str]) -> str:
        host = urlsplit(m[0]).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1") or host.endswith(_RESERVED):
            return m[0]
        return stub + urlsplit(m[0]).path.rstrip("/")

    stop = r"""[^\s"'`)]*"""
    source = re.sub(rf"(?P<scheme>postgres(?:ql)?(?:\+\w+)?)://{stop}", pg, source)
    source = re.sub(rf"(?P<scheme>(?:mysql|mariadb)(?:\+\w+)?)://{stop}", my, source)
    source = re.sub(rf"rediss?://{stop}", rd, source)
    source = re.sub(rf"https?://{stop}", web, source)
    return source, needs


_SERVERS = {"postgres": (POSTGRES_URL, "PostgreSQL"), "mysql": (MYSQL_URL, "MariaDB"),
            "redis": (REDIS_URL, "Redis")}


@dataclass
class _Run:
    script: Path
    needs: set[str]
    returncode: int | None = None  # None: timed out
    output: str = ""


def _prepare(block: Block, stub: str, where: Path) -> _Run:
    """Write the block (and the files the page built before it) into ``where``."""
    needs: set[str] = set()
    for earlier in BLOCKS:
        if earlier.path == block.path and earlier.line < block.line and earlier.title:
            source, needed = localize(earlier.source, stub)
            (where / earlier.title).parent.mkdir(parents=True, exist_ok=True)
            (where / earlier.title).write_text(source)
            needs |= needed
    source, needed = localize(block.source, stub)
    script = where / (block.title or "example.py")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(source)
    return _Run(script, needs | needed)


def _execute(ctx: multiprocessing.context.ForkServerContext, run: _Run) -> _Run:
    output = run.script.parent / "output.txt"
    process = ctx.Process(target=run_block.child, args=(str(run.script), str(output)))
    process.start()
    process.join(TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join()
    else:
        run.returncode = process.exitcode
    process.close()
    run.output = output.read_text() if output.exists() else ""
    return run


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, stub_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Run]:
    """Every selected block, run up front, four at a time, each in a child of one forkserver."""
    selected = [item.callspec.params["block"] for item in request.session.items
                if getattr(item, "callspec", None) and "block" in item.callspec.params]
    prepared: dict[str, _Run] = {}
    for block in selected:
        if block.skip_reason is None:
            run = _prepare(block, stub_url, tmp_path_factory.mktemp("example"))
            if all(reachable(_SERVERS[server][0]) for server in run.needs):
                prepared[block.id] = run
    ctx = run_block.context()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda run: _execute(ctx, run), prepared.values()))
    return prepared


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_example_runs(block: Block, runs: dict[str, _Run], stub_url: str, tmp_path: Path) -> None:
    """The code block runs to its end against the real servers."""
    if block.skip_reason is not None:
        assert block.skip_reason, f'{block.id}: title="not run" needs a reason: title="not run: why"'
        pytest.skip(f"not run: {block.skip_reason}")
    run = runs.get(block.id)
    if run is None:  # a server it needs is missing: say which (skip loudly, or fail in CI)
        for server in sorted(_prepare(block, stub_url, tmp_path).needs):
            require(*_SERVERS[server])
        pytest.fail(f"{block.id} was not run", pytrace=False)
    if run.returncode is None:
        pytest.fail(f"{block.id} ran longer than {TIMEOUT}s:\n{run.output}", pytrace=False)
    is_test = run.script.name.startswith("test_")
    if run.returncode != 0 or not (is_test or run.output.rstrip().endswith("ok")):
        pytest.fail(f"{block.id} failed:\n{run.output}", pytrace=False)


def test_examples_are_found() -> None:
    """The extractor sees the README's quick start (a parser bug must not make this suite vacuous)."""
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert readme
    assert "Warden()" in readme[0].source
