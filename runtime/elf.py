"""Just enough of the ELF header to tell which machine a binary or library is built for.

``--nv`` uses it to skip host libraries of the wrong class (a 32-bit ``libcuda`` on a 64-bit
host), and a failed ``execve`` uses it to say "image is arm64, host is amd64" instead of a bare
"No such file or directory".
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

_MAGIC = b"\x7fELF"
#: e_machine values people meet, named as container platforms are.
MACHINES = {
    3: "386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390x",
    40: "arm",
    62: "amd64",
    183: "arm64",
    243: "riscv64",
    258: "loong64",
}


class Target(NamedTuple):
    """ELF class (1: 32-bit, 2: 64-bit) and machine, as in bytes 4 and 18-19 of the header."""

    elf_class: int
    machine: int

    def describe(self) -> str:
        name = MACHINES.get(self.machine, f"machine {self.machine}")
        return name if self.elf_class == 2 or self.machine in (3, 40) else f"{name} (32-bit)"


def read_target(path: str) -> Target | None:
    """The ELF target of ``path``, or None when it is not a readable ELF file."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return None
    if len(header) < 20 or not header.startswith(_MAGIC):
        return None
    machine = header[18:20]
    return Target(header[4], int.from_bytes(machine, "little" if header[5] == 1 else "big"))


def host_target() -> Target:
    """The target of the running interpreter: what the host can load into a process like ours."""
    target = read_target(os.path.realpath(sys.executable))
    if target is None:  # an interpreter that is not an ELF file: assume the common case
        return Target(2, 62)
    return target
