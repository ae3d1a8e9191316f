"""``siffs sandbox``: the tree extracted as the kernel shows it, deterministically, never outside."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from siffs.squashfs import SquashFS
from siffs.squashfs.errors import CorruptImage
from siffs.squashfs.extract import _join
from siffs.squashfs.source import FileSource
from tests.support.images import mksquashfs, wrap_sif
from tests.support.mounts import siffs
from tests.support.signing import SigningKey
from tests.support.trees import snapshot
from tests.support.users import TEST_USER, ensure_user, user_dir


def comparable(tree: dict, *, owners: bool = True) -> dict:
    """What a directory on an ordinary filesystem can reproduce of a SquashFS tree."""
    out = {}
    for path, facts in tree["entries"].items():
        kept = {k: v for k, v in facts.items() if k not in ("blocks", "blksize")}
        if stat.S_ISDIR(facts["mode"]):
            # A directory's size and link count are the filesystem's own business (gensquashfs
            # even counts every entry in nlink).
            kept.pop("size"), kept.pop("nlink")
        if not owners:
            kept.pop("uid"), kept.pop("gid")
        if isinstance(kept["xattrs"], str):  # EOPNOTSUPP on an image without xattrs
            kept["xattrs"] = {}
        out[path] = kept
    return {"entries": out, "hard_links": tree["hard_links"]}


@pytest.mark.parametrize("name", ["mk-gzip", "gen-zstd"])
def test_sandbox_as_root_equals_the_kernel_mount(name, corpus, kernel, tmp_path):
    with kernel(name) as k:
        expected = comparable(snapshot(k))
    out = tmp_path / "out"
    result = siffs("sandbox", "--allow-unsigned", "--keep-privileged", corpus.image(name), out)
    assert result.returncode == 0, result.stderr
    actual = comparable(snapshot(out))
    # trusted.* and security.* xattrs are root's to set, and root we are: all of them match.
    assert actual == expected
    again = tmp_path / "again"
    siffs("sandbox", "--allow-unsigned", "--keep-privileged", corpus.image(name), again, check=True)
    assert comparable(snapshot(again)) == actual  # the same image gives the same tree


def test_sandbox_as_a_user_skips_what_needs_root(image, tmp_path):
    ensure_user()
    out = Path(user_dir(tmp_path, "user-out")) / "tree"
    result = siffs("sandbox", "--allow-unsigned", image, out, user=TEST_USER)
    assert result.returncode == 0, result.stderr
    assert "device nodes not recreated" in result.stderr
    assert (out / "data/big.bin").read_bytes()[:10] and os.path.samefile(
        out / "data/one", out / "data/one-hardlink"
    )
    assert os.readlink(out / "singularity") == ".singularity.d/runscript"
    assert os.getxattr(out / "data/attrs", "user.comment") == b"hello"
    assert stat.S_ISFIFO(os.lstat(out / "run/fifo").st_mode)


def test_hostile_duplicate_name_never_writes_outside(tmp_path):
    src, victim = tmp_path / "src", tmp_path / "victim"
    (src / "zzqq2").mkdir(parents=True)
    victim.mkdir()
    (src / "zzqq1").symlink_to(victim)
    (src / "zzqq2" / "f").write_text("pwned")
    image = mksquashfs(src, tmp_path / "h.sqfs", "-noI")
    data = image.read_bytes()
    assert data.count(b"zzqq2") == 1
    bad = tmp_path / "bad.sqfs"
    bad.write_bytes(data.replace(b"zzqq2", b"zzqq1"))  # now a symlink and a directory share a name
    out = tmp_path / "out"
    result = siffs("sandbox", "--allow-unsigned", bad, out)
    assert result.returncode == 9
    assert "twice" in result.stderr and result.stderr.count("\n") == 1
    assert list(victim.iterdir()) == []
    assert list(out.iterdir()) == []  # what was made before the refusal is removed again


def test_directory_loop_is_refused(tmp_path):
    """/a/b made to point back at /a: extracting would never end, or fill the disk."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_text("x")
    image = mksquashfs(src, tmp_path / "loop.sqfs", "-noI", "-noD", "-noF", "-noX")
    data = bytearray(image.read_bytes())
    with SquashFS(FileSource.open(image)) as fs:
        a = fs.inode(fs.lookup(fs.root_ino, b"a").ino)
        assert a.dir is not None
        # a's listing: header (count - 1, inode block, inode number base), then its one entry "b"
        # (inode offset, inode number delta, type, name size - 1, name); metadata is uncompressed.
        listing = fs.superblock.directory_table + a.dir.block + 2 + a.dir.offset
        base = struct.unpack_from("<I", data, listing + 8)[0]
        assert data[listing + 20 : listing + 21] == b"b"
    struct.pack_into("<I", data, listing + 4, a.ref >> 16)
    struct.pack_into("<Hh", data, listing + 12, a.ref & 0xFFFF, a.stat.ino - base)
    bad = tmp_path / "bad.sqfs"
    bad.write_bytes(data)
    out = tmp_path / "out"
    result = siffs("sandbox", "--allow-unsigned", bad, out)
    assert result.returncode == 9
    assert result.stderr.endswith("directory loop at a/b: refusing\n") and result.stderr.count("\n") == 1
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", [b"..", b".", b"a/b", b"", b"x\0y"])
def test_names_that_are_not_one_component_are_refused(name):
    with pytest.raises(CorruptImage):
        _join(b"dir", name)


