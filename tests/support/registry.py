"""Real registries for the tests: Debian's docker-registry (CNCF distribution 2.8) on loopback.

Each server gets its own directory and a free port and is stopped afterwards. The token server
is a small Docker-token-protocol endpoint in this process (ES256 JWTs, the certificate in ``x5c``)
granting everything to alice and ``pull`` on ``public/*`` to anyone, as spec registry.md §7 lays
out; distribution checks its tokens, so the flow under test is the real one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER, PASSWORD = "alice", "s3cret:pw"  # a colon in the password, as the spec's fixture


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT (or localhost:PORT)
    root: Path  # storage root directory

    def blob_data(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[1]
        return self.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def certificate(work: Path, name: str, *, ip: bool = True) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-256 certificate (CA:true, SAN 127.0.0.1 and localhost) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    import ipaddress  # noqa: PLC0415

    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if ip:
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt, pem = work / f"{name}.crt", work / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return crt, pem, key


@contextlib.contextmanager
def registry(work: Path, **config: object) -> Iterator[Registry]:
    """``docker-registry serve`` with ``config`` merged into a minimal configuration."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("needs Debian's docker-registry")
    work.mkdir(parents=True)
    port = free_port()
    host = str(config.pop("host", f"127.0.0.1:{port}")).replace("PORT", str(port))
    settings: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(8)},
    }
    for key, value in config.items():
        if key == "tls":
            settings["http"] = {**settings["http"], "tls": value}  # type: ignore[dict-item]
        else:
            settings[key] = value
    (work / "config.yml").write_text(json.dumps(settings))  # JSON is YAML
    log = (work / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(work / "config.yml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"docker-registry did not start: {(work / 'registry.log').read_text()}")
            time.sleep(0.05)
        storage = settings["storage"]
        assert isinstance(storage, dict)
        yield Registry(host, Path(storage["filesystem"]["rootdirectory"]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def _server(*argv: str) -> Iterator[int]:
    """A helper server in its own process (no thread in the test process, which must stay single-
    threaded for tests that enter a private mount namespace); it prints its port first."""
    command = [sys.executable, "-m", "tests.support.tokenserver", *argv]
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise AssertionError(f"helper server {argv[0]} did not start")
        yield int(line.split()[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def static_server(root: Path) -> Iterator[str]:
    """A plain static file server (no Range support) over ``root``: a redirect target."""
    with _server("static", str(root)) as port:
        yield f"http://127.0.0.1:{port}/"


@contextlib.contextmanager
def token_server(work: Path, service: str) -> Iterator[tuple[str, Path]]:
    """The token endpoint and its certificate (the registry's ``rootcertbundle``)."""
    crt, key, _ = certificate(work, "token", ip=False)
    with _server("token", str(crt), str(key), USER, PASSWORD) as port:
        yield f"http://localhost:{port}/token", crt


def htpasswd(work: Path) -> Path:
    path = work / "htpasswd"
    line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True)
    path.write_text(line.stdout)
    return path


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


#: (status, headers, body) answered for a path; a list is answered in turn (then its last, again).
Answer = tuple[int, dict[str, str], bytes]


@contextlib.contextmanager
def scripted_registry(routes: dict[str, Answer | list[Answer]]) -> Iterator[tuple[str, list[str]]]:
    """A registry that answers what the test scripts (for the error rows no real one shows on demand).

    Yields its host and the list of request lines it saw. Unknown paths get 404 BLOB_UNKNOWN.
    """
    seen: list[str] = []
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            seen.append(f"{self.command} {path}")
            route = routes.get(path, (404, {}, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}'))
            if isinstance(route, list):
                route = route.pop(0) if len(route) > 1 else route[0]
            status, headers, body = route
            headers = dict(headers)
            stall = float(headers.pop("X-Stall", 0))  # promise more than is sent, then hang
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) + (1 << 20 if stall else 0)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
                self.wfile.flush()
                stop.wait(stall)

        do_GET = do_HEAD = _answer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = False  # server_close() joins them: no thread outlives the test
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


def pull_on_small_disk(
    small: Path, size_kib: int, options: list[str], source: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``siffs pull [options] SMALL/x.sif SOURCE`` onto a tmpfs of ``size_kib`` mounted at ``small``
    in a private mount namespace (root only); stdout is ``rc=N`` and what is left in ``small``."""
    small.mkdir(exist_ok=True)
    script = (
        f"mount -t tmpfs -o size={size_kib}k tmpfs {small} && {sys.executable} -m siffs pull "
        f'{" ".join(options)} {small}/x.sif {source}; echo "rc=$?"; ls -A {small}'
    )
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)
