"""The caller's subordinate id ranges (``/etc/subuid``, ``/etc/subgid``) for ``--fakeroot``.

With a range, ``--fakeroot`` maps uid 0 inside to the caller and uids 1..N to the range, as
Apptainer does (``0 UID 1`` and ``1 START COUNT``), through the setuid helpers newuidmap and
newgidmap of the ``uidmap`` package: package managers can then give files to other users.
Apptainer's rules for choosing the entry are followed: an entry of exactly 65536 ids wins, else
the largest bigger one; entries that are all smaller are an error; an entry disabled by the
administrator (``!name:...``) means no range (the root-mapped namespace is used).
"""

from __future__ import annotations

import os
import pwd
from typing import NamedTuple

from runtime.errors import InvalidRequest

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
#: Apptainer's required range size (``validRangeCount``).
RANGE_SIZE = 65536


class Range(NamedTuple):
    """One line of /etc/subuid or /etc/subgid for the caller: ``size`` ids from ``start`` (the
    file's "count", which a named tuple has as a method)."""

    start: int
    size: int


class Mapping(NamedTuple):
    """The ranges of both files: uid and gid 0 map to the caller, 1.. to these."""

    uids: Range
    gids: Range


def caller_mapping(subuid: str = SUBUID, subgid: str = SUBGID) -> Mapping | None:
    """The caller's ranges, or None when ``subuid`` lists none (the root-mapped namespace applies).

    A listed user without a usable gid range, or with ranges too small, is an error saying so.
    """
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    uids = _choose(subuid, name, uid)
    if uids is None:
        return None
    gids = _choose(subgid, name, uid)
    if gids is None:
        raise InvalidRequest(
            f"--fakeroot: {name} has a range in {subuid} but none in {subgid}; ask an administrator "
            f"to add one (usermod --add-subgids), or use --ignore-subuid"
        )
    return Mapping(uids, gids)


def _choose(path: str, name: str, uid: int) -> Range | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidRequest(f"--fakeroot: cannot read {path}: {exc.strerror}") from None
    ranges: list[Range] = []
    for line in lines:
        fields = line.split(":")
        if len(fields) < 3 or fields[0].lstrip("!") not in (name, str(uid)):
            continue
        if fields[0].startswith("!"):
            return None  # disabled by the administrator: Apptainer falls back to root-mapped
        try:
            found = Range(int(fields[1]), int(fields[2]))
        except ValueError:
            continue
        if found.size > 0:
            ranges.append(found)
    if not ranges:
        return None
    exact = [r for r in ranges if r.size == RANGE_SIZE]
    larger = [r for r in ranges if r.size > RANGE_SIZE]
    if exact or larger:
        return exact[0] if exact else max(larger, key=lambda r: r.size)
    raise InvalidRequest(
        f"--fakeroot: the ranges of {name} in {path} all hold fewer than {RANGE_SIZE} ids; ask an "
        f"administrator for a range of {RANGE_SIZE}, or use --ignore-subuid"
    )
