"""Real servers and real images for the delta tests: nginx on a free loopback port, signed SIFs."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from siffs.cli.main import main as siffs_main
from tests.support.images import require_tool


def vector(n: int, tag: bytes = b"siffs-casync-test-vector") -> bytes:
    """The specification's input generator G(n, tag): SHA-256(tag || u64le(i)) for i = 0, 1, ..."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(tag + i.to_bytes(8, "little")).digest()
        i += 1
    return bytes(out[:n])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Nginx:
    root: Path
    url: str
    access_log: Path

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far."""
        found = []
        for line in self.access_log.read_text().splitlines():
            m = re.search(r'"(\w+) (\S+) HTTP/[\d.]+" (\d+)', line)
            if m:
                found.append((m.group(1), m.group(2), int(m.group(3))))
        return found

    def clear_log(self) -> None:
        self.access_log.write_text("")


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    """An nginx of its own (config, pid, logs in tmp_path) serving tmp_path/www; stopped afterwards."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin") or require_tool("nginx")
    root = tmp_path / "www"
    root.mkdir()
    conf_dir = tmp_path / "nginx"
    conf_dir.mkdir()
    port = free_port()
    log = conf_dir / "access.log"
    conf = conf_dir / "nginx.conf"
    # As root, nginx's workers would run as nobody, who cannot enter pytest's private tmp directory.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    conf.write_text(
        f"""
{user}
worker_processes 1;
daemon on;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {log};
    client_body_temp_path {conf_dir}/body;
    proxy_temp_path {conf_dir}/proxy;
    fastcgi_temp_path {conf_dir}/fastcgi;
    uwsgi_temp_path {conf_dir}/uwsgi;
    scgi_temp_path {conf_dir}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""
    )
    subprocess.run(
        [binary, "-c", str(conf), "-p", str(conf_dir), "-e", str(conf_dir / "error.log")], check=True
    )
    pid = int((conf_dir / "nginx.pid").read_text())
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield Nginx(root, f"http://127.0.0.1:{port}", log)
    finally:
        os.kill(pid, signal.SIGQUIT)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


@dataclass(frozen=True)
class SignedImages:
    old: Path  # version 1
    new: Path  # version 2: a few files changed
    public_key: Path
    private_key: Path


def _tree(root: Path, version: int) -> Path:
    """A deterministic tree of incompressible-ish files; version 2 changes two and adds one."""
    root.mkdir()
    for i in range(40):
        data = vector(30000 + 997 * i, f"file{i}".encode())
        if version == 2 and i in (7, 23):
            data = vector(30000 + 997 * i, f"file{i}-v2".encode())
        (root / f"f{i:02}.bin").write_bytes(data)
    if version == 2:
        (root / "added.bin").write_bytes(vector(5000, b"added"))
    return root


def _sif(tmp: Path, version: int, private_key: Path) -> Path:
    tree = _tree(tmp / f"tree{version}", version)
    squash = tmp / f"v{version}.squashfs"
    subprocess.run(
        [
            require_tool("mksquashfs"),
            str(tree),
            str(squash),
            "-noappend",
            "-quiet",
            "-no-progress",
            "-all-root",
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    sif = tmp / f"image-v{version}.sif"
    assert siffs_main(["create", str(sif), str(squash)]) == 0 or sif.exists()
    assert siffs_main(["-q", "sign", str(sif), "--key", str(private_key)]) == 0
    return sif


@pytest.fixture(scope="session")
def signed_images(tmp_path_factory: pytest.TempPathFactory) -> SignedImages:
    tmp = tmp_path_factory.mktemp("delta-images")
    key = ed25519.Ed25519PrivateKey.generate()
    private = tmp / "key.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = tmp / "key.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return SignedImages(_sif(tmp, 1, private), _sif(tmp, 2, private), public, private)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
