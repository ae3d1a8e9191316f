#!/usr/bin/env python3
"""Cold rows, this code against another commit's and squashfuse_ll, alternating pass by pass.

    .venv/bin/python bench/cold_ab.py [IMAGE] [--rounds 5] [--baseline DIR]

For judging a change to the reader or the handlers. The harness (``mount_bench.sh``) runs
each peer's workloads in turn, minutes apart, so on a shared machine its cold rows move
±20-30 % between peers for reasons that have nothing to do with them; here every pass is a
fresh mount of the whole image with the page cache dropped (as the harness's cold rows), the
variants alternate within each workload of each round, and the daemon's CPU time (all its
threads, nanoseconds from /proc/PID/task/*/schedstat) is reported beside the wall time: it is
what a change to the daemon changes, and it moves less with the machine's load than the wall
time. Passes: a walk with ``lstat`` of every entry, a read of every regular file, and
``listxattr`` + ``getxattr`` of every entry. The daemon runs on CPU 1 and the reader on CPU 0
(``--pin split``, the default), or both on CPU 0 (``--pin same``).

Passes by path (``-by-path``: read-all, read-all with 4 threads, readlink, xattr) take the list of
paths made beforehand, as the harness's read-all, readall_par4, readlink and xattr workloads do:
the kernel then resolves each path with LOOKUP requests, where the walk's READDIRPLUS answered a
whole directory's entries at once.

``--baseline DIR`` adds siffs running another commit's code (``git archive BASE siffs runtime |
tar -x -C DIR``, plus that commit's built ``.so`` files for its native modules) through the
same interpreter and binding (the installed ``siffs`` command with ``PYTHONPATH=DIR``: not
``python -m siffs``, which would put the working directory, maybe this checkout, first).
``--without FEATURE,...`` adds siffs with those pyfuse3 patches switched off
(``SIFFS_PYFUSE3_FEATURES``: every feature but these), to measure what a patch buys on the same
code and binding.

Needs root (drop_caches) and squashfuse_ll.
"""

from __future__ import annotations

import argparse
import contextlib
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

from request_cost import partition_offset  # noqa: E402 - bench/ is the script's directory
from workloads import read_files  # noqa: E402

from siffs.fs import binding  # noqa: E402

DEFAULT_IMAGE = "/tmp/siffs-bench/images-own/rootfs-zstd.sif"
DAEMON_CPU, READER_CPU = 1, 0


def cpu_seconds(pid: int) -> float:
    """CPU time of all of ``pid``'s threads, in nanoseconds from the scheduler (/proc/.../schedstat).

    /proc/PID/stat counts clock ticks (10 ms), too coarse for a 40 ms pass.
    """
    tasks = Path(f"/proc/{pid}/task")
    total = 0
    for task in tasks.iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that ended in between
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def daemon_of(mnt: str) -> int:
    """The pid serving ``mnt``: the one process holding /dev/fuse with the mount point in its command line."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if mnt.encode() in cmd and any(b"siffs" in c or b"squashfuse" in c for c in cmd):
            return int(pid)
    raise RuntimeError(f"no daemon found for {mnt}")


def read_file(path: str, buf: bytearray) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def walk(mnt: str) -> None:
    for top, dirs, files in os.walk(mnt):
        for name in dirs + files:
            os.lstat(os.path.join(top, name))


def read_all(mnt: str) -> None:
    buf = bytearray(1 << 20)
    for top, _, files in os.walk(mnt):
        for name in files:
            path = os.path.join(top, name)
            if not os.path.islink(path):
                read_file(path, buf)


def xattrs(mnt: str) -> None:
    for top, dirs, files in os.walk(mnt):
        for name in dirs + files:
            path = os.path.join(top, name)
            for key in os.listxattr(path, follow_symlinks=False):
                os.getxattr(path, key, follow_symlinks=False)


def inventory(mnt: str) -> tuple[list[str], list[str], list[str]]:
    """Regular files, symbolic links and all entries, as paths relative to the mount point."""
    files, links, entries = [], [], []
    for top, dirs, names in os.walk(mnt):
        for name in dirs + names:
            path = os.path.relpath(os.path.join(top, name), mnt)
            entries.append(path)
            if os.path.islink(os.path.join(top, name)):
                links.append(path)
            elif name in names:
                files.append(path)
    return files, links, entries


def by_path(files: list[str], links: list[str], entries: list[str]) -> dict[str, Callable[[str], None]]:
    """The harness's way: every path resolved from the mount point (LOOKUP per component not cached)."""

    def read_all_by_path(mnt: str) -> None:
        buf = bytearray(1 << 20)
        for path in files:
            read_file(os.path.join(mnt, path), buf)

    def read_all_x4_by_path(mnt: str) -> None:  # the harness's readall_par4: 4 threads, shared index
        read_files([os.path.join(mnt, path) for path in files], 4, float("inf"))

    def readlink_by_path(mnt: str) -> None:
        for rel in links:
            os.readlink(os.path.join(mnt, rel))

    def xattrs_by_path(mnt: str) -> None:
        for rel in entries:
            path = os.path.join(mnt, rel)
            for key in os.listxattr(path, follow_symlinks=False):
                os.getxattr(path, key, follow_symlinks=False)

    return {
        "read-all-by-path": read_all_by_path,
        "read-all-x4-by-path": read_all_x4_by_path,
        "readlink-by-path": readlink_by_path,
        "xattr-by-path": xattrs_by_path,
    }


