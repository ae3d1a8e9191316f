"""Real siffs mounts, compared with the kernel's squashfs, as root and as an unprivileged user."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from siffs.sif import Image, ObjectInput, add, create
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, FsType, PartType
from tests.support.hostns import private_mounts, replace_device
from tests.support.images import mksquashfs
from tests.support.mounts import daemons_for, is_mounted, kernel_mount, siffs, siffs_mount
from tests.support.trees import assert_same_tree, snapshot
from tests.support.users import TEST_USER, ensure_user, user_dir


def partition_offset(sif: Path) -> int:
    with Image.open(sif) as img:
        return img.primary_partition().offset


def test_mount_equals_kernel(verified_image, signing_key, tmp_path):
    """The default path (signed image, signer's key: every read checked) against the kernel."""
    image = verified_image
    with kernel_mount(image, tmp_path / "kernel", partition_offset(image)) as k:
        expected = snapshot(k)
    with siffs_mount(image, tmp_path / "fuse", key=signing_key.public) as m:
        actual = snapshot(m)
        again = snapshot(m)  # warm: everything now from the kernel's caches
    assert_same_tree(actual, expected)
    assert_same_tree(again, expected)


def test_mount_table_df_and_statfs(verified_image, signing_key, tmp_path):
    image = verified_image
    with kernel_mount(image, tmp_path / "kernel", partition_offset(image)) as k:
        kernel_vfs = os.statvfs(k)
    with siffs_mount(image, tmp_path / "fuse", key=signing_key.public) as m:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        line = next(line for line in mountinfo if line.split(" ")[4] == str(m))
        fs_type, source = line.split(" - ")[1].split(" ")[:2]
        assert fs_type == "fuse.siffs"
        assert source == str(image)
        vfs = os.statvfs(m)
        assert (vfs.f_bsize, vfs.f_blocks, vfs.f_bfree, vfs.f_files, vfs.f_namemax) == (
            kernel_vfs.f_bsize,
            kernel_vfs.f_blocks,
            0,
            kernel_vfs.f_files,
            256,
        )
        df = subprocess.run(
            ["df", "--output=source,fstype", str(m)], capture_output=True, text=True, check=True
        )
        assert str(image) in df.stdout
        assert "fuse.siffs" in df.stdout
        assert os.listdir(m)  # ls works
        assert os.readlink(m / "singularity") == ".singularity.d/runscript"


def test_read_only_and_errnos(verified_image, signing_key, tmp_path):
    with siffs_mount(verified_image, tmp_path / "fuse", key=signing_key.public) as m:
        for action in (
            lambda: os.open(m / "new", os.O_WRONLY | os.O_CREAT),
            lambda: os.open(m / "data/one", os.O_RDWR),
            lambda: os.mkdir(m / "d"),
            lambda: os.unlink(m / "data/one"),
            lambda: os.rename(m / "data/one", m / "data/two"),
            lambda: os.symlink("x", m / "link"),
            lambda: os.chmod(m / "data/one", 0o777),
            lambda: os.setxattr(m / "data/one", "user.x", b"1"),
        ):
            with pytest.raises(OSError) as info:
                action()
            assert info.value.errno == errno.EROFS
        with pytest.raises(FileNotFoundError):
            os.stat(m / "no-such-file")
        with pytest.raises(FileNotFoundError):  # the cached negative entry answers the same
            os.stat(m / "no-such-file")
        with pytest.raises(OSError) as info:
            os.getxattr(m / "data/one", "user.none")
        assert info.value.errno == errno.ENODATA
        with pytest.raises(OSError) as info:
            os.stat(m / "data/loop/x")
        assert info.value.errno == errno.ELOOP
        assert sorted(os.listdir(m / "data"))[:2] == ["attrs", "big.bin"]
        listing = subprocess.run(["ls", "-a", str(m)], capture_output=True, check=True).stdout.split(b"\n")
        assert listing[:2] == [b".", b".."]


def test_name_too_long_as_the_kernel_says(image, tmp_path):
    # squashfs refuses names over 256 bytes before searching; FUSE itself allows 1024.
    with Image.open(image) as img:
        offset = img.primary_partition().offset
    names = ["n" * 256, "n" * 257, "n" * 1024]

    def errnos(root: Path) -> list[int]:
        found = []
        for name in names:
            with pytest.raises(OSError) as info:
                os.lstat(root / "data" / name)
            found.append(info.value.errno)
        return found

    with kernel_mount(image, tmp_path / "kernel", offset) as k:
        expected = errnos(k)
    assert expected == [errno.ENOENT, errno.ENAMETOOLONG, errno.ENAMETOOLONG]
    with siffs_mount(image, tmp_path / "fuse") as m:
        assert errnos(m) == expected
        assert errnos(m) == expected  # and again, once the kernel may have cached an answer


def as_user(*cmd: object) -> str:
    """Run ``cmd`` as the test user: without allow_other, only the mounting user sees a FUSE mount."""
    return subprocess.run(
        ["runuser", "-u", TEST_USER, "--", *map(str, cmd)], capture_output=True, text=True, check=True
    ).stdout


def test_unprivileged_mount(verified_image, signing_key, tmp_path):
    ensure_user()
    mnt = Path(user_dir(tmp_path, "user-mnt"))
    with siffs_mount(verified_image, mnt, user=TEST_USER, key=signing_key.public) as m:
        assert "Hello from the siffs example" in as_user("cat", m / ".singularity.d/runscript")
        assert as_user("stat", "-c", "%u:%g", m / "bin/busybox").strip() == "0:0"  # the image's owners
        with pytest.raises(PermissionError):
            os.listdir(m)  # other users (root included) are kept out unless allow_other is given
    assert not is_mounted(mnt)


def test_unprivileged_mount_with_uid_option(image, tmp_path):
    user = ensure_user()
    mnt = Path(user_dir(tmp_path, "uid-mnt"))
    with siffs_mount(image, mnt, "-o", f"uid={user.pw_uid},gid={user.pw_gid}", user=TEST_USER) as m:
        assert as_user("stat", "-c", "%u:%g", m / "bin/busybox").strip() == f"{user.pw_uid}:{user.pw_gid}"


def test_mount_inside_user_namespace(image, tmp_path):
    ensure_user()
    mnt = user_dir(tmp_path, "ns-mnt")
    script = (
        f'"$PY" -m siffs mount --allow-unsigned {image} {mnt} && cat {mnt}/etc/passwd'
        f' && "$PY" -m siffs umount {mnt}'
    )
    result = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "unshare", "-Urm", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, PY=sys.executable),
        cwd=Path(__file__).parents[2],
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "root:x:0:0" in result.stdout


