#!/usr/bin/env python3
"""The cold readlink workload's requests through the C handlers (no FUSE), this code against another commit's.

    .venv/bin/python bench/handlers_cold.py [IMAGE] [--rounds 3] [--passes 20] [--baseline DIR]

What a cold mount's daemon does for the harness's readlink row, without the kernel: every symbolic
link of the image by path, in walk order, each directory looked up once (as the dentry cache
asks) and then the link read, all through ``Handlers.call`` (siffs/fs/_fast.c, as the binding
calls them) on a fresh reader per pass. Two byte sources: the partition read plainly (an
unsigned image, ``--allow-unsigned``) and through ``VerifiedObjectReader`` (a signed image: every
block read is checked against the table recorded at verification, made here in-process).
Prints the CPU milliseconds per pass (medians over the rounds); the image file should be in the
page cache (it is read once first), so this is the daemon's CPU, not the disk.

``--baseline DIR`` runs the same passes with another commit's code (``git archive BASE siffs |
tar -x -C DIR`` plus its built ``.so`` files), alternating with this checkout's, each in its own
process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

here = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = "/tmp/siffs-bench/images-own/rootfs-zstd.sif"
SOURCES = ("plain", "verified")


def passes(image: str, source: str, count: int) -> float:
    """CPU milliseconds per cold pass, ``count`` passes in this process."""
    from siffs.fs import binding  # noqa: PLC0415 - from the PYTHONPATH the parent chose
    from siffs.fs.operations import ReadOnlyOperations  # noqa: PLC0415
    from siffs.integrity.blocktable import Extent, VerifiedObjectReader, hash_extents  # noqa: PLC0415
    from siffs.sif import Image  # noqa: PLC0415
    from siffs.squashfs import FileSource, SquashFS  # noqa: PLC0415

    with Image.open(image) as img:
        part = img.primary_partition()
        offset, size = part.offset, part.size
    fd = os.open(image, os.O_RDONLY)
    _, (table,) = hash_extents(fd, [Extent(offset, size)], "sha256")

    def reader() -> SquashFS:
        if source == "plain":
            return SquashFS(FileSource(fd, offset, size))
        return SquashFS(VerifiedObjectReader(fd, offset, size, table))

    lister = reader()
    links: list[tuple[tuple[bytes, ...], int]] = []  # (path, inode) of every link
    todo: list[tuple[int, tuple[bytes, ...]]] = [(lister.root_ino, ())]
    while todo:
        ino, path = todo.pop()
        for name, st, _ in lister.readdir(ino):
            if st.mode & 0o170000 == 0o040000:
                todo.append((st.ino, (*path, name)))
            elif st.mode & 0o170000 == 0o120000:
                links.append(((*path, name), st.ino))
    # The requests of resolving each link's path once its ancestors are known, then reading it
    # (the kernel numbers the root 1).
    known: dict[tuple[bytes, ...], int] = {(): 1}
    requests: list[tuple[str, int, bytes]] = []
    for path, ino in links:
        for depth in range(1, len(path)):
            if path[:depth] not in known:
                parent = known[path[: depth - 1]]
                requests.append(("lookup", parent, path[depth - 1]))
                found = lister.lookup(lister.root_ino if parent == 1 else parent, path[depth - 1])
                assert found is not None
                known[path[:depth]] = found.ino
        requests.append(("lookup", known[path[:-1]], path[-1]))
        requests.append(("readlink", ino, b""))
    took = []
    for _ in range(count):
        ops = ReadOnlyOperations(reader(), features=binding.Features(fast_ops=True))
        call = ops.fast_handlers.call
        start = time.process_time()
        for op, ino, name in requests:
            call(op, ino, name)
        took.append(time.process_time() - start)
    os.close(fd)
    return statistics.median(took) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=20, help="cold passes per round (fresh readers)")
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="another commit's siffs")
    ap.add_argument("--child", metavar="SOURCE", choices=SOURCES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(passes(args.image, args.child, args.passes)))
        return
    if not os.path.isfile(args.image):
        sys.exit(f"handlers_cold: {args.image} not found; build it with bench/mkimages.py (or name an image)")
    Path(args.image).read_bytes()  # into the page cache: the passes time the daemon's CPU, not the disk
    variants = {"this": str(here)}
    if args.baseline:
        variants["baseline"] = str(args.baseline.resolve())
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for source in SOURCES:
            for name, path in variants.items():
                done = subprocess.run(
                    [sys.executable, __file__, args.image, "--child", source, "--passes", str(args.passes)],
                    env={**os.environ, "PYTHONPATH": path},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results.setdefault((name, source), []).append(json.loads(done.stdout))
    print(f"{args.image}: cold readlink passes through the C handlers, medians of {args.rounds} rounds")
    print(f"{'code':10}" + "".join(f"{s + ' ms':>14}" for s in SOURCES))
    for name in variants:
        print(f"{name:10}" + "".join(f"{statistics.median(results[name, s]):14.2f}" for s in SOURCES))


if __name__ == "__main__":
    main()
