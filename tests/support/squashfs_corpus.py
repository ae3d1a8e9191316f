"""The SquashFS test corpus: source trees made here, packed by mksquashfs, gensquashfs and tar2sqfs.

Nothing is downloaded: file contents are generated (seeded) or copied from the
busybox-static binary. The trees exercise what the reader must get right: every file size
around each block size, sparse files, hard links (also to a symlink), odd and invalid-UTF-8
names, deep paths, devices, FIFOs and sockets, uid/gid above 65535 and more ids than one
id-table block holds, more fragments than one fragment-table block holds, user/trusted/
security xattrs (shared values become out-of-line), odd modes and timestamps.

Each image is a :class:`Spec` (tree, packer, options). :class:`Corpus` builds a tree or an
image the first time it is asked for and keeps it for the session. ``kernel_mount`` (from
``tests.support.mounts``) mounts an image with the kernel's squashfs driver: the oracle.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.mounts import kernel_mount

BUSYBOX = Path("/bin/busybox")
BLOCK_SIZES = (4096, 131072, 1 << 20)
BIG_DIR_ENTRIES = 100_000
#: A valid VFS_CAP_REVISION_2 security.capability value: effective, cap_net_bind_service (10).
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
#: Junk in front of an image, as a SIF puts its partition at 32768.
SIF_OFFSET = 32768


@dataclass(frozen=True)
class Spec:
    """One corpus image: which tree, which packer and options, and whose kernel view is its oracle.

    ``oracle`` names another spec to mount instead, for compressors the kernel cannot read
    (lzma): same tree and packer, so the kernel's view of that image is what siffs must show.
    """

    name: str
    tree: str
    tool: str
    args: tuple[str, ...] = ()
    oracle: str | None = None


# Pseudo definitions: devices, FIFO, socket, a symlink and a directory owned by ids > 65535.
PSEUDO = (
    "pdev d 755 70000 80000",
    "pdev/null c 666 0 0 1 3",
    "pdev/sda b 660 0 6 8 0",
    "pdev/max c 600 100000 200000 4095 1048575",
    "pdev/fifo i 644 0 0 f",
    "pdev/sock i 600 0 0 s",
    "pdev/sh s 777 0 0 ../bin/busybox",
)
_P = tuple(a for d in PSEUDO for a in ("-p", d))

SPECS = {
    s.name: s
    for s in (
        Spec("mk-gzip", "main", "mksquashfs", _P),
        Spec(
            "mk-gzip-4k-raw",
            "main",
            "mksquashfs",
            ("-b", "4K", "-noI", "-noD", "-noF", "-noX", "-tailends", "-no-exports"),
        ),
        Spec(
            "mk-gzip-1m",
            "main",
            "mksquashfs",
            (
                "-b",
                "1M",
                "-Xcompression-level",
                "1",
                "-Xwindow-size",
                "10",
                "-Xstrategy",
                "default,filtered",
                "-always-use-fragments",
                "-no-duplicates",
                *_P,
            ),
        ),
        Spec("mk-xz-bcj", "main", "mksquashfs", ("-comp", "xz", "-Xbcj", "x86", "-Xdict-size", "64K", *_P)),
        Spec(
            "mk-lzo",
            "main",
            "mksquashfs",
            (
                "-comp",
                "lzo",
                "-b",
                "64K",
                "-Xalgorithm",
                "lzo1x_999",
                "-Xcompression-level",
                "9",
                "-tailends",
            ),
        ),
        Spec("mk-lz4-hc", "main", "mksquashfs", ("-comp", "lz4", "-Xhc", *_P)),
        Spec("mk-lz4-4k", "main", "mksquashfs", ("-comp", "lz4", "-b", "4K", "-no-fragments", "-no-xattrs")),
        Spec(
            "mk-zstd",
            "main",
            "mksquashfs",
            ("-comp", "zstd", "-Xcompression-level", "19", "-b", "256K", "-tailends", *_P),
        ),
        Spec(
            "mk-zstd-nofrag",
            "main",
            "mksquashfs",
            ("-comp", "zstd", "-no-fragments", "-no-sparse", "-no-hardlinks"),
        ),
        Spec("gen-xz", "main", "gensquashfs", ("--exportable",)),
        Spec("gen-lzma", "main", "gensquashfs", ("--exportable", "-c", "lzma"), oracle="gen-xz"),
        Spec("gen-gzip-4k", "main", "gensquashfs", ("-c", "gzip", "-b", "4096", "--no-tail-packing")),
        Spec("gen-zstd", "main", "gensquashfs", ("-c", "zstd", "-X", "level=5", "-b", "1048576")),
        Spec("gen-lz4", "main", "gensquashfs", ("-c", "lz4", "-X", "hc")),
        Spec(
            "gen-lzo",
            "main",
            "gensquashfs",
            (
                "-c",
                "lzo",
            ),
        ),
        Spec("tar-gzip", "main", "tar2sqfs", ("-c", "gzip", "--exportable")),
        Spec("mk-bigdir", "bigdir", "mksquashfs", ("-comp", "zstd", "-no-exports")),
        Spec("mk-huge", "huge", "mksquashfs", ("-comp", "zstd", "-b", "1M")),
    )
}
#: The specs the cheap tests use (one per packer and compressor family).
QUICK = ("mk-gzip", "gen-xz", "mk-lz4-hc")


def _text(rng: random.Random, n: int) -> bytes:
    words = [b"squashfs", b"inode", b"block", b"fragment", b"siffs", b"\n", b"0123", b"container", b"xattr"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _times(root: Path, rng: random.Random) -> None:
    """Give every entry a varied mtime, children before parents (creating children changes them)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (0, rng.randrange(1, 2**31)), follow_symlinks=False)
    os.utime(root, (0, 1_600_000_000))


