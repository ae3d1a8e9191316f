"""Records of running instances (``siffs instance``): one JSON file per name in a state directory.

A record names the process holding the instance's namespaces (``launch.start_container``'s
pid, which ``instance://NAME`` joins and ``instance stop`` signals) and the supervisor that
keeps the image mounted for as long as the instance lives. Records are written crash-safe;
one whose processes are gone is removed by whoever finds it (``live``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, field

from runtime.errors import InvalidRequest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class Instance:
    name: str
    #: Holds the namespaces; signals sent to it reach the start script.
    pid: int
    #: Keeps the image mounted; gone once the instance has ended.
    supervisor: int
    image: str
    root: str
    log: str
    #: What joiners must share with the instance: its home, containment, identity mode.
    options: dict[str, object] = field(default_factory=dict)


def check_name(name: str) -> str:
    if not _NAME.match(name) or len(name) > 128:
        raise InvalidRequest(f"instance name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def _path(directory: str, name: str) -> str:
    return os.path.join(directory, check_name(name) + ".json")


def write(directory: str, instance: Instance) -> None:
    """Write the record crash-safe: temp file, fsync, rename, fsync of the directory."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    target = _path(directory, instance.name)
    temporary = f"{target}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(asdict(instance), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(directory: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(directory, name))


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def live(directory: str) -> list[Instance]:
    """The running instances, by name; records of ended ones are removed on the way."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(directory)):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(directory, entry)
            try:
                with open(path, encoding="utf-8") as f:
                    instance = Instance(**json.load(f))
            except (OSError, ValueError, TypeError):
                continue  # being written, or not ours
            if alive(instance.pid) and alive(instance.supervisor):
                found.append(instance)
            else:
                remove(directory, instance.name)
    return found


def find(directory: str, name: str) -> Instance:
    for instance in live(directory):
        if instance.name == name:
            return instance
    raise InvalidRequest(f"no instance named {name!r} is running (siffs instance list)")
