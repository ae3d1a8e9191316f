"""The Singularity metadata of a tree (runtime.md §1.1), read for ``inspect``.

Paths are resolved inside the tree, so an image whose ``runscript`` is a symlink to
``/etc/shadow`` shows its own file or nothing, never the host's.
"""

from __future__ import annotations

import json
import os

from runtime.environment import ENV_DIR
from runtime.paths import host_path, resolve_in

RUNSCRIPT = "/.singularity.d/runscript"
TEST = "/.singularity.d/test"
LABELS = "/.singularity.d/labels.json"
DEFFILE = "/.singularity.d/Singularity"
LEGACY_ENVIRONMENT = "/environment"


def read_text(root: str, path: str) -> str | None:
    """The file at container path ``path``, or None if the tree has no regular file there."""
    where = host_path(root, resolve_in(root, path))
    if not os.path.isfile(where):
        return None
    with open(where, encoding="utf-8", errors="replace") as f:
        return f.read()


def labels(root: str) -> dict[str, str]:
    text = read_text(root, LABELS)
    if not text:
        return {}
    data = json.loads(text)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def environment(root: str) -> list[tuple[str, str]]:
    """(path, content) of each env script in the order the runtime sources them."""
    directory = host_path(root, resolve_in(root, ENV_DIR))
    if os.path.isdir(directory):
        names = sorted((n for n in os.listdir(directory) if n.endswith(".sh")), key=os.fsencode)
        scripts = [f"{ENV_DIR}/{n}" for n in names]
    else:
        scripts = [LEGACY_ENVIRONMENT]
    found = []
    for path in scripts:
        text = read_text(root, path)
        if text is not None:
            found.append((path, text))
    return found