def _assert_refused(result, code, text, mount_point, daemons=0):
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("siffs: warning:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert text in result.stderr
    assert len(daemons_for(mount_point)) == daemons  # no daemon left behind


def test_bad_mount_points(image, tmp_path):
    missing = tmp_path / "missing"
    _assert_refused(siffs("mount", image, missing), 11, "does not exist", missing)
    afile = tmp_path / "afile"
    afile.write_text("x")
    _assert_refused(siffs("mount", image, afile), 11, "not a directory", afile)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    _assert_refused(siffs("mount", image, full), 11, "not empty", full)
    with siffs_mount(image, tmp_path / "busy") as busy:
        _assert_refused(siffs("mount", image, busy), 11, "already mounted", busy, daemons=1)
    _assert_refused(siffs("mount", image, full, "-o", "bogus"), 2, "unknown mount option", full)


def test_bad_images(tmp_path, image):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _assert_refused(siffs("mount", tmp_path / "nope.sif", mnt), 3, "no such file", mnt)
    (tmp_path / "text").write_text("not an image" * 20)
    _assert_refused(siffs("mount", tmp_path / "text", mnt), 4, "not a SIF file", mnt)
    no_squash = tmp_path / "raw.sif"
    create(
        no_squash,
        [
            ObjectInput(
                DataType.PARTITION, b"raw data", extra=partition_extra(FsType.RAW, PartType.PRIMSYS, b"02")
            )
        ],
    )
    _assert_refused(siffs("mount", no_squash, mnt), 10, "SquashFS only", mnt)
    empty = tmp_path / "empty.sif"
    create(empty, [])
    _assert_refused(siffs("mount", empty, mnt), 5, "no primary system partition", mnt)
    corrupt = tmp_path / "corrupt.sif"
    # (where in the superblock, what, exit code, message): not SquashFS at all is UNSUPPORTED (10),
    # a SquashFS superblock that lies (inode table past the end) is CORRUPT_FILESYSTEM (9).
    for at, data, code, text in (
        (0, b"\xff" * 96, 10, "not a SquashFS image"),
        (64, b"\xfe" * 8, 9, "bad SquashFS superblock: inode table at"),
    ):
        shutil.copyfile(image, corrupt)
        with open(corrupt, "r+b") as f:
            f.seek(partition_offset(image) + at)
            f.write(data)
        _assert_refused(siffs("mount", "--allow-unsigned", corrupt, mnt), code, text, mnt)
        assert not is_mounted(mnt)


def test_signals_unmount_cleanly(image, tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        mnt = tmp_path / f"sig{sig}"
        mnt.mkdir()
        siffs("mount", "--allow-unsigned", image, mnt, check=True)
        (pid,) = daemons_for(mnt)
        os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while (is_mounted(mnt) or daemons_for(mnt)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_mounted(mnt)
        assert not daemons_for(mnt)


@pytest.mark.parametrize("early", ["1", "0"])
def test_the_daemon_keeps_nothing_its_caller_gave_it(image, tmp_path, early):
    """A pipe (or a lock) the caller of ``siffs mount`` holds is closed in the long-lived daemon:
    the pipe's reader sees its end as soon as the command has returned."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-m", "siffs", "mount", "--allow-unsigned", str(image), str(mnt)]
    env = dict(os.environ, SIFFS_EARLY_MOUNT=early)
    try:
        done = subprocess.run(argv, check=False, pass_fds=(write_end,), env=env, capture_output=True)
        os.close(write_end)
        assert done.returncode == 0, done.stderr.decode()
        os.set_blocking(read_end, False)
        assert os.read(read_end, 1) == b""  # end of file: nobody holds the write end any more
    finally:
        os.close(read_end)
        siffs("umount", mnt)


def test_umount_recovers_after_kill_9(image, tmp_path):
    mnt = tmp_path / "killed"
    mnt.mkdir()
    siffs("mount", "--allow-unsigned", image, mnt, check=True)
    (pid,) = daemons_for(mnt)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(OSError) as info:
        os.listdir(mnt)
    assert info.value.errno == errno.ENOTCONN
    remount = siffs("mount", "--allow-unsigned", image, mnt)
    assert remount.returncode == 11 and "siffs umount" in remount.stderr
    siffs("umount", mnt, check=True)
    assert not is_mounted(mnt)
    assert os.listdir(mnt) == []
    assert siffs("umount", mnt).returncode == 11  # not mounted any more: said so


def test_image_truncated_under_live_mount(image, tmp_path):
    victim = tmp_path / "victim.sif"
    shutil.copyfile(image, victim)
    offset = partition_offset(victim)
    with open(victim, "rb") as f:
        f.seek(offset + 64)  # SquashFS superblock: inode_table_start
        data_end = int.from_bytes(f.read(8), "little")
    with siffs_mount(victim, tmp_path / "live") as m:
        files = [p for p in m.rglob("*") if p.is_file() and not p.is_symlink()]
        os.truncate(victim, offset + data_end // 2)  # the second half of all file data is gone
        ok, eio = [], []
        for path in files:
            try:
                path.read_bytes()
                ok.append(path)
            except OSError as exc:
                assert exc.errno == errno.EIO, (path, exc)
                eio.append(path)
        assert ok and eio
        assert os.listdir(m / "etc")  # still serving
        assert is_mounted(m)


def test_mount_all_partitions_and_objects(image, tmp_path):
    sif = tmp_path / "multi.sif"
    shutil.copyfile(image, sif)
    part = tmp_path / "second.squashfs"
    tree = tmp_path / "second"
    tree.mkdir()
    (tree / "hello.txt").write_text("second partition")
    mksquashfs(tree, part, "-all-root")
    add(
        sif,
        ObjectInput(
            DataType.PARTITION,
            part.read_bytes(),
            name=b"extra",
            extra=partition_extra(FsType.SQUASHFS, PartType.DATA, b"02"),
        ),
    )
    add(sif, ObjectInput(DataType.LABELS, b'{"a": "b"}'))
    with siffs_mount(sif, tmp_path / "all", "--all") as m:
        assert sorted(os.listdir(m)) == ["1", "2-extra", "sif-objects"]
        assert (m / "2-extra/hello.txt").read_text() == "second partition"
        assert (m / "1/etc/passwd").read_text().startswith("root:")
        assert os.listdir(m / "sif-objects") == ["3-labels.json"]
        assert (m / "sif-objects/3-labels.json").read_bytes() == b'{"a": "b"}'
        assert os.stat(m / "1").st_ino != os.stat(m / "2-extra").st_ino
        assert os.path.samefile(m / "1/..", m)
    result = siffs("mount", "--all", "--partition", "1", sif, tmp_path / "all")
    assert result.returncode == 2


def test_allow_other_refusal_is_explained(image, tmp_path):
    ensure_user()
    conf = Path("/etc/fuse.conf")
    if conf.exists() and "\nuser_allow_other" in "\n" + conf.read_text():
        pytest.skip("this machine allows allow_other for users")
    mnt = Path(user_dir(tmp_path, "ao"))
    result = siffs("mount", "--allow-unsigned", "-o", "allow_other", image, mnt, user=TEST_USER)
    assert result.returncode == 11
    assert "user_allow_other" in result.stderr  # fusermount3's own reason reaches the user
    assert not is_mounted(mnt) and not daemons_for(mnt)


def test_mounts_lists_live_mounts_and_umount_all(image, tmp_path):
    """``umount --all`` takes every siffs mount it sees: here only this test's (a private mount
    namespace, so that mounts of other users of the machine are never touched)."""
    with private_mounts():
        _mounts_and_umount_all(image, tmp_path)


def _mounts_and_umount_all(image, tmp_path):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path), XDG_STATE_HOME=str(tmp_path / "state"))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        assert siffs("mount", "--allow-unsigned", image, tmp_path / name, env=env).returncode == 0
    listed = json.loads(siffs("mounts", "--json", env=env, check=True).stdout)
    mine = {row["mount_point"]: row for row in listed if row["mount_point"].startswith(str(tmp_path))}
    assert set(mine) == {str(tmp_path / "a"), str(tmp_path / "b")}
    for row in mine.values():
        assert row["image"] == str(image)
        assert row["alive"] and row["pid"] in daemons_for(Path(row["mount_point"]))
        assert row["verified_by"] == "nobody (--allow-unsigned)"
    os.kill(mine[str(tmp_path / "b")]["pid"], signal.SIGKILL)
    time.sleep(0.2)
    text = siffs("mounts", env=env, check=True).stdout
    assert "daemon gone" in text
    assert siffs("umount", "--all", env=env).returncode == 0
    assert not is_mounted(tmp_path / "a") and not is_mounted(tmp_path / "b")


def test_unusable_dev_fuse_says_what_to_do(image, tmp_path):
    ensure_user()
    mnt = Path(user_dir(tmp_path, "nofuse"))
    with private_mounts():  # /dev/fuse as a server without udev has it; the host's stays as it is
        replace_device(Path("/dev/fuse"), 0o600, tmp_path / "dev")
        mount = siffs("mount", "--allow-unsigned", image, mnt, user=TEST_USER)
        run = siffs("run", "--allow-unsigned", image, user=TEST_USER)
    assert mount.returncode == 11 and "chmod 666 /dev/fuse" in mount.stderr
    assert mount.stderr.count("\n") == 1
    assert run.returncode == 255 and "chmod 666 /dev/fuse" in run.stderr
    assert not daemons_for(mnt)
