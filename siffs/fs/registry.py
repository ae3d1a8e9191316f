"""Which siffs mounts are live, and what each daemon serves, for ``siffs mounts``.

The kernel's mount table says where ``fuse.siffs`` filesystems are mounted and from which
image; the daemon adds what only it knows (its pid, who verified the image) in a small JSON
record under ``$XDG_RUNTIME_DIR/siffs/mounts/`` (or the state directory), written once the
mount is live and removed when the daemon exits. A record whose mount is gone is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from siffs.fs.mountpoint import MountEntry, mount_table

if TYPE_CHECKING:
    from hashlib import sha256
else:  # the interpreter's own SHA-256, as random takes _sha512: hashlib loads OpenSSL (~2 ms a start)
    try:
        from _sha256 import sha256
    except ImportError:  # an interpreter built without it
        from hashlib import sha256

FS_TYPE = "fuse.siffs"


class MountRecord(NamedTuple):
    """What a daemon publishes about its mount: the image, its pid, who verified it."""

    mount_point: str
    image: str
    pid: int
    verified_by: str
    started: float
    #: Unexpected exceptions the daemon's handlers met (bugs; see ``siffs.fs.operations``).
    internal_errors: int = 0


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


def file_stem(mount_point: str) -> str:
    """A file name for ``mount_point``'s record and log: readable, and never shared by two paths.

    Flattening the path alone is not injective (``/a-b/c`` and ``/a/b-c``), so a digest of the
    exact path follows a readable prefix, which is only there to help people find the file.
    """
    readable = re.sub(r"[^A-Za-z0-9._]+", "-", mount_point).strip("-.")[-64:] or "root"
    digest = sha256(os.fsencode(mount_point)).hexdigest()[:16]
    return f"{readable}-{digest}"


def _path(mount_point: str) -> Path:
    return registry_dir() / f"{file_stem(mount_point)}.json"


def record(mount_point: str, image: str, verified_by: str) -> None:
    """Publish this daemon's record for ``mount_point``."""
    _write(MountRecord(mount_point, image, os.getpid(), verified_by, time.time()))


def count_internal_errors(mount_point: str, count: int) -> None:
    """Update the internal-error count in this daemon's record (if the record is still its own).

    Best effort: it runs inside a request handler, which must still answer.
    """
    rec = _load(mount_point)
    if rec is not None and rec.pid == os.getpid():
        with contextlib.suppress(OSError):
            _write(rec._replace(internal_errors=count))


def _write(rec: MountRecord) -> None:
    path = _path(rec.mount_point)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec._asdict()))
    os.replace(tmp, path)


def forget(mount_point: str) -> None:
    """Remove the record of ``mount_point`` if this process wrote it (another daemon may own it now)."""
    rec = _load(mount_point)
    if rec is not None and rec.pid == os.getpid():
        _path(mount_point).unlink(missing_ok=True)


def _load(mount_point: str) -> MountRecord | None:
    try:
        data = json.loads(_path(mount_point).read_text())
        rec = MountRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    return rec if rec.mount_point == mount_point else None


def live_mounts() -> list[tuple[MountEntry, MountRecord | None]]:
    """Every ``fuse.siffs`` mount in this mount namespace, with its daemon's record when known."""
    return [(entry, _load(entry.mount_point)) for entry in mount_table() if entry.fs_type == FS_TYPE]
