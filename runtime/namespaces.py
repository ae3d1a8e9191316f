"""Enter new user and mount namespaces as an unprivileged user (runtime.md §5 steps 2-3).

The caller keeps its own uid and gid inside (an identity map, not root), so files it creates
in binds belong to it on the host and programs see the user they expect. When the kernel
refuses, the message names the setting that refused: a bare EPERM tells a user nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess

from runtime import libc
from runtime.errors import NamespacesUnavailable
from runtime.subid import Mapping

_SYSCTLS = (
    ("kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
    ("user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
    (
        "kernel/apparmor_restrict_unprivileged_userns",
        "1",
        "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile allowing 'userns'",
    ),
)


def explain(err: int, proc_sys: str = "/proc/sys") -> str:
    """Why an unprivileged user namespace was refused, and what an administrator can change."""
    for name, blocking, fix in _SYSCTLS:
        try:
            with open(f"{proc_sys}/{name}") as f:
                value = f.read().strip()
        except OSError:
            continue
        if value == blocking:
            setting = name.replace("/", ".")
            return (
                f"unprivileged user namespaces are disabled on this host ({setting} = {value}); "
                f"ask an administrator to run: {fix}"
            )
    if err == errno.ENOSPC:
        return (
            "the limit of user namespaces is reached (user.max_user_namespaces); "
            "ask an administrator to raise it: sysctl -w user.max_user_namespaces=15000"
        )
    if err == errno.EINVAL:
        return "the kernel lacks unprivileged user namespaces (CONFIG_USER_NS), or the caller is threaded"
    return (
        f"cannot create a user namespace ({os.strerror(err)}): a seccomp filter or the container this "
        "runs in forbids it (Docker needs --security-opt seccomp=unconfined, or run on the host)"
    )


def enter(
    *,
    pid: bool = False,
    ipc: bool = False,
    uts: bool = False,
    net: bool = False,
    fakeroot: bool = False,
    ranges: Mapping | None = None,
) -> None:
    """Unshare user + mount (+ PID, IPC, UTS, network) namespaces and map the caller's ids.

    Onto themselves; with ``fakeroot``, onto 0 (root inside, the caller outside), and with
    ``ranges`` (``fakeroot`` only) uids and gids 1.. onto the caller's subordinate ranges.
    """
    uid, gid = os.getuid(), os.getgid()
    flags = libc.CLONE_NEWUSER | libc.CLONE_NEWNS
    for wanted, flag in (
        (pid, libc.CLONE_NEWPID),
        (ipc, libc.CLONE_NEWIPC),
        (uts, libc.CLONE_NEWUTS),
        (net, libc.CLONE_NEWNET),
    ):
        if wanted:
            flags |= flag
    helpers = _map_helpers(uid, gid, ranges) if fakeroot and ranges is not None else []
    try:
        libc.unshare(flags)
    except OSError as exc:
        for _, helper in helpers:
            helper.kill()
            helper.wait()
        raise NamespacesUnavailable(explain(exc.errno or 0)) from None
    if helpers:
        for program, helper in helpers:
            _, errors = helper.communicate(b"go\n")
            if helper.returncode != 0:
                why = os.fsdecode(errors).strip().splitlines() or [f"status {helper.returncode}"]
                raise NamespacesUnavailable(
                    f"--fakeroot: {program} could not map your subordinate ids ({why[-1]}); "
                    "use --ignore-subuid for the root-mapped namespace"
                )
        os.setgroups([0])  # root's group only, as Apptainer: the host's groups mean nothing inside
        return
    try:
        inside_uid, inside_gid = (0, 0) if fakeroot else (uid, gid)
        _write("/proc/self/uid_map", f"{inside_uid} {uid} 1\n")
        _write("/proc/self/setgroups", "deny\n")  # the gid map is refused before this
        _write("/proc/self/gid_map", f"{inside_gid} {gid} 1\n")
    except OSError as exc:
        raise NamespacesUnavailable(explain(exc.errno or 0)) from None


#: Waits for a line on stdin (the caller has unshared), then runs the helper: it must start before
#: the unshare, since started from inside the new namespace the setuid helpers are powerless.
_AFTER_GO = 'read -r _ && exec "$0" "$@"'


def _map_helpers(uid: int, gid: int, ranges: Mapping) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """newuidmap and newgidmap, waiting to write Apptainer's maps: ``0 ID 1`` and ``1 START COUNT``."""
    commands = []
    for program, own, subordinate in (("newuidmap", uid, ranges.uids), ("newgidmap", gid, ranges.gids)):
        path = shutil.which(program) or shutil.which(program, path="/usr/bin:/bin:/usr/sbin:/sbin")
        if path is None:
            raise NamespacesUnavailable(
                f"--fakeroot: you have /etc/subuid ranges, which need {program} "
                "(apt-get install uidmap); or use --ignore-subuid"
            )
        numbers = (os.getpid(), 0, own, 1, 1, subordinate.start, subordinate.size)
        commands.append((program, ["/bin/sh", "-c", _AFTER_GO, path, *map(str, numbers)]))
    return [
        (
            program,
            subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            ),
        )
        for program, command in commands
    ]


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def loopback_up() -> None:
    """Bring ``lo`` up in a new network namespace (``--network none``): it starts down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


#: The namespaces a joiner enters, in order (the user namespace first: it grants the rights for
#: the others), with the file of the holder that names each one.
_JOINED = (
    ("user", libc.CLONE_NEWUSER),
    ("mnt", libc.CLONE_NEWNS),
    ("ipc", libc.CLONE_NEWIPC),
    ("uts", libc.CLONE_NEWUTS),
    ("net", libc.CLONE_NEWNET),
    ("pid_for_children", libc.CLONE_NEWPID),
)


def join(holder: int) -> bool:
    """Enter the namespaces of process ``holder`` that differ from ours; True if a PID namespace is one.

    All are opened first: once in the mount namespace, ``/proc`` is the container's, where this
    process may not exist. ``setns`` into the mount namespace also moves root and cwd to its root.
    """
    opened: list[tuple[str, int, int]] = []
    try:
        for name, flag in _JOINED:
            mine = os.readlink(f"/proc/self/ns/{'pid' if name == 'pid_for_children' else name}")
            try:
                if os.readlink(f"/proc/{holder}/ns/{name}") != mine:
                    opened.append(
                        (name, flag, os.open(f"/proc/{holder}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
                    )
            except OSError as exc:
                raise NamespacesUnavailable(f"the container (pid {holder}) is gone: {exc.strerror}") from None
        for name, flag, fd in opened:
            try:
                libc.setns(fd, flag)
            except OSError as exc:
                raise NamespacesUnavailable(
                    f"cannot enter the container's {name} namespace: {exc.strerror}"
                ) from None
    finally:
        for _, _, fd in opened:
            os.close(fd)
    return any(flag == libc.CLONE_NEWPID for _, flag, _ in opened)
