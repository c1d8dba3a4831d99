"""The gateway's HTTP/1.1 client to replicas: keep-alive connections, parsed in C, no copies.

Why not httpx here (it is used for everything off the request path): per streamed chunk httpx
goes through anyio cancel scopes, h11's pure-Python parser and, per request, a scan of every
pooled connection with a `select()`; on a host whose cores also run replicas that cost more CPU
than the replica spent producing the token. This client is an `asyncio.Protocol` fed to
`httptools` (uvicorn's parser): a chunk costs one callback, and whatever arrived between two reads
of the relay goes out in one write. Replicas speak plain HTTP on loopback or the node's address
(their key is the guard), so there is no TLS here.

Errors: `Unavailable` when the replica cannot have started on the request (connection refused or
timed out, or closed before a response began: the keep-alive race) — the caller may try another
replica; `ReplicaTimeout` when it did not answer within the read timeout; `ReplicaBroken` when a
response breaks off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

import httptools

MAX_BUFFERED = 256 * 1024  # bytes held for a slow client before reading from the replica pauses


class UpstreamError(Exception):
    """Root of the errors talking to a replica."""


class Unavailable(UpstreamError):
    """The replica did not take the request (safe to send it elsewhere)."""


class ReplicaTimeout(UpstreamError):
    """No bytes from the replica for the read timeout."""


class ReplicaBroken(UpstreamError):
    """The replica's response ended before its end."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self._loop, self._read_timeout_s = loop, read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.address: tuple[str, int] = ("", 0)  # the pool's key
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._started = self._done = self._paused = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._last_read = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ReplicaBroken(f"unreadable answer from the replica: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._done:
            self._fail(ReplicaBroken("the replica closed the connection") if self._started
                       else Unavailable("the replica closed the connection before answering"))

    # --- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status, self._started = self._parser.get_status_code(), True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._buffer.append(body)
        self._buffered += len(body)
        if self._buffered > MAX_BUFFERED and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._done = True
        self._wake()

    # --- the request ------------------------------------------------------------------------

    def request(self, head: bytes, body: bytes) -> None:
        """Sends one request (the previous one on this connection is complete)."""
        assert self.transport is not None
        self._reset()
        self.transport.write(head + body)
        self._arm_timer()

    async def response_started(self) -> None:
        while not self._started:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; what arrived since the last chunk comes as one."""
        while True:
            if self._buffer:
                data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
                self._buffer.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                yield data
                continue
            if self._done:
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def reusable(self) -> bool:
        return self._done and not self.closed and self._parser.should_keep_alive()

    def finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.finish()
        self.closed = True
        if self.transport is not None:
            self.transport.close()  # the replica sees the client gone and cancels the request

    # --- waiting ----------------------------------------------------------------------------

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _arm_timer(self) -> None:
        """One timer per request, moved only when it fires: a read timeout at no cost per chunk."""
        self._timer = self._loop.call_at(self._last_read + self._read_timeout_s, self._check_timeout)

    def _check_timeout(self) -> None:
        if self._done or self.closed:
            return
        if self._loop.time() - self._last_read >= self._read_timeout_s:
            self._fail(ReplicaTimeout(f"no answer from the replica for {self._read_timeout_s:g} s"))
            self.close()
        else:
            self._arm_timer()


class Upstream:
    """Keep-alive connections per replica address."""

    def __init__(self, connect_timeout_s: float, read_timeout_s: float) -> None:
        self._connect_timeout_s, self._read_timeout_s = connect_timeout_s, read_timeout_s
        self._idle: dict[tuple[str, int], list[Connection]] = {}

    async def open(self, url: str, method: str, path: str, headers: Iterable[tuple[bytes, bytes]],
                   body: bytes) -> Connection:
        """Sends the request to the replica at `url`; returns once its response began."""
        address = _address(url)
        connection = self._take_idle(address) or await self._connect(address)
        head = [f"{method} {path} HTTP/1.1\r\nhost: {address[0]}:{address[1]}\r\n".encode("latin-1"),
                b"content-length: %d\r\n" % len(body)]
        head += [name + b": " + value + b"\r\n" for name, value in headers]
        connection.request(b"".join(head) + b"\r\n", body)
        try:
            await connection.response_started()
        except BaseException:
            connection.close()
            raise
        return connection

    def release(self, connection: Connection) -> None:
        """Back to the pool if its response was read whole, else closed."""
        connection.finish()
        if not connection.reusable:
            connection.close()
            return
        self._idle.setdefault(connection.address, []).append(connection)

    def _take_idle(self, address: tuple[str, int]) -> Connection | None:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self, address: tuple[str, int]) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(loop, self._read_timeout_s), *address),
                self._connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as e:
            raise Unavailable(f"cannot connect to the replica: {type(e).__name__}") from e
        protocol.address = address
        return protocol

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise Unavailable(f"replica URLs are plain http://host:port, not {url!r}")
    return parts.hostname, parts.port or 80
