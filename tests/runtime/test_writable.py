"""Writable layers and work directories as the test user: --writable-tmpfs, --workdir, --scratch."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.support.users import user_dir


def _run(siffs, tree, *options, script: str) -> str:
    result = siffs("exec", *options, tree, "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _host_mounts_of(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(path) in line]


def test_writable_tmpfs_takes_writes_in_memory_and_leaves_the_image_alone(siffs, tree):
    script = "echo hi > /newfile && cat /newfile; stat -f -c '%b %S' /"
    out = _run(siffs, tree, "--writable-tmpfs", script=script).splitlines()
    assert out[0] == "hi"
    blocks, size = map(int, out[-1].split())
    assert blocks * size == 64 * 1024 * 1024  # Apptainer's 'sessiondir max size' default
    assert not (tree / "newfile").exists()
    assert _host_mounts_of(tree) == []
    result = siffs("exec", tree, "/bin/sh", "-c", "echo x > /newfile")
    assert result.returncode != 0  # without the option the image stays read-only


def test_writable_tmpfs_with_binds_onto_missing_paths(siffs, tree, work):
    """The skeleton of missing mount points and the tmpfs upper combine in one overlay."""
    out = _run(
        siffs, tree, "--writable-tmpfs", "-B", f"{work}:/not/in/image", script="ls -d /not/in/image; touch /t"
    )
    assert out.strip() == "/not/in/image"


def test_writable_tmpfs_is_full_at_its_size(siffs, tree):
    script = "head -c 70000000 /dev/zero > /big; echo status=$?"
    out = _run(siffs, tree, "--writable-tmpfs", script=script)
    assert out.strip() != "status=0"


def test_scratch_without_workdir_is_empty_and_private(siffs, tree):
    out = _run(
        siffs,
        tree,
        "-S",
        "/scratch1,/var/scratch2",
        script="ls -A /scratch1; touch /scratch1/f /var/scratch2/g && echo ok",
    )
    assert out.strip() == "ok"


def test_scratch_with_workdir_lands_in_the_workdir(siffs, tree, work):
    workdir = Path(user_dir(work, "wd-scratch"))
    _run(siffs, tree, "-W", workdir, "-S", "/data", script="echo kept > /data/f")
    assert (workdir / "scratch" / "data" / "f").read_text() == "kept\n"
    assert stat.S_IMODE(os.stat(workdir / "scratch").st_mode) == 0o750


def test_workdir_with_contain_holds_tmp_var_tmp_and_home(siffs, tree, work):
    workdir = Path(user_dir(work, "wd-contain"))
    script = "echo t > /tmp/t; echo v > /var/tmp/v; echo h > $HOME/h; pwd"
    out = _run(siffs, tree, "--contain", "--workdir", workdir, script=script)
    assert (workdir / "tmp" / "t").read_text() == "t\n"
    assert (workdir / "var_tmp" / "v").read_text() == "v\n"
    assert (workdir / "home" / "h").read_text() == "h\n"
    assert stat.S_IMODE(os.stat(workdir / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(workdir / "home").st_mode) == 0o700
    assert out.strip() == os.path.expanduser("~siffs-test")


def test_workdir_without_contain_keeps_the_hosts_tmp(siffs, tree, work):
    workdir = Path(user_dir(work, "wd-plain"))
    _run(siffs, tree, "-W", workdir, script="true")
    assert sorted(os.listdir(workdir)) == []
    result = siffs("exec", "-W", work / "missing-wd", "--contain", tree, "true")
    assert result.returncode == 255 and "--workdir" in result.stderr


def test_overlay_directory_persists_writes_and_stacks_read_only_layers(siffs, tree, work):
    base = Path(user_dir(work, "overlays"))
    layers = {name: Path(user_dir(base, name)) for name in ("rw", "low", "high")}
    for name in ("low", "high"):
        (layers[name] / "f").write_text(f"from {name}\n")
        os.chown(layers[name] / "f", *_test_ids(work))
    options = [
        "--overlay",
        f"{layers['low']}:ro",
        "--overlay",
        f"{layers['high']}:ro",
        "--overlay",
        layers["rw"],
    ]
    out = _run(siffs, tree, *options, script="cat /f; echo more >> /f; echo new > /n; cat /f /n")
    assert out.splitlines() == ["from high", "from high", "more", "new"]  # a later overlay lies above
    assert (layers["rw"] / "upper" / "n").read_text() == "new\n"
    assert (layers["high"] / "f").read_text() == "from high\n"  # read-only layers never change
    assert not (tree / "n").exists()
    again = _run(siffs, tree, "--overlay", layers["rw"], script="cat /n")
    assert again == "new\n"  # persistent
    read_only = _run(
        siffs, tree, "--overlay", f"{layers['rw']}:ro", script="cat /n; touch /m 2>/dev/null || echo ro"
    )
    assert read_only.splitlines() == ["new", "ro"]  # DIR/upper is the layer of a read-only DIR
    assert _host_mounts_of(base) == []


def _test_ids(work: Path) -> tuple[int, int]:
    st = os.stat(work)
    return st.st_uid, st.st_gid


def test_overlay_refusals(siffs, tree, work):
    one, two = (user_dir(work, f"ov-refusal-{n}") for n in (1, 2))
    result = siffs("exec", "--overlay", one, "--overlay", two, tree, "true")
    assert result.returncode == 255 and "only one overlay can be writable" in result.stderr
    image = work / "overlay.img"
    image.write_bytes(b"\0" * 4096)
    result = siffs("exec", "--overlay", image, tree, "true")
    assert result.returncode == 255 and "not an overlay" in result.stderr  # neither ext3 nor squashfs


def test_writable_sandbox_directory(siffs, tree, work):
    """--writable on a directory the user owns: writes land in it; missing mount points are made in it."""
    sandbox = Path(user_dir(work, "sandbox"))
    subprocess.run(["cp", "-a", f"{tree}/.", str(sandbox)], check=True)
    subprocess.run(["chown", "-R", "siffs-test:siffs-test", str(sandbox)], check=True)
    out = _run(
        siffs, sandbox, "--writable", "-B", f"{work}:/made/here", script="echo w > /written; ls -d /made/here"
    )
    assert out.strip() == "/made/here"
    assert (sandbox / "written").read_text() == "w\n"
    assert (sandbox / "made" / "here").is_dir()
    result = siffs("exec", "--writable", tree, "true")  # root's tree: the test user cannot write it
    assert result.returncode == 255 and "--writable" in result.stderr


def test_dns_writes_resolv_conf(siffs, tree):
    out = _run(siffs, tree, "--dns", "192.0.2.1,2001:db8::1", script="cat /etc/resolv.conf")
    assert out == "nameserver 192.0.2.1\nnameserver 2001:db8::1\n"
    result = siffs("exec", "--dns", "not-an-ip", tree, "true")
    assert result.returncode == 255 and "--dns not-an-ip" in result.stderr
