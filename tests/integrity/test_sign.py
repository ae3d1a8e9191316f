"""Signing: byte-identical metadata, DSSE envelopes like the corpus, and the Go reference's verdict."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from siffs.cli.main import main
from siffs.integrity import dsse
from siffs.integrity.keys import key_material, load_files, private_pem
from siffs.integrity.sign import DsseSigningKey, PgpSigningKey, sign
from siffs.integrity.verify import verify
from siffs.sif import Image
from tests.integrity.conftest import key_path
from tests.support import shared
from tests.support.reference import IMAGES, UPSTREAM_IMAGES, expected, verdict


def _reference_metadata(index: int) -> str:
    """The metadata the reference library signed for group ``index + 1`` of two-groups.sif."""
    with Image.open(UPSTREAM_IMAGES / "two-groups-signed.sif") as image:
        data = image.read(image.signatures()[index])
    text = data.split(b"\n\n", 1)[1].split(b"\n-----BEGIN PGP SIGNATURE-----")[0].decode()
    if shared.available():  # the newer upstream of the corpus signs the same metadata
        for name in ("two-groups-signed-pgp.sif", "two-groups-signed-dsse.sif"):
            assert shared.expected()["images"][name]["signatures"][index]["metadata_json"] == text
    return text


def _signature_objects(path):
    with Image.open(path) as image:
        return [image.read(d) for d in image.signatures()]


@pytest.fixture
def unsigned(tmp_path):
    path = tmp_path / "image.sif"
    shutil.copyfile(IMAGES / "two-groups.sif", path)
    return path


def _pgp_key() -> PgpSigningKey:
    path = key_path("pgp")
    return PgpSigningKey(open(path, "rb").read(), path)


def test_pgp_signature_matches_the_reference_and_verifies(unsigned, keysets):
    done = sign(str(unsigned), _pgp_key())
    assert [(s.group, s.objects) for s in done] == [(1, (1, 2)), (2, (3,))]
    with Image.open(unsigned) as image:
        sigs = image.signatures()
        assert [s.signature.fingerprint for s in sigs] == [
            expected()["keys"]["pgp"]["primary_fingerprint"]
        ] * 2
        assert [s.link.target for s in sigs] == [1, 2]
        assert all(s.group == 0 and s.signature.hash_type == 1 for s in sigs)
        report = verify(image, keysets["pgp-public"]).check()
    assert report.verified_objects == {1, 2, 3}
    for i, data in enumerate(_signature_objects(unsigned)):
        text = data.split(b"\n\n", 1)[1].split(b"\n-----BEGIN PGP SIGNATURE-----")[0]
        assert text == _reference_metadata(i).encode()


def test_go_reference_accepts_siffs_pgp_signatures(unsigned):
    sign(str(unsigned), _pgp_key())
    ok = verdict(unsigned, "pgp-public", "default", [], [])
    fingerprint = expected()["keys"]["pgp"]["primary_fingerprint"]
    assert ok["ok"], ok
    assert ok["signatures"] == [
        {"sig": 4, "verified": [1, 2], "signer_fingerprint": fingerprint},
        {"sig": 5, "verified": [3], "signer_fingerprint": fingerprint},
    ]
    wrong = verdict(unsigned, "pgp-unrelated", "default", [], [])
    assert not wrong["ok"] and wrong["error"] == "SignatureNotValid"


def test_dsse_envelope_is_byte_identical_to_the_corpus(unsigned):
    keys = tuple(private_pem(f) for f in load_files([key_path(k, "private") for k in ("ed25519", "rsa")]))
    sign(str(unsigned), DsseSigningKey(keys))
    # Ed25519 and RSA PKCS#1 v1.5 are deterministic: the whole object must equal the reference's.
    assert _signature_objects(unsigned) == _signature_objects(IMAGES / "two-groups-signed-dsse.sif")


def test_cli_sign_dsse_ecdsa_round_trips(unsigned, capsys):
    assert main(["sign", str(unsigned), "--key", key_path("ecdsa", "private"), "--group", "2"]) == 0
    [data] = _signature_objects(unsigned)
    envelope = json.loads(data)
    assert list(envelope) == ["payloadType", "payload", "signatures"]
    assert envelope["payloadType"] == dsse.PAYLOAD_TYPE
    assert [s["keyid"] for s in envelope["signatures"]] == [expected()["keys"]["ecdsa"]["dsse_keyid"]]
    payload = base64.b64decode(envelope["payload"])
    assert payload.decode() == _reference_metadata(1)
    assert main(["verify", str(unsigned), "--key", key_path("ecdsa"), "--group", "2"]) == 0
    assert main(["verify", str(unsigned), "--key", key_path("ed25519"), "--group", "2"]) == 7
    assert main(["verify", str(unsigned), "--key", key_path("ecdsa")]) == 7  # group 1 is unsigned
    capsys.readouterr()


def test_ecdsa_raw_signature_is_accepted(unsigned):
    [f] = load_files([key_path("ecdsa", "private")])
    key = private_pem(f)
    sign(str(unsigned), DsseSigningKey((key,)), groups=[1])
    [data] = _signature_objects(unsigned)
    envelope = json.loads(data)
    r, s = decode_dss_signature(base64.b64decode(envelope["signatures"][0]["sig"]))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    envelope["signatures"][0]["sig"] = base64.b64encode(raw).decode()
    verified = dsse.verify(json.dumps(envelope).encode(), key_material(load_files([key_path("ecdsa")])).dsse)
    assert verified.payload == base64.b64decode(envelope["payload"])
