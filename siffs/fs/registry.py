"""Which siffs mounts are live, and what each daemon serves, for ``siffs mounts``.

The kernel's mount table says where ``fuse.siffs`` filesystems are mounted and from which
image; the daemon adds what only it knows (its pid, who verified the image) in a small JSON
record under ``$XDG_RUNTIME_DIR/siffs/mounts/`` (or the state directory), written once the
mount is live and removed when the daemon exits. A record whose mount is gone is ignored.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from siffs.fs.mountpoint import MountEntry, mount_table

FS_TYPE = "fuse.siffs"


@dataclass(frozen=True)
class MountRecord:
    mount_point: str
    image: str
    pid: int
    verified_by: str
    started: float


def state_dir() -> Path:
    """``$XDG_STATE_HOME/siffs`` (default ``~/.local/state/siffs``): daemon logs, and records
    where there is no runtime directory."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "siffs"


def registry_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "siffs" / "mounts"
    return state_dir() / "mounts"


def _path(mount_point: str) -> Path:
    return registry_dir() / (mount_point.strip("/").replace("/", "-") or "root")


def record(mount_point: str, image: str, verified_by: str) -> None:
    path = _path(mount_point)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = MountRecord(mount_point, image, os.getpid(), verified_by, time.time())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec)))
    os.replace(tmp, path.with_suffix(".json"))


def forget(mount_point: str) -> None:
    _path(mount_point).with_suffix(".json").unlink(missing_ok=True)


def _load(mount_point: str) -> MountRecord | None:
    try:
        data = json.loads(_path(mount_point).with_suffix(".json").read_text())
        rec = MountRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    return rec if rec.mount_point == mount_point else None


def live_mounts() -> list[tuple[MountEntry, MountRecord | None]]:
    """Every ``fuse.siffs`` mount in this mount namespace, with its daemon's record when known."""
    return [(entry, _load(entry.mount_point)) for entry in mount_table() if entry.fs_type == FS_TYPE]
