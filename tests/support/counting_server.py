"""Serve a SquashFS image with siffs' handlers, counting the reader calls each request makes.

    python -m tests.support.counting_server IMAGE MOUNT_POINT COUNTS_JSON [REPLY_BYTES]

A test harness, not a siffs command: it shows which requests reached siffs' Python handlers
(each reader call is counted) and which the binding answered from its reply table (none
counted). Mounted when the mount point appears in /proc/self/mountinfo; SIGUSR1 writes the
counts so far, SIGTERM ends the loop and writes them. Honours ``SIFFS_PYFUSE3_FEATURES`` as the
daemon does.
"""

from __future__ import annotations

import collections
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pyfuse3

from siffs.fs.operations import ReadOnlyOperations
from siffs.squashfs import SquashFS

COUNTED = ("lookup", "getattr", "readlink", "listxattr", "getxattr", "readdir", "read")


class CountingTree:
    """``tree`` with a tally of calls to the methods named in COUNTED."""

    def __init__(self, tree: SquashFS) -> None:
        self._tree = tree
        self.counts: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._tree, name)
        if name not in COUNTED:
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return value(*args, **kwargs)

        return counted


def main() -> None:
    image, mount_point, counts_file = sys.argv[1:4]
    reply_bytes = int(sys.argv[4]) if len(sys.argv) > 4 else 4 << 20
    tree = CountingTree(SquashFS.open(image))
    ops = ReadOnlyOperations(tree, reply_bytes=reply_bytes)  # type: ignore[arg-type]
    pyfuse3.init(ops, mount_point, {"ro", "default_permissions", "allow_other", "fsname=counting"})

    def write_counts(*_: object) -> None:
        table = ops.reply_table
        summary = {**tree.counts, "table": None if table is None else len(table)}
        part = Path(counts_file + ".part")
        part.write_text(json.dumps(summary))
        part.rename(counts_file)

    signal.signal(signal.SIGTERM, lambda *_: pyfuse3.terminate())
    signal.signal(signal.SIGUSR1, write_counts)
    try:
        pyfuse3.main_sync()
    finally:
        pyfuse3.close(unmount=True)
        write_counts()


if __name__ == "__main__":
    main()
