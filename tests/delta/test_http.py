"""The delta stage's HTTP/1.1 client on the wire: framings nginx does not use for static files.

nginx (tests/delta/test_casync.py, test_zsync.py) answers with Content-Length on keep-alive
connections; other servers and proxies answer chunked, or HTTP/1.0 with the body up to the
connection's end. A scripted server on a loopback socket sends exactly those bytes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from siffs.delta.errors import NetworkError
from siffs.delta.http import HttpClient


@contextlib.contextmanager
def _server(answers: list[bytes]) -> Iterator[tuple[str, list[bytes]]]:
    """Answers each request on each connection with the next of ``answers``, closing after an
    answer that says so (or has no length); records the request heads."""
    listener = socket.create_server(("127.0.0.1", 0))
    heads: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while answers:
                conn, _ = listener.accept()
                with conn, conn.makefile("rb") as f:
                    while answers:
                        head = b""
                        while (line := f.readline()) not in (b"\r\n", b""):
                            head += line
                        if not head:
                            break
                        heads.append(head)
                        answer = answers.pop(0)
                        conn.sendall(answer)
                        if b"close" in answer.split(b"\r\n\r\n")[0].lower() or b"HTTP/1.0" in answer[:8]:
                            break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", heads
    finally:
        listener.close()
        thread.join(5)


def test_chunked_body_trailers_and_keep_alive():
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\n\r\nabc",
    ]
    with _server(answers) as (url, heads):
        client = HttpClient(connections=1)
        assert client.get(f"{url}/a").body == b"hello world"
        assert client.get_range(f"{url}/b", 10, 13) == b"abc"
    assert len(heads) == 2 and heads[0].startswith(b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Range: bytes=10-12\r\n" in heads[1]


def test_http10_body_to_the_end_then_a_new_connection():
    answers = [b"HTTP/1.0 200 OK\r\n\r\nall of it", b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]
    with _server(answers) as (url, _):
        client = HttpClient(connections=1)
        assert client.get(f"{url}/x").body == b"all of it"
        assert client.get(f"{url}/y").status == 404
        assert client.requests == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhel",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999\r\nConnection: close\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\nConnection: close\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\nConnection: close\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nfffffffffff\r\nx",
    ],
    ids=[
        "short-body",
        "short-chunk",
        "bad-status-line",
        "huge-length",
        "negative-length",
        "bad-length",
        "huge-chunk",
    ],
)
def test_broken_responses_are_retried_then_reported(answer):
    with _server([answer] * 3) as (url, _):
        client = HttpClient(connections=1, retries=2, backoff=0.01)
        with pytest.raises(NetworkError, match="gave up after 3 attempts"):
            client.get(f"{url}/z")
