"""What the user gives to unlock an image, and the RSA-OAEP Cryptographic Message of PEM images.

A passphrase image uses the passphrase's bytes; a PEM image stores a random secret, encrypted
to an RSA key, in a Cryptographic Message object (PEM block ``MESSAGE`` around one DER OCTET
STRING of RSA-OAEP-SHA256 ciphertext). Both image kinds use the same container.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import re
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm as UnsupportedAlgorithmError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from siffs.crypt.errors import CorruptEncryption, KeyProblem, UnsupportedEncryption

#: Said when an encrypted image is opened without any key.
NO_KEY = "image is encrypted: give --passphrase or --pem-path"
#: Said for every failed unlock, whatever was tried (never which slot or why).
WRONG_KEY = "wrong passphrase or key"


@dataclass(frozen=True)
class KeyMaterial:
    """A passphrase's bytes, or an RSA private key in PEM; repr never shows either."""

    passphrase: bytes | None = field(default=None, repr=False)
    pem: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.passphrase is not None and self.pem is not None:
            raise KeyProblem("give either a passphrase or a PEM key, not both")


def secret_from_message(material: KeyMaterial, message: bytes | None) -> bytes:
    """The secret that unlocks the partition: the passphrase, or the message decrypted with the PEM key.

    Raises :class:`KeyProblem` with the spec's message when the key given does not fit the image.
    """
    if material.pem is not None:
        if message is None:
            raise KeyProblem("image was encrypted with a passphrase: give --passphrase, not --pem-path")
        return decrypt_message(material.pem, message)
    if material.passphrase is None:
        raise KeyProblem(NO_KEY)
    return material.passphrase


_MESSAGE_PEM = re.compile(rb"-----BEGIN MESSAGE-----\r?\n(.*?)-----END MESSAGE-----", re.DOTALL)


def message_ciphertext(message: bytes) -> bytes:
    """The RSA ciphertext inside a Cryptographic Message (PEM ``MESSAGE`` → DER OCTET STRING)."""
    found = _MESSAGE_PEM.search(message)
    if found is None:
        raise CorruptEncryption("the Cryptographic Message holds no PEM MESSAGE block (corrupt image)")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except binascii.Error as exc:
        raise CorruptEncryption("the Cryptographic Message is not valid base64 (corrupt image)") from exc
    if len(der) < 2 or der[0] != 0x04:
        raise CorruptEncryption("the Cryptographic Message is not a DER OCTET STRING (corrupt image)")
    first = der[1]
    if first < 0x80:
        length, start = first, 2
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or len(der) < 2 + count:
            raise CorruptEncryption("the Cryptographic Message has a bad DER length (corrupt image)")
        length, start = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    if start + length != len(der) or length == 0:
        raise CorruptEncryption("the Cryptographic Message has a bad DER length (corrupt image)")
    return der[start:]


def decrypt_message(pem: bytes, message: bytes) -> bytes:
    """RSA-OAEP(SHA-256, MGF1-SHA-256) decrypt the message with the private key ``pem``, block by block."""
    if b"ENCRYPTED" in pem:
        raise KeyProblem(
            "passphrase-protected PEM keys are not supported: decrypt the key first (openssl rsa)"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyProblem("the --pem-path file is not an RSA private key in PEM form") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UnsupportedEncryption("only RSA private keys can decrypt an image's key message")
    ciphertext = message_ciphertext(message)
    k = key.key_size // 8 + (key.key_size % 8 > 0)
    if len(ciphertext) % k:
        raise KeyProblem("this key cannot decrypt the image's key message")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    try:
        return b"".join(key.decrypt(ciphertext[i : i + k], oaep) for i in range(0, len(ciphertext), k))
    except ValueError as exc:
        raise KeyProblem("this key cannot decrypt the image's key message") from exc


def encrypt_message(public_pem: bytes, secret: bytes) -> bytes:
    """The Cryptographic Message for ``secret`` encrypted to the RSA public key ``public_pem`` (builds)."""
    try:
        key = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError, UnsupportedAlgorithmError) as exc:
        raise KeyProblem("the --pem-path file is not an RSA public key in PEM form") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyProblem("the --pem-path file is not an RSA public key in PEM form")
    k = key.key_size // 8
    step = k - 66
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ciphertext = b"".join(key.encrypt(secret[i : i + step], oaep) for i in range(0, len(secret), step))
    n = len(ciphertext)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    b64 = base64.b64encode(b"\x04" + length + ciphertext).decode()
    lines = "".join(b64[i : i + 64] + "\n" for i in range(0, len(b64), 64))
    return f"-----BEGIN MESSAGE-----\n{lines}-----END MESSAGE-----\n".encode()


_PR_SET_DUMPABLE = 4


def keep_out_of_core_dumps() -> None:
    """Make this process non-dumpable before keys enter its memory (no core file, no ptrace by peers)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
