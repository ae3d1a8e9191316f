"""``ls -l``-style lines for the CLI's ``siffs ls``: one formatter, so listings look alike everywhere.

The columns are those of ``ls -ln --time-style=long-iso`` (numeric ids: the image's users
are not the host's), with the time in UTC so that a listing is the same on every machine.
Names are bytes in the image and may be anything but "/" and NUL; they are shown the way
``ls -b`` shows them, so a newline in a name cannot forge a line of output.
"""

from __future__ import annotations

import os
import stat
import time

from siffs.squashfs.inode import Stat

_ESCAPES = {ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r", ord(" "): "\\ "}


def quote_name(name: bytes) -> str:
    """``name`` with non-printable bytes as ``\\ooo`` octal and backslash, blanks escaped (like ``ls -b``).

    Valid UTF-8 text is kept as text; bytes that do not decode are escaped one by one.
    """
    text = name.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, carried by surrogateescape
            out.append(f"\\{code - 0xDC00:03o}")
        elif not ch.isprintable():
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def format_long(st: Stat, name: bytes, target: bytes | None = None) -> str:
    """One ``ls -ln`` line for an entry called ``name``; ``target`` is a symlink's target."""
    if stat.S_ISCHR(st.mode) or stat.S_ISBLK(st.mode):
        size = f"{os.major(st.rdev)}, {os.minor(st.rdev)}"
    else:
        size = str(st.size)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.mtime))
    line = (
        f"{stat.filemode(st.mode)} {st.nlink:>3} {st.uid:>5} {st.gid:>5} {size:>10} {when} {quote_name(name)}"
    )
    if target is not None:
        line += " -> " + quote_name(target)
    return line
