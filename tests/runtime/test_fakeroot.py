"""--fakeroot with the test user's /etc/subuid and /etc/subgid ranges (newuidmap/newgidmap), as the test user.

The ranges are written by the tests and the files put back afterwards, byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.users import TEST_USER, user_dir

START = 300000
COUNT = 65536
FILES = ("/etc/subuid", "/etc/subgid")


@contextlib.contextmanager
def _ranges(line: str | None) -> Iterator[None]:
    """The test user's entry in both files replaced by ``line`` (None: no entry), restored afterwards."""
    saved: dict[str, bytes | None] = {}
    for path in FILES:
        try:
            saved[path] = Path(path).read_bytes()
        except FileNotFoundError:
            saved[path] = None
    try:
        for path in FILES:
            kept = [
                entry
                for entry in (saved[path] or b"").decode().splitlines()
                if entry.split(":")[0].lstrip("!") != TEST_USER
            ]
            Path(path).write_text("".join(f"{entry}\n" for entry in [*kept, *([line] if line else [])]))
        yield
    finally:
        for path, content in saved.items():
            if content is None:
                os.unlink(path)
            else:
                Path(path).write_bytes(content)


@pytest.fixture(scope="module")
def owned_tree(tree, work) -> Path:
    """A copy of the tree the test user owns: its files are root's inside under --fakeroot."""
    root = Path(user_dir(work, "fakeroot-tree"))
    subprocess.run(["cp", "-a", f"{tree}/.", str(root)], check=True)
    subprocess.run(["chown", "-R", f"{TEST_USER}:{TEST_USER}", str(root)], check=True)
    return root


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def test_ranges_map_root_and_the_subordinate_ids(siffs, owned_tree, work):
    """Apptainer's layout: 0 -> the user, 1.. -> the range; chown to another uid lands on the range."""
    overlay = Path(user_dir(work, "fakeroot-overlay"))
    script = (
        "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map | tr -s ' ' | sed 's/^ //'; "
        "mkdir -p /opt/pkg && touch /opt/pkg/f && chown 100:101 /opt/pkg/f && stat -c %u:%g /opt/pkg/f"
    )
    with _ranges(f"{TEST_USER}:{START}:{COUNT}"):
        result = siffs("exec", "--fakeroot", "--overlay", overlay, owned_tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    uid = _uid(TEST_USER)
    maps = [f"0 {uid} 1", f"1 {START} {COUNT}"]
    gid = os.stat(owned_tree).st_gid
    assert result.stdout.splitlines() == ["0", "0", *maps, f"0 {gid} 1", f"1 {START} {COUNT}", "100:101"]
    assert "root-mapped" not in result.stderr
    placed = os.stat(overlay / "upper" / "opt" / "pkg" / "f")
    assert (placed.st_uid, placed.st_gid) == (START + 99, START + 100)  # the mapped owner on the host
    assert os.stat(overlay / "upper" / "opt").st_uid == uid  # root's files are the user's


def test_ranges_with_writable_tmpfs_allow_chown(siffs, owned_tree):
    script = "touch /f && chown 100 /f && stat -c %u /f; id -G"
    with _ranges(f"{TEST_USER}:{START}:{COUNT}"):
        result = siffs("exec", "--fakeroot", "--writable-tmpfs", owned_tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["100", "0"]  # id -G: root only, as Apptainer


def test_without_ranges_root_mapped_with_the_warning(siffs, owned_tree):
    script = "cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'; touch /f; chown 100 /f 2>&- || echo refused"
    for line, options in ((None, ()), (f"{TEST_USER}:{START}:{COUNT}", ("--ignore-subuid",))):
        with _ranges(line):
            result = siffs(
                "exec", "--fakeroot", *options, "--writable-tmpfs", owned_tree, "/bin/sh", "-c", script
            )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [f"0 {_uid(TEST_USER)} 1", "refused"]
        assert result.stderr.startswith("WARNING: --fakeroot: root-mapped namespace")


def test_disabled_entry_is_root_mapped_and_small_ranges_are_refused(siffs, owned_tree):
    with _ranges(f"!{TEST_USER}:{START}:{COUNT}"):
        disabled = siffs("exec", "--fakeroot", owned_tree, "true")
    assert disabled.returncode == 0 and "root-mapped" in disabled.stderr
    with _ranges(f"{TEST_USER}:{START}:1000"):
        small = siffs("exec", "--fakeroot", owned_tree, "true")
    assert small.returncode == 255
    assert small.stderr.startswith("FATAL: --fakeroot: the ranges of siffs-test in /etc/subuid")


def test_a_uid_range_without_a_gid_range_is_refused(siffs, owned_tree):
    with _ranges(f"{TEST_USER}:{START}:{COUNT}"):
        subgid = Path("/etc/subgid")
        kept = [line for line in subgid.read_text().splitlines() if not line.startswith(TEST_USER)]
        subgid.write_text("".join(f"{line}\n" for line in kept))
        result = siffs("exec", "--fakeroot", owned_tree, "true")
    assert result.returncode == 255
    assert "has a range in /etc/subuid but none in /etc/subgid" in result.stderr
