"""A small HTTP/1.1 client for chunk stores and zsync servers: keep-alive, parallel, retrying.

Why not one request at a time as casync does: a pull is thousands of small GETs, so its speed is
set by round trips, not bytes. Each worker thread keeps its own persistent connection per server,
several requests are in flight, and transient failures (connection reset, truncated body, 5xx,
429) are retried with exponential backoff. A 404 is an answer, not a failure: the caller decides
what a missing chunk means.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from siffs import __version__
from siffs.delta.errors import NetworkError, RangeIgnoredError

T = TypeVar("T")

CONNECTIONS = 8
RETRIES = 4
BACKOFF = 0.25
TIMEOUT = 60.0


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class _Retry(Exception):
    """A failure worth another attempt."""


class _Truncated(Exception):
    """The connection ended inside a response."""


_MAX_LINE = 64 << 10
_MAX_HEADERS = 200
#: No answer siffs asks for is bigger (a chunk, a block range, an index): a larger announced body
#: is refused before anything is allocated for it.
_MAX_BODY = 256 << 20


class _PlainConnection:
    """One keep-alive HTTP/1.1 connection (plain http), lean: a pull makes ~20,000 small GETs.

    ``http.client`` spends ~150 us of Python per request (an email-parser for the headers and
    several layers of buffered objects); this reads the status line and headers itself and the
    body by Content-Length (or chunked), ~40 us: a third of a no-seed pull's time on 20k chunks.
    https keeps ``http.client`` (its cost is dwarfed by TLS there).
    """

    def __init__(self, host: str, port: int | None) -> None:
        self.host = host
        self.port = port or 80
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def exchange(self, target: str, headers: dict[str, str]) -> tuple[int, str, bytes, bool]:
        """GET ``target``: (status, reason, body, whether the server closes the connection)."""
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._file = self._sock.makefile("rb")
        assert self._file is not None
        host = self.host if self.port == 80 else f"{self.host}:{self.port}"
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status_line = self._line()
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/") or not code.isdigit():
            raise http.client.BadStatusLine(status_line.decode("latin-1", "replace")[:80])
        fields: dict[bytes, bytes] = {}
        for _ in range(_MAX_HEADERS):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        else:
            raise http.client.HTTPException("too many header lines")
        connection = fields.get(b"connection", b"").lower()
        closes = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = self._chunked()
        elif b"content-length" in fields:
            body = self._exactly(int(fields[b"content-length"]))
        else:
            body, closes = self._file.read(), True
        return int(code), reason.strip().decode("latin-1", "replace"), body, closes

    def _line(self) -> bytes:
        assert self._file is not None
        line = self._file.readline(_MAX_LINE + 1)
        if not line:
            raise http.client.RemoteDisconnected("the server closed the connection")
        if len(line) > _MAX_LINE or not line.endswith(b"\n"):
            raise _Truncated()
        return line

    def _exactly(self, size: int) -> bytes:
        assert self._file is not None
        if not 0 <= size <= _MAX_BODY:
            raise http.client.HTTPException(f"a body of {size} bytes announced")
        body = self._file.read(size)
        if len(body) != size:
            raise _Truncated()
        return body

    def _chunked(self) -> bytes:
        parts = []
        total = 0
        while size := int(self._line().split(b";")[0].strip(), 16):
            total += size
            parts.append(self._exactly(size if total <= _MAX_BODY else -1))
            self._exactly(2)
        while self._line() not in (b"\r\n", b"\n"):  # trailers
            pass
        return b"".join(parts)


class _TlsConnection:
    """https through ``http.client``, with :class:`_PlainConnection`'s interface."""

    def __init__(self, host: str, port: int | None) -> None:
        self._conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT)

    def close(self) -> None:
        self._conn.close()

    def exchange(self, target: str, headers: dict[str, str]) -> tuple[int, str, bytes, bool]:
        self._conn.request("GET", target, headers=headers)
        resp = self._conn.getresponse()
        try:
            body = resp.read()
        except http.client.IncompleteRead:
            raise _Truncated() from None
        return resp.status, resp.reason, body, bool(resp.will_close)


