#!/usr/bin/env python3
"""Build a tiny Singularity-style container root from local material (no network).

The tree is busybox-static plus the ``/.singularity.d`` layout that ``singularity build``
writes (env scripts, runscript, labels), the bind targets runtimes need (/dev, /proc, /sys,
/tmp, /home, ...) and ``/etc/passwd``/``/etc/group``, so that siffs, ch-run and runc can all
run it. It is the example image of the README and the base of the test images.

    mkrootfs.py DIR        # then: mksquashfs DIR root.squashfs -all-root -noappend
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

BUSYBOX = "/bin/busybox"
APPLETS = (
    "sh",
    "ash",
    "ls",
    "cat",
    "echo",
    "env",
    "true",
    "false",
    "sleep",
    "id",
    "pwd",
    "printf",
    "test",
    "mkdir",
    "rm",
    "touch",
    "grep",
    "sed",
    "head",
    "tail",
    "wc",
    "uname",
    "date",
    "kill",
    "stat",
    "readlink",
    "find",
    "sort",
    "tr",
    "cut",
    "ps",
    "mount",
    "sha256sum",
    "hostname",
    "whoami",
)
RUNSCRIPT = """#!/bin/sh
echo "Hello from the siffs example container (busybox $(busybox | head -n 1 | cut -d' ' -f2))"
echo "GREETING=$GREETING"
if [ $# -gt 0 ]; then echo "arguments: $*"; fi
"""
ENV_BASE = "#!/bin/sh\n# Custom environment shell code should follow\n"
ENV_ENVIRONMENT = 'export GREETING="${GREETING:-hello from %environment}"\nexport EXAMPLE_IMAGE=1\n'
ENV_99_BASE = """#!/bin/sh
if [ -z "$LD_LIBRARY_PATH" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
PS1="Singularity> "
export LD_LIBRARY_PATH PS1
"""
LABELS = {
    "org.label-schema.schema-version": "1.0",
    "org.label-schema.build-date": "2026-01-01T00:00:00Z",
    "org.opencontainers.image.title": "siffs example (busybox)",
    "MAINTAINER": "siffs",
}
DEFFILE = """Bootstrap: scratch

%files
    /bin/busybox /bin/busybox

%environment
    export GREETING="${GREETING:-hello from %environment}"

%runscript
    echo "Hello from the siffs example container"

%labels
    MAINTAINER siffs
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def build_tree(root: Path) -> Path:
    """Populate ``root`` (created if needed) and return it."""
    if not os.path.exists(BUSYBOX):
        sys.exit(f"{BUSYBOX} not found: install Debian's busybox-static package")
    root.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "dev", "proc", "sys", "tmp", "var/tmp", "home", "root", "etc", "mnt", "opt", "usr/bin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in APPLETS:
        link = root / "bin" / applet
        if not link.is_symlink():
            link.symlink_to("busybox")
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    _write(root / "etc/group", "root:x:0:\nnogroup:x:65534:\n")
    _write(root / "etc/hosts", "")
    _write(root / "etc/resolv.conf", "")
    sd = root / ".singularity.d"
    (sd / "libs").mkdir(parents=True, exist_ok=True)
    _write(sd / "env/01-base.sh", ENV_BASE, 0o755)
    _write(sd / "env/90-environment.sh", ENV_ENVIRONMENT, 0o755)
    _write(sd / "env/99-base.sh", ENV_99_BASE, 0o755)
    _write(sd / "runscript", RUNSCRIPT, 0o755)
    _write(sd / "labels.json", json.dumps(LABELS, indent=4) + "\n")
    _write(sd / "Singularity", DEFFILE)
    for link, target in (
        ("singularity", ".singularity.d/runscript"),
        ("environment", ".singularity.d/env/90-environment.sh"),
    ):
        if not (root / link).is_symlink():
            (root / link).symlink_to(target)
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    build_tree(Path(sys.argv[1]))
