#!/usr/bin/env python3
"""Daemon memory: RSS of ``siffs mount`` before any request and after reading a whole rootfs.

    .venv/bin/python bench/memory_bench.py [IMAGE] [--cache 2,4,8,16] [--runs 1]

For each ``-o cache_size=MiB`` (default: siffs' default and its neighbours) it mounts IMAGE
(default: the bench's rootfs-zstd image, bench/mkimages.py), reads every file once (cold: a fresh mount's
page cache is empty), and
prints the daemon's RSS after mounting, its RSS and peak after the read-all, and the read-all
time. RSS is what the issue's target is about (<= 40 MiB by default); the time shows what a
smaller cache costs. Prints figures and the load average; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

here = Path(__file__).resolve().parent.parent
SIFFS = str(here / ".venv/bin/siffs")
DEFAULT_IMAGE = Path("/tmp/siffs-bench/images-own/rootfs-zstd.sif")


def daemon_pid(mnt: Path) -> int:
    needle = str(mnt).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in argv and b"mount" in argv:
                return int(entry)
    raise SystemExit(f"no daemon found for {mnt}")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def read_all(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            try:
                with open(path, "rb", buffering=0) as f:
                    while chunk := f.read(1 << 20):
                        total += len(chunk)
            except OSError:
                continue
    return total


def one(image: Path, mnt: Path, cache: int) -> tuple[int, int, int, float]:
    options = ["-o", f"cache_size={cache}"]
    subprocess.run([SIFFS, "-q", "mount", "--allow-unsigned", *options, str(image), str(mnt)], check=True)
    try:
        os.listdir(mnt)  # the daemon has started serving
        pid = daemon_pid(mnt)
        start_rss = status_kib(pid, "VmRSS")
        t = time.perf_counter()
        read_all(mnt)
        elapsed = time.perf_counter() - t
        return start_rss, status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"), elapsed
    finally:
        subprocess.run([SIFFS, "umount", str(mnt)], check=True)
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--cache", default="2,4,8", help="cache sizes in MiB, comma-separated")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    sizes = [int(s) for s in args.cache.split(",")]
    load = os.getloadavg()[0]
    rows: dict[int, list[tuple[int, int, int, float]]] = {s: [] for s in sizes}
    with tempfile.TemporaryDirectory(prefix="siffs-mem-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        for _ in range(args.runs):
            for size in sizes:
                rows[size].append(one(args.image, mnt, size))
    print(f"{args.image}: {args.runs} run(s), load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(
        f"{'cache_size':>10}  {'RSS mounted':>12}  {'RSS after read-all':>18}  {'peak':>8}  {'read-all':>9}"
    )
    for size, samples in rows.items():
        med = [statistics.median(s[i] for s in samples) for i in range(4)]
        mib = [m / 1024 for m in med[:3]]
        print(f"{size:>6} MiB  {mib[0]:>8.1f} MiB  {mib[1]:>10.1f} MiB  {mib[2]:>4.1f} MiB  {med[3]:>7.2f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
