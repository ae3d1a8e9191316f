"""Generated ``/etc/passwd`` and ``/etc/group`` (runtime.md §4.4).

Programs look the user up by uid (``id``, ``whoami``, ssh, Python's ``getpass``); an image
does not know the host user, so the runtime adds or rewrites one line, keeping everything
else of the image's files.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import NamedTuple


class Identity(NamedTuple):
    """Who runs the container, as the host knows them."""

    uid: int
    gid: int
    name: str
    gecos: str
    home: str
    shell: str
    groups: tuple[int, ...]

    @classmethod
    def of_caller(cls) -> Identity:
        uid, gid = os.getuid(), os.getgid()
        try:
            entry = pwd.getpwuid(uid)
            name, gecos, home, shell = entry.pw_name, entry.pw_gecos, entry.pw_dir, entry.pw_shell
        except KeyError:  # a uid without a passwd entry (some batch systems): still runnable
            name, gecos, home, shell = str(uid), "", os.environ.get("HOME", "/"), "/bin/sh"
        return cls(uid, gid, name, gecos, home, shell, tuple(dict.fromkeys((gid, *os.getgroups()))))


def passwd_text(image_passwd: str, who: Identity, home: str) -> str:
    """The image's passwd with the caller's line (by uid) rewritten or appended."""
    lines = image_passwd.splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if len(fields) == 7 and fields[2] == str(who.uid):
            fields[0], fields[4], fields[5] = who.name, who.gecos, home
            lines[i] = ":".join(fields)
            break
    else:
        lines.append(f"{who.name}:x:{who.uid}:{who.gid}:{who.gecos}:{home}:{who.shell}")
    return "\n".join(lines) + "\n"


def group_text(image_group: str, who: Identity, names: dict[int, str] | None = None) -> str:
    """The image's group file plus a line for each of the caller's groups that has a host name."""
    lines = image_group.splitlines()
    present = {fields[2] for fields in (line.split(":") for line in lines) if len(fields) >= 3}
    for gid in who.groups:
        name = (names or {}).get(gid) or _group_name(gid)
        if name is not None and str(gid) not in present:
            lines.append(f"{name}:x:{gid}:{who.name}")
            present.add(str(gid))
    return "\n".join(lines) + ("\n" if lines else "")


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None
