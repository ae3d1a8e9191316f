"""DSSE envelopes: what ``sign`` makes from a PEM key pair (sif-format.md §8.1).

The envelope signs PAE(payloadType, payload) with one or more keys; a verifier holding any
one of those keys accepts it (threshold 1). Keys are plain PEM keys, as Singularity/Apptainer
load them with ``--key``: Ed25519 (pure), RSA (PKCS#1 v1.5 over SHA-256) and ECDSA (SHA-256,
DER or raw r‖s signatures). Key IDs are OpenSSH SHA-256 fingerprints, so ``ssh-keygen -l`` on
the same key prints the ID siffs shows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from siffs.integrity.errors import KeyMaterialError, SignatureNotValidError
from siffs.integrity.gojson import GoObject, loads

# cryptography is imported where a DSSE key is used, not with this module: verifying an
# OpenPGP-signed image (``siffs mount``) never needs it, and importing it costs ~40 ms.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

PAYLOAD_TYPE = "application/vnd.sylabs.sif-metadata+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a signature actually signs."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(key: PublicKey) -> str:
    """``SHA256:<unpadded base64>`` of the key's SSH wire encoding (``ssh-keygen -l`` format)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see TYPE_CHECKING

    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    wire = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode("ascii").rstrip("=")


def key_type(key: PublicKey) -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: PLC0415

    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return f"ECDSA {key.curve.name}"


class DsseKey(NamedTuple):
    """A public key that may verify DSSE signatures."""

    key: PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    @property
    def description(self) -> str:
        return key_type(self.key)

    def verifies(self, message: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - see TYPE_CHECKING
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa  # noqa: PLC0415

        key = self.key
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            else:
                key.verify(_ecdsa_der(key, signature), message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see TYPE_CHECKING

        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _ecdsa_der(key: ec.EllipticCurvePublicKey, signature: bytes) -> bytes:
    """ASN.1 DER as given or, when it does not parse as DER, converted from raw r‖s."""
    from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: PLC0415 - see TYPE_CHECKING
        decode_dss_signature,
        encode_dss_signature,
    )

    try:
        decode_dss_signature(signature)
        return signature
    except ValueError:
        size = (key.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            raise
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        return encode_dss_signature(r, s)


def load_public_pem(data: bytes, source: str) -> DsseKey:
    """A PEM public key (``PUBLIC KEY`` or ``RSA PUBLIC KEY``) of a supported type."""
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415 - see TYPE_CHECKING
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: PLC0415

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"{source}: not a usable PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise KeyMaterialError(f"{source}: unsupported key type (use an Ed25519, RSA or ECDSA key)")
    return DsseKey(key)


def load_private_pem(data: bytes, source: str, password: bytes | None = None) -> PrivateKey:
    """A PEM private key of a supported type (PKCS#8, PKCS#1 or SEC1)."""
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415 - see TYPE_CHECKING
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: PLC0415

    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:
        raise KeyMaterialError(f"{source}: the private key is encrypted: give its password") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"{source}: not a usable PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyMaterialError(f"{source}: unsupported key type (use an Ed25519, RSA or ECDSA key)")
    return key


def is_envelope(data: bytes) -> bool:
    """Does ``data`` start with a JSON object whose payloadType is the SIF metadata type?"""
    try:
        text = data.decode("utf-8")
        value, _ = json.JSONDecoder(object_pairs_hook=GoObject).raw_decode(text.lstrip(" \t\r\n"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(value, GoObject) and value.get("payloadType") == PAYLOAD_TYPE


class Verified(NamedTuple):
    """An envelope accepted by at least one key: its payload and the keys that accepted it."""

    payload: bytes
    keys: tuple[DsseKey, ...]


def verify(data: bytes, keys: Sequence[DsseKey]) -> Verified:
    """Check an envelope against ``keys`` (threshold 1); raises ``SignatureNotValidError``."""
    try:
        envelope = loads(data)
    except ValueError as exc:
        raise SignatureNotValidError(f"DSSE envelope is not valid JSON ({exc})") from None
    if not isinstance(envelope, GoObject):
        raise SignatureNotValidError("DSSE envelope is not a JSON object")
    payload_type = envelope.get("payloadType")
    entries = envelope.get("signatures")
    if not isinstance(entries, list) or not entries:
        raise SignatureNotValidError("DSSE envelope has no signatures")
    payload = _b64(envelope.get("payload"), "payload")
    signatures: list[tuple[str, bytes]] = []
    for entry in entries:
        if not isinstance(entry, GoObject):
            raise SignatureNotValidError("DSSE envelope signature entry is not a JSON object")
        keyid = entry.get("keyid")
        signatures.append((keyid if isinstance(keyid, str) else "", _b64(entry.get("sig"), "signature")))
    message = pae(payload_type if isinstance(payload_type, str) else "", payload)
    accepted: list[DsseKey] = []
    for keyid, signature in signatures:
        for key in keys:
            if key in accepted or (keyid and keyid != key.key_id):
                continue
            if key.verifies(message, signature):
                accepted.append(key)
                break
    if not accepted:
        ids = ", ".join(k for k, _ in signatures if k) or "no key IDs"
        raise SignatureNotValidError(f"no given key verifies the DSSE envelope (signed by {ids})")
    return Verified(payload, tuple(accepted))


def sign(payload: bytes, keys: Sequence[PrivateKey]) -> bytes:
    """An envelope over ``payload`` with one signature per key, as the reference encodes it."""
    message = pae(PAYLOAD_TYPE, payload)
    signatures = [{"keyid": key_id(k.public_key()), "sig": _b64encode(_sign(k, message))} for k in keys]
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": _b64encode(payload), "signatures": signatures}
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def _sign(key: PrivateKey, message: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 - see TYPE_CHECKING
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa  # noqa: PLC0415

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64(value: object, what: str) -> bytes:
    """Standard base64 with padding, else URL-safe with padding (as the reference decodes)."""
    if not isinstance(value, str):
        raise SignatureNotValidError(f"DSSE envelope {what} is not a base64 string")
    raw = value.encode("ascii", "replace").replace(b"\r", b"").replace(b"\n", b"")
    for candidate in (raw, raw.translate(_URLSAFE) if b"+" not in raw and b"/" not in raw else None):
        if candidate is None:
            continue
        try:
            return binascii.a2b_base64(candidate, strict_mode=True)
        except binascii.Error:
            continue
    raise SignatureNotValidError(f"DSSE envelope {what} is not valid base64")


_URLSAFE = bytes.maketrans(b"-_", b"+/")
