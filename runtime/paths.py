"""Paths inside a tree, resolved the way the container will see them.

A destination such as ``/var/run/x`` may cross symlinks of the image (``/var/run -> /run``),
and an absolute link must be read relative to the tree, never the host: this is what keeps
a bind or a placeholder from landing outside the tree whatever the image's links say.
"""

from __future__ import annotations

import os
import stat

_MAX_LINKS = 40


def normalise(path: str) -> str:
    """``path`` as an absolute container path without ``.``, ``..`` or repeated slashes (lexically)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/" + "/".join(parts)


def resolve_in(root: str, path: str) -> str:
    """The container path ``path`` names once the image's symlinks are followed inside ``root``.

    Components that do not exist are kept as given: the result is where a placeholder
    would have to be created. Symlink loops raise ``OSError(ELOOP)``.
    """
    done: list[str] = []
    todo = [p for p in path.split("/") if p]
    links = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, part)
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            return normalise("/".join([*done, part, *todo]))
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(40, "too many levels of symbolic links in the image", path)
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(part)
    return "/" + "/".join(done)


def host_path(root: str, container_path: str) -> str:
    """Where a resolved container path lives in the tree on the host."""
    return os.path.join(root, container_path.lstrip("/"))


def real_path(path: str) -> str:
    """``path`` with every symlink resolved, as the container's set-up must name it.

    The set-up sees the host under a prefix (``/host`` of its own root), where a symlink with an
    absolute target (``/var/run``, a CVMFS or home-directory link) would point into the new root
    instead of the host: resolved here, on the host side, it never has to be followed there.
    """
    return os.path.realpath(path)
