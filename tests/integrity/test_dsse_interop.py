"""DSSE both ways with an independent implementation (securesystemslib), so no stored DSSE fixture
is needed: Debian's sif 2.8.3 predates DSSE and a clone has no corpus.

siffs' envelopes must verify with securesystemslib; envelopes securesystemslib makes over the
metadata the Go reference signed (Debian's two-groups-signed.sif) must verify with siffs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from siffs.cli.exitcodes import ExitCode
from siffs.cli.main import main
from siffs.sif import Image, ObjectInput, add, link_group
from siffs.sif.raw import signature_extra
from siffs.sif.types import DataType, HashType
from tests.support.reference import UPSTREAM_IMAGES, key_path, keys

PAYLOAD_TYPE = "application/vnd.sylabs.sif-metadata+json"
SCHEMES = {"ed25519": "ed25519", "rsa": "rsa-pkcs1v15-sha256", "ecdsa": "ecdsa-sha2-nistp256"}


def _public(name: str) -> SSlibKey:
    """The public key for securesystemslib, with the key ID ``ssh-keygen -l`` gives it."""
    key = serialization.load_pem_public_key(Path(key_path(name)).read_bytes())
    return SSlibKey.from_crypto(key, keyid=keys()[name]["dsse_keyid"], scheme=SCHEMES[name])  # type: ignore[arg-type]


def _signer(name: str) -> CryptoSigner:
    private = serialization.load_pem_private_key(Path(key_path(name, "private")).read_bytes(), None)
    return CryptoSigner(private, _public(name))  # type: ignore[arg-type]


def _reference_payloads() -> list[bytes]:
    """The metadata the Go reference signed for groups 1 and 2 (clear-signed, so readable)."""
    with Image.open(UPSTREAM_IMAGES / "two-groups-signed.sif") as image:
        texts = [image.read(d) for d in image.signatures()]
    return [t.split(b"\n\n", 1)[1].split(b"\n-----BEGIN PGP SIGNATURE-----")[0] for t in texts]


@pytest.fixture
def unsigned(tmp_path: Path) -> Path:
    path = tmp_path / "two-groups.sif"
    shutil.copyfile(UPSTREAM_IMAGES / "two-groups.sif", path)
    return path


def _envelopes(path: Path) -> list[Envelope]:
    with Image.open(path) as image:
        return [Envelope.from_dict(json.loads(image.read(d))) for d in image.signatures()]


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_independent_library_verifies_siffs_envelopes(unsigned, name, capsys):
    assert main(["sign", str(unsigned), "--key", key_path(name, "private")]) == 0
    capsys.readouterr()
    envelopes = _envelopes(unsigned)
    assert [e.payload for e in envelopes] == _reference_payloads()
    for envelope in envelopes:
        assert envelope.payload_type == PAYLOAD_TYPE
        assert list(envelope.verify([_public(name)], 1)) == [keys()[name]["dsse_keyid"]]
        envelope.payload = envelope.payload.replace(b"sha256", b"sha384")  # any change
        with pytest.raises(VerificationError):
            envelope.verify([_public(name)], 1)


def _add_envelope(path: Path, group: int, envelope: Envelope) -> None:
    data = json.dumps(envelope.to_dict()).encode()
    extra = signature_extra(HashType.SHA256, bytes(20))
    add(path, ObjectInput(DataType.SIGNATURE, data, group=0, link=link_group(group), extra=extra))


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_siffs_verifies_envelopes_of_the_independent_library(unsigned, name, capsys):
    for group, payload in enumerate(_reference_payloads(), start=1):
        envelope = Envelope(payload, PAYLOAD_TYPE, {})
        envelope.sign(_signer(name))
        _add_envelope(unsigned, group, envelope)
    assert main(["verify", str(unsigned), "--key", key_path(name), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["verified_objects"] == [1, 2, 3]
    other = "ecdsa" if name != "ecdsa" else "ed25519"
    assert main(["verify", str(unsigned), "--key", key_path(other)]) == ExitCode.NOT_TRUSTED
    capsys.readouterr()


def test_siffs_refuses_a_forged_envelope(unsigned, capsys):
    """Signed over one group's metadata, presented for the other: the signature holds, the match does not."""
    payloads = _reference_payloads()
    envelope = Envelope(payloads[0], PAYLOAD_TYPE, {})
    envelope.sign(_signer("ed25519"))
    _add_envelope(unsigned, 2, envelope)
    assert (
        main(["verify", str(unsigned), "--key", key_path("ed25519"), "--group", "2"]) == ExitCode.NOT_TRUSTED
    )
    assert "signature" in capsys.readouterr().err
