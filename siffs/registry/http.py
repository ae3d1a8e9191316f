"""A small HTTP/1.1 client for the registry API: keep-alive, retries, redirects, auth challenges.

Only what the OCI distribution API needs (spec registry.md sections 2 and 3), on ``http.client`` so that no
dependency sits between siffs and the bytes it verifies. Credentials go to the registry host
(and, as the token protocol requires, to the token realm), never to a redirect target.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import ipaddress
import json
import socket
import ssl
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from siffs import __version__
from siffs.registry.credentials import Credentials
from siffs.registry.errors import AuthError, NetworkError, RegistryError

USER_AGENT = f"siffs/{__version__}"
#: Statuses worth another attempt (ggcr's set) and the attempts made in all.
RETRY_STATUSES = frozenset({408, 429, 499, 500, 502, 503, 504, 522})
ATTEMPTS = 3
MAX_REDIRECTS = 5
#: Seconds a connection may wait for the server (to connect, or for the next bytes).
TIMEOUT = 60.0


@dataclass
class Response:
    """A response whose body has not been read yet (``read``/``stream``), or was (``body``)."""

    status: int
    headers: http.client.HTTPMessage
    raw: http.client.HTTPResponse
    url: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def read(self, limit: int = 16 << 20) -> bytes:
        data = self.raw.read(limit + 1)
        if len(data) > limit:
            raise RegistryError(f"{self.url}: response larger than {limit} bytes")
        return data

    def socket_body(self) -> tuple[int, bytes] | None:
        """The body as the bare socket, for a copy that stays in the kernel (``splice``).

        Returns the socket's descriptor and the body bytes http.client read with the headers
        (they come first); after them, the next ``Content-Length`` bytes on the socket are the
        rest of the body, and ``raw.close()`` once they are read leaves the connection reusable
        (it drops this response's buffer; the next response reads the socket afresh). None when
        the bytes on the socket are not the body itself: https, chunked encoding, an unknown
        length (the caller reads through ``raw`` then).
        """
        raw = self.raw
        if not (isinstance(raw, http.client.HTTPResponse) and self.url.startswith("http://")):
            return None
        if raw.chunked or not raw.length or raw.fp is None:
            return None
        return raw.fp.fileno(), raw.fp.peek()[: raw.length]  # what is buffered (a first read if nothing is)

    def error_text(self) -> str:
        """``CODE: message`` of a registry error body (at most 200 characters), or the status."""
        try:
            errors = json.loads(self.read(1 << 16)).get("errors") or []
            first = errors[0]
            text = f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
        except (ValueError, AttributeError, IndexError, TypeError, RegistryError):
            text = ""
        return (text or f"HTTP {self.status}")[:200]


@dataclass
class Traffic:
    """What a session moved, for a pull's report."""

    requests: int = 0
    fetched_bytes: int = 0  #: blob bytes received
    resumed_bytes: int = 0  #: blob bytes taken from an interrupted download
    cached_bytes: int = 0  #: blob bytes found in the cache, not fetched


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class Session:
    """Requests to one registry, with its credentials and the tokens they earned."""

    host: str
    credentials: Credentials | None = None
    insecure: bool = False  # --no-https: plain http is allowed
    local: bool = False  # loopback/private host: http allowed after https fails (as ggcr)
    ca_file: str | None = None
    sleep: Callable[[float], None] = time.sleep
    _scheme: str | None = None
    _connections: dict[tuple[str, str], http.client.HTTPConnection] = field(default_factory=dict)
    _tokens: dict[tuple[str, str, frozenset[str]], _Token] = field(default_factory=dict)
    _auth: str | None = None  # the Authorization header that last worked
    traffic: Traffic = field(default_factory=Traffic)
    #: Every socket a request used: a response that closes its connection (HTTP/1.0, "Connection:
    #: close") keeps its socket after http.client forgets it, and ``close`` must reach that too.
    _sockets: weakref.WeakSet[socket.socket] = field(default_factory=weakref.WeakSet)

    # -- connections -------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        if key not in self._connections:
            if scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    netloc, timeout=TIMEOUT, context=self._context()
                )
            else:
                conn = http.client.HTTPConnection(netloc, timeout=TIMEOUT)
            self._connections[key] = conn
        return self._connections[key]

    def close(self) -> None:
        # shutdown first: it wakes a thread blocked reading a body (a download cut short by an
        # interrupt), which holds the response's buffer lock that closing it would wait for.
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def base(self) -> str:
        """``https://HOST`` or, when https is not spoken and http is allowed, ``http://HOST``."""
        if self._scheme is None:
            self._scheme = self._probe()
        return f"{self._scheme}://{self.host}"

    def _probe(self) -> str:
        if self.insecure and not self.local:
            return "http"
        if self.local and not self._speaks_tls():
            return "http"
        try:
            self._send_once("GET", f"https://{self.host}/v2/", {}, None).raw.read()
            return "https"
        except ssl.SSLCertVerificationError as exc:
            if self.insecure:
                return "http"
            raise NetworkError(
                f"{self.host}: TLS certificate not trusted ({exc.verify_message}); use --ca-file, "
                "SSL_CERT_FILE, or --no-https for an http registry"
            ) from None
        except (ssl.SSLError, OSError, http.client.HTTPException) as exc:
            if self.insecure or self.local:
                return "http"
            raise NetworkError(f"cannot connect to {self.host}: {_reason(exc)}") from None

    def _speaks_tls(self) -> bool:
        """Whether the host completes a TLS handshake at all, asked without the CA store.

        Loading the store takes ~30 ms (a tenth of a 500 MB pull from a loopback registry); a
        local registry that speaks plain http is known without it. When the handshake succeeds,
        the verifying probe follows as for any host.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        parts = urllib.parse.urlsplit(f"https://{self.host}")
        name = parts.hostname or self.host
        try:
            with socket.create_connection((name, parts.port or 443), timeout=TIMEOUT) as raw, \
                    context.wrap_socket(raw, server_hostname=name):  # fmt: skip
                return True
        except (ssl.SSLError, OSError):
            return False

    # -- one exchange ------------------------------------------------------------------------

    def _send_once(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> Response:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = self._connection(parts.scheme, parts.netloc)
        self.traffic.requests += 1
        all_headers = {"User-Agent": USER_AGENT, **headers}
        try:
            conn.request(method, target, body=body, headers=all_headers)
            self._sockets.add(conn.sock)
            raw = conn.getresponse()
        except (OSError, http.client.HTTPException):
            conn.close()  # a kept-alive connection the server closed: one fresh try
            conn.request(method, target, body=body, headers=all_headers)
            self._sockets.add(conn.sock)
            raw = conn.getresponse()
        if parts.scheme == "http" and raw.status == 400:
            text = raw.read(200)
            if b"HTTP request to an HTTPS server" in text:
                raise NetworkError(f"{self.host} speaks https, not http: drop --no-https or check the port")
            raw = _Replayed(raw, text)  # type: ignore[assignment]
        return Response(raw.status, raw.headers, raw, url)

    # -- the full request: retries, redirects, auth ------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        scope: str,
        ok: frozenset[int] = frozenset({200}),
    ) -> Response:
        """``method`` on ``path`` (below the registry, or an absolute URL); raises on failure.

        ``scope`` is the token scope the request needs (``repository:NAME:pull``). Statuses in
        ``ok`` are returned; 404 is returned too, for the caller to say what was missing.
        """
        url = path if "://" in path else self.base() + path
        authorized = False
        redirects = 0
        attempt = 0
        while True:
            sent = dict(headers or {})
            if self._auth and _same_host(url, self.host):
                sent["Authorization"] = self._auth
            try:
                response = self._send_once(method, url, sent, body)
            except ssl.SSLCertVerificationError as exc:
                raise NetworkError(
                    f"{self.host}: TLS certificate not trusted ({exc.verify_message}); use --ca-file, "
                    "SSL_CERT_FILE, or --no-https for an http registry"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                attempt += 1
                if attempt >= ATTEMPTS:
                    raise NetworkError(
                        f"cannot connect to {self.host}: {_reason(exc)} ({attempt} attempts)"
                    ) from None
                self.sleep(3 ** (attempt - 1))
                continue
            status = response.status
            if status in ok or status == 404:
                return response
            if status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                location = response.header("Location")
                response.raw.read()
                redirects += 1
                if not location or redirects > MAX_REDIRECTS:
                    raise NetworkError(f"{self.host}: too many redirects for {_strip(url)}")
                url = urllib.parse.urljoin(url, location)
                continue
            if status == 401 and not authorized:
                challenge = response.header("WWW-Authenticate") or ""
                response.raw.read()
                self._auth = self._authorize(challenge, scope)
                authorized = True
                continue
            if status == 401:
                response.raw.read()
                raise self._auth_failure(scope)
            if status == 403:
                response.raw.read()
                raise AuthError(f"{self.host}: access to {_repository(scope)} denied (403)")
            if status in RETRY_STATUSES:
                attempt += 1
                wait = _retry_after(response.header("Retry-After"), 3 ** (attempt - 1))
                response.raw.read()
                if attempt >= ATTEMPTS:
                    if status == 429:
                        raise NetworkError(f"{self.host}: rate limited (429), retry after {wait:.0f} s")
                    raise NetworkError(
                        f"{self.host}: server error {status} on {method} {_strip(url)} ({attempt} attempts)"
                    )
                self.sleep(wait)
                continue
            text = response.error_text()
            raise RegistryError(f"{self.host}: {method} {_strip(url)} failed: {text}")

    def _auth_failure(self, scope: str) -> AuthError:
        if self.credentials is None:
            return AuthError(
                f"{self.host}: authentication required for {_repository(scope)} "
                "(use 'siffs registry login' or --docker-login)"
            )
        return AuthError(
            f"{self.host}: credentials for {self.credentials.username} were rejected or do not grant "
            f"{_actions(scope)} on {_repository(scope)}"
        )

    def _authorize(self, challenge: str, scope: str) -> str:
        """The Authorization header that answers ``challenge`` for ``scope``."""
        kind, params = parse_challenge(challenge)
        if kind == "basic":
            if self.credentials is None or not self.credentials.password:
                raise self._auth_failure(scope)
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        if kind == "bearer":
            return "Bearer " + self._token(params, scope)
        raise AuthError(f"{self.host}: unsupported authentication scheme {kind or 'none'!r}")

    def _token(self, params: Mapping[str, str], scope: str) -> str:
        realm = params.get("realm", "")
        service = params.get("service", "")
        scopes = frozenset(s for s in (scope, params.get("scope", "")) if s)
        key = (realm, service, scopes)
        cached = self._tokens.get(key)
        if cached is not None and cached.expires > time.time() + 10:
            return cached.value
        self._check_realm(realm)
        query = urllib.parse.urlencode([("service", service), *(("scope", s) for s in sorted(scopes))])
        url = realm + ("&" if "?" in realm else "?") + query
        headers = {}
        if self.credentials is not None and self.credentials.registry_token:
            return self.credentials.registry_token
        if self.credentials is not None and self.credentials.password:
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        response = self._send_once("GET", url, headers, None)
        if response.status == 401:
            response.raw.read()
            raise self._auth_failure(scope)
        if response.status != 200:
            raise AuthError(f"{self.host}: token server answered {response.error_text()}")
        try:
            answer = json.loads(response.read(1 << 20))
            token = str(answer.get("access_token") or answer["token"])
            lifetime = float(answer.get("expires_in") or 60)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AuthError(f"{self.host}: the token server's answer is not a token") from None
        self._tokens[key] = _Token(token, time.time() + lifetime)
        return token

    def _check_realm(self, realm: str) -> None:
        """ggcr's rule: https (or http for an http registry); no foreign private IP literals."""
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise AuthError(f"{self.host}: invalid realm in www-authenticate: {realm!r}")
        if parts.scheme == "http" and self.base().startswith("https"):
            raise AuthError(
                f"{self.host}: invalid realm in www-authenticate: http realm for an https registry"
            )
        if parts.netloc == self.host:
            return
        try:
            address = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return  # host names are not resolved for this check
        if address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified:
            raise AuthError(
                f"{self.host}: invalid realm in www-authenticate: realm host {parts.hostname} is a "
                "private or link-local address"
            )


