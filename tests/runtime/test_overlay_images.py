"""--overlay with ext3 and squashfs image files, --writable into a SIF's overlay partition (test user).

The ext3 images are made by mkfs.ext3 -d with Apptainer's layout (upper/ and work/ at the root), and read
back with debugfs, e2fsprogs' own reader, so what siffs wrote is checked by another implementation.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from siffs.sif import ObjectInput, create
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, FsType, PartType
from tests.runtime.conftest import Siffs
from tests.runtime.test_fakeroot import COUNT, START, _ranges
from tests.support.images import mksquashfs, require_tool
from tests.support.reference import key_path
from tests.support.users import TEST_USER, user_dir

HELPERS = ("fuse2fs", "fuse-overlayfs")


def _ext3(path: Path, files: dict[str, str], size: str = "16M") -> Path:
    """An ext3 overlay image as ``apptainer overlay create`` lays it out, owned by the test user."""
    require_tool("mkfs.ext3")
    source = path.with_suffix(".src")
    for name in ("upper", "work"):
        (source / name).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        target = source / "upper" / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    subprocess.run(["chown", "-R", f"{TEST_USER}:{TEST_USER}", str(source)], check=True)
    subprocess.run(["mkfs.ext3", "-q", "-F", "-d", str(source), str(path), size], check=True)
    subprocess.run(["chown", f"{TEST_USER}:{TEST_USER}", str(path)], check=True)
    os.chmod(path, 0o644)
    return path


def _debugfs(image: Path, request: str) -> str:
    done = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True)
    return done.stdout


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _helpers_left() -> list[str]:
    done = subprocess.run(
        ["pgrep", "-u", TEST_USER, "-a", "fuse"], capture_output=True, text=True, check=False
    )
    return [line for line in done.stdout.splitlines() if any(h in line for h in HELPERS)]


def _no_mounts_of(*paths: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return not any(str(p) in line for line in f for p in paths)


def _run(siffs: Siffs, *argv: object, env: dict[str, str] | None = None) -> str:
    result = siffs("exec", *argv, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def images(work) -> Path:
    return Path(user_dir(work, "overlay-images"))


def test_ext3_image_takes_writes_in_its_upper_dir_and_keeps_them(siffs, tree, images):
    image = _ext3(images / "rw.img", {"/etc/from-image": "in the image\n"})
    out = _run(siffs, "--overlay", image, tree, "/bin/sh", "-c", "cat /etc/from-image; echo new > /new.txt")
    assert out == "in the image\n"
    assert _debugfs(image, "cat /upper/new.txt") == "new\n"  # Apptainer's layout: writes in upper/
    assert _run(siffs, "--overlay", image, tree, "/bin/cat", "/new.txt") == "new\n"  # persistent
    assert not (tree / "new.txt").exists()
    assert _no_mounts_of(image, tree) and _helpers_left() == []


def test_ext3_image_read_only(siffs, tree, images):
    image = _ext3(images / "ro.img", {"/ro-file": "read only\n"})
    before = _digest(image)
    script = "cat /ro-file; echo x > /ro-file 2>/dev/null || echo refused; echo y > /elsewhere && echo tmpfs"
    out = _run(siffs, "--overlay", f"{image}:ro", "--writable-tmpfs", tree, "/bin/sh", "-c", script)
    assert out.splitlines() == ["read only", "tmpfs"]  # with --writable-tmpfs above it, writes go there
    out = _run(siffs, "--overlay", f"{image}:ro", tree, "/bin/sh", "-c", "touch /z 2>/dev/null || echo ro")
    assert out == "ro\n"
    assert _digest(image) == before  # a read-only image is never written, not even its superblock


def test_several_overlays_apply_in_command_line_order(siffs, tree, images):
    low = _ext3(images / "low.img", {"/layer": "low\n", "/only-low": "low\n"})
    middle = Path(user_dir(images, "middle"))
    (middle / "layer").write_text("middle\n")
    top = _ext3(images / "top.img", {})
    options = ["--overlay", f"{low}:ro", "--overlay", f"{middle}:ro", "--overlay", top]
    out = _run(siffs, *options, tree, "/bin/sh", "-c", "cat /layer /only-low; echo w > /written")
    assert out == "middle\nlow\n"  # a later overlay lies above an earlier one
    assert _debugfs(top, "cat /upper/written") == "w\n"
    assert "written" not in _debugfs(low, "ls /upper")
    refused = siffs("exec", "--overlay", _ext3(images / "second.img", {}), "--overlay", top, tree, "true")
    assert refused.returncode == 255 and "only one overlay can be writable" in refused.stderr


def test_squashfs_overlay_image_is_a_read_only_layer(siffs, tree, images, work):
    source = work / "squash-layer"
    (source / "opt").mkdir(parents=True, exist_ok=True)
    (source / "opt" / "from-squashfs").write_text("squashed\n")
    layer = mksquashfs(source, images / "layer.sqfs", "-all-root")
    os.chmod(layer, 0o644)
    script = "cat /opt/from-squashfs; touch /opt/x 2>/dev/null || echo ro"
    out = _run(siffs, "--allow-unsigned", "--overlay", layer, tree, "/bin/sh", "-c", script)
    assert out.splitlines() == ["squashed", "ro"]
    writable = _ext3(images / "over-squash.img", {})
    out = _run(siffs, "--allow-unsigned", "--overlay", layer, "--overlay", writable, tree, "/bin/sh", "-c",
               "cat /opt/from-squashfs > /copied")  # fmt: skip
    assert _debugfs(writable, "cat /upper/copied") == "squashed\n"
    refused = siffs("exec", "--overlay", layer, tree, "true")
    assert refused.returncode == 255 and "--allow-unsigned" in refused.stderr  # verified as any image


def test_overlay_refusals(siffs, tree, images):
    junk = images / "junk.img"
    junk.write_bytes(b"\0" * 4096)
    result = siffs("exec", "--overlay", junk, tree, "true")
    assert result.returncode == 255 and "not an overlay" in result.stderr
    image = _ext3(images / "not-mine.img", {})
    os.chown(image, 0, 0)
    result = siffs("exec", "--overlay", image, tree, "true")
    assert result.returncode == 255
    assert f"could not use {image} for writing, you don't have write permissions" in result.stderr
    assert _run(siffs, "--overlay", f"{image}:ro", tree, "/bin/true") == ""
    bare = images / "bare.img"  # an ext3 file system, but no overlay layout in it
    subprocess.run(["mkfs.ext3", "-q", "-F", str(bare), "8M"], check=True)
    os.chmod(bare, 0o644)
    result = siffs("exec", "--overlay", f"{bare}:ro", tree, "true")
    assert result.returncode == 255 and result.stderr.count("\n") == 1
    assert f"overlay {bare}: no upper/ directory in the image to use read-only" in result.stderr


def test_fakeroot_chown_lands_as_the_container_ids_in_the_image(siffs, tree, images):
    """With subordinate ranges chown works; the image records the container's ids, as Apptainer's do."""
    image = _ext3(images / "fakeroot.img", {})
    script = "mkdir -p /opt/pkg && touch /opt/pkg/f && chown 100:101 /opt/pkg/f && stat -c %u:%g /opt/pkg/f"
    with _ranges(f"{TEST_USER}:{START}:{COUNT}"):
        out = _run(siffs, "--fakeroot", "--overlay", image, tree, "/bin/sh", "-c", script)
    assert out == "100:101\n"
    stat = _debugfs(image, "stat /upper/opt/pkg/f")
    assert "User:   100" in stat and "Group:   101" in stat


def test_sigkill_of_siffs_leaves_nothing_and_keeps_what_was_written(siffs, tree, images):
    image = _ext3(images / "killed.img", {})
    argv = siffs.command(
        "exec",
        "--overlay",
        image,
        tree,
        "/bin/sh",
        "-c",
        "echo kept > /before-kill; sync; echo up; exec sleep 60",
    )
    proc = subprocess.Popen(argv, cwd=siffs.cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    assert len(_helpers_left()) == 2
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True)
    os.kill(int(children.stdout.split()[0]), signal.SIGKILL)
    proc.wait(timeout=20)
    deadline = time.monotonic() + 20
    while _helpers_left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _helpers_left() == []
    assert _no_mounts_of(image, tree)
    assert _debugfs(image, "cat /upper/before-kill") == "kept\n"


@pytest.fixture(scope="module")
def overlay_sif(tree, work, images) -> Path:
    """A SIF with a squashfs root and an ext3 overlay partition (as ``apptainer overlay create`` adds)."""
    squash = mksquashfs(tree, work / "overlay-sif-root.squashfs", "-all-root")
    partition = _ext3(images / "partition.img", {"/overlay-file.txt": "persisted\n"}, size="8M")
    sif = images / "with-overlay.sif"
    with open(squash, "rb") as root, open(partition, "rb") as overlay:
        create(
            sif,
            [
                ObjectInput(
                    DataType.PARTITION, root, extra=partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, b"02")
                ),
                ObjectInput(
                    DataType.PARTITION, overlay, extra=partition_extra(FsType.EXT3, PartType.OVERLAY, b"02")
                ),
            ],
        )
    subprocess.run(["chown", f"{TEST_USER}:{TEST_USER}", str(sif)], check=True)
    os.chmod(sif, 0o644)
    return sif


def _partition(sif: Path) -> tuple[int, int]:
    from siffs.sif.load import Image  # noqa: PLC0415

    with Image.open(sif) as image:
        d = next(d for d in image.descriptors if d.partition and d.partition.fs_type == FsType.EXT3)
        return d.offset, d.size


def test_writable_writes_into_the_embedded_partition_only(siffs, overlay_sif, images, user_env):
    offset, size = _partition(overlay_sif)
    data = overlay_sif.read_bytes()
    outside = hashlib.sha256(data[:offset] + data[offset + size :]).hexdigest()
    assert (
        _run(siffs, "--allow-unsigned", overlay_sif, "/bin/cat", "/overlay-file.txt", env=user_env)
        == "persisted\n"
    )
    script = "echo more >> /overlay-file.txt; echo new > /new.txt"
    _run(siffs, "--allow-unsigned", "--writable", overlay_sif, "/bin/sh", "-c", script, env=user_env)
    out = _run(
        siffs, "--allow-unsigned", overlay_sif, "/bin/cat", "/overlay-file.txt", "/new.txt", env=user_env
    )
    assert out == "persisted\nmore\nnew\n"
    data = overlay_sif.read_bytes()
    assert (
        hashlib.sha256(data[:offset] + data[offset + size :]).hexdigest() == outside
    )  # other objects intact
    extracted = images / "extracted-partition.img"
    extracted.write_bytes(data[offset : offset + size])
    assert _debugfs(extracted, "cat /upper/new.txt") == "new\n"
    without_write = siffs("exec", "--allow-unsigned", overlay_sif, "/bin/sh", "-c", "touch /x", env=user_env)
    assert without_write.returncode != 0  # applied read-only by default, as Apptainer does
    assert _helpers_left() == []


def test_writable_refusals_on_a_sif(siffs, overlay_sif, tree, work, images, user_env):
    both = siffs(
        "exec", "--allow-unsigned", "--writable", "--writable-tmpfs", overlay_sif, "true", env=user_env
    )
    assert both.returncode == 255 and "cannot be combined" in both.stderr
    plain = work / "plain-for-writable.sif"
    squash = mksquashfs(tree, work / "plain-root.squashfs", "-all-root")
    with open(squash, "rb") as root:
        create(
            plain,
            [
                ObjectInput(
                    DataType.PARTITION, root, extra=partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, b"02")
                )
            ],
        )
    os.chmod(plain, 0o644)
    none = siffs("exec", "--allow-unsigned", "--writable", plain, "true", env=user_env)
    assert none.returncode == 255 and "has no overlay partition" in none.stderr
    signed = images / "signed-with-overlay.sif"
    signed.write_bytes(overlay_sif.read_bytes())
    from tests.support.mounts import siffs as siffs_root  # noqa: PLC0415

    siffs_root("sign", signed, "--key", key_path("ed25519", "private"), check=True)
    subprocess.run(["chown", TEST_USER, str(signed)], check=True)
    os.chmod(signed, 0o644)
    result = siffs("exec", "--key", key_path("ed25519", "public"), "--writable", signed, "true", env=user_env)
    assert result.returncode == 255 and "is signed" in result.stderr
    read_only = siffs("exec", "--key", key_path("ed25519", "public"), signed, "/bin/cat", "/overlay-file.txt",
                      env=user_env)  # fmt: skip
    assert read_only.stdout.startswith("persisted\n"), read_only.stderr  # verified, applied read-only


def test_instance_writes_into_its_ext3_overlay_until_stopped(siffs, tree, images, user_env):
    """An instance keeps its helpers while it lives; joiners write through them; stop flushes them."""
    image = _ext3(images / "instance.img", {})
    started = siffs("instance", "start", "--overlay", image, tree, "ov-inst", env=user_env)
    assert started.returncode == 0, started.stderr
    try:
        _run(siffs, "instance://ov-inst", "/bin/sh", "-c", "echo joined > /from-joiner", env=user_env)
        assert len(_helpers_left()) == 2
    finally:
        stopped = siffs("instance", "stop", "ov-inst", env=user_env)
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 20
    while _helpers_left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _helpers_left() == []
    assert _debugfs(image, "cat /upper/from-joiner") == "joined\n"


def test_root_mapped_fakeroot_cannot_write_a_users_image(siffs, tree, images):
    """The user's upper/ is nobody's in a root-mapped namespace: refused in one line that says why."""
    image = _ext3(images / "users.img", {})
    result = siffs("exec", "--fakeroot", "--ignore-subuid", "--overlay", image, tree, "true")
    assert result.returncode == 255
    assert result.stderr.splitlines()[-1].startswith("FATAL: fuse-overlayfs could not mount the overlay")
    assert "--fakeroot without /etc/subuid ranges cannot write a user's image" in result.stderr
    assert _helpers_left() == []


def test_paths_through_absolute_symlinks(siffs, tree, images):
    """The container's set-up sees the host under a prefix, where an absolute symlink (as a CVMFS or
    a /var/run link is) would point elsewhere: the image, an overlay image, a bind source and the
    home reached through such links still work."""
    image = _ext3(images / "linked.img", {"/from-link": "through a link\n"})
    data = images / "linked-data"
    data.mkdir(exist_ok=True)
    (data / "note.txt").write_text("bound through a link\n")
    os.chmod(data / "note.txt", 0o644)
    links = images / "links"
    links.mkdir(exist_ok=True)
    for name, target in (("image.img", image), ("data", data), ("tree", tree)):
        link = links / name
        if not link.is_symlink():
            link.symlink_to(target.resolve())  # absolute targets
    script = "cat /from-link /mnt/note.txt"
    out = _run(siffs, "--overlay", f"{links}/image.img:ro", "-B", f"{links}/data:/mnt", links / "tree",
               "/bin/sh", "-c", script)  # fmt: skip
    assert out == "through a link\nbound through a link\n"
