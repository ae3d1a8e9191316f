"""A thin GnuPG wrapper: import keys, verify and make detached signatures.

OpenPGP is delegated to GnuPG rather than re-implemented or taken from a Python library (see
DESIGN.md): ``gpgv`` verifies, ``gpg`` imports keys and signs. Every call runs with a private,
temporary GNUPGHOME, so the user's own keyrings and trust settings are never read or changed,
and results are read from ``--status-fd`` lines, which are GnuPG's stable machine interface.

GnuPG judges expiry and revocation at the current time, as the reference verifier does, and
reports the signer's *primary* key fingerprint, which is what a SIF descriptor records even
when a subkey made the signature.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NamedTuple

from siffs.integrity.errors import (
    KeyExpiredError,
    KeyMaterialError,
    KeyRevokedError,
    SignatureNotValidError,
    SigningError,
)
from siffs.integrity.sealed import run_sealed

#: OpenPGP hash algorithm IDs the reference accepts in a signature: SHA-256/384/512/224.
_ACCEPTED_HASHES = {"8", "9", "10", "11"}
#: Signature classes a detached document signature may have: binary or canonical text.
_DOCUMENT_CLASSES = {"00", "01"}
_TIMEOUT = 60


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = "gpgv" if name == "gpgv" else "gnupg"
        raise KeyMaterialError(f"{name} is not installed: OpenPGP needs GnuPG (apt install {package})")
    return path


@contextmanager
def _home(base: Path | None = None) -> Iterator[Path]:
    """A private GNUPGHOME (in ``base``), removed afterwards with any agent GnuPG started in it."""
    home = Path(tempfile.mkdtemp(prefix="siffs-gnupg-", dir=base))
    try:
        yield home
    finally:
        if (home / "private-keys-v1.d").exists() or any(home.glob("S.gpg-agent*")):
            gpgconf = shutil.which("gpgconf")
            if gpgconf:
                subprocess.run(
                    [gpgconf, "--kill", "gpg-agent"],
                    env=_env(home),
                    capture_output=True,
                    timeout=_TIMEOUT,
                    check=False,
                )
        shutil.rmtree(home, ignore_errors=True)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GNUPG", "GPG_"))}
    env["GNUPGHOME"] = str(home)
    env["LC_ALL"] = "C"
    return env


def _run(
    home: Path, argv: Sequence[str], stdin: bytes = b"", pass_fds: Sequence[int] = ()
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv),
        input=stdin,
        env=_env(home),
        capture_output=True,
        timeout=_TIMEOUT,
        check=False,
        pass_fds=tuple(pass_fds),
    )


def _status(text: bytes) -> list[list[str]]:
    """``[GNUPG:] KEYWORD args...`` lines as word lists (the user ID stays one field)."""
    lines = []
    for raw in text.decode("utf-8", "replace").splitlines():
        if raw.startswith("[GNUPG:] "):
            keyword, _, rest = raw[len("[GNUPG:] ") :].partition(" ")
            if keyword in ("GOODSIG", "EXPKEYSIG", "REVKEYSIG", "BADSIG", "EXPSIG"):
                lines.append([keyword, *rest.split(" ", 1)])
            else:
                lines.append([keyword, *rest.split()])
    return lines


class PgpKey(NamedTuple):
    """What GnuPG tells about one OpenPGP key (certificate)."""

    fingerprint: str
    user_ids: tuple[str, ...]
    can_sign: bool
    validity: str  # GnuPG's letter: "e" expired, "r" revoked, "-"/"u"/... otherwise

    @property
    def user_id(self) -> str:
        return self.user_ids[0] if self.user_ids else ""


def _list_keys(home: Path, secret: bool = False) -> list[PgpKey]:
    listing = "--list-secret-keys" if secret else "--list-keys"
    proc = _run(
        home, [_tool("gpg"), "--batch", "--no-autostart", "--with-colons", "--fixed-list-mode", listing]
    )
    keys: list[PgpKey] = []
    current: dict[str, object] | None = None
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sec"):
            if current is not None:
                keys.append(_key(current))
            current = {"caps": fields[11] if len(fields) > 11 else "", "validity": fields[1], "uids": []}
        elif current is None:
            continue
        elif fields[0] == "fpr" and "fpr" not in current:
            current["fpr"] = fields[9]
        elif fields[0] == "uid":
            uids = current["uids"]
            assert isinstance(uids, list)
            uids.append(_unescape(fields[9]))
        elif fields[0] in ("sub", "ssb") and "fpr" not in current:
            current["fpr"] = ""
    if current is not None:
        keys.append(_key(current))
    return keys


def _key(fields: dict[str, object]) -> PgpKey:
    uids = fields["uids"]
    assert isinstance(uids, list)
    return PgpKey(
        fingerprint=str(fields.get("fpr", "")),
        user_ids=tuple(uids),
        can_sign="S" in str(fields["caps"]),
        validity=str(fields["validity"]),
    )


def _unescape(text: str) -> str:
    # --with-colons escapes ':' and control characters as \xNN.
    return bytes(text, "latin-1", "replace").decode("unicode_escape", "replace") if "\\x" in text else text


def _import(home: Path, key_data: bytes, source: str, *, secret: bool) -> None:
    argv = [_tool("gpg"), "--batch", "--status-fd", "1", "--import"]
    if not secret:
        # Public parts only: no agent is started, secret key material is never stored.
        argv[1:1] = ["--no-autostart"]
    proc = _run(home, argv, key_data)
    if not any(s[0] == "IMPORT_OK" for s in _status(proc.stdout)):
        reason = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f" ({reason[-1].removeprefix('gpg: ')})" if reason else ""
        raise KeyMaterialError(f"{source}: no usable OpenPGP key found{detail}")


class PgpKeyring(NamedTuple):
    """OpenPGP public keys for verification, as a binary keyring that ``gpgv`` reads."""

    data: bytes
    keys: tuple[PgpKey, ...]

    @classmethod
    def from_keys(cls, files: Sequence[tuple[bytes, str]]) -> PgpKeyring:
        """Import ``(key data, name)`` pairs: armored or binary, public or secret keys."""
        with _home() as home:
            for data, source in files:
                _import(home, data, source, secret=False)
            exported = _run(home, [_tool("gpg"), "--batch", "--no-autostart", "--export"])
            return cls(exported.stdout, tuple(_list_keys(home)))

    def to_json(self) -> str:
        keys = [[k.fingerprint, list(k.user_ids), k.can_sign, k.validity] for k in self.keys]
        return json.dumps({"data": base64.b64encode(self.data).decode("ascii"), "keys": keys})

    @classmethod
    def from_json(cls, text: str) -> PgpKeyring:
        """What ``to_json`` wrote; ValueError (or KeyError, TypeError) if it is not that."""
        value = json.loads(text)
        keys = tuple(PgpKey(str(f), tuple(map(str, u)), bool(c), str(v)) for f, u, c, v in value["keys"])
        return cls(base64.b64decode(value["data"], validate=True), keys)

    def armored(self, fingerprint: str) -> bytes:
        """The ASCII-armored public key with this primary fingerprint."""
        with _home() as home:
            _import(home, self.data, "keyring", secret=False)
            proc = _run(home, [_tool("gpg"), "--batch", "--no-autostart", "--armor", "--export", fingerprint])
        return proc.stdout

    def verify_detached(self, signed: bytes, signature: bytes) -> Signer:
        """Check a detached signature over ``signed``; the signer, or ``SignatureNotValidError``."""
        with tempfile.TemporaryDirectory(prefix="siffs-gpgv-") as tmp:
            home = Path(tmp)
            keyring = home / "keyring.gpg"
            keyring.write_bytes(self.data)
            sig = home / "signature.sig"
            sig.write_bytes(signature)
            # --ignore-time-conflict: the reference (sylabs/sif with ProtonMail go-crypto) accepts a
            # signature dated before its key's creation (clock skew between build hosts); gpgv
            # still says so on stderr, which _time_conflict turns into a warning.
            argv = [
                _tool("gpgv"),
                "--homedir",
                tmp,
                "--ignore-time-conflict",
                "--verbose",  # names an unknown critical subpacket, which status lines do not
                "--status-fd",
                "1",
                "--keyring",
                str(keyring),
                str(sig),
                "-",
            ]
            proc = _run(home, argv, signed)
        signer = _judge(_status(proc.stdout), self, proc.stderr)
        return signer._replace(time_conflict=_time_conflict(proc.stderr))


class Signer(NamedTuple):
    """Who made a verified OpenPGP signature."""

    fingerprint: str  # primary key fingerprint, upper-case hex
    user_id: str
    #: Set when the signature is dated before its key was made: accepted as the reference does,
    #: but worth a warning (a skewed clock on the build host, or a back-dated signature).
    time_conflict: str | None = None


#: gpgv's note (LC_ALL=C) when a signature predates its key: "public key ID is N days newer ...".
_NEWER_KEY = re.compile(rb"public key (\w+) is (\d+ \w+) newer than the signature")

#: ERRSIG return codes (libgpg-error) and what to tell the user about each.
_ERRSIG_REASONS = {
    "4": "its public-key algorithm is not supported",
    "5": "its hash algorithm is not supported",
    "41": "its public-key algorithm does not match the key's",
    "84": "it uses an unsupported algorithm",
    "14": "bad data: the signature packet is invalid",
    "58": "bad data: the signature has no data",
    "79": "bad data: the signature data is invalid",
    "89": "bad data: the signature data is damaged",
    "3": "its OpenPGP packet version is not supported",
}


def _time_conflict(stderr: bytes) -> str | None:
    match = _NEWER_KEY.search(stderr)
    if match is None:
        return None
    key, age = (m.decode("ascii", "replace") for m in match.groups())
    return f"the signature predates its signing key {key} by {age} (time conflict; accepted)"


def _judge(status: list[list[str]], keyring: PgpKeyring, stderr: bytes = b"") -> Signer:
    """Turn gpgv's status lines into a signer or the precise reason for refusing.

    ``stderr`` (gpgv's verbose messages, LC_ALL=C) tells the one case status lines do not: a
    BADSIG that is GnuPG refusing an unknown critical subpacket, not changed data.
    """
    keywords = {s[0] for s in status}
    if sum(1 for s in status if s[0] == "NEWSIG") > 1:
        raise SignatureNotValidError("the signature block holds more than one signature")
    for s in status:
        if s[0] == "EXPKEYSIG":
            raise KeyExpiredError(
                f"signing key {s[1]} ({s[2] if len(s) > 2 else ''}) has expired: "
                "ask the signer for a renewed key"
            )
        if s[0] == "REVKEYSIG":
            raise KeyRevokedError(
                f"signing key {s[1]} has been revoked by its owner: do not trust this image"
            )
        if s[0] == "EXPSIG":
            raise SignatureNotValidError("the signature has expired")
        if s[0] == "BADSIG" and b"has critical bit set" in stderr:
            raise SignatureNotValidError(
                f"the signature by key {s[1]} has an unknown critical subpacket: it cannot be checked"
            )
        if s[0] == "BADSIG":
            raise SignatureNotValidError(f"bad signature by key {s[1]}: the signed data was changed")
        if s[0] == "NO_PUBKEY" or (s[0] == "ERRSIG" and len(s) > 6 and s[6] == "9"):
            raise SignatureNotValidError(
                f"signed by unknown key {s[1]}: import the signer's public key "
                "('siffs key import FILE') or pass it with --key"
            )
        if s[0] == "ERRSIG":
            code = s[6] if len(s) > 6 else ""
            reason = _ERRSIG_REASONS.get(code, f"GnuPG error code {code or 'missing'}")
            raise SignatureNotValidError(f"the OpenPGP signature cannot be checked: {reason}")
    valid = next((s for s in status if s[0] == "VALIDSIG"), None)
    if valid is None or "GOODSIG" not in keywords or len(valid) < 11:
        raise SignatureNotValidError("the OpenPGP signature is damaged or not a signature")
    if valid[8] not in _ACCEPTED_HASHES:
        raise SignatureNotValidError(f"the signature uses a weak or unknown hash algorithm ({valid[8]})")
    if valid[9] not in _DOCUMENT_CLASSES:
        raise SignatureNotValidError(f"not a document signature (class {valid[9]})")
    primary = valid[10].upper()
    user_id = next((k.user_id for k in keyring.keys if k.fingerprint == primary), "")
    return Signer(primary, user_id)


class DetachedSignature(NamedTuple):
    signature: bytes
    signer: PgpKey


def sign_text(
    secret_key: bytes,
    source: str,
    signed: bytes,
    passphrase: bytes | None = None,
    on_fallback: Callable[[str], None] | None = None,
) -> DetachedSignature:
    """A canonical-text (class 0x01) SHA-256 signature over ``signed`` with a secret key file.

    The primary key signs if it can, else GnuPG picks a signing subkey; the descriptor will
    record the primary fingerprint either way. GnuPG, its agent and the imported secret key
    live in a sealed directory (``sealed``) that is gone with them, even if siffs is killed;
    ``on_fallback`` hears why if it cannot be sealed.
    """
    return run_sealed(partial(_sign_in, secret_key, source, signed, passphrase), on_fallback)


def _sign_in(
    secret_key: bytes, source: str, signed: bytes, passphrase: bytes | None, base: Path
) -> DetachedSignature:
    with _home(base) as home:
        _import(home, secret_key, source, secret=True)
        candidates = [k for k in _list_keys(home, secret=True) if k.can_sign and k.validity not in ("e", "r")]
        if not candidates:
            raise KeyMaterialError(
                f"{source}: no secret OpenPGP key that can sign (expired, revoked or public?)"
            )
        key = candidates[0]
        argv = [
            _tool("gpg"), "--batch", "--no-tty", "--status-fd", "2", "--pinentry-mode", "loopback",
            "--local-user", key.fingerprint, "--digest-algo", "SHA256", "--textmode",
            "--detach-sign", "--output", "-",
        ]  # fmt: skip
        read_fd = -1
        if passphrase is not None:
            read_fd, write_fd = os.pipe()
            os.write(write_fd, passphrase + b"\n")
            os.close(write_fd)
            argv[1:1] = ["--passphrase-fd", str(read_fd)]
        try:
            proc = _run(home, argv, signed, pass_fds=[read_fd] if read_fd >= 0 else [])
        finally:
            if read_fd >= 0:
                os.close(read_fd)
    if proc.returncode != 0 or not proc.stdout:
        status = _status(proc.stderr)
        if (
            any(s[0] in ("BAD_PASSPHRASE", "MISSING_PASSPHRASE") for s in status)
            or b"passphrase" in proc.stderr
        ):
            raise KeyMaterialError(f"{source}: the key is protected by a passphrase: give --passphrase-file")
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = next((ln for ln in reversed(lines) if not ln.startswith("[GNUPG:]")), "gpg failed")
        raise SigningError(f"gpg could not sign: {reason.removeprefix('gpg: ')}")
    return DetachedSignature(proc.stdout, key)
