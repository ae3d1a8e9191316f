"""``siffs bundle``: an OCI runtime bundle that rootless ``runc`` runs on a tree (runtime.md §8.3).

No siffs code runs inside such a container, so the process is the container's own ``/bin/sh``
running the wrapper of ``envscripts`` with a tail that dispatches the runscript: the env
scripts are sourced exactly as ``siffs run`` sources them. The process runs as root of the
user namespace (the single mapping ``0 -> caller``), the only mapping runc accepts without
``newuidmap``; files the caller owns on the host appear as root's inside.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.environment import Overrides, identity_variables, injection_script
from runtime.envscripts import RUN_TAIL, wrapper
from runtime.errors import InvalidRequest
from runtime.layout import parse_binds
from runtime.paths import host_path, resolve_in

REQUIRED = ("/proc", "/sys", "/dev")
#: Signal-forwarding inits an image may ship, and how each is told where the command starts.
INITS: tuple[tuple[str, list[str]], ...] = (
    ("/usr/bin/tini", ["--"]),
    ("/sbin/tini", ["--"]),
    ("/usr/bin/dumb-init", []),
)
_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def restore_statements(forwarded: Mapping[str, str]) -> str:
    """§2.4 step 3 as shell: a host value fills a name the scripts left undefined; empty means unset."""
    lines = []
    for name, value in forwarded.items():
        lines.append(
            f'if [ -z "${{{name}+x}}" ]; then export {name}={shlex.quote(value)}; '
            f'elif [ -z "${name}" ]; then unset {name}; fi'
        )
    return "".join(line + "\n" for line in lines)


def config(
    root: str,
    args: Sequence[str],
    overrides: Overrides,
    forwarded: Mapping[str, str],
    *,
    binds: Sequence[str] = (),
    use_init: bool = False,
    evaluate: bool = True,
) -> dict[str, Any]:
    """The ``config.json`` of a bundle running ``root``'s runscript with ``args``."""
    missing = [p for p in REQUIRED if not os.path.isdir(host_path(root, resolve_in(root, p)))]
    if missing:
        raise InvalidRequest(f"runc needs these directories in the tree: {', '.join(missing)}")
    parsed = list(parse_binds(binds))
    mounts = []
    absent = []
    for source, dest, readonly in parsed:
        if os.path.lexists(host_path(root, resolve_in(root, dest))):
            options = ["rbind", "nosuid", "nodev"] + (["ro"] if readonly else [])
            mounts.append({"destination": dest, "type": "bind", "source": source, "options": options})
        else:
            absent.append(dest)
    if absent:
        raise InvalidRequest(f"runc cannot create bind destinations in a read-only tree: {', '.join(absent)}")
    script = wrapper(injection_script(overrides, evaluate), restore_statements(forwarded) + RUN_TAIL)
    process_args = ["/bin/sh", "-c", script, "/.singularity.d/actions/run", *args]
    if use_init:
        init = next(
            ((p, extra) for p, extra in INITS if os.access(host_path(root, resolve_in(root, p)), os.X_OK)),
            None,
        )
        if init is None:
            raise InvalidRequest(
                "--init: the image has no tini or dumb-init; without one the runscript is PID 1 and "
                "ignores SIGTERM unless it handles it"
            )
        process_args = [init[0], *init[1], *process_args]
    env = identity_variables(root, "run", "/root", [dest for _, dest, _ in parsed])
    uid, gid = os.getuid(), os.getgid()
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": process_args,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/",
            "capabilities": {
                kind: list(_CAPABILITIES) for kind in ("bounding", "effective", "permitted", "ambient")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": os.path.abspath(root), "readonly": True},
        "hostname": "siffs",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "none",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            },
            *mounts,
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": uid, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": gid, "size": 1}],
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user")],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def write(bundle_dir: str, document: Mapping[str, Any]) -> str:
    """Write ``config.json`` into ``bundle_dir`` (created if needed); its path."""
    os.makedirs(bundle_dir, exist_ok=True)
    path = os.path.join(bundle_dir, "config.json")
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    return path
