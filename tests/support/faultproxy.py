"""An asyncio TCP proxy that injects network faults between a client (the pool) and a real server.

Semantics, chosen to look like real failures rather than like convenient ones:

* ``cut()`` resets every current connection on both sides (``SO_LINGER 0`` then close, so the
  peers see ``ECONNRESET``, not an orderly EOF). It acts even while blackholed.
* ``blackhole(True)`` is a silent partition: nothing is forwarded either way, no FIN and no RST,
  and new connections are accepted (the kernel would complete the handshake anyway) but get no
  bytes. Bytes, EOFs and resets that arrive meanwhile are held in order, as TCP retransmission
  would after a partition heals; ``blackhole(False)`` delivers them and resumes forwarding.
  The hold is bounded per direction, beyond which back-pressure reaches the sender's kernel.
* ``set_latency(s)`` delays every chunk by ``s`` seconds from when it arrived, each direction
  pipelined and in order (a chunk never overtakes an earlier one, even if latency is lowered).
* ``refuse(True)`` stops listening, so a new connect fails at once with ``ECONNREFUSED``: that is
  what a host whose server is down answers. Existing connections are untouched (use ``cut()``).
  The port stays reserved by a bound, non-listening socket, so ``refuse(False)`` gets it back.

Listening uses ``loop.add_reader``, so it needs a selector event loop (Linux/macOS default).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultProxy", "fault_proxy"]

_CHUNK = 64 * 1024
_HELD_CHUNKS = 16  # per direction: enough for tests, small enough that back-pressure is real
_LINGER_RESET = struct.pack("ii", 1, 0)
# (due time, item): item is bytes, b"" for EOF, or None for a reset.
_Held = asyncio.Queue[tuple[float, bytes | None]]


class _Reset(Exception):
    """A reset to propagate: the link is torn down with RST on both sides."""


@dataclass(eq=False)
class _Link:
    client: socket.socket
    task: asyncio.Task[None] | None = None
    handed_over: bool = False  # to a transport, which then owns (and closes) the socket
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def reset(self) -> None:
        socks = [self.client, *(w.get_extra_info("socket") for w in self.writers)]
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        for writer in self.writers:
            writer.transport.abort()
        if not self.handed_over:
            self.client.close()

    async def wait_closed(self) -> None:
        for writer in self.writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class FaultProxy:
    """A loopback TCP proxy to ``upstream_host:upstream_port`` with switchable faults."""

    def __init__(self, upstream_host: str, upstream_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = listen_host
        self.port = 0
        self._family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self._anchor: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._latency = 0.0
        self._refusing = False

    async def start(self) -> None:
        """Listen on an ephemeral port of ``listen_host``."""
        if self._anchor is not None:
            raise RuntimeError("FaultProxy already started")
        # The anchor holds the port while refuse() has the listener closed, so nobody else
        # (another proxy, an outgoing connection's ephemeral port) can take it meanwhile.
        self._anchor = self._bound_socket(0)
        self.port = self._anchor.getsockname()[1]
        if not self._refusing:
            self._listen()

    async def stop(self) -> None:
        """Stop listening and reset every connection; idempotent."""
        self._unlisten()
        await self.cut()
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def cut(self) -> None:
        """Reset (RST) all current connections on both sides and wait until they are gone."""
        links = list(self._links)
        for link in links:
            link.reset()
            if link.task is not None:
                link.task.cancel()
        tasks = [link.task for link in links if link.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        self._links.difference_update(links)

    def blackhole(self, on: bool = True) -> None:
        """Hold all traffic silently (``on``), or deliver what was held and resume forwarding."""
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    def set_latency(self, seconds: float) -> None:
        """Delay each chunk arriving from now on by ``seconds``, in each direction."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = seconds

    def refuse(self, on: bool = True) -> None:
        """Stop listening so new connects get ECONNREFUSED (``on``), or listen again."""
        self._refusing = on
        if on:
            self._unlisten()
        elif self._anchor is not None and self._listener is None:
            self._listen()

    @property
    def active(self) -> int:
        """Connections currently accepted and not yet torn down."""
        return len(self._links)

    def url_for(self, url: str) -> str:
        """Return ``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}{host}:{self.port}"))

    def _bound_socket(self, port: int) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setblocking(False)
            sock.bind((self.host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _listen(self) -> None:
        # Synchronous on purpose: once refuse(False) returns, a connect lands in the backlog
        # rather than racing a listener that is still being set up.
        sock = self._bound_socket(self.port)
        sock.listen(128)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)
        self._listener = sock

    def _unlisten(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()  # handshakes still in the backlog get RST, like a dying server
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:  # spurious wake-up, or the peer gave up before we got to it
            return
        client.setblocking(False)
        link = _Link(client)
        self._links.add(link)
        link.task = asyncio.get_running_loop().create_task(self._serve(link))

    async def _serve(self, link: _Link) -> None:
        clean = False
        link.handed_over = True
        try:
            client_r, client_w = await asyncio.open_connection(sock=link.client)
            link.writers.append(client_w)
            upstream_r, upstream_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            link.writers.append(upstream_w)
            async with asyncio.TaskGroup() as tg:
                for src, dst in ((client_r, upstream_w), (upstream_r, client_w)):
                    held: _Held = asyncio.Queue(_HELD_CHUNKS)
                    tg.create_task(self._read(src, held))
                    tg.create_task(self._write(held, dst))
            clean = True
        except* (OSError, _Reset):  # upstream down, or a reset reached us: pass it on as RST
            pass
        finally:
            if clean:
                for writer in link.writers:
                    writer.close()
            else:
                link.reset()
            await link.wait_closed()
            self._links.discard(link)

    async def _read(self, src: asyncio.StreamReader, held: _Held) -> None:
        # Stamped on arrival so that latency is per chunk and pipelined, not cumulative.
        loop = asyncio.get_running_loop()
        while True:
            item: bytes | None
            try:
                item = await src.read(_CHUNK)
            except OSError:
                item = None
            await held.put((loop.time() + self._latency, item))
            if not item:
                return

    async def _write(self, held: _Held, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, item = await held.get()
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            await self._flowing.wait()
            if item is None:
                raise _Reset
            try:
                if not item:
                    dst.write_eof()  # half-close: the other direction may still be talking
                    return
                dst.write(item)
                await dst.drain()
            except OSError as exc:
                raise _Reset from exc


@contextlib.asynccontextmanager
async def fault_proxy(host: str, port: int, *, listen_host: str = "127.0.0.1") -> AsyncIterator[FaultProxy]:
    """Run a started :class:`FaultProxy` to ``host:port`` for the duration of the block."""
    async with FaultProxy(host, port, listen_host=listen_host) as proxy:
        yield proxy