def build_main_tree(root: Path) -> Path:
    """The varied tree every packer and compressor is checked on (about 7 000 entries, 11 MB)."""
    rng = random.Random(4)
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "sh")
    os.setxattr(root / "bin" / "busybox", "security.capability", CAPABILITY)

    for bs in BLOCK_SIZES:  # sizes around each block size; random data stays uncompressed
        for size in (bs - 1, bs, bs + 1):
            data = _text(rng, size) if bs == 1 << 20 else rng.randbytes(size)
            _write(root / "sizes" / f"{bs}{size - bs:+d}", data)
    _write(root / "sizes" / "zero", b"")
    _write(root / "sizes" / "one", b"x")
    _write(root / "sizes" / "dup-a", _text(rng, 300_000))  # identical files: shared blocks
    shutil.copy(root / "sizes" / "dup-a", root / "sizes" / "dup-b")

    sparse = root / "sparse"
    sparse.mkdir()
    with open(sparse / "middle", "wb") as f:
        f.truncate(3 << 20)
        f.seek(3 << 19)
        f.write(_text(rng, 70_000))
    with open(sparse / "all-holes", "wb") as f:
        f.truncate(5 << 20)
    with open(sparse / "hole-at-end", "wb") as f:
        f.write(rng.randbytes(100_000))
        f.truncate(2 << 20)

    links = root / "links"
    _write(links / "a", _text(rng, 5000))
    os.link(links / "a", links / "b")
    (root / "other").mkdir()
    os.link(links / "a", root / "other" / "c")
    os.symlink("a", links / "sym")
    os.link(links / "sym", links / "sym-hard", follow_symlinks=False)
    os.symlink("/bin/busybox", links / "absolute")
    os.symlink("../nowhere/at/all", links / "dangling")
    os.symlink("../links", links / "to-dir")
    os.symlink("x" * 4000, links / "long-target")
    os.symlink(b"\xff\xfe-not-utf8", bytes(links / "odd-target"))
    os.symlink("loop-b", links / "loop-a")  # a symlink cycle, for resolution limits
    os.symlink("loop-a", links / "loop-b")

    names = root / "names"
    names.mkdir()
    for name in (
        b"with space",
        b"new\nline",
        b"tab\there",
        b"\xff\xfe-invalid-utf8",
        "日本語.txt".encode(),
        "Ünïcødé".encode(),
        b"n" * 255,
        b"-dash",
        b".hidden",
        b"UPPER",
        b"lower",
        b"[brackets]",
        b"quote'\"",
        b"back\\slash",
        b"*star?",
    ):
        (Path(os.fsdecode(bytes(names))) / os.fsdecode(name)).write_bytes(name)

    deep = root / "deep"
    path = deep.joinpath(*(f"level{i:02d}" for i in range(40)))
    path.mkdir(parents=True)
    _write(path / "leaf", b"deep down\n")

    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(special / "socket"))
    if os.geteuid() == 0:
        os.mknod(special / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(special / "sda1", stat.S_IFBLK | 0o660, os.makedev(8, 1))
        os.mknod(special / "bigdev", stat.S_IFCHR | 0o600, os.makedev(4095, 1048575))

    owners = root / "owners"  # > 2048 distinct ids: the id table needs several blocks
    owners.mkdir()
    for i in range(1100):
        p = _write(owners / f"o{i:04d}", b"")
        if os.geteuid() == 0:
            os.chown(p, 1000 + i, 100_000 + i)
    if os.geteuid() == 0:
        os.chown(_write(owners / "max", b"m"), 4_294_967_294, 65536)
        os.lchown(owners, 70_000, 80_000)

    frags = root / "frags"  # many small files: > 512 fragments at 4 KiB blocks
    frags.mkdir()
    for i in range(1300):
        _write(frags / f"s{i:04d}", _text(rng, rng.randrange(1500, 3500)))

    xattrs = root / "xattrs"
    xattrs.mkdir()
    shared = b"the same value on many files"
    for i in range(30):
        p = _write(xattrs / f"f{i:02d}", b"")
        os.setxattr(p, "user.shared", shared)  # repeated values are stored out of line
        os.setxattr(p, f"user.own{i}", str(i).encode())
    big = _write(xattrs / "big-value", b"")
    os.setxattr(big, "user.big", _text(rng, 3000))
    many = _write(xattrs / "many", b"")
    for i in range(60):
        os.setxattr(many, f"user.k{i:02d}", bytes([i]) * i)
    os.setxattr(xattrs, "user.on-a-dir", b"dir")
    os.setxattr(xattrs, "trusted.siffs", b"trusted value")
    os.setxattr(_write(xattrs / "empty-value", b""), "user.empty", b"")

    modes = root / "modes"
    for name, mode in (("setuid", 0o4755), ("setgid", 0o2755), ("none", 0o000), ("all", 0o777)):
        _write(modes / name, name.encode(), mode)
    (modes / "sticky-dir").mkdir()
    (modes / "sticky-dir").chmod(0o1777)
    (root / "empty-dir").mkdir()

    _times(root, rng)
    times = root / "times"
    times.mkdir()
    for name, t in (("epoch", 0), ("y2038-1", 2**31 - 1), ("y2038", 2**31), ("u32-max", 2**32 - 1)):
        os.utime(_write(times / name, b""), (0, t))
    os.utime(times, (0, 1_700_000_000))
    os.utime(root, (0, 1_600_000_000))
    return root


def build_bigdir_tree(root: Path, entries: int = BIG_DIR_ENTRIES) -> Path:
    """A directory of ``entries`` empty files (names of varied length), beside a small file."""
    big = root / "big"
    big.mkdir(parents=True)
    for i in range(entries):
        os.close(os.open(big / f"{i:06d}{'-x' * (i % 7)}", os.O_CREAT | os.O_WRONLY, 0o644))
    _write(root / "small", b"small\n")
    return root


def build_huge_tree(root: Path) -> Path:
    """A sparse file just over 4 GiB (an extended file inode) with data at the start, across
    the 4 GiB boundary and at the end."""
    root.mkdir(parents=True)
    rng = random.Random(5)
    with open(root / "huge", "wb") as f:
        f.write(_text(rng, 200_000))
        f.seek((4 << 30) - 100_000)
        f.write(rng.randbytes(300_000))
        f.truncate((4 << 30) + (3 << 20) + 17)
        f.seek((4 << 30) + (3 << 20) + 17 - 1000)
        f.write(_text(rng, 1000))
    return root


TREES = {"main": build_main_tree, "bigdir": build_bigdir_tree, "huge": build_huge_tree}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (squashfs-tools / squashfs-tools-ng)")
    return path


def pack(spec: Spec, tree: Path, out: Path) -> Path:
    """Run the spec's packer on ``tree``; return the image path."""
    quiet = {"stdout": subprocess.DEVNULL}
    if spec.tool == "mksquashfs":
        cmd = [_tool("mksquashfs"), str(tree), str(out), "-noappend", "-quiet", "-no-progress", *spec.args]
        subprocess.run(cmd, check=True, **quiet)
    elif spec.tool == "gensquashfs":
        cmd = [
            _tool("gensquashfs"),
            "--pack-dir",
            str(tree),
            "--keep-time",
            "--keep-xattr",
            "--quiet",
            "--force",
            *spec.args,
            str(out),
        ]
        subprocess.run(cmd, check=True, **quiet)
    elif spec.tool == "tar2sqfs":
        with tempfile.TemporaryFile() as tar:
            subprocess.run(
                ["tar", "--xattrs", "--xattrs-include=*", "--format=pax", "-C", str(tree), "-cf", "-", "."],
                check=True,
                stdout=tar,
            )
            tar.seek(0)
            subprocess.run(
                [_tool("tar2sqfs"), "--quiet", "--force", *spec.args, str(out)],
                check=True,
                stdin=tar,
                **quiet,
            )
    else:
        raise ValueError(f"unknown packer {spec.tool}")
    return out


def wrap_at_offset(image: Path, out: Path, offset: int = SIF_OFFSET) -> Path:
    """Copy ``image`` behind ``offset`` bytes of junk (as a SIF holds its partition), padded after."""
    junk = random.Random(offset).randbytes(offset)
    with open(out, "wb") as f:
        f.write(junk)
        with open(image, "rb") as src:
            shutil.copyfileobj(src, f)
        f.write(b"\xa5" * 4096)
    return out


class Corpus:
    """Builds trees and images on first use under ``workdir`` and keeps them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._trees: dict[str, Path] = {}
        self._images: dict[str, Path] = {}

    def tree(self, name: str) -> Path:
        if name not in self._trees:
            self._trees[name] = TREES[name](self.workdir / "trees" / name)
        return self._trees[name]

    def image(self, name: str) -> Path:
        if name not in self._images:
            spec = SPECS[name]
            (self.workdir / "images").mkdir(exist_ok=True)
            self._images[name] = pack(spec, self.tree(spec.tree), self.workdir / "images" / f"{name}.sqfs")
        return self._images[name]


def mount_unavailable(workdir: Path) -> str | None:
    """Why kernel mounts cannot be used here (tried on a tiny image), or None when they can."""
    if os.geteuid() != 0:
        return "kernel-oracle tests need root (mount -t squashfs -o loop)"
    probe = workdir / "mount-probe"
    (probe / "tree").mkdir(parents=True, exist_ok=True)
    image = pack(Spec("probe", "", "mksquashfs"), probe / "tree", probe / "probe.sqfs")
    try:
        with kernel_mount(image, probe / "mnt"):
            return None
    except (subprocess.CalledProcessError, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        return f"loop mounts of squashfs are impossible here: {e} {detail.decode(errors='replace').strip()}"


def damaged_copies(
    pristine: bytes, region: tuple[int, int], path: Path, *, seed: int, max_flips: int, cases: int = 60
) -> Iterator[Path]:
    """``cases`` times: ``pristine`` with 1 to ``max_flips`` random bits flipped in bytes
    ``region[0]:region[1]``, written to ``path`` (the same file each time, for the next case)."""
    rng = random.Random(seed)
    for _ in range(cases):
        data = bytearray(pristine)
        for _ in range(rng.randint(1, max_flips)):
            data[rng.randrange(*region)] ^= 1 << rng.randrange(8)
        path.write_bytes(data)
        yield path
