"""The Singularity metadata of a tree (runtime.md §1.1), read for ``inspect``.

Paths are resolved inside the tree, so an image whose ``runscript`` is a symlink to
``/etc/shadow`` shows its own file or nothing, never the host's.
"""

from __future__ import annotations

import fnmatch
import json
import os

from runtime.paths import host_path, resolve_in

METADATA_DIR = "/.singularity.d"
APPS_DIR = "/scif/apps"
DEFFILE = "/.singularity.d/Singularity"
LEGACY_ENVIRONMENT = "/environment"
#: The files ``inspect`` shows, relative to the image's or an app's metadata directory.
FILES = {
    "runscript": "runscript",
    "test": "test",
    "startscript": "startscript",
    "helpfile": "runscript.help",
    "labels": "labels.json",
}


def metadata_dir(app: str = "") -> str:
    """Where the image's own metadata lives, or that of SCIF app ``app``."""
    return f"{APPS_DIR}/{app}/scif" if app else METADATA_DIR


def apps(root: str) -> list[str]:
    """The SCIF apps of the tree (directories of ``/scif/apps`` with a ``scif`` inside), sorted."""
    directory = host_path(root, resolve_in(root, APPS_DIR))
    if not os.path.isdir(directory):
        return []
    return sorted(
        name
        for name in os.listdir(directory)
        if os.path.isdir(host_path(root, resolve_in(root, metadata_dir(name))))
    )


def read_text(root: str, path: str) -> str | None:
    """The file at container path ``path``, or None if the tree has no regular file there."""
    where = host_path(root, resolve_in(root, path))
    if not os.path.isfile(where):
        return None
    with open(where, encoding="utf-8", errors="replace") as f:
        return f.read()


def labels(root: str, app: str = "") -> dict[str, str]:
    text = read_text(root, f"{metadata_dir(app)}/{FILES['labels']}")
    if not text:
        return {}
    data = json.loads(text)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def environment(root: str, app: str = "") -> list[tuple[str, str]]:
    """(path, content) of the env scripts a user wrote, as ``apptainer inspect --environment`` shows.

    Only the docker env file and ``9*-environment.sh`` (``%environment``, what ``%post`` added):
    the build's own base scripts tell the user nothing. Pre-2.3 images have ``/environment``.
    """
    env_dir = f"{metadata_dir(app)}/env"
    directory = host_path(root, resolve_in(root, env_dir))
    if os.path.isdir(directory):
        names = sorted(os.listdir(directory), key=os.fsencode)
        patterns = ("9*-environment.sh",) if app else ("10-docker*.sh", "9*-environment.sh")
        scripts = [f"{env_dir}/{n}" for p in patterns for n in names if fnmatch.fnmatchcase(n, p)]
    else:
        scripts = [] if app else [LEGACY_ENVIRONMENT]
    found = []
    for path in scripts:
        text = read_text(root, path)
        if text is not None:
            found.append((path, text))
    return found
