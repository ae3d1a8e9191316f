"""The reference's own integrity goldens (pkg/integrity/testdata): digests, metadata, DSSE.

Debian's sif 2.8.3 ships all but the DSSE envelopes, which come from a newer upstream (corpus only).
"""

from __future__ import annotations

import json

import pytest

from siffs.integrity import dsse
from siffs.integrity.digest import ALGORITHMS, Digest
from siffs.integrity.errors import SignatureNotValidError
from siffs.integrity.keys import load_files, public_dsse_key
from siffs.integrity.metadata import ImageMetadata, ObjectEntry, build
from siffs.sif import Image
from tests.integrity.conftest import key_path
from tests.support import shared
from tests.support.reference import INTEGRITY_GOLDEN, UPSTREAM_IMAGES, expected

SOURCES = INTEGRITY_GOLDEN / "sources"
ALG_NAMES = {"SHA224": "sha224", "SHA256": "sha256", "SHA384": "sha384", "SHA512": "sha512"}
ALL_NAMES = ALG_NAMES | {"SHA512_224": "sha512_224", "SHA512_256": "sha512_256"}


def _golden(*parts: str) -> bytes:
    """A golden file's content (Go's test harness writes a final newline after the JSON)."""
    return INTEGRITY_GOLDEN.joinpath(*parts).read_bytes().removesuffix(b"\n")


def _dsse_golden(name: str) -> bytes:
    golden = f"sylabs-sif/integrity-testdata/Test_dsseEncoder_signMessage/{name}.golden"
    return shared.require(golden).read_bytes()


def _compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize("name", sorted(ALL_NAMES))
def test_digest_json_round_trips(name):
    golden = _golden("TestDigest_MarshalJSON", f"{name}.golden")
    digest = Digest.parse(json.loads(golden))
    assert digest.algorithm == ALL_NAMES[name]
    assert len(digest.value) == ALGORITHMS[digest.algorithm][1]
    assert _compact(str(digest)) == golden


@pytest.mark.parametrize("name", sorted(ALL_NAMES))
def test_header_metadata(name):
    header = (SOURCES / "header.bin").read_bytes()
    golden = _golden("TestGetHeaderMetadata", f"{name}.golden")
    assert _compact({"digest": str(Digest.of(ALL_NAMES[name], header))}) == golden


@pytest.mark.parametrize(
    ("name", "source", "rid"),
    [(n, "descr-rid0.bin", 0) for n in ALL_NAMES] + [("RelativeID", "descr-rid1.bin", 1)],
)
def test_object_metadata(name, source, rid):
    algorithm = ALL_NAMES.get(name, "sha256")
    descriptor = (SOURCES / source).read_bytes()
    entry = ObjectEntry(rid, Digest.of(algorithm, descriptor), Digest.of(algorithm, b"blah"))
    assert _compact(entry.to_dict()) == _golden("TestGetObjectMetadata", f"{name}.golden")


@pytest.mark.parametrize(
    ("name", "ids", "algorithm"),
    [("Object1", [1], "sha256"), ("Object2", [2], "sha256")] + [(n, [1, 2], a) for n, a in ALG_NAMES.items()],
)
def test_image_metadata(name, ids, algorithm):
    with Image.open(UPSTREAM_IMAGES / "one-group.sif") as image:
        members = [image.get(i) for i in ids]
        digests = [Digest.of(algorithm, image.read(d)) for d in members]
        md = build(image, members, digests, algorithm)
    golden = _golden("TestGetImageMetadata", f"{name}.golden")
    assert md.to_json() == golden
    assert ImageMetadata.parse(golden) == md


def _dsse_key(name):
    [f] = load_files([key_path(name)])
    return public_dsse_key(f)


@pytest.mark.parametrize(("golden", "key"), [("ED25519", "ed25519"), ("RSA_SHA256", "rsa"), ("Multi", "rsa")])
def test_dsse_golden_envelopes_verify(golden, key):
    data = _dsse_golden(golden).removesuffix(b"\n")
    assert dsse.is_envelope(data)
    result = dsse.verify(data, [_dsse_key(key)])
    assert result.payload == b'{"One":1,"Two":2}\n'
    assert [k.key_id for k in result.keys] == [expected_keyid(key)]


def expected_keyid(name):

    return expected()["keys"][name]["dsse_keyid"]


@pytest.mark.parametrize("golden", ["RSA_SHA384", "RSA_SHA512"])
def test_dsse_other_hash_envelopes_do_not_verify_with_sha256(golden):
    data = _dsse_golden(golden).removesuffix(b"\n")
    with pytest.raises(SignatureNotValidError):
        dsse.verify(data, [_dsse_key("rsa")])


@pytest.mark.parametrize("name", ["ed25519", "rsa", "ecdsa"])
def test_dsse_key_ids(name):
    assert _dsse_key(name).key_id == expected_keyid(name)
