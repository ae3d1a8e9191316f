#!/usr/bin/env python3
"""squashfs_read.py - the siffs SquashFS reader against PySquashfsImage and the kernel, no FUSE.

For each SIF image (its primary partition found with siffs' own SIF reader), each peer
runs in a fresh process, after the page cache is dropped (as root), and is measured on:

  open      open the image (PySquashfsImage scans the whole tree here; siffs reads ~5 blocks)
  walk      every entry with its attributes (siffs readdir; kernel os.walk + lstat)
  lookup    full-path lookups of random existing paths from the root, on a fresh reader
  stat      attributes of every inode again, by inode number (kernel: lstat, warm)
  read      every regular file read whole in 128 KiB pieces (what FUSE asks for), in walk order
  read x2   the same with 2 threads splitting the files (siffs only: decompression releases the GIL)
  peak RSS  of the peer's process

Prints one table per image with each figure and the ratios siffs/PySquashfsImage and
siffs/kernel. Figures only: nothing is asserted. Rerun on a quiet machine for stable numbers.

  bench/squashfs_read.py /tmp/siffs-bench/images-own/{rootfs,bigfile}-gzip.sif
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mkimages import rootfs_offset  # noqa: E402 - beside this script
from PySquashfsImage import SquashFsImage  # noqa: E402

from siffs.squashfs import FileSource, SquashFS, resolve, walk  # noqa: E402

CHUNK = 128 << 10
LOOKUPS = 20_000

Figures = dict[str, float]


def drop_caches() -> None:
    if os.geteuid() == 0:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def peer_sample(image: str, offset: int, paths: list[bytes]) -> list[bytes]:
    """A fixed random sample of existing paths, the same for every peer (run in a child too,
    so that the parent stays small and the children's peak RSS is their own)."""
    with FileSource.open(image, offset) as source:
        everything = [p for p, _ in walk(SquashFS(source)) if p != b"/"]
    return random.Random(0).choices(everything, k=LOOKUPS)


def read_all_siffs(fs: SquashFS, files: list[tuple[int, int]]) -> int:
    """Read each (inode, size) whole in FUSE-sized pieces; the size is known, as the kernel knows it."""
    total = 0
    for ino, size in files:
        offset = 0
        while offset < size:
            offset += len(fs.read(ino, offset, CHUNK))
        total += offset
    return total


def siffs_metadata(image: str, offset: int, paths: list[bytes], out: Figures) -> list[tuple[int, int]]:
    """open, walk, lookup and stat figures; returns the regular files' (inode number, size)."""
    with FileSource.open(image, offset) as source:
        t, fs = timed(lambda: SquashFS(source))
        out["open s"] = t
        t, entries = timed(lambda: list(walk(fs)))
        out["walk entries/s"] = len(entries) / t
        t, _ = timed(lambda: [fs.getattr(st.ino) for _, st in entries])
        out["stat /s"] = len(entries) / t
    with FileSource.open(image, offset) as source:
        fresh = SquashFS(source)
        t, _ = timed(lambda: [resolve(fresh, p, follow_last=False) for p in paths])
        out["lookup /s"] = len(paths) / t
    return list(dict.fromkeys((st.ino, st.size) for _, st in entries if stat.S_ISREG(st.mode)))


def siffs_read(image: str, offset: int, files: list[tuple[int, int]], threads: int) -> float:
    """MB/s reading ``files`` whole, cold (page cache dropped, fresh reader), split over ``threads``."""
    with FileSource.open(image, offset) as source:
        fs = SquashFS(source)
        for _ in walk(fs):
            pass  # learn inode numbers; the data cache stays cold
        drop_caches()
        totals = [0] * threads
        workers = [
            threading.Thread(
                target=lambda k: totals.__setitem__(k, read_all_siffs(fs, files[k::threads])), args=(k,)
            )
            for k in range(threads)
        ]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return sum(totals) / 1e6 / (time.perf_counter() - t0)


def peer_siffs(image: str, offset: int, paths: list[bytes]) -> Figures:
    out: Figures = {}
    files = siffs_metadata(image, offset, paths, out)
    out["read MB/s"] = siffs_read(image, offset, files, 1)
    out["read x2 MB/s"] = siffs_read(image, offset, files, 2)
    return out


def peer_pysquashfsimage(image: str, offset: int, paths: list[bytes]) -> Figures:
    out: Figures = {}
    t, img = timed(lambda: SquashFsImage.from_file(image, offset=offset))
    out["open s"] = t
    t, entries = timed(lambda: [(f, f.mode, f.size) for f in img])
    out["walk entries/s"] = len(entries) / t
    fresh = SquashFsImage.from_file(image, offset=offset)
    t, _ = timed(lambda: [fresh.select(os.fsdecode(p)) for p in paths])
    out["lookup /s"] = len(paths) / t
    t, _ = timed(lambda: [(f.mode, f.uid, f.gid, f.size, f.time) for f, _, _ in entries])
    out["stat /s"] = len(entries) / t
    files = [f for f, _, _ in entries if f.is_file]
    drop_caches()
    t, n = timed(lambda: sum(len(chunk) for f in files for chunk in f.iter_bytes()))
    out["read MB/s"] = n / 1e6 / t
    return out


def peer_kernel(image: str, offset: int, paths: list[bytes]) -> Figures:
    out: Figures = {}
    with tempfile.TemporaryDirectory() as mnt:
        drop_caches()
        t, _ = timed(
            lambda: subprocess.run(
                ["mount", "-t", "squashfs", "-o", f"loop,ro,offset={offset}", image, mnt], check=True
            )
        )
        out["open s"] = t
        try:
            root = os.fsencode(mnt)

            def walk_kernel() -> list[bytes]:
                found = []
                for dirpath, dirnames, filenames in os.walk(root):
                    for name in dirnames + filenames:
                        found.append(os.path.join(dirpath, name))
                        os.lstat(found[-1])
                return found

            t, entries = timed(walk_kernel)
            out["walk entries/s"] = len(entries) / t
            subprocess.run(["umount", mnt], check=True)
            drop_caches()
            subprocess.run(
                ["mount", "-t", "squashfs", "-o", f"loop,ro,offset={offset}", image, mnt], check=True
            )
            t, _ = timed(lambda: [os.lstat(root + p) for p in paths])
            out["lookup /s"] = len(paths) / t
            t, _ = timed(lambda: [os.lstat(p) for p in entries])
            out["stat /s"] = len(entries) / t
            files = list(dict.fromkeys(p for p in entries if stat.S_ISREG(os.lstat(p).st_mode)))
            drop_caches()

            def read_kernel() -> int:
                total = 0
                for p in files:
                    with open(p, "rb", buffering=0) as f:
                        while data := f.read(CHUNK):
                            total += len(data)
                return total

            t, n = timed(read_kernel)
            out["read MB/s"] = n / 1e6 / t
        finally:
            subprocess.run(["umount", mnt], check=False)
    return out


PEERS: dict[str, Callable[[str, int, list[bytes]], Any]] = {
    "siffs": peer_siffs,
    "PySquashfsImage": peer_pysquashfsimage,
    "kernel": peer_kernel,
}


def _child(peer: str, image: str, offset: int, paths: list[bytes], conn: Any) -> None:
    try:
        result = PEERS[peer](image, offset, paths) if peer != "sample" else peer_sample(image, offset, paths)
        if isinstance(result, dict):
            result["peak RSS MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send(result)
    except Exception as e:  # a peer that cannot read the image must not hide the others' figures
        conn.send({"error": f"{type(e).__name__}: {e}"})


def run_peer(peer: str, image: str, offset: int, paths: list[bytes]) -> Any:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(peer, image, offset, paths, child))
    proc.start()
    result = parent.recv()
    proc.join()
    return str(result["error"]) if isinstance(result, dict) and "error" in result else result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated, from: " + ", ".join(PEERS))
    a = ap.parse_args()
    peers = [p for p in a.peers.split(",") if p != "kernel" or os.geteuid() == 0]
    print(
        f"# squashfs_read.py, load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; MB = 10^6 bytes"
    )
    for image in a.images:
        offset = rootfs_offset(Path(image))
        paths = run_peer("sample", image, offset, [])
        results = {peer: run_peer(peer, image, offset, paths) for peer in peers}
        print(f"\n## {os.path.basename(image)} (partition at byte {offset})\n")
        for peer, r in results.items():
            if isinstance(r, str):
                print(f"{peer}: failed: {r}")
        ok = {p: r for p, r in results.items() if not isinstance(r, str)}
        rows = list(next(iter(ok.values())).keys()) if ok else []
        others = [p for p in ok if p != "siffs"]
        print(
            "| figure | " + " | ".join(ok) + "".join(f" | siffs/{p}" for p in others if "siffs" in ok) + " |"
        )
        print("|---" * (1 + len(ok) + (len(others) if "siffs" in ok else 0)) + "|")
        for row in rows:
            cells = [
                f"{ok[p][row]:,.3f}"
                if row in ok[p] and ok[p][row] < 10
                else f"{ok[p][row]:,.0f}"
                if row in ok[p]
                else "-"
                for p in ok
            ]
            ratios = []
            if "siffs" in ok:
                for p in others:
                    mine, theirs = ok["siffs"].get(row), ok[p].get(row)
                    ratios.append(f"{mine / theirs:.2f}" if mine and theirs else "-")
            print(f"| {row} | " + " | ".join(cells + ratios) + " |")
    print("\nopen s and peak RSS: lower is better; every other figure: higher is better.")


if __name__ == "__main__":
    main()
