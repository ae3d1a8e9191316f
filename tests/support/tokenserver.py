"""Helper servers for the registry tests, each run as its own process (``python -m``).

    python -m tests.support.tokenserver static DIR
    python -m tests.support.tokenserver token CERT.pem KEY.pem USER PASSWORD

``static`` serves DIR as plain files (no Range support: a redirect target). ``token`` speaks the
Docker token protocol as spec registry.md §7.1 lays out: ES256 JWTs with the certificate in
``x5c``, everything for USER (with PASSWORD), ``pull`` on ``public/*`` for anyone, nothing else.
Each prints ``PORT n`` once it listens.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import secrets
import sys
import time
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _token_handler(
    cert: str, key_file: str, user: str, password: str
) -> type[http.server.BaseHTTPRequestHandler]:
    with open(cert, "rb") as f:
        der = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)
    with open(key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)

    def grant(who: str | None, scope: str) -> dict[str, object] | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        wanted = set(actions.split(","))
        allowed = wanted if who == user else ({"pull"} & wanted if name.startswith("public/") else set())
        return {"type": kind, "name": name, "actions": sorted(allowed)} if allowed else None

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            who = None
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                name, _, given = base64.b64decode(auth[6:]).decode().partition(":")
                if (name, given) != (user, password):
                    self.send_response(401)
                    self.end_headers()
                    return
                who = name
            now = int(time.time())
            claims = {
                "iss": "siffs-test-issuer", "sub": who or "", "aud": query.get("service", [""])[0],
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                "access": [g for s in query.get("scope", []) if (g := grant(who, s))],
            }  # fmt: skip
            header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode("ascii")]}
            signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
            r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
            token = f"{signing}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
            body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main(argv: list[str]) -> None:
    if argv[0] == "static":
        handler = functools.partial(_Quiet, directory=argv[1])
    else:
        handler = _token_handler(*argv[1:5])  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
