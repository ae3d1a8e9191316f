"""Every reference image parses to what the reference says and prints what siftool prints.

Debian's upstream images are checked against the live Go oracle; the corpus' against expected.json.
"""

from __future__ import annotations

import hashlib

import pytest

from siffs.cli.main import main
from siffs.sif import Image, ObjectNotFoundError
from tests.support.reference import IMAGES, SIFTOOL_GOLDEN, expected, image_names
from tests.support.shared import CONFORMANCE


@pytest.mark.parametrize("name", image_names())
def test_header_fields(name):
    want = expected()["images"][name]["header"]
    with Image.open(IMAGES / name) as image:
        h = image.header
        assert h.launch_script_text == want["launch_script"]
        assert h.arch_name == want["arch"]
        assert (str(h.uuid) if h.uuid else None) == want["id"]
        assert h.created_at == want["created_at"]
        assert h.modified_at == want["modified_at"]
        for key in (
            "descriptors_free",
            "descriptors_total",
            "descriptors_offset",
            "descriptors_size",
            "data_offset",
            "data_size",
        ):
            assert getattr(h, key) == want[key], key
        assert len(image.descriptors) == want["descriptors_used"]


@pytest.mark.parametrize("name", image_names())
def test_descriptors(name):
    want = expected()["images"][name]
    with Image.open(IMAGES / name) as image:
        assert [d.id for d in image.descriptors] == [w["id"] for w in want["descriptors"]]
        for d, w in zip(image.descriptors, want["descriptors"], strict=True):
            assert d.slot == w["slot"]
            assert d.data_type == w["data_type"]
            assert d.group_id_raw == w["group_id_raw"]
            assert (d.group or None) == w["group_id"]
            assert d.linked_id_raw == w["linked_id_raw"]
            link = d.link
            assert (None if link is None else {"id": link.target, "is_group": link.is_group}) == w["linked"]
            assert (d.offset, d.size, d.size_with_padding) == (w["offset"], w["size"], w["size_with_padding"])
            assert (d.created_at, d.modified_at, d.uid, d.gid) == (
                w["created_at"],
                w["modified_at"],
                w["uid"],
                w["gid"],
            )
            assert d.name_text == w["name"]
            assert image.relative_id(d) == w["relative_id"]
            assert hashlib.sha256(image.read(d)).hexdigest() == w["data_sha256"]
            if "partition" in w:
                p = d.partition
                assert (p.fs_type, p.part_type, p.arch_name) == (
                    w["partition"]["fs_type"],
                    w["partition"]["part_type"],
                    w["partition"]["arch"],
                )
            if "signature" in w:
                s = d.signature
                assert (s.hash_type, s.fingerprint) == (
                    w["signature"]["hash_type"],
                    w["signature"]["fingerprint"],
                )
            if "oci" in w:
                assert d.oci_digest == w["oci"]["digest"]
        primary = want["primary_partition"]
        if primary is None:
            with pytest.raises(ObjectNotFoundError):
                image.primary_partition()
        else:
            assert image.primary_partition().id == primary
        assert image.groups() == want["groups"]


def run_cli(capsysbinary, *argv):
    code = main([str(a) for a in argv])
    out, err = capsysbinary.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", image_names())
def test_siftool_text(name, capsysbinary):
    want = expected()["images"][name]["siftool"]
    for command in ("header", "list"):
        code, out, err = run_cli(capsysbinary, command, IMAGES / name)
        assert (code, err) == (0, b"")
        assert out.decode() == want[command]
    for object_id, text in want["info"].items():
        code, out, _ = run_cli(capsysbinary, "info", object_id, IMAGES / name)
        assert code == 0
        assert out.decode() == text


def golden_cases():
    for name in image_names():
        for kind, rel in expected()["images"][name]["siftool"].get("golden_files", {}).items():
            yield pytest.param(name, kind, rel, id=f"{name}-{kind}")


@pytest.mark.parametrize(("name", "kind", "rel"), list(golden_cases()))
def test_upstream_golden_files(name, kind, rel, capsysbinary):
    """The upstream siftool golden files themselves, byte for byte."""
    command, *object_id = kind.split()
    code, out, _ = run_cli(capsysbinary, command, *object_id, IMAGES / name)
    assert code == 0
    assert out == (CONFORMANCE / rel).read_bytes()


@pytest.mark.parametrize(("golden", "object_id"), [("One", 1), ("Two", 2), ("Three", 3)])
def test_dump_goldens(golden, object_id, capsysbinary):
    code, out, _ = run_cli(capsysbinary, "dump", object_id, IMAGES / "debian/one-group-signed.sif")
    assert code == 0
    assert out == (SIFTOOL_GOLDEN / "TestApp_Dump" / f"{golden}.golden").read_bytes()


def test_unknown_object_id(capsysbinary):
    code, out, err = run_cli(capsysbinary, "info", 99, IMAGES / "one-group.sif")
    assert code == 5
    assert out == b""
    assert err.decode().count("\n") == 1
    assert "object 99 not found" in err.decode()
