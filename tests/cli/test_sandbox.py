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
from tests.support.images import mksquashfs
from tests.support.mounts import siffs
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
    result = siffs("sandbox", "--allow-unsigned", corpus.image(name), out)
    assert result.returncode == 0, result.stderr
    actual = comparable(snapshot(out))
    # trusted.* and security.* xattrs are root's to set, and root we are: all of them match.
    assert actual == expected
    again = tmp_path / "again"
    siffs("sandbox", "--allow-unsigned", corpus.image(name), again, check=True)
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
