#!/usr/bin/env python3
"""Build the mount benchmark's images from what is already on this machine (nothing is downloaded).

  rootfs-<codec>.sif   a container root: python3 with its stdlib and every shared library it
                       loads, dash and a few coreutils, /etc basics, the /.singularity.d layout,
                       the mount points ch-run binds over, then bulk files from /usr/share and
                       /usr/include up to ~30,000 files / ~420 MB. Identical small files become
                       hard links, and every 37th entry carries user.* xattrs, so that link,
                       readlink and xattr paths are exercised too.
  bigfile-<codec>.sif  one file /big.bin (1 GiB) of 1 MiB segments drawn by a seeded PRNG:
                       40 % text, 25 % ELF code, 30 % random bytes, 5 % zeros, i.e. the mixed
                       compressibility of real data sets.

Each tree is squashed once per codec with mksquashfs and wrapped into a SIF with siffs' own
writer. The builds are deterministic on one machine (sorted traversal, seeded PRNG, fixed times,
-all-root, image id derived from the inputs), and an image whose inputs did not change is not
rebuilt: images.json beside the images records each image's input digest (of the built tree, or
of the bigfile's material), sizes, counts and partition offset.

  .venv/bin/python bench/mkimages.py [--out DIR] [--comps gzip,zstd] [--bigfile-comps gzip,zstd]
                                     [--only rootfs|bigfile] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from siffs.sif import Image, ObjectInput, create  # noqa: E402 - the repository, located above
from siffs.sif.raw import partition_extra  # noqa: E402
from siffs.sif.types import DataType, FsType, PartType, arch_code  # noqa: E402

FIXED_TIME = 1_704_067_200  # 2024-01-01: every inode, the superblock and the SIF header
SEED = 11_2024
MiB = 1 << 20
DEFAULT_OUT = Path("/tmp/siffs-bench/images-own")
BUILDER_VERSION = "4"  # bump when the layout below changes, so that old images are rebuilt

PYTHON = Path("/usr/bin/python3")
TOOLS = ["dash", "ls", "cat", "env", "id", "true", "uname", "head", "sha256sum"]
# Bulk material in this order until the budgets are spent, each directory up to its share of the
# byte budget: larger files first, then the many small manual pages, so that the tree reaches both
# ~30,000 files and ~420 MB.
BULK = [("/usr/share/zoneinfo", 1.0), ("/usr/share/i18n", 1.0), ("/usr/share/perl", 1.0),
        ("/usr/share/mime", 1.0), ("/usr/share/doc", 1.0), ("/usr/include", 1.0),
        ("/usr/share/locale", 0.95), ("/usr/share/man", 1.0), ("/usr/share/vim", 1.0)]
EMPTY_DIRS = ["dev", "proc", "sys", "tmp", "home", "root", "mnt", "run", "opt", "srv",
              "var/tmp", "var/log", "var/lib", "usr/local/bin"]
USRMERGE = ["bin", "sbin", "lib", "lib64"]
TEXT_TOPS = ["/usr/share/doc", "/usr/include", "/usr/lib/python3"]
ELF_TOPS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/bin"]
HARDLINK_MAX = 256 << 10  # identical files up to this size are linked, as image slimmers do
XATTR_EVERY = 37


@dataclass
class Tree:
    """A staging tree filled from host paths, with counters for the manifest."""

    root: Path
    files: int = 0
    bytes: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    _done: set[str] = field(default_factory=set)
    _by_content: dict[tuple[int, str], Path] = field(default_factory=dict)

    def dest(self, host: str) -> Path:
        return self.root / host.lstrip("/")

    def _canonical(self, host: str) -> str:
        """The path under its real parent directory: /lib/x/libc.so.6 lands in /usr/lib/x."""
        return os.path.join(os.path.realpath(os.path.dirname(host)), os.path.basename(host))

    def copy(self, host: str, *, follow: bool = True, link_same: bool = False) -> None:
        """Copy one host entry; a symlink stays a link and, with ``follow``, brings its target."""
        host = self._canonical(host)
        if host in self._done:
            return
        self._done.add(host)
        try:
            st = os.lstat(host)
        except OSError:
            return
        dest = self.dest(host)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(host)
            dest.symlink_to(target)
            self.symlinks += 1
            if follow:
                self.copy(os.path.normpath(os.path.join(os.path.dirname(host), target)), follow=True)
        elif stat.S_ISDIR(st.st_mode):
            dest.mkdir(exist_ok=True)
        elif stat.S_ISREG(st.st_mode):
            self._copy_file(host, dest, st, link_same)

    def _copy_file(self, host: str, dest: Path, st: os.stat_result, link_same: bool) -> None:
        data = Path(host).read_bytes()
        if link_same and 0 < len(data) <= HARDLINK_MAX:
            key = (st.st_mode, hashlib.sha256(data).hexdigest())
            first = self._by_content.setdefault(key, dest)
            if first != dest:
                os.link(first, dest)
                self.hardlinks += 1
                return
        dest.write_bytes(data)
        dest.chmod(stat.S_IMODE(st.st_mode))
        self.files += 1
        self.bytes += len(data)

    def copy_bulk(self, top: str, max_files: int, max_bytes: int) -> None:
        """Regular files and symlinks under ``top`` in sorted order, until either budget is spent."""
        for dirpath, dirnames, filenames in sorted_walk(top):
            self.dest(self._canonical(dirpath)).mkdir(parents=True, exist_ok=True)
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                if self.files >= max_files or self.bytes >= max_bytes:
                    return
                self.copy(os.path.join(dirpath, name), follow=False, link_same=True)

    def write(self, rel: str, text: str, mode: int = 0o644) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)


def sorted_walk(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk in name order (symlinked directories are listed, not entered)."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        filenames.sort()
        yield dirpath, dirnames, filenames


def shared_libraries(binaries: Iterable[str]) -> list[str]:
    """Every library (and the loader) that ldd resolves for the given ELF files."""
    found: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            words = line.replace("=>", " ").split()
            found.update(w for w in words if w.startswith("/"))
    return sorted(found)


def stdlib_dir() -> str:
    """/usr/lib/python3.X of the system interpreter."""
    return f"/usr/lib/{os.path.basename(os.path.realpath(PYTHON))}"


def add_runtime(tree: Tree) -> None:
    """python3 + stdlib + libraries, a shell and coreutils: what container_start runs."""
    for name in USRMERGE:  # /bin -> usr/bin etc., exactly as the host has them
        if os.path.islink(f"/{name}"):
            tree.dest(f"/{name}").symlink_to(os.readlink(f"/{name}"))
    stdlib = stdlib_dir()
    tree.copy(str(PYTHON))
    elves = [str(PYTHON)]
    for dirpath, dirnames, filenames in sorted_walk(stdlib):
        if "site-packages" in dirnames:
            dirnames.remove("site-packages")  # machine-local installs stay out
        for name in filenames:
            tree.copy(os.path.join(dirpath, name))
            if name.endswith(".so"):
                elves.append(os.path.join(dirpath, name))
    for tool in TOOLS:
        if shutil.which(tool):
            tree.copy(f"/usr/bin/{tool}")
            elves.append(f"/usr/bin/{tool}")
    if not tree.dest("/usr/bin/sh").exists():
        tree.dest("/usr/bin/sh").symlink_to("dash")
    for lib in shared_libraries(elves):
        tree.copy(lib)


def add_system_layout(tree: Tree) -> None:
    """/etc basics, the loader cache, the /.singularity.d layout and the mount points."""
    tree.write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n")
    tree.write("etc/group", "root:x:0:\nnogroup:x:65534:\n")
    tree.write("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n")
    tree.write("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
    tree.write("etc/resolv.conf", "")
    tree.write("etc/ld.so.conf", "/usr/local/lib\n/usr/lib/x86_64-linux-gnu\n/usr/lib/aarch64-linux-gnu\n")
    sd = ".singularity.d"
    tree.write(f"{sd}/runscript", '#!/bin/sh\nexec python3 "$@"\n', 0o755)
    tree.write(f"{sd}/labels.json", '{"org.label-schema.name": "siffs-bench"}\n')
    tree.write(f"{sd}/env/90-environment.sh", "#!/bin/sh\nexport LANG=C.UTF-8\n", 0o755)
    source_env = "for f in /.singularity.d/env/*.sh; do . \"$f\"; done\n"
    for action, body in (("exec", 'exec "$@"'), ("run", 'exec /.singularity.d/runscript "$@"'),
                         ("shell", "exec /bin/sh"), ("test", "exit 0")):
        tree.write(f"{sd}/actions/{action}", f"#!/bin/sh\n{source_env}{body}\n", 0o755)
    (tree.root / sd / "libs").mkdir(exist_ok=True)
    (tree.root / "singularity").symlink_to(f"{sd}/runscript")
    for rel in EMPTY_DIRS:
        (tree.root / rel).mkdir(parents=True, exist_ok=True)
    for rel in ("tmp", "var/tmp"):
        (tree.root / rel).chmod(0o1777)
    if os.geteuid() == 0:  # ldconfig -r writes the image's own ld.so.cache
        subprocess.run(["ldconfig", "-r", str(tree.root)], capture_output=True, check=False)


def add_xattrs(root: Path) -> int:
    """user.* attributes on every XATTR_EVERY-th entry, a 2 KiB one on every tenth of those."""
    count = seen = 0
    for dirpath, dirnames, filenames in sorted_walk(str(root)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            seen += 1
            if seen % XATTR_EVERY:
                continue
            os.setxattr(path, "user.bench.index", str(seen).encode(), follow_symlinks=False)
            count += 1
            if seen % (XATTR_EVERY * 10) == 0:
                os.setxattr(path, "user.bench.blob", bytes(range(256)) * 8, follow_symlinks=False)
                count += 1
    return count


def build_rootfs(root: Path, max_files: int, max_bytes: int) -> dict[str, int]:
    """The container root under ``root`` (made afresh); returns its counts."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tree = Tree(root)
    add_runtime(tree)
    add_system_layout(tree)
    for top, share in BULK:
        if os.path.isdir(top):
            tree.copy_bulk(top, max_files, int(max_bytes * share))
    return {"files": tree.files, "bytes": tree.bytes, "symlinks": tree.symlinks,
            "hardlinks": tree.hardlinks, "xattrs": add_xattrs(root)}