class _Replayed:
    """A response whose first bytes were already read (to recognise an error page)."""

    def __init__(self, raw: http.client.HTTPResponse, head: bytes) -> None:
        self._raw, self._head = raw, head
        self.status, self.headers = raw.status, raw.headers

    def read(self, n: int = -1) -> bytes:
        head, self._head = self._head, b""
        rest = self._raw.read() if n < 0 else self._raw.read(max(0, n - len(head)))
        return head + rest


def parse_challenge(text: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` → ("bearer", {...}); keys lower-cased, quotes optional."""
    kind, _, rest = text.strip().partition(" ")
    params: dict[str, str] = {}
    for part in _split_params(rest):
        name, eq, value = part.partition("=")
        if eq:
            params[name.strip().lower()] = value.strip().strip('"')
    return kind.lower(), params


def _split_params(text: str) -> list[str]:
    """Split at commas outside quotes (a scope holds commas: ``repository:x:pull,push``)."""
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def _retry_after(value: str | None, default: float) -> float:
    if not value:
        return default
    if value.strip().isdigit():
        return min(60.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return default
    return min(60.0, max(0.0, when - time.time()))


def _same_host(url: str, host: str) -> bool:
    return urllib.parse.urlsplit(url).netloc == host


def _strip(url: str) -> str:
    """The URL's path for messages: no query (upload states and tokens live there)."""
    return urllib.parse.urlsplit(url).path


def _repository(scope: str) -> str:
    return scope.split(":")[1] if scope.count(":") >= 2 else scope


def _actions(scope: str) -> str:
    return scope.split(":")[2] if scope.count(":") >= 2 else "access"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason})"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