class HttpClient:
    """Thread-safe GETs over per-thread persistent connections; counts requests and bytes."""

    def __init__(
        self, *, connections: int = CONNECTIONS, retries: int = RETRIES, backoff: float = BACKOFF
    ) -> None:
        self.connections = connections
        self.retries = retries
        self.backoff = backoff
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def _connection(self, parts: urllib.parse.SplitResult) -> _PlainConnection | _TlsConnection:
        pool: dict[tuple[str, str], _PlainConnection | _TlsConnection] = self._local.__dict__.setdefault(
            "pool", {}
        )
        key = (parts.scheme, parts.netloc)
        conn = pool.get(key)
        if conn is None:
            host, port = parts.hostname or "", parts.port
            conn = _TlsConnection(host, port) if parts.scheme == "https" else _PlainConnection(host, port)
            pool[key] = conn
        return conn

    def _drop(self, parts: urllib.parse.SplitResult) -> None:
        conn = self._local.__dict__.get("pool", {}).pop((parts.scheme, parts.netloc), None)
        if conn is not None:
            conn.close()

    def _once(self, parts: urllib.parse.SplitResult, headers: dict[str, str]) -> Response:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn = self._connection(parts)
        try:
            status, reason, body, closes = conn.exchange(
                target, {"User-Agent": f"siffs/{__version__}", **headers}
            )
        except _Truncated:
            self._drop(parts)
            raise _Retry("truncated response") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self._drop(parts)
            raise _Retry(str(exc) or type(exc).__name__) from None
        finally:
            with self._lock:
                self.requests += 1
        with self._lock:
            self.bytes += len(body)
        if closes:
            self._drop(parts)
        if status >= 500 or status == 429:
            raise _Retry(f"HTTP {status} {reason}")
        return Response(status, body)

    def get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        """GET with retries; raises NetworkError once they are spent or for an unexpected status."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NetworkError(f"{url}: not an http(s) URL")
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self._once(parts, headers or {})
            except _Retry as exc:
                last = str(exc)
                continue
            if resp.status in (200, 206, 404):
                return resp
            raise NetworkError(f"{url}: HTTP {resp.status}")
        raise NetworkError(f"{url}: {last} (gave up after {self.retries + 1} attempts)")

    def get_ok(self, url: str) -> bytes:
        """The body of a resource that must exist (an index, a control file)."""
        resp = self.get(url)
        if resp.status != 200:
            raise NetworkError(f"{url}: HTTP {resp.status} (not found)")
        return resp.body

    def get_range(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``url``; refuses servers that ignore Range or answer short."""
        resp = self.get(url, {"Range": f"bytes={start}-{end - 1}"})
        if resp.status == 200:
            raise RangeIgnoredError(
                f"{url}: the server ignores HTTP Range requests (answered 200 with the whole file): "
                "zsync needs a server with range support; publish a casync store instead"
            )
        if resp.status != 206:
            raise NetworkError(f"{url}: HTTP {resp.status} for a range request")
        if len(resp.body) != end - start:
            raise NetworkError(f"{url}: truncated range response ({len(resp.body)} of {end - start} bytes)")
        return resp.body

    def run(self, fn: Callable[[T], None], items: Iterable[T]) -> None:
        """``fn`` over ``items`` on the connection threads, each thread taking the next item.

        The workers do the whole job of an item (fetch, check, write), so the calling thread only
        waits once: under CPU contention a wake-up per item costs more than the item itself. The
        first error stops the others and is raised here.
        """
        source = iter(items)
        lock = threading.Lock()
        failures: list[BaseException] = []

        def worker() -> None:
            while True:
                with lock:
                    if failures:
                        return
                    item = next(source, _END)
                if item is _END:
                    return
                try:
                    fn(item)  # type: ignore[arg-type]
                except BaseException as exc:
                    with lock:
                        failures.append(exc)
                    return

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.connections)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException as exc:  # Ctrl-C: stop the workers before the caller cleans up
            with lock:
                failures.append(exc)
            for thread in threads:
                thread.join()
            raise
        if failures:
            raise failures[0]


_END = object()
