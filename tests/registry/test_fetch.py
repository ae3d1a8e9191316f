"""Blob downloads (siffs/registry/fetch.py) on both paths: spliced in the kernel, and the threaded
pipeline that https and chunked bodies take (``SIFFS_NO_SPLICE=1``), on the same inputs.

The registries are real (docker-registry 2.8, directly and behind the static server it redirects
to); the server that cuts its answer into two sends at a chosen byte is a raw socket, so that the
body bytes http.client buffers with the headers are known exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from siffs.registry import fetch
from siffs.registry.errors import DigestError, NetworkError
from siffs.registry.http import Session
from siffs.registry.image import Blob
from siffs.registry.reference import parse
from tests.support.registry import Registry, registry


@dataclass
class Route:
    """The download path a test runs on, and the splices it saw: (resumed at, bytes buffered)."""

    splice: bool
    calls: list[tuple[int, int]] = field(default_factory=list)


@pytest.fixture(params=[True, False], ids=["splice", "pipeline"])
def path(request, monkeypatch) -> Route:
    seen = Route(request.param)
    if not seen.splice:
        monkeypatch.setenv("SIFFS_NO_SPLICE", "1")
    real = fetch._splice

    def spy(sock: int, buffered: bytes, *args: Any, **kwargs: Any) -> int:
        seen.calls.append((kwargs["have"], len(buffered)))
        return real(sock, buffered, *args, **kwargs)

    monkeypatch.setattr(fetch, "_splice", spy)
    return seen


@pytest.fixture(scope="module")
def direct(tmp_path_factory) -> Iterator[Registry]:
    """No auth, no redirect: blobs come from the registry itself, which honours Range."""
    with registry(tmp_path_factory.mktemp("registry-direct") / "srv") as r:
        yield r


def _data(size: int, seed: int) -> bytes:
    """Bytes no other blob has, in which a misplaced piece changes the digest."""
    return hashlib.shake_256(f"{size} {seed}".encode()).digest(size)


def _upload(host: str, data: bytes, ca_file: str | None = None) -> Blob:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    session = Session(host, local=True, ca_file=ca_file)
    try:
        opened = session.request("POST", "/v2/t/blobs/uploads/", scope="", body=b"", ok=frozenset({202}))
        opened.raw.read()
        location = f"{opened.header('Location')}&digest={digest}"
        session.request("PUT", location, scope="", body=data, ok=frozenset({201})).raw.read()
    finally:
        session.close()
    return Blob(digest, len(data))


def _fetch(session: Session, wanted: Blob, store: Path) -> Path:
    return fetch.blob(session, parse(f"oras://{session.host}/t:1"), wanted, store)


@pytest.mark.parametrize("kind", ["direct", "redirect"])
def test_the_blob_arrives_whole_and_the_connection_serves_on(kind, path, direct, plain, tmp_path):
    """Byte for byte on both paths, and a second blob over the same session after the first (a
    spliced body leaves the kept-alive connection at the next answer)."""
    host = (direct if kind == "direct" else plain).host
    first, second = _data((5 << 20) + 4097, 1), _data(300_000, 2)
    blobs = [_upload(host, data) for data in (first, second)]
    session = Session(host, local=True)
    try:
        got = [_fetch(session, wanted, tmp_path / "store") for wanted in blobs]
    finally:
        session.close()
    assert [p.read_bytes() for p in got] == [first, second]
    assert [p.name for p in got] == [b.digest.split(":")[1] for b in blobs]
    assert session.traffic.fetched_bytes == len(first) + len(second)
    assert not list((tmp_path / "store" / "tmp").iterdir())
    assert [have for have, _ in path.calls] == ([0, 0] if path.splice else [])


def test_https_bodies_are_read_through_the_pipeline(path, tls, tmp_path):
    """TLS bytes on the socket are not the body: never spliced, whatever the setting."""
    reg, ca = tls
    data = _data(1 << 20, 7)
    wanted = _upload(reg.host, data, str(ca))
    session = Session(reg.host, local=True, ca_file=str(ca))
    try:
        assert _fetch(session, wanted, tmp_path / "store").read_bytes() == data
    finally:
        session.close()
    assert path.calls == []


def test_a_partial_download_resumes_with_a_range_request(path, direct, tmp_path):
    data = _data((3 << 20) + 123, 3)
    wanted = _upload(direct.host, data)
    store = tmp_path / "store"
    (store / "tmp").mkdir(parents=True)
    have = (1 << 20) + 4321
    (store / "tmp" / f"{wanted.digest.split(':')[1]}.part").write_bytes(data[:have])
    session = Session(direct.host, local=True)
    try:
        got = _fetch(session, wanted, store)
    finally:
        session.close()
    assert got.read_bytes() == data
    assert (session.traffic.resumed_bytes, session.traffic.fetched_bytes) == (have, len(data) - have)
    assert [at for at, _ in path.calls] == ([have] if path.splice else [])


def test_a_corrupted_blob_on_the_registry_leaves_nothing(path, direct, tmp_path):
    data = _data(2 << 20, 4)
    wanted = _upload(direct.host, data)
    stored = direct.blob_data(wanted.digest)
    stored.write_bytes(data[:777_777] + bytes([data[777_777] ^ 1]) + data[777_778:])
    store = tmp_path / "store"
    session = Session(direct.host, local=True)
    try:
        with pytest.raises(DigestError, match=r"\(corrupt download or registry\); nothing was written"):
            _fetch(session, wanted, store)
    finally:
        session.close()
    assert sorted(p.name for p in store.rglob("*")) == ["tmp"]
    assert len(path.calls) == path.splice


@contextlib.contextmanager
def _two_sends(body: bytes, first: int, length: int | None = None) -> Iterator[str]:
    """An http server for one connection: headers and ``first`` body bytes in one send, the rest
    0.2 s later; ``length`` (default: the body's) is the Content-Length it announces."""
    listener = socket.create_server(("127.0.0.1", 0))
    announced = len(body) if length is None else length

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\n\r\n".encode()
            conn.sendall(head + body[:first])
            time.sleep(0.2)
            conn.sendall(body[first:])
            if announced == len(body):
                conn.recv(1)  # until the client hangs up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        thread.join(timeout=30)
        listener.close()


@pytest.mark.parametrize(("size", "first"), [(1 << 20, 3000), (3000, 3000), (1 << 20, 0)])
def test_body_bytes_buffered_with_the_headers_come_first(size, first, path, tmp_path):
    """http.client reads the body's first bytes with the headers: they are written before (or,
    when they are all of it, instead of) what is spliced from the socket."""
    data = _data(size, 5)
    wanted = Blob("sha256:" + hashlib.sha256(data).hexdigest(), size)
    with _two_sends(data, first) as host:
        session = Session(host, insecure=True)
        try:
            got = _fetch(session, wanted, tmp_path / "store")
        finally:
            session.close()
    assert got.read_bytes() == data
    if not path.splice:
        assert path.calls == []
    elif first:
        assert path.calls == [(0, first)]
    else:  # nothing buffered yet: the first read waits for the body and takes what it can
        assert len(path.calls) == 1 and 0 < path.calls[0][1] <= 1 << 16


def test_a_length_other_than_the_blobs_is_caught(path, tmp_path):
    """The server announces and sends one byte less than the manifest says: read through the
    pipeline (splicing needs the announced length to be the blob's), and refused."""
    data = _data(1 << 20, 8)
    wanted = Blob("sha256:" + hashlib.sha256(data + b"x").hexdigest(), len(data) + 1)
    with _two_sends(data, 5000) as host:
        session = Session(host, insecure=True)
        try:
            with pytest.raises(DigestError, match=f"has {len(data)} bytes, not {len(data) + 1} "):
                _fetch(session, wanted, tmp_path / "store")
        finally:
            session.close()
    assert path.calls == []


def test_a_body_cut_short_can_be_resumed(path, tmp_path):
    """The server closes before the announced length: a network error, and the bytes received so
    far stay in the partial file for the next run."""
    data = _data(1 << 20, 6)
    wanted = Blob("sha256:" + hashlib.sha256(data + b"x").hexdigest(), len(data) + 1)
    store = tmp_path / "store"
    with _two_sends(data, 5000, length=len(data) + 1) as host:
        session = Session(host, insecure=True)
        try:
            with pytest.raises(NetworkError, match=r"broke off .*; run the pull again to resume"):
                _fetch(session, wanted, store)
        finally:
            session.close()
    kept = (store / "tmp" / f"{wanted.digest.split(':')[1]}.part").read_bytes()
    # The pipeline may stop its writer before the last piece received; a prefix resumes as well.
    assert kept == data if path.splice else data.startswith(kept)
    assert len(path.calls) == path.splice