PASSES: dict[str, Callable[[str], None]] = {"walk": walk, "read-all": read_all, "xattr": xattrs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="another commit's siffs and runtime")
    ap.add_argument("--passes", metavar="NAME,...", help="only these passes (default: all)")
    ap.add_argument("--pin", choices=("split", "same"), default="split", help="daemon's CPU")
    ap.add_argument("--without", metavar="FEATURE,...", help="add siffs without these pyfuse3 patches")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("squashfuse_ll"):
        sys.exit("cold_ab: needs root (to drop the page cache) and squashfuse_ll")
    siffs = [str(here / ".venv/bin/siffs"), "mount", "--allow-unsigned", args.image]
    offset = partition_offset(args.image)
    peers: dict[str, tuple[list[str], dict[str, str]]] = {
        "squashfuse_ll": (["squashfuse_ll", "-o", f"offset={offset}", args.image], {}),
        "siffs": (siffs, {}),
    }
    if args.baseline:
        peers["baseline"] = (siffs, {"PYTHONPATH": str(args.baseline.resolve())})
    if args.without:
        off = set(args.without.split(","))
        kept = ",".join(name for name in binding.Features.names() if name not in off)
        peers[f"-{args.without}"] = (siffs, {binding.ENV: kept})
    daemon_cpu = DAEMON_CPU if args.pin == "split" else READER_CPU
    os.sched_setaffinity(0, {READER_CPU})
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    work = tempfile.mkdtemp(prefix="siffs-coldab-")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    loads = [os.getloadavg()[0]]
    try:
        subprocess.run([*peers["squashfuse_ll"][0], mnt], check=True)
        try:
            passes = PASSES | by_path(*inventory(mnt))
            if args.passes:
                passes = {name: passes[name] for name in args.passes.split(",")}
        finally:
            subprocess.run(["umount", mnt], check=True)
        for _ in range(args.rounds):
            for name, run in passes.items():
                for peer, (command, env) in peers.items():
                    subprocess.run(
                        ["taskset", "-c", str(daemon_cpu), *command, mnt],
                        check=True,
                        env={**os.environ, **env},
                        stderr=subprocess.DEVNULL,
                        cwd="/",
                    )
                    try:
                        pid = daemon_of(mnt)
                        # As the harness's mount step: the mount counts as done once it answers. An early
                        # mount (siffs) is live before its daemon has opened the image; without this the
                        # first pass would time the rest of the daemon's start (~15 ms) too.
                        os.listdir(mnt)
                        os.sync()
                        Path("/proc/sys/vm/drop_caches").write_text("3")
                        before, start = cpu_seconds(pid), time.perf_counter()
                        run(mnt)
                        wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - before
                    finally:
                        subprocess.run(["umount", mnt], check=True)
                    results.setdefault((name, peer), []).append((wall, cpu))
            loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = f"{min(loads):.2f}-{max(loads):.2f}"
    print(f"{args.image}, {args.rounds} rounds, --pin {args.pin}, medians; load {load}")
    print(f"{'pass':21}{'peer':15}{'wall s':>9}{'daemon CPU s':>14}{'÷ squashfuse_ll (wall)':>25}")
    for name in passes:
        ref = statistics.median(w for w, _ in results[name, "squashfuse_ll"])
        for peer in peers:
            wall = statistics.median(w for w, _ in results[name, peer])
            cpu = statistics.median(c for _, c in results[name, peer])
            print(f"{name:21}{peer:15}{wall:9.3f}{cpu:14.3f}{ref / wall:25.2f}")


if __name__ == "__main__":
    main()
