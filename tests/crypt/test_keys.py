"""The Cryptographic Message of PEM images: what Apptainer writes, read back; damage gives one clear error."""

from __future__ import annotations

import base64
import os

import pytest

from siffs.crypt.errors import CorruptEncryption, KeyProblem
from siffs.crypt.keys import (
    KeyMaterial,
    decrypt_message,
    encrypt_message,
    message_ciphertext,
    secret_from_message,
)
from tests.support.crypt import message_for


def test_message_written_like_apptainer_decrypts(rsa_pem):
    secret = os.urandom(64)
    assert decrypt_message(rsa_pem.read_bytes(), message_for(rsa_pem, secret)) == secret


def test_siffs_message_has_apptainers_shape(rsa_pem, tmp_path):
    import subprocess  # noqa: PLC0415

    public = tmp_path / "pub.pem"
    subprocess.run(
        ["openssl", "rsa", "-in", rsa_pem, "-RSAPublicKey_out", "-out", public],
        check=True,
        capture_output=True,
    )
    message = encrypt_message(public.read_bytes(), b"0123456789abcdef0123456789abcdef")
    lines = message.decode().splitlines()
    assert lines[0] == "-----BEGIN MESSAGE-----" and lines[-1] == "-----END MESSAGE-----"
    assert all(len(line) == 64 for line in lines[1:-2]) and len(message) == 400  # as observed from Apptainer
    assert base64.b64decode("".join(lines[1:-1]))[:4] == bytes.fromhex("04820100")
    assert decrypt_message(rsa_pem.read_bytes(), message) == b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "message",
    [
        b"no pem here",
        b"-----BEGIN MESSAGE-----\n!!!!\n-----END MESSAGE-----\n",
        b"-----BEGIN MESSAGE-----\n" + base64.b64encode(b"\x30\x03abc") + b"\n-----END MESSAGE-----\n",
        b"-----BEGIN MESSAGE-----\n" + base64.b64encode(b"\x04\x05abc") + b"\n-----END MESSAGE-----\n",
        b"-----BEGIN MESSAGE-----\n"
        + base64.b64encode(b"\x04\x89" + bytes(9))
        + b"\n-----END MESSAGE-----\n",
    ],
    ids=["no-pem", "bad-base64", "not-octet-string", "short", "length-of-length"],
)
def test_damaged_message(message):
    with pytest.raises(CorruptEncryption):
        message_ciphertext(message)


def test_key_choice_rules(rsa_pem):
    with pytest.raises(KeyProblem, match=r"^image is encrypted: give --passphrase or --pem-path$"):
        secret_from_message(KeyMaterial(), None)
    with pytest.raises(KeyProblem, match=r"^image was encrypted with a passphrase"):
        secret_from_message(KeyMaterial(pem=rsa_pem.read_bytes()), None)
    with pytest.raises(KeyProblem, match=r"^the --pem-path file is not an RSA private key"):
        decrypt_message(b"not a key", b"")
    assert "secret" not in repr(KeyMaterial(passphrase=b"secret"))
