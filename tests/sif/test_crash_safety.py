"""Every modifying command, killed after each write it makes, leaves the old image or the new one.

A command runs in a child process whose ``os`` write calls are counted; after the Nth one the
child dies on the spot (``os._exit``, no clean-up), for N = 1, 2, ... until a run completes.
After each death the file must load in siffs and in the reference library, and be either the
image as it was or the image the complete run makes. Renames must also be durable: the file
is synced before it is renamed, and its directory after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from siffs.sif import Image, ObjectInput, create
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, FsType, PartType
from tests.support.reference import read_now

FAULT_EXIT = 99
SIGNATURE = 0x4005

#: Count write-like calls; die right after the Nth. Log renames and syncs for the order check.
_RUNNER = textwrap.dedent(
    """
    import os, sys
    limit = int(sys.argv[1])
    journal = open(sys.argv[2], "a", buffering=1) if sys.argv[2] != "-" else None
    calls = 0

    def counted(name, fn):
        def call(*args, **kwargs):
            global calls
            if journal and name in ("replace", "rename", "fsync"):
                target = args[0] if name == "fsync" else args[1]
                if isinstance(target, int):
                    target = os.readlink(f"/proc/self/fd/{target}")
                journal.write(f"{name} {os.fspath(target)}\\n")
            result = fn(*args, **kwargs)
            if name != "fsync":
                calls += 1
                if calls == limit:
                    os._exit(FAULT_EXIT)
            return result
        return call

    for name in ("write", "pwrite", "ftruncate", "replace", "rename", "fsync"):
        setattr(os, name, counted(name, getattr(os, name)))
    if sys.argv[3] == "-c":  # a library call the CLI does not offer
        exec(sys.argv[4])
        sys.exit(0)
    from siffs.cli.main import main
    sys.exit(main(sys.argv[3:]))
    """
).replace("FAULT_EXIT", str(FAULT_EXIT))


@pytest.fixture
def runner(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(_RUNNER)
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", XDG_CONFIG_HOME=str(tmp_path / "config"))

    def run(limit: int, *argv: object, journal: Path | None = None) -> int:
        cmd = [sys.executable, str(script), str(limit), str(journal or "-"), *map(str, argv)]
        return subprocess.run(cmd, env=env, capture_output=True, check=False).returncode

    return run


def view(path: Path) -> dict[str, object]:
    """What both libraries see; a signature's bytes (which may hold a time) are left out."""
    with Image.open(path) as image:
        ours = [(d.id, d.data_type, d.offset, d.size) for d in image.descriptors]
    try:
        ref = read_now(path)  # the reference library (Go), through the oracle
    except RuntimeError as exc:
        raise AssertionError(f"the reference library refuses it: {exc}") from None
    assert [(o["id"], o["data_type"], o["offset"], o["size"]) for o in ref["descriptors"]] == ours
    for o in ref["descriptors"]:
        if o["data_type"] == SIGNATURE:
            o.pop("data_sha256")
    return ref


def base_image(path: Path) -> Path:
    primary = partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, b"02")
    part = ObjectInput(DataType.PARTITION, os.urandom(50_000), extra=primary)
    system = ObjectInput(
        DataType.PARTITION, b"s" * 9000, group=1, extra=partition_extra(FsType.RAW, PartType.SYSTEM, b"02")
    )
    create(path, [part, system, ObjectInput(DataType.GENERIC, b"x" * 5000)], when=1_600_000_000)
    return path


def ed25519_key(path: Path) -> Path:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


def _library(call: str) -> list[str]:
    """A call of ``siffs.sif`` the CLI does not offer, for the runner."""
    return ["-c", f"import siffs.sif; siffs.sif.{call}"]


EDITS = {
    "add": lambda img, tmp: ["add", img, tmp / "obj", "--datatype", "7"],
    "del": lambda img, tmp: ["del", "3", img],
    "setprim": lambda img, tmp: ["setprim", "2", img],
    "sign": lambda img, tmp: ["sign", img, "--key", tmp / "key.pem"],
    "delete-zero": lambda img, tmp: _library(f"delete({str(img)!r}, 2, zero=True)"),
    "delete-compact": lambda img, tmp: _library(f"delete({str(img)!r}, 3, compact=True)"),
}


@pytest.mark.parametrize("command", sorted(EDITS))
def test_edits_killed_at_every_write_leave_old_or_new(tmp_path, runner, command):
    pristine = base_image(tmp_path / "pristine.sif")
    (tmp_path / "obj").write_bytes(os.urandom(20_000))
    ed25519_key(tmp_path / "key.pem")
    image = tmp_path / "image.sif"
    old = view(pristine)
    shutil.copy(pristine, image)
    assert runner(0, *EDITS[command](image, tmp_path)) == 0
    new = view(image)
    assert new != old
    for limit in range(1, 100):
        shutil.copy(pristine, image)
        status = runner(limit, *EDITS[command](image, tmp_path))
        assert view(image) in (old, new), f"{command} killed after write {limit}"
        if status != FAULT_EXIT:
            assert status == 0
            break
    else:
        pytest.fail(f"{command} never completed")
    assert limit > 1  # there was a write to kill it after


def test_create_killed_at_every_write_leaves_old_or_new(tmp_path, runner):
    rootfs = tmp_path / "rootfs.squashfs"
    rootfs.write_bytes(b"hsqs" + os.urandom(60_000))
    image = base_image(tmp_path / "image.sif")
    old = view(image)
    for limit in range(1, 100):
        status = runner(limit, "create", image, rootfs)
        current = view(image)
        assert current == old or len(current["descriptors"]) == 1, f"create killed after write {limit}"
        if status != FAULT_EXIT:
            assert status == 0
            break
    assert view(image) != old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left over


def _renames_are_durable(journal: Path) -> None:
    """Each rename follows an fsync of the file and is followed by an fsync of its directory."""
    lines = [line.split(" ", 1) for line in journal.read_text().splitlines()]
    renames = [i for i, (op, _) in enumerate(lines) if op in ("replace", "rename")]
    assert renames
    for i in renames:
        target = lines[i][1]
        synced = {path for op, path in lines[:i] if op == "fsync"}
        assert any(Path(p).parent == Path(target).parent for p in synced), (
            f"{target} renamed before its new content was synced"
        )
        assert ("fsync", str(Path(target).parent)) in [tuple(x) for x in lines[i + 1 :]], (
            f"rename to {target} not made durable (directory not synced)"
        )


def test_create_and_key_import_sync_before_and_after_rename(tmp_path, runner):
    rootfs = tmp_path / "rootfs.squashfs"
    rootfs.write_bytes(b"hsqs" + os.urandom(1000))
    journal = tmp_path / "journal"
    assert runner(0, "create", tmp_path / "out.sif", rootfs, journal=journal) == 0
    _renames_are_durable(journal)
    journal.unlink()
    key = ed25519_key(tmp_path / "key.pem")
    assert runner(0, "key", "import", key, journal=journal) == 0
    _renames_are_durable(journal)
