"""The writer reproduces the reference's bytes, and the reference library loads what it writes."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from siffs.cli.main import main
from siffs.sif import Image, ObjectInput, SifUsageError, add, create, delete, link_group, set_primary
from siffs.sif.raw import partition_extra, sbom_extra
from siffs.sif.types import UNSET_TIME, DataType, FsType, PartType
from tests.support import shared
from tests.support.images import build_rootfs, mksquashfs
from tests.support.reference import IMAGES, UPSTREAM_INPUT, read_now

INPUT = UPSTREAM_INPUT
DETERMINISTIC = {"launch_script": b"", "image_id": uuid.UUID(int=0), "when": UNSET_TIME}


def _partition(data, fs, part, arch, group=1):
    return ObjectInput(DataType.PARTITION, data, group=group, extra=partition_extra(fs, part, arch))


def corpus_objects(name):
    raw = _partition(b"\xfa\xce\xfe\xed", FsType.RAW, PartType.SYSTEM, b"01")
    squash = _partition((INPUT / "root.squashfs").read_bytes(), FsType.SQUASHFS, PartType.PRIMSYS, b"01")
    ext3 = _partition((INPUT / "root.ext3").read_bytes(), FsType.EXT3, PartType.SYSTEM, b"02", group=2)
    sbom = ObjectInput(DataType.SBOM, (INPUT / "sbom.cdx.json").read_bytes(), extra=sbom_extra(1))
    return {
        "one-group.sif": [raw, squash],
        "two-groups.sif": [raw, squash, ext3],
        "one-object-sbom.sif": [sbom],
        "empty.sif": [],
    }[name]


@pytest.mark.parametrize("source", ["debian", "corpus"])
@pytest.mark.parametrize("name", ["empty.sif", "one-group.sif", "two-groups.sif", "one-object-sbom.sif"])
def test_writer_reproduces_reference_bytes(tmp_path, name, source):
    """Debian's sif 2.8.3 images and the corpus' newer upstream ones (both built from the same inputs)."""
    if source == "corpus":
        shared.require(f"sylabs-sif/images/{name}")
    out = tmp_path / name
    create(out, corpus_objects(name), **DETERMINISTIC)
    assert out.read_bytes() == (IMAGES / (f"debian/{name}" if source == "debian" else name)).read_bytes()


@pytest.fixture(scope="module")
def rootfs_squashfs(tmp_path_factory):
    work = tmp_path_factory.mktemp("rootfs")
    return mksquashfs(build_rootfs(work / "tree"), work / "root.squashfs", "-all-root")


def assert_reference_agrees(path):
    ref = read_now(path)
    with Image.open(path) as image:
        h = image.header
        assert ref["id"] == str(h.uuid or uuid.UUID(int=0))
        assert ref["arch"] == h.arch_name
        assert (ref["descriptors_free"], ref["descriptors_total"]) == (
            h.descriptors_free,
            h.descriptors_total,
        )
        assert (ref["data_offset"], ref["data_size"]) == (h.data_offset, h.data_size)
        primary = [d.id for d in image.descriptors if d.is_primary_partition]
        assert ref["primary_partition"] == (primary[0] if primary else 0)
        assert len(ref["descriptors"]) == len(image.descriptors)
        for o, d in zip(ref["descriptors"], image.descriptors, strict=True):
            link = d.link
            assert (o["id"], o["data_type"], o["group_id"]) == (d.id, d.data_type, d.group)
            assert (o["link"], o["link_is_group"]) == ((link.target, link.is_group) if link else (0, False))
            assert (o["offset"], o["size"], o["name"]) == (d.offset, d.size, d.name_text)
            assert o["data_sha256"] == hashlib.sha256(image.read(d)).hexdigest()
            if (part := d.partition) is not None:
                assert o["arch"] == part.arch_name
    return ref


def test_create_command_output_loads_in_reference(tmp_path, rootfs_squashfs, capsys):
    (tmp_path / "labels.json").write_text('{"a": "b"}')
    (tmp_path / "def").write_text("Bootstrap: scratch\n")
    (tmp_path / "env.sh").write_text("export A=1\n")
    (tmp_path / "data.img").write_bytes(b"x" * 5000)
    out = tmp_path / "image.sif"
    assert (
        main(
            [
                "create",
                str(out),
                str(rootfs_squashfs),
                "--deffile",
                str(tmp_path / "def"),
                "--labels",
                str(tmp_path / "labels.json"),
                "--env",
                str(tmp_path / "env.sh"),
                "--data",
                str(tmp_path / "data.img"),
                "--arch",
                "amd64",
            ]
        )
        == 0
    )
    ref = assert_reference_agrees(out)
    kinds = [(o["data_type"], o.get("fs_type"), o.get("part_type")) for o in ref["descriptors"]]
    assert kinds == [
        (0x4001, None, None),
        (0x4003, None, None),
        (0x4002, None, None),
        (0x4004, FsType.SQUASHFS, PartType.PRIMSYS),
        (0x4004, FsType.RAW, PartType.DATA),
    ]
    assert ref["arch"] == "amd64"
    with Image.open(out) as image:
        part = image.primary_partition()
        assert part.offset % 4096 == 0
        assert image.read(part) == rootfs_squashfs.read_bytes()


def test_edits_load_in_reference(tmp_path, rootfs_squashfs):
    out = tmp_path / "edit.sif"
    create(out, [_partition(rootfs_squashfs.read_bytes(), FsType.SQUASHFS, PartType.SYSTEM, b"02")])
    # An object with a group link and a name, like a signature made by the reference.
    sig = add(out, ObjectInput(DataType.GENERIC, b"payload", group=0, link=link_group(1), name=b"note"))
    assert (sig.id, sig.group, sig.link.target, sig.link.is_group) == (2, 0, 1, True)
    second = add(out, _partition(b"y" * 100, FsType.RAW, PartType.SYSTEM, b"02", group=2))
    assert second.offset % 4096 == 0
    set_primary(out, 1)
    assert read_now(out)["primary_partition"] == 1
    set_primary(out, 3)  # moves the primary role, demoting object 1 to System
    ref = assert_reference_agrees(out)
    assert ref["primary_partition"] == 3
    assert [o.get("part_type") for o in ref["descriptors"]] == [PartType.SYSTEM, None, PartType.PRIMSYS]
    delete(out, 2)
    ref = assert_reference_agrees(out)
    assert [o["id"] for o in ref["descriptors"]] == [1, 3]
    assert ref["descriptors_free"] == 46
    # The freed slot is reused first, as the reference does.
    again = add(out, ObjectInput(DataType.GENERIC_JSON, b"{}"))
    assert (again.slot, again.id) == (1, 2)
    assert_reference_agrees(out)


def test_delete_primary_resets_arch_and_compacts(tmp_path):
    out = tmp_path / "d.sif"
    create(out, [_partition(b"z" * 10, FsType.SQUASHFS, PartType.PRIMSYS, b"04")])
    size_before = out.stat().st_size
    delete(out, 1, compact=True)
    with Image.open(out) as image:
        assert image.header.arch_name == "unknown"
        assert image.descriptors == ()
        assert image.header.data_size == 0
    assert out.stat().st_size < size_before


def test_refusals(tmp_path):
    out = tmp_path / "r.sif"
    create(out, [_partition(b"a", FsType.SQUASHFS, PartType.PRIMSYS, b"02")], capacity=2)
    with pytest.raises(SifUsageError, match="primary partition"):
        add(out, _partition(b"b", FsType.SQUASHFS, PartType.PRIMSYS, b"02"))
    add(out, ObjectInput(DataType.GENERIC, b"c"))
    with pytest.raises(SifUsageError, match="no free descriptor slot"):
        add(out, ObjectInput(DataType.GENERIC, b"d"))
    with pytest.raises(SifUsageError, match="not a partition"):
        set_primary(out, 2)


def test_siftool_add_flags(tmp_path, capsys):
    out = tmp_path / "a.sif"
    payload = tmp_path / "sig.bin"
    payload.write_bytes(b"sig")
    assert main(["new", str(out)]) == 0
    assert (
        main(
            [
                "add",
                str(out),
                str(payload),
                "--datatype",
                "5",
                "--signhash",
                "2",
                "--signentity",
                "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84",
                "--link",
                "7",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "add",
                str(out),
                str(payload),
                "--datatype",
                "4",
                "--parttype",
                "2",
                "--partfs",
                "1",
                "--partarch",
                "2",
                "--groupid",
                "3",
                "--filename",
                "rootfs",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["list", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()[3:]
    assert lines[0].startswith("1    |NONE    |7       |")
    assert lines[0].endswith("|Signature (SHA-384)")
    assert lines[1].startswith("2    |3       |NONE    |")
    assert lines[1].endswith("|FS (Squashfs/*System/amd64)")
    assert main(["add", str(out), str(payload), "--datatype", "4"]) == 2
    assert "partfs" in capsys.readouterr().err
