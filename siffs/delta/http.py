"""A small HTTP/1.1 client for chunk stores and zsync servers: keep-alive, parallel, retrying.

Why not one request at a time as casync does: a pull is thousands of small GETs, so its speed is
set by round trips, not bytes. Each worker thread keeps its own persistent connection per server,
several requests are in flight, and transient failures (connection reset, truncated body, 5xx,
429) are retried with exponential backoff. A 404 is an answer, not a failure: the caller decides
what a missing chunk means.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

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

    def _connection(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        pool: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault("pool", {})
        key = (parts.scheme, parts.netloc)
        conn = pool.get(key)
        if conn is None:
            host, port = parts.hostname or "", parts.port
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
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
            conn.request("GET", target, headers={"User-Agent": f"siffs/{__version__}", **headers})
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(parts)
            reason = "truncated response" if isinstance(exc, http.client.IncompleteRead) else str(exc)
            raise _Retry(reason or type(exc).__name__) from None
        finally:
            with self._lock:
                self.requests += 1
        with self._lock:
            self.bytes += len(body)
        if resp.will_close:
            self._drop(parts)
        if resp.status >= 500 or resp.status == 429:
            raise _Retry(f"HTTP {resp.status} {resp.reason}")
        return Response(resp.status, body)

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
