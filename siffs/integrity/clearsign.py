"""The SIF framing of OpenPGP clear-signed messages (sif-format.md §8.2, §8.3).

Only the text framing is hand-written here; the signature packet itself goes to GnuPG
(``openpgp``). The rules follow the reference's decoder (go-crypto ``clearsign.Decode``), not
GnuPG's, because what counts as "the signed bytes" and "the plaintext" decides which digests a
signature vouches for: parsing them differently from the reference would let one image verify
differently in siffs and in Singularity/Apptainer.
"""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

_BEGIN = b"-----BEGIN PGP SIGNED MESSAGE-----"
_BEGIN_SIGNATURE = b"-----BEGIN PGP SIGNATURE-----"
_END = b"\n-----END PGP SIGNATURE-----"
_ARMOR_BEGIN = b"-----BEGIN "
_ARMOR_END = b"-----END "
_DASH_ESCAPE = b"- "
_MAX_ARMOR_LINE = 96
_ARMOR_COLUMNS = 64
#: ``Hash:`` header values go-crypto 1.4 accepts (upper-cased); anything else: not a message.
_HASH_NAMES = frozenset(
    {"MD5", "SHA1", "RIPEMD160", "SHA224", "SHA256", "SHA384", "SHA512", "SHA3-256", "SHA3-512"}
)


class ClearSigned(NamedTuple):
    """A decoded clear-signed message."""

    #: What the signature signs: text lines joined with CRLF, no final line ending.
    signed: bytes
    #: The text as the verifier reads it: lines joined with LF, no final line ending.
    plaintext: bytes
    #: The binary OpenPGP packets of the armored signature block.
    signature: bytes


def decode(data: bytes) -> ClearSigned | None:
    """Find and decode the first clear-signed message in ``data``; ``None`` if there is none."""
    if data.startswith(_BEGIN):
        rest = data[len(_BEGIN) :]
    else:
        at = data.find(b"\n" + _BEGIN)
        if at < 0:
            return None
        rest = data[at + 1 + len(_BEGIN) :]
    suffix, rest = _line(rest)
    if suffix:
        return None
    while True:
        if not rest:
            return None
        line, rest = _line(rest)
        if not line.strip():
            break
        if not _valid_hash_header(line):
            return None
    lines: list[bytes] = []
    while True:
        start = rest
        line, rest = _line(rest)
        if not line and not rest:
            return None
        if line == _BEGIN_SIGNATURE:
            rest = start
            break
        if line.startswith(_DASH_ESCAPE):
            line = line[2:]
        lines.append(line.rstrip(b" \t"))
    end = rest.find(_END)
    if end < 0:
        return None
    signature = _dearmor(rest[: end + len(_END)])
    if signature is None:
        return None
    return ClearSigned(b"\r\n".join(lines), b"\n".join(lines), signature)


def encode(text: bytes, signature: bytes, hash_name: str = "SHA256") -> bytes:
    """Frame ``text`` and its binary signature as the reference signer writes them (no CRC line).

    The text must already be canonical (no trailing spaces or tabs on any line), as the
    signature covers those lines joined with CRLF.
    """
    escaped = b"\n".join(_DASH_ESCAPE + line if line.startswith(b"-") else line for line in text.split(b"\n"))
    armored = base64.b64encode(signature)
    body = b"\n".join(armored[i : i + _ARMOR_COLUMNS] for i in range(0, len(armored), _ARMOR_COLUMNS))
    return b"".join(
        [
            _BEGIN,
            b"\nHash: ",
            hash_name.encode("ascii"),
            b"\n\n",
            escaped,
            b"\n",
            _BEGIN_SIGNATURE,
            b"\n\n",
            body,
            _END,
        ]
    )


def signed_bytes(text: bytes) -> bytes:
    """The bytes a signature over ``text`` covers once framed (lines joined with CRLF)."""
    return b"\r\n".join(line.rstrip(b" \t") for line in text.split(b"\n"))


def _line(data: bytes) -> tuple[bytes, bytes]:
    """One line without its LF (or CRLF) ending, and the rest, as go-crypto's ``getLine``."""
    at = data.find(b"\n")
    if at < 0:
        return data, b""
    end = at - 1 if at > 0 and data[at - 1] == 0x0D else at
    return data[:end], data[at + 1 :]


def _valid_hash_header(line: bytes) -> bool:
    if any(b < 0x20 or b > 0x7E for b in line):
        return False
    key, colon, value = line.partition(b":")
    if not colon or key.strip() != b"Hash":
        return False
    return all(v.strip().upper().decode("ascii") in _HASH_NAMES for v in value.split(b","))


def _dearmor(armored: bytes) -> bytes | None:
    """Binary packets of an ASCII-armored block (go-crypto ``armor.Decode`` rules)."""
    lines = [_line_ending_stripped(line) for line in armored.split(b"\n")]
    it = iter(lines)
    for line in it:
        stripped = line.strip()
        if len(stripped) > len(_ARMOR_BEGIN) + 5 and stripped.startswith(_ARMOR_BEGIN):
            break
    else:
        return None
    for line in it:
        stripped = line.strip()
        if not stripped:
            break
        if b": " not in stripped:
            return None
    else:
        return None
    body: list[bytes] = []
    for line in it:
        if line.startswith(_ARMOR_END):
            break
        if len(line) == 5 and line.startswith(b"="):
            # A CRC24 line: go-crypto 1.x ignores its value; the END line must follow.
            if not next(it, b"").startswith(_ARMOR_END):
                return None
            break
        if len(line) > _MAX_ARMOR_LINE:
            return None
        body.append(line)
    else:
        return None
    try:
        # Go's base64 decoder skips CR and LF anywhere and is strict about everything else.
        return binascii.a2b_base64(b"".join(body).replace(b"\r", b""), strict_mode=True)
    except binascii.Error:
        return None


def _line_ending_stripped(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line