def corpus(tops: list[str], size: int, elf: bool) -> bytes:
    """``size`` bytes of host text files (or ELF files), concatenated in name order."""
    out = bytearray()
    for top in tops:
        for dirpath, _, filenames in sorted_walk(top):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read(4 * MiB)
                if data.startswith(b"\x7fELF") == elf and (elf or b"\0" not in data[:1024]):
                    out += data
                if len(out) >= size:
                    return bytes(out[:size])
    if not out:
        raise SystemExit(f"mkimages: no {'ELF' if elf else 'text'} files under {', '.join(tops)}")
    return bytes((out * (size // len(out) + 1))[:size])


def bigfile_material() -> tuple[bytes, bytes]:
    """The text and the ELF code that /big.bin's segments are cut from."""
    return corpus(TEXT_TOPS, 48 * MiB, elf=False), corpus(ELF_TOPS, 48 * MiB, elf=True)


def build_bigfile(path: Path, size: int, material: tuple[bytes, bytes]) -> dict[str, int]:
    """/big.bin of ``size`` bytes in 1 MiB segments of seeded kinds; returns the segment counts."""
    rng = random.Random(SEED)
    text, code = material
    kinds = {"text": 0, "elf": 0, "random": 0, "zeros": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for start in range(0, size, MiB):
            n = min(MiB, size - start)
            pick = rng.random()
            if pick < 0.40:
                kind, at = "text", rng.randrange(len(text) - n)
                f.write(text[at:at + n])
            elif pick < 0.65:
                kind, at = "elf", rng.randrange(len(code) - n)
                f.write(code[at:at + n])
            elif pick < 0.95:
                kind = "random"
                f.write(rng.randbytes(n))
            else:
                kind = "zeros"
                f.write(bytes(n))
            kinds[kind] += 1
    return {"files": 1, "bytes": size, **{f"segments_{k}": v for k, v in kinds.items()}}


def squash(tree: Path, out: Path, codec: str) -> None:
    """mksquashfs with everything that would vary between builds pinned down."""
    out.unlink(missing_ok=True)
    cmd = ["mksquashfs", str(tree), str(out), "-comp", codec, "-noappend", "-no-progress", "-quiet",
           "-all-root", "-all-time", str(FIXED_TIME), "-mkfs-time", str(FIXED_TIME)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"mkimages: mksquashfs -comp {codec} failed: {done.stderr.strip() or done.stdout}")


def host_arch() -> bytes:
    machine = platform.machine()
    return arch_code({"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine))


def wrap(squashfs: Path, sif: Path, identity: str) -> None:
    """A SIF with the SquashFS as its primary partition, written by siffs; the id comes from
    ``identity`` so that the same inputs give the same bytes."""
    with open(squashfs, "rb") as data:
        part = ObjectInput(DataType.PARTITION, data,
                           extra=partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, host_arch()))
        create(sif, [part], image_id=uuid.uuid5(uuid.NAMESPACE_URL, identity), when=FIXED_TIME)


def rootfs_offset(sif: Path) -> int:
    """Byte offset of the primary partition, as siffs' reader finds it."""
    with Image.open(sif) as image:
        return image.primary_partition().offset


def tree_digest(root: Path) -> str:
    """Everything of the tree that reaches the image: names, types, modes, link targets,
    xattrs, contents. A stat walk of the host would do cheaper, but on a live machine its
    directories change (packages installed, .pyc written) while the files taken do not."""
    h = hashlib.sha256(BUILDER_VERSION.encode())
    for dirpath, dirnames, filenames in sorted_walk(str(root)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            h.update(f"{os.path.relpath(path, root)}\0{st.st_mode:o}\0{st.st_nlink}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
                continue
            for attr in sorted(os.listxattr(path, follow_symlinks=False)):
                h.update(attr.encode() + os.getxattr(path, attr, follow_symlinks=False))
            if stat.S_ISREG(st.st_mode):
                h.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return h.hexdigest()[:20]


def material_digest(size: int, material: tuple[bytes, bytes]) -> str:
    h = hashlib.sha256(f"{BUILDER_VERSION}:{size}:{SEED}".encode())
    for part in material:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:20]


def available_codecs() -> set[str]:
    """Compressors this mksquashfs was built with (its usage text lists them)."""
    usage = subprocess.run(["mksquashfs", "-help"], capture_output=True, text=True, check=False)
    text = usage.stdout + usage.stderr
    listed = text.split("Compressors available", 1)[-1]
    return {c for c in ("gzip", "zstd", "xz", "lz4", "lzo", "lzma") if re.search(rf"^\s+{c}\b", listed, re.M)}


def build(kind: str, codecs: list[str], out: Path, limits: tuple[int, int], *, force: bool,
          manifest: dict[str, dict[str, object]]) -> None:
    """Build the images of one kind whose inputs changed (or that are missing), updating
    ``manifest``. The rootfs tree is made first (a few seconds) and its digest decides; the
    bigfile is decided by the digest of the material it is cut from."""
    with tempfile.TemporaryDirectory(prefix=f"{kind}-", dir=out) as scratch:
        tree = Path(scratch) / "tree"
        started = time.monotonic()
        if kind == "rootfs":
            counts = build_rootfs(tree, *limits)
            digest = tree_digest(tree)
        else:
            material = bigfile_material()
            digest = material_digest(limits[1], material)
        stale = [c for c in codecs if force or manifest.get(f"{kind}-{c}", {}).get("inputs") != digest
                 or not (out / f"{kind}-{c}.sif").exists()]
        for codec in sorted(set(codecs) - set(stale)):
            log(f"{kind}-{codec}.sif is up to date")
        if not stale:
            return
        if kind == "bigfile":
            tree.mkdir()
            counts = build_bigfile(tree / "big.bin", limits[1], material)
        log(f"{kind}: tree in {time.monotonic() - started:.0f} s: {counts}")
        for codec in stale:
            started = time.monotonic()
            squashfs = Path(scratch) / f"{codec}.squashfs"
            squash(tree, squashfs, codec)
            sif = out / f"{kind}-{codec}.sif"
            wrap(squashfs, sif, f"siffs-bench:{kind}:{codec}:{digest}")
            manifest[f"{kind}-{codec}"] = {
                "sif": sif.name, "kind": kind, "codec": codec, "inputs": digest, "tree": counts,
                "squashfs_bytes": squashfs.stat().st_size, "sif_bytes": sif.stat().st_size,
                "offset": rootfs_offset(sif), "build_s": round(time.monotonic() - started, 1)}
            squashfs.unlink()
            log(f"{sif.name}: {sif.stat().st_size / MiB:.0f} MiB in {time.monotonic() - started:.0f} s")
            save_manifest(out, manifest)


def save_manifest(out: Path, manifest: dict[str, dict[str, object]]) -> None:
    """images.json, replaced atomically so that an interrupted build leaves the old one."""
    tmp = out / ".images.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(out / "images.json")


def load_manifest(out: Path) -> dict[str, dict[str, object]]:
    path = out / "images.json"
    return json.loads(path.read_text()) if path.exists() else {}


def log(msg: str) -> None:
    print(f"[mkimages] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    ap.add_argument("--comps", default="gzip,zstd", help="rootfs codecs (also: xz, lz4)")
    ap.add_argument("--bigfile-comps", default="gzip,zstd", help="bigfile codecs (also: xz, lz4)")
    ap.add_argument("--only", choices=["rootfs", "bigfile"])
    ap.add_argument("--files", type=int, default=30_000, help="rootfs regular files, at most")
    ap.add_argument("--rootfs-mb", type=int, default=420, help="rootfs size in MB, at most")
    ap.add_argument("--bigfile-mib", type=int, default=1024, help="size of /big.bin")
    ap.add_argument("--force", action="store_true", help="rebuild even if the inputs did not change")
    a = ap.parse_args()
    for signum in (signal.SIGTERM, signal.SIGHUP):  # so that scratch trees are removed on the way out
        signal.signal(signum, lambda n, _: sys.exit(128 + n))
    if not shutil.which("mksquashfs"):
        sys.exit("mkimages: mksquashfs not found; install squashfs-tools")
    a.out.mkdir(parents=True, exist_ok=True)
    have = available_codecs()
    manifest = load_manifest(a.out)
    jobs = {"rootfs": (a.comps, (a.files, a.rootfs_mb * 1_000_000)),
            "bigfile": (a.bigfile_comps, (1, a.bigfile_mib * MiB))}
    for kind, (codecs, limits) in jobs.items():
        if a.only in (None, kind):
            wanted = [c for c in codecs.split(",") if c]
            for codec in sorted(set(wanted) - have):
                log(f"{kind}: this mksquashfs has no {codec} compressor; skipped")
            build(kind, [c for c in wanted if c in have], a.out, limits, force=a.force, manifest=manifest)
    log(f"images in {a.out} (manifest images.json)")


if __name__ == "__main__":
    main()
