#!/usr/bin/env python3
"""CPU time of a walk through the SquashFS reader alone, with and without the native directory parser.

    .venv/bin/python bench/directory_parse.py [IMAGE] [--rounds 2]

Walks the whole tree (every directory listed, every entry's inode decoded) with a fresh reader
per pass, alternating the Python parser and the native one (siffs/squashfs/_directory.c), and
prints the CPU seconds of each pass. No FUSE: this is the reader's share of a cold walk.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from siffs.sif import Image
from siffs.squashfs import FileSource, SquashFS, directory, walk

DEFAULT_IMAGE = "/tmp/siffs-bench/images-own/rootfs-zstd.sif"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    native = directory.native_parse
    if native is None:
        sys.exit("the native parser is not built (pip install -e .) or SIFFS_NO_NATIVE=1 is set")
    with Image.open(args.image) as img:
        part = img.primary_partition()
        offset, size = part.offset, part.size
    seconds: dict[str, list[float]] = {"python": [], "native": []}
    entries = 0
    for _ in range(args.rounds):
        for mode, times in seconds.items():
            directory.native_parse = native if mode == "native" else None
            with FileSource.open(args.image, offset, size) as source:
                fs = SquashFS(source)
                start = time.process_time()
                entries = sum(1 for _ in walk(fs))
                times.append(time.process_time() - start)
    for mode, values in seconds.items():
        print(f"{mode:7} {entries} entries: " + ", ".join(f"{v:.2f} s" for v in values))


if __name__ == "__main__":
    main()