def test_target_must_be_empty_and_trust_applies(image, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    result = siffs("sandbox", "--allow-unsigned", image, full)
    assert result.returncode == 3 and "not empty" in result.stderr
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    refused = siffs("sandbox", image, tmp_path / "new", env=env)
    assert refused.returncode == 7 and "--allow-unsigned" in refused.stderr
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


@pytest.fixture
def privileged_image(tmp_path):
    """A SIF holding a setuid-root shell, a setgid file, a setgid directory and two device nodes."""
    tree = tmp_path / "priv-tree"
    tree.mkdir()
    for name, mode in (("suid-sh", 0o4755), ("sgid-tool", 0o2711), ("plain", 0o755)):
        (tree / name).write_bytes(b"#!/bin/sh\n")
        os.chmod(tree / name, mode)
    (tree / "shared").mkdir()
    os.chmod(tree / "shared", 0o2775)
    pseudo = ["-p", "disk b 660 0 6 8 0", "-p", "mem c 640 0 15 1 1"]
    squash = mksquashfs(tree, tmp_path / "priv.squashfs", "-all-root", *pseudo)
    return wrap_sif(squash, tmp_path / "priv.sif")


def _modes(out: Path) -> dict[str, int]:
    return {p.name: os.lstat(p).st_mode for p in out.iterdir()}


def test_unverified_image_loses_setuid_bits_and_devices_unless_asked(privileged_image, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the danger is root recreating them")
    out = tmp_path / "out"
    result = siffs("sandbox", "--allow-unsigned", privileged_image, out)
    assert result.returncode == 0, result.stderr
    modes = _modes(out)
    assert stat.S_IMODE(modes["suid-sh"]) == 0o755 and stat.S_IMODE(modes["sgid-tool"]) == 0o711
    assert stat.S_IMODE(modes["plain"]) == 0o755
    assert stat.S_IMODE(modes["shared"]) == 0o2775  # a setgid directory grants nothing
    assert "disk" not in modes and "mem" not in modes
    lines = [ln for ln in result.stderr.splitlines() if "left out" in ln]
    assert lines == [
        "siffs: warning: unverified image: left out 2 device nodes and 2 setuid/setgid files "
        "(--keep-privileged keeps them)"
    ]
    kept = tmp_path / "kept"
    result = siffs("sandbox", "--allow-unsigned", "--keep-privileged", privileged_image, kept)
    assert result.returncode == 0 and "left out" not in result.stderr
    modes = _modes(kept)
    assert stat.S_IMODE(modes["suid-sh"]) == 0o4755 and stat.S_IMODE(modes["sgid-tool"]) == 0o2711
    assert stat.S_ISBLK(modes["disk"]) and os.lstat(kept / "disk").st_rdev == os.makedev(8, 0)
    assert stat.S_ISCHR(modes["mem"]) and os.lstat(kept / "mem").st_rdev == os.makedev(1, 1)


def test_image_verified_by_a_trusted_key_is_extracted_exactly(privileged_image, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("device nodes need root")
    key = SigningKey.make(tmp_path / "key")
    siffs("sign", privileged_image, "--key", key.private, check=True)
    out = tmp_path / "out"
    result = siffs("sandbox", "--key", key.public, privileged_image, out)
    assert result.returncode == 0, result.stderr
    assert "left out" not in result.stderr
    modes = _modes(out)
    assert stat.S_IMODE(modes["suid-sh"]) == 0o4755 and stat.S_IMODE(modes["sgid-tool"]) == 0o2711
    assert stat.S_ISBLK(modes["disk"]) and stat.S_ISCHR(modes["mem"])
