"""The mount benchmark's own harness (bench/) on a tiny image, so that it cannot rot unnoticed.

The image is built with bench/mkimages.py's functions, wrapped by siffs' SIF writer, mounted
with a real `siffs mount`, and bench/workloads.py runs warm-only with a short limit against it:
every line must come out, and what each workload counted must match the staging tree.
"""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mounts import siffs_mount

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import mkimages  # noqa: E402 - bench/ is not a package
import run  # noqa: E402

MiB = 1 << 20


def tree_facts(root: Path) -> dict[str, int]:
    """What the workloads should find, counted on the staging tree itself."""
    facts = {"entries": 0, "bytes": 0, "files": 0, "links": 0, "xattrs": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            facts["entries"] += 1
            facts["links"] += stat.S_ISLNK(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                facts["files"] += 1
                facts["bytes"] += st.st_size
            if not stat.S_ISLNK(st.st_mode):
                facts["xattrs"] += len(os.listxattr(path, follow_symlinks=False))
    return facts


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """One tiny image holding both a small rootfs tree and a 4 MiB /big.bin."""
    work = tmp_path_factory.mktemp("bench")
    tree = mkimages.Tree(work / "tree")
    tree.root.mkdir()
    tree.copy_bulk("/usr/include", max_files=150, max_bytes=4 * MiB)
    tree.copy("/usr/bin/sh")  # a symlink (to dash), and its target
    mkimages.add_system_layout(tree)
    assert mkimages.add_xattrs(tree.root) > 0
    segments = mkimages.build_bigfile(tree.root / "big.bin", 4 * MiB, mkimages.bigfile_material())
    assert sum(v for k, v in segments.items() if k.startswith("segments_")) == 4
    sifs = []
    for n in (1, 2):  # built twice: the same inputs must give the same bytes
        squashfs, sif = work / f"{n}.squashfs", work / f"{n}.sif"
        mkimages.squash(tree.root, squashfs, "gzip")
        mkimages.wrap(squashfs, sif, "test-image")
        sifs.append(sif)
    assert hashlib.sha256(sifs[0].read_bytes()).digest() == hashlib.sha256(sifs[1].read_bytes()).digest()
    assert mkimages.rootfs_offset(sifs[0]) % 4096 == 0
    return sifs[0], tree_facts(tree.root)


def workloads(mnt: Path, kind: str) -> dict[str, dict]:
    done = subprocess.run(
        [sys.executable, str(BENCH / "workloads.py"), "--mnt", str(mnt), "--kind", kind, "--warm-only",
         "--limit", "5", "--label", "siffs", "--skip", "container_start"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(line["mode"] == "warm" and line["label"] == "siffs" for line in lines)
    return {line["workload"]: line for line in lines}


def test_workloads_count_what_the_tree_holds(image, tmp_path):
    sif, facts = image
    with siffs_mount(sif, tmp_path / "mnt") as mnt:
        rootfs = workloads(mnt, "rootfs")
        bigfile = workloads(mnt, "bigfile")
    assert sorted(rootfs) == ["readall", "readall_par4", "readlink", "walk", "xattr"]
    assert sorted(bigfile) == ["randread", "seqread", "seqread_par4"]
    for line in [*rootfs.values(), *bigfile.values()]:
        assert line["value"] > 0 and not line.get("truncated"), line
        assert line["daemon_rss_peak_kib"] > 0 and line["daemon_threads"] >= 1, line  # the siffs daemon
    assert rootfs["walk"]["count"] == facts["entries"]
    for name in ("readall", "readall_par4"):
        assert rootfs[name]["bytes"] == facts["bytes"] and rootfs[name]["count"] == facts["files"]
        assert rootfs[name]["errors"] == 0
    assert rootfs["readlink"]["count"] == facts["links"] > 0
    assert rootfs["xattr"]["xattrs"] == facts["xattrs"] > 0
    assert bigfile["seqread"]["bytes"] == bigfile["seqread_par4"]["bytes"] == 4 * MiB
    rand = bigfile["randread"]
    assert rand["count"] == 2000 and rand["p99_us"] >= rand["p50_us"]


def test_table_has_medians_and_ratios_to_both_references():
    lines = [
        {"peer": p, "workload": "seqread", "mode": "cold", "unit": "MB/s", "value": v}
        for p, v in (("kernel", 100), ("squashfuse_ll", 50), ("siffs", 40), ("siffs", 60), ("siffs", 50))
    ] + [{"peer": "siffs", "workload": "mount", "mode": "cold", "unit": "s", "value": 0.2},
         {"peer": "kernel", "workload": "mount", "mode": "cold", "unit": "s", "value": 0.1}]
    text = run.table(Path("bigfile-gzip.sif"), ["kernel", "squashfuse_ll", "siffs"], lines, [])
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| workload | mode | unit | kernel | squashfuse_ll | siffs | squashfuse_ll/kernel "
                       "| siffs/kernel | siffs/squashfuse_ll |")
    # time: lower is better
    assert rows[1] == "| mount | cold | s | 100 ms | - | 200 ms | - | 0.50 | - |"
    # siffs: the median of 40, 60, 50
    assert rows[2] == "| seqread | cold | MB/s | 100 | 50 | 50 | 0.50 | 0.50 | 1.00 |"


def test_extra_peer_syntax():
    peer = run.parse_peer("other=sqfs -o offset={offset} {sif} {mnt}::fusermount3 -u {mnt}")
    assert (peer.name, peer.mount, peer.umount) == ("other", "sqfs -o offset={offset} {sif} {mnt}",
                                                    "fusermount3 -u {mnt}")
    with pytest.raises(Exception, match="NAME=MOUNT_CMD::UMOUNT_CMD"):
        run.parse_peer("other=sqfs {sif} {mnt}")


def test_the_floor_mount_serves_what_the_tree_holds(image, tmp_path):
    """bench/floor_mount.py (the reader-free floor) must answer as siffs does, or its figures lie."""
    sif, facts = image
    mnt = tmp_path / "floor"
    mnt.mkdir()
    floor = [sys.executable, str(BENCH / "floor_mount.py"), str(sif), str(mnt)]
    subprocess.run(floor, check=True, timeout=120)
    try:
        rootfs = workloads(mnt, "rootfs")
        with siffs_mount(sif, tmp_path / "mnt") as reference:
            for dirpath, dirnames, filenames in os.walk(reference):
                for name in dirnames + filenames:
                    path = Path(dirpath, name)
                    there = mnt / path.relative_to(reference)
                    a, b = os.lstat(path), os.lstat(there)
                    assert (a.st_mode, a.st_size, a.st_mtime_ns, a.st_ino, a.st_nlink) == (
                        b.st_mode, b.st_size, b.st_mtime_ns, b.st_ino, b.st_nlink
                    )
                    if stat.S_ISREG(a.st_mode):
                        assert path.read_bytes() == there.read_bytes()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert rootfs["walk"]["count"] == facts["entries"]
    assert rootfs["readall"]["bytes"] == facts["bytes"] and rootfs["readall"]["errors"] == 0
    assert rootfs["readlink"]["count"] == facts["links"] > 0
    assert rootfs["xattr"]["xattrs"] == facts["xattrs"] > 0
