"""Mount helpers for tests: the kernel's squashfs (the oracle) and siffs' FUSE daemon."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (kernel loop mounts)")


@contextlib.contextmanager
def kernel_mount(image: Path, mount_point: Path, offset: int = 0) -> Iterator[Path]:
    """``mount -t squashfs -o loop,ro,offset=N``: the kernel's own reading of the image."""
    require_root()
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "squashfs", "-o", f"loop,ro,offset={offset}", str(image), str(mount_point)],
        check=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def siffs(
    *argv: object,
    user: str | None = None,
    check: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the siffs CLI in a subprocess (as ``user`` if given), capturing its output."""
    cmd = [sys.executable, "-m", "siffs", *map(str, argv)]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    result = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=env, timeout=timeout, cwd=cwd, input=input_text
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"siffs {' '.join(map(str, argv))} failed ({result.returncode}): {result.stderr}"
        )
    return result


def is_mounted(mount_point: Path) -> bool:
    target = os.path.realpath(mount_point)
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == target for line in f)


def daemons_for(mount_point: Path) -> list[int]:
    """Pids of processes whose command line names ``mount_point`` (leftover daemons)."""
    needle = str(mount_point).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


@contextlib.contextmanager
def siffs_mount(
    image: Path,
    mount_point: Path,
    *options: str,
    user: str | None = None,
    unsigned: bool = True,
    key: Path | None = None,
) -> Iterator[Path]:
    """A real ``siffs mount`` for the duration of the block; unmounted (and checked) after.

    With ``key`` (the signer's public key) the mount takes the default, verified path:
    signatures checked, every read checked against the block table; the mount must say so.
    Without it, test images are unsigned unless a test signs them: ``unsigned`` adds
    ``--allow-unsigned``.
    """
    mount_point.mkdir(parents=True, exist_ok=True)
    flags: tuple[str, ...] = ("--key", str(key)) if key else ("--allow-unsigned",) if unsigned else ()
    siffs("mount", image, mount_point, *flags, *options, user=user, check=True)
    if key:
        (record,) = [r for r in json.loads(siffs("mounts", "--json", user=user).stdout)
                     if r["mount_point"] == str(mount_point)]  # fmt: skip
        assert record["verified_by"].endswith("(Ed25519)"), record  # not "nobody (--allow-unsigned)"
    try:
        yield mount_point
    finally:
        umount_and_wait(mount_point, user)


def umount_and_wait(mount_point: Path, user: str | None = None) -> None:
    """``siffs umount``, then wait (up to 10 s) until the mount's daemon has exited."""
    siffs("umount", mount_point, user=user)
    deadline = time.monotonic() + 10
    while daemons_for(mount_point) and time.monotonic() < deadline:
        time.sleep(0.05)


def as_at_a_terminal(argv: list[str]) -> list[str]:
    """``argv`` for a command a test interrupts with SIGINT, as Ctrl-C at a terminal does.

    A shell starts background jobs with SIGINT ignored, exec keeps it ignored, and Python then
    leaves it so: a test run started with ``&`` would see its SIGINT do nothing. The command is
    started through a one-line shim that gives SIGINT its default action first.
    """
    shim = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", shim, *argv]
