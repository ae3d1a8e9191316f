#!/usr/bin/env python3
"""The SquashFS reader's lookups alone (no FUSE), cold and cached, this code against another commit's.

    .venv/bin/python bench/reader_lookup.py [IMAGE] [--rounds 3] [--baseline DIR]

What a cold mount's LOOKUP requests cost the reader: a fresh reader per pass resolves every
entry of the image by path, each directory once (as the kernel's dentry cache asks), in the
order of a walk, so each directory's first lookup finds neither its listing nor its segment;
then every (directory, name) pair again on the same reader, everything cached. Prints the CPU
microseconds per lookup of each pass (medians over the rounds). The image file should be in the
page cache (it is read once before the first pass), so this is the reader's CPU, not the disk.

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


def passes(image: str) -> dict[str, float]:
    """One cold and one cached pass in this process; CPU microseconds per lookup."""
    from siffs.sif import Image  # noqa: PLC0415 - from the PYTHONPATH the parent chose
    from siffs.squashfs import FileSource, SquashFS  # noqa: PLC0415

    with Image.open(image) as img:
        part = img.primary_partition()
        offset, size = part.offset, part.size
    with SquashFS(FileSource.open(image, offset, size)) as lister:
        paths: list[list[bytes]] = []
        todo: list[tuple[int, list[bytes]]] = [(lister.root_ino, [])]
        while todo:
            ino, path = todo.pop()
            for name, st, _ in lister.readdir(ino):
                paths.append([*path, name])
                if st.mode & 0o170000 == 0o040000:
                    todo.append((st.ino, [*path, name]))
    out = {}
    with SquashFS(FileSource.open(image, offset, size)) as fs:
        known: dict[tuple[bytes, ...], int] = {(): fs.root_ino}
        pairs = []
        start = time.process_time()
        for path in paths:
            parent = known[tuple(path[:-1])]
            st = fs.lookup(parent, path[-1])
            assert st is not None
            known[tuple(path)] = st.ino
            pairs.append((parent, path[-1]))
        out["cold"] = (time.process_time() - start) * 1e6 / len(pairs)
        start = time.process_time()
        for parent, name in pairs:
            fs.lookup(parent, name)
        out["cached"] = (time.process_time() - start) * 1e6 / len(pairs)
    out["lookups"] = len(pairs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="another commit's siffs")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(passes(args.image)))
        return
    if not os.path.isfile(args.image):
        sys.exit(f"reader_lookup: {args.image} not found; build it with bench/mkimages.py (or name an image)")
    Path(args.image).read_bytes()  # into the page cache: the passes time the reader, not the disk
    variants = {"this": str(here)}
    if args.baseline:
        variants["baseline"] = str(args.baseline.resolve())
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, path in variants.items():
            done = subprocess.run(
                [sys.executable, __file__, args.image, "--child"],
                env={**os.environ, "PYTHONPATH": path},
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(json.loads(done.stdout))
    lookups = int(results["this"][0]["lookups"])
    print(f"{args.image}: {lookups} lookups per pass, medians of {args.rounds} rounds (CPU µs per lookup)")
    print(f"{'code':10}{'cold':>10}{'cached':>10}")
    for name, runs in results.items():
        cold = statistics.median(r["cold"] for r in runs)
        cached = statistics.median(r["cached"] for r in runs)
        print(f"{name:10}{cold:10.2f}{cached:10.2f}")


if __name__ == "__main__":
    main()
