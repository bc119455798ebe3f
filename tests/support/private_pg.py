"""Private database servers for tests that stop, start or break their backend.

The shared servers (PostgreSQL on 5432, MariaDB on 3306) must never be stopped: other tests and other
people use them. A test that needs an outage starts a server of its own instead::

    from tests.support.private_pg import private_postgres

    with private_postgres() as pg:      # initdb'd in a temp dir, its own free port, trust auth
        url = pg.url                    # postgresql://postgres@127.0.0.1:<port>/postgres
        pg.stop()                       # fast shutdown; connections are cut (mode="immediate" too)
        pg.start()                      # back, and accepting when this returns
    # stopped and deleted here, whatever happened

In async code use ``await pg.astop()`` / ``await pg.astart()`` (the same, in a thread, so the event
loop keeps serving while the server goes down or comes up), or the ``private_pg`` fixture of
``tests/integration/conftest.py``. :func:`private_mariadb` does the same for MariaDB (``root``, no
password, database ``test``).

``initdb`` refuses to run as root, so when the tests run as root every server command runs as the
``postgres`` (``mysql``) OS user. When the server binaries are missing the test is skipped loudly, or
fails under CI=true, like a missing shared server in :mod:`tests.support.servers`. The cluster is
made once per test session and copied for each server (a copy takes milliseconds, initdb a second).
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.servers import IN_CI

__all__ = ["PrivateMariaDB", "PrivatePostgres", "private_mariadb", "private_postgres"]

_template: dict[str, Path] = {}


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing server is a failure)", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice for an ephemeral bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _os_user(name: str) -> str | None:
    """The OS user to run server commands as: ``name`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        _missing(f"running as root and there is no {name!r} OS user to run the server as")
    return name


def _chown(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _run(cmd: list[str], user: str | None, timeout: float = 60) -> str:
    done = subprocess.run(cmd, user=user, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout


class _Server:
    """What both private servers offer on top of their own start() and stop(): async forms for
    tests running on the event loop, and the log for failure messages."""

    logfile: Path

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, mode: str = "fast") -> None:
        raise NotImplementedError

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self, mode: str = "fast") -> None:
        await asyncio.to_thread(self.stop, mode)

    def log(self) -> str:
        """The server's log so far (for a failure message)."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""


class PrivatePostgres(_Server):
    """One private PostgreSQL cluster: ``url``, ``port``, ``stop()``, ``start()``, ``running``."""

    def __init__(self, bindir: Path, root: Path, user: str | None) -> None:
        self.bindir = bindir
        self.root = root
        self.datadir = root / "data"
        self.sockdir = root / "sock"
        self.logfile = root / "server.log"
        self.user = user
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __repr__(self) -> str:
        return f"<PrivatePostgres port={self.port} running={self.running}>"

    @property
    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def start(self) -> None:
        """Start the server; returns once it accepts connections."""
        options = (f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200")
        _run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
              "-o", options, "-w", "-t", "60", "start"], self.user)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back and disconnect; ``immediate``: kill, like a crash)."""
        if self.running:
            _run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60",
                  "stop"], self.user)



def _postgres_bindir() -> Path:
    def version(path: str) -> int:
        name = Path(path).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if not found:
        on_path = shutil.which("initdb")
        if on_path is None:
            _missing("no initdb to make a private PostgreSQL (apt-get install postgresql)")
            raise AssertionError("unreachable")
        return Path(on_path).parent
    return Path(found[-1]).parent


def _postgres_template(bindir: Path, user: str | None) -> Path:
    """A freshly initdb'd cluster, made once per session and copied for each server."""
    cached = _template.get("postgres")
    if cached is not None and cached.exists():
        return cached
    root = Path(tempfile.mkdtemp(prefix="poolwarden-pgtemplate-"))
    _chown(root, user)
    data = root / "data"
    _run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
          "--no-sync", "--no-instructions"], user, timeout=120)
    _template["postgres"] = data
    import atexit

    atexit.register(shutil.rmtree, root, True)
    return data


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL cluster; stopped and deleted on exit whatever happened."""
    bindir = _postgres_bindir()
    user = _os_user("postgres")
    template = _postgres_template(bindir, user)
    root = Path(tempfile.mkdtemp(prefix="poolwarden-pg-"))
    try:
        shutil.copytree(template, root / "data", symlinks=True)
        (root / "sock").mkdir()
        _chown(root, user)
        os.chmod(root / "data", 0o700)
        server = PrivatePostgres(bindir, root, user)
        try:
            server.start()
            yield server
        finally:
            try:
                server.stop("immediate")
            except Exception:
                _kill_pidfile(server.datadir / "postmaster.pid")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 9)
    except (OSError, ValueError, IndexError):
        pass


class PrivateMariaDB(_Server):
    """One private MariaDB server (grant tables skipped: ``root`` without password), like PrivatePostgres."""

    def __init__(self, root: Path, user: str | None) -> None:
        self.root = root
        self.datadir = root / "data"
        self.socket = root / "mysqld.sock"
        self.pidfile = root / "mysqld.pid"
        self.logfile = root / "server.log"
        self.user = user
        self.port = free_port()
        self.url = f"mysql://root@127.0.0.1:{self.port}/test"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<PrivateMariaDB port={self.port} running={self.running}>"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server; returns once it accepts connections."""
        if self.running:
            return
        cmd = [_mariadbd(), "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
               "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--pid-file={self.pidfile}",
               f"--log-error={self.logfile}", "--skip-grant-tables", "--skip-name-resolve",
               "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--max-connections=200"]
        if self.user is not None:
            cmd.append(f"--user={self.user}")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, cwd="/")
        deadline = time.monotonic() + 60
        while not accepts(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop("immediate")
                raise RuntimeError(f"private MariaDB did not start: {self.log()[-2000:]}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: SIGTERM and wait; ``immediate``: SIGKILL, like a crash)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if mode == "immediate":
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()



def _mariadbd() -> str:
    for candidate in ("/usr/sbin/mariadbd", shutil.which("mariadbd"), "/usr/sbin/mysqld"):
        if candidate and os.path.exists(candidate):
            return candidate
    _missing("no mariadbd to start a private MariaDB (apt-get install mariadb-server)")
    raise AssertionError("unreachable")


def _mariadb_template(user: str | None) -> Path:
    cached = _template.get("mariadb")
    if cached is not None and cached.exists():
        return cached
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if install is None:
        _missing("no mariadb-install-db to make a private MariaDB (apt-get install mariadb-server)")
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="poolwarden-mytemplate-"))
    _chown(root, user)
    data = root / "data"
    cmd = [install, "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
           "--skip-test-db"]
    if user is not None:
        cmd.append(f"--user={user}")
    _run(cmd, None, timeout=120)  # it drops to --user itself
    (data / "test").mkdir(exist_ok=True)  # a database is a directory
    _chown(root, user)
    _template["mariadb"] = data
    import atexit

    atexit.register(shutil.rmtree, root, True)
    return data


@contextmanager
def private_mariadb() -> Iterator[PrivateMariaDB]:
    """A started private MariaDB; stopped and deleted on exit whatever happened."""
    user = _os_user("mysql")
    _mariadbd()
    template = _mariadb_template(user)
    root = Path(tempfile.mkdtemp(prefix="poolwarden-my-"))
    try:
        shutil.copytree(template, root / "data", symlinks=True)
        _chown(root, user)
        server = PrivateMariaDB(root, user)
        try:
            server.start()
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
