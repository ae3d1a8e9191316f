#!/usr/bin/env python3
"""Request cost of a siffs mount against squashfuse_ll, in one run (about a minute).

    .venv/bin/python bench/request_cost.py [IMAGE] [--rounds 3] [--subtree usr/lib/python3.11]
        [--variants all,none] [--baseline DIR]

For use before and after a change. Each round mounts the image afresh with every peer (so
the first pass over the files is cold: nothing of this mount in the page cache), in turn, and
times small request-bound loops over one subtree:

* ``read cold``: open + read + close of every regular file (lookup, open, read, release);
* ``read warm``: the same again (served from the page cache; open/release still reach a
  daemon that cannot skip them);
* ``readlink``: every symbolic link of the image, 5 times after one untimed pass (one request
  each unless the kernel caches link targets);
* ``listdir``: every directory of the subtree, 5 times after one untimed pass (opendir,
  readdir, releasedir unless the kernel caches listings);
* ``xattr``: listxattr of every file and getxattr of each name, as the harness's xattr workload
  (the kernel never caches these: every call is a request, the file's lookup long done).

siffs variants select the pyfuse3 patches through ``SIFFS_PYFUSE3_FEATURES`` (``all`` = what the
binding has, ``none`` = the stock path, or a ``+``-joined list of feature names), so one run
shows what each patch buys. ``--baseline DIR`` adds another commit's siffs (``git archive BASE siffs
runtime | tar -x -C DIR`` plus its built ``.so`` files, run with ``PYTHONPATH=DIR``) with all
features. Prints medians and siffs ÷ squashfuse_ll (> 1: siffs faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

here = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(here))

from siffs.fs import binding  # noqa: E402
from siffs.sif import Image  # noqa: E402

DEFAULT_IMAGE = "/tmp/siffs-bench/images-own/rootfs-zstd.sif"  # bench/mkimages.py
REPEAT = 5


def partition_offset(image: str) -> int:
    with Image.open(image) as img:
        return img.primary_partition().offset


def mount_squashfuse_ll(image: str, mnt: str) -> None:
    subprocess.run(["squashfuse_ll", "-o", f"offset={partition_offset(image)}", image, mnt], check=True)


def mount_siffs(features: str, code: Path | None = None) -> Callable[[str, str], None]:
    def mount(image: str, mnt: str) -> None:
        env = dict(os.environ)
        if code is not None:
            env["PYTHONPATH"] = str(code.resolve())
        if features != "all":
            env[binding.ENV] = features.replace("+", ",")
        siffs = str(here / ".venv/bin/siffs")
        subprocess.run(
            [siffs, "mount", "--allow-unsigned", image, mnt], check=True, env=env, stderr=subprocess.DEVNULL
        )

    return mount


def umount(mnt: str) -> None:
    subprocess.run(["fusermount3", "-u", mnt], check=True)


def inventory(root: Path, subtree: str) -> tuple[list[str], list[str], list[str]]:
    """Regular files and directories of the subtree, symlinks of the whole tree."""
    files, dirs, links = [], [], []
    for top, dnames, fnames in os.walk(root):
        in_sub = Path(top).relative_to(root).as_posix().startswith(subtree)
        for name in fnames + dnames:
            p = os.path.join(top, name)
            if os.path.islink(p):
                links.append(p)
            elif in_sub and name in fnames:
                files.append(p)
        if in_sub:
            dirs.append(top)
    return files, dirs, links


def timed(fn: Callable[[], int]) -> float:
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def read_all(files: list[str]) -> int:
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
    return len(files)


def readlinks(links: list[str], repeat: int = REPEAT) -> int:
    for _ in range(repeat):
        for p in links:
            os.readlink(p)
    return repeat * len(links)


def listdirs(dirs: list[str], repeat: int = REPEAT) -> int:
    for _ in range(repeat):
        for d in dirs:
            os.listdir(d)
    return repeat * len(dirs)


def xattrs(files: list[str]) -> int:
    for p in files:
        for name in os.listxattr(p):
            os.getxattr(p, name)
    return len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--subtree", default="usr/lib/python3.11")
    ap.add_argument("--variants", default="all,none", help="siffs feature sets, comma-separated")
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="another commit's siffs and runtime")
    args = ap.parse_args()
    if not shutil.which("squashfuse_ll"):
        sys.exit("squashfuse_ll not found (apt-get install squashfuse)")
    if not os.path.isfile(args.image):
        sys.exit(f"request_cost: {args.image} not found; build it with bench/mkimages.py (or name an image)")
    peers: dict[str, Callable[[str, str], None]] = {"squashfuse_ll": mount_squashfuse_ll}
    for v in args.variants.split(","):
        peers[f"siffs[{v}]"] = mount_siffs(v)
    if args.baseline:
        peers["baseline"] = mount_siffs("all", args.baseline)
    work = tempfile.mkdtemp(prefix="siffs-reqcost-")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    rows = ["read cold", "read warm", "readlink", "listdir", "xattr"]
    units = {
        "read cold": "files/s",
        "read warm": "files/s",
        "readlink": "ops/s",
        "listdir": "dirs/s",
        "xattr": "files/s",
    }
    results: dict[str, dict[str, list[float]]] = {p: {r: [] for r in rows} for p in peers}
    try:
        mount_squashfuse_ll(args.image, mnt)
        files, dirs, links = inventory(Path(mnt), args.subtree)
        umount(mnt)
        print(
            f"{args.image}: {len(files)} files, {len(dirs)} directories under /{args.subtree}, "
            f"{len(links)} symlinks; load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for _ in range(args.rounds):
            for name, mount in peers.items():
                mount(args.image, mnt)
                try:
                    r = results[name]
                    r["read cold"].append(timed(lambda: read_all(files)))
                    r["read warm"].append(timed(lambda: read_all(files)))
                    readlinks(links, 1)
                    r["readlink"].append(timed(lambda: readlinks(links)))
                    listdirs(dirs, 1)
                    r["listdir"].append(timed(lambda: listdirs(dirs)))
                    r["xattr"].append(timed(lambda: xattrs(files)))
                finally:
                    umount(mnt)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = list(peers)
    base = {r: statistics.median(results["squashfuse_ll"][r]) for r in rows}
    # One line per peer: its medians, then its ratio to squashfuse_ll per row.
    w = max(len(n) for n in names) + 2
    print(f"{'':<{w}}" + "".join(f"{r + ' (' + units[r] + ')':>22}" for r in rows))
    for n in names:
        med = [statistics.median(results[n][r]) for r in rows]
        print(f"{n:<{w}}" + "".join(f"{m:>22,.0f}" for m in med))
    for n in names[1:]:
        ratios = [statistics.median(results[n][r]) / base[r] for r in rows]
        print(f"{n + ' ÷ ll':<{w}}" + "".join(f"{x:>22.2f}" for x in ratios))
    print(f"medians of {args.rounds} rounds; load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
