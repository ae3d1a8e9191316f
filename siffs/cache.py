"""Size limits for siffs' per-user caches: usage, pruning (least recently used first), cleaning.

Every cache siffs keeps (verified block tables today; downloaded blobs and seed indexes as those
stages come) is a directory of independent files that can be rebuilt, so each one stays under a
byte limit by deleting the files used longest ago. A file's mtime records its last use: writers
set it by writing, readers call ``touch``. Files whose names start with a dot are writes in
progress and are left alone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

#: Overrides every cache's limit, in MiB (for sites with small home quotas, or big ones).
LIMIT_VARIABLE = "SIFFS_CACHE_LIMIT_MIB"


class Usage(NamedTuple):
    files: int
    bytes: int


def limit(default_mib: int) -> int:
    """The byte limit: ``$SIFFS_CACHE_LIMIT_MIB`` if set to a whole number, else the default."""
    value = os.environ.get(LIMIT_VARIABLE, "")
    mib = int(value) if value.isdigit() else default_mib
    return mib << 20


def _entries(directory: Path) -> list[tuple[float, int, Path]]:
    """(last use, size, path) of every finished file, oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):  # another siffs pruned it meanwhile
                st = entry.stat(follow_symlinks=False)
                found.append((st.st_mtime, st.st_size, Path(entry.path)))
    found.sort()
    return found


def usage(directory: Path) -> Usage:
    entries = _entries(directory)
    return Usage(len(entries), sum(size for _, size, _ in entries))


def touch(path: Path) -> None:
    """Record a use of ``path`` so that pruning keeps it longer (best effort)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def prune(directory: Path, max_bytes: int) -> Usage:
    """Delete the least recently used files until the rest fit in ``max_bytes``; what was freed."""
    entries = _entries(directory)
    total = sum(size for _, size, _ in entries)
    files = freed = 0
    for _, size, path in entries:
        if total - freed <= max_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            files += 1
            freed += size
    return Usage(files, freed)


def clean(directory: Path) -> Usage:
    """Delete every finished file; what was freed."""
    return prune(directory, 0)
