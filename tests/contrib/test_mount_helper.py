"""mount(8), fstab and mount.fuse3 mount siffs images through the mount.fuse.siffs helper (as root).

Every test that needs the helper in /sbin or siffs on mount(8)'s bare PATH runs in a private
mount namespace (tests/support/hostns.py): the host's /sbin and /usr/local/bin never change, and
a helper the host has installed neither makes a test skip nor is used by it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from siffs.cli.common import CommandError
from siffs.cli.exitcodes import ExitCode
from siffs.cli.main import is_mount_call
from siffs.cli.mounthelper import siffs_mount_argv
from tests.contrib.conftest import PUBLIC_KEY, SIFFS_BIN
from tests.support.hostns import private_mounts, shadow
from tests.support.mounts import daemons_for, is_mounted, require_root
from tests.support.mounts import siffs as run_siffs
from tests.support.users import TEST_USER, ensure_user, user_dir

HELPER = Path("/sbin/mount.fuse.siffs")

# -- translation: no mounting --------------------------------------------------------------


def test_generic_options_are_dropped_and_own_options_pass():
    words = siffs_mount_argv(
        [
            "/i.sif",
            "/mnt/x",
            "-o",
            "ro,noauto,user,users,nofail,_netdev,defaults,nosuid,nodev,suid,dev,exec,x-systemd.automount,"
            "x-systemd.idle-timeout=60,comment=hi,user=alice,noatime,allow_other,uid=1000,gid=100,cache_size=64",
            "-t",
            "fuse.siffs",
        ]
    )
    assert words == ["mount", "/i.sif", "/mnt/x", "-o", "allow_other,uid=1000,gid=100,cache_size=64"]


def test_fstab_trust_and_partition_options():
    words = siffs_mount_argv(["/i.sif", "/m", "-o", "key=/k/a.pem:/k/b.asc,key=/k/c.pem,allow_unsigned"])
    assert words == [
        "mount",
        "/i.sif",
        "/m",
        "--key",
        "/k/a.pem",
        "--key",
        "/k/b.asc",
        "--key",
        "/k/c.pem",
        "--allow-unsigned",
    ]
    assert siffs_mount_argv(["/i.sif", "/m", "-o", "partition=3"]) == [
        "mount",
        "/i.sif",
        "/m",
        "--partition",
        "3",
    ]
    assert siffs_mount_argv(["/i.sif", "/m", "-o", "partition=all"]) == ["mount", "/i.sif", "/m", "--all"]


def test_mount_flags():
    assert siffs_mount_argv(["/i.sif", "/m", "-f", "-o", "ro"]) is None  # fake: nothing to do
    assert siffs_mount_argv(["/i.sif", "/m", "-v", "-n"]) == ["-v", "mount", "/i.sif", "/m"]
    assert siffs_mount_argv(["/i.sif", "/m", "-s", "-o", "bogus,noexec"]) == [
        "mount",
        "/i.sif",
        "/m",
        "-o",
        "noexec",
    ]


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["-o", "ro,bogus"], "unknown mount option 'bogus'"),
        (["-o", "setuid=alice"], "mount.fuse3"),
        (["-o", "drop_privileges"], "mount.fuse3"),
        (["-N", "/proc/1/ns/mnt"], "namespace"),
        (["-x"], "mount helper"),
    ],
)
def test_refused(argv, text):
    with pytest.raises(CommandError) as info:
        siffs_mount_argv(["/i.sif", "/m", *argv])
    assert text in str(info.value)
    assert info.value.code == ExitCode.USAGE


def test_mount_call_detection(tmp_path):
    (tmp_path / "image").touch()
    assert is_mount_call(["/data/a.sif", "/mnt/x", "-o", "ro"])
    assert is_mount_call([str(tmp_path / "image"), "/mnt"])
    assert not is_mount_call(["list", "/data/a.sif"])  # a command wins
    assert not is_mount_call(["lsit", "a.sif"])  # a typo is still a usage error
    assert not is_mount_call(["--version"])
    assert not is_mount_call(["/data/a.sif"])


def test_errors_are_one_line_with_the_usage_code():
    result = run_siffs("/data/a.sif", "/mnt/x", "-o", "ro,bogus")
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.startswith("siffs: unknown mount option 'bogus' (siffs knows: allow_other,")
    assert result.stderr.count("\n") == 1


def test_rw_mounts_read_only_with_a_warning(capsys):
    assert siffs_mount_argv(["/i.sif", "/m", "-o", "rw,allow_other"]) == [
        "mount",
        "/i.sif",
        "/m",
        "-o",
        "allow_other",
    ]
    assert capsys.readouterr().err == (
        "siffs: warning: siffs mounts are read-only: mounting read-only (say 'ro' to silence this)\n"
    )


# -- for real, as root ------------------------------------------------------------------------


@pytest.fixture
def private_host(tmp_path) -> Iterator[Path]:
    """A private mount namespace in which /sbin has no mount.fuse.siffs (whatever the host has)."""
    require_root()
    with private_mounts():
        shadow(Path("/sbin"), {HELPER.name: None}, tmp_path / "sbin-layer")
        yield tmp_path


@pytest.fixture
def helper_installed(private_host) -> Path:
    """``siffs setup mount-helper`` run for real, into the private view of /sbin."""
    result = run_siffs("setup", "mount-helper", check=True)
    assert result.stdout == f"linked: {HELPER} -> {SIFFS_BIN.parent / HELPER.name}\n"
    return HELPER


@pytest.fixture
def mnt(tmp_path) -> Iterator[Path]:
    """An empty mount point that the test user can reach too (for allow_other); unmounted after."""
    path = Path(user_dir(tmp_path, "mnt"))
    yield path
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _mount(*argv: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *map(str, argv)], capture_output=True, text=True, env=env, check=False)


def _mount_options(mount_point: Path) -> tuple[str, str, set[str]]:
    """fs type, source and per-mount options of ``mount_point`` from the mount table."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == str(mount_point):
            fs_type, source = line.split(" - ")[1].split(" ")[:2]
            return fs_type, source, set(fields[5].split(","))
    raise AssertionError(f"{mount_point} is not mounted")


def _umount_and_wait(mount_point: Path) -> None:
    subprocess.run(["umount", str(mount_point)], check=True)
    deadline = time.monotonic() + 10
    while daemons_for(mount_point) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not daemons_for(mount_point), "the daemon outlived umount"
    assert not is_mounted(mount_point)


def test_mount_t_fuse_siffs_verifies_and_umount_unmounts(helper_installed, signed_image, mnt, private_env):
    result = _mount(
        "-t", "fuse.siffs", signed_image, mnt, "-o", f"ro,nodev,noexec,key={PUBLIC_KEY}", env=private_env
    )
    assert result.returncode == 0, result.stderr
    fs_type, source, options = _mount_options(mnt)
    assert (fs_type, source) == ("fuse.siffs", str(signed_image))
    assert {"ro", "nosuid", "nodev", "noexec"} <= options  # noexec honoured, nosuid kept although root
    assert "Hello from the siffs example" in (mnt / ".singularity.d/runscript").read_text()
    rows = json.loads(run_siffs("mounts", "--json", env=private_env, check=True).stdout)
    row = next(r for r in rows if r["mount_point"] == str(mnt))
    assert row["alive"] and "nobody" not in row["verified_by"]
    _umount_and_wait(mnt)


def test_untrusted_image_is_refused_through_mount(helper_installed, signed_image, mnt, private_env):
    result = _mount("-t", "fuse.siffs", signed_image, mnt, env=private_env)  # empty keyring, no key=
    assert result.returncode == ExitCode.NOT_TRUSTED
    assert "siffs key import" in result.stderr
    assert not is_mounted(mnt)


def test_rw_mounts_read_only_through_mount(helper_installed, signed_image, mnt, private_env):
    """mount(8) passes rw unless told ro: like a write-protected squashfs device, read-only it is."""
    result = _mount("-t", "fuse.siffs", "-o", "rw,allow_unsigned", signed_image, mnt, env=private_env)
    assert result.returncode == 0, result.stderr
    assert "mounting read-only" in result.stderr
    assert "ro" in _mount_options(mnt)[2]
    _umount_and_wait(mnt)


def test_fstab_line(helper_installed, signed_image, mnt, private_env, tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a line as the README shows it, plus the key\n"
        f"{signed_image} {mnt} fuse.siffs ro,noauto,user,allow_other,x-systemd.automount,nofail,"
        f"_netdev,comment=siffs,key={PUBLIC_KEY} 0 0\n"
    )
    result = _mount("--fstab", fstab, mnt, env=private_env)
    assert result.returncode == 0, result.stderr
    fs_type, source, _ = _mount_options(mnt)
    assert (fs_type, source) == ("fuse.siffs", str(signed_image))
    # allow_other: another user sees the files (without it even root would not)
    seen = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "ls", str(mnt / "bin")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "busybox" in seen.stdout, seen.stderr
    _umount_and_wait(mnt)


@pytest.fixture
def siffs_on_standard_path(private_host) -> Path:
    """siffs in /usr/local/bin (private view): mount(8) drops PATH, so mount.fuse3's shell finds
    programs only on its default path."""
    shadow(Path("/usr/local/bin"), {"siffs": SIFFS_BIN}, private_host / "bin-layer")
    return Path("/usr/local/bin/siffs")


@pytest.mark.parametrize("form", ["type", "source"])
def test_mount_fuse3_runs_siffs_itself(form, siffs_on_standard_path, signed_image, mnt, private_env):
    """Without the helper, mount.fuse3 runs 'siffs SOURCE DIR -o OPTIONS,dev,suid'."""
    assert not HELPER.exists()
    env = private_env
    options = f"ro,key={PUBLIC_KEY}"
    if form == "type":
        result = _mount("-t", "fuse.siffs", "-o", options, signed_image, mnt, env=env)
    else:
        result = _mount("-t", "fuse", "-o", options, f"siffs#{signed_image}", mnt, env=env)
    assert result.returncode == 0, result.stderr
    fs_type, source, options_seen = _mount_options(mnt)
    assert (fs_type, source) == ("fuse.siffs", str(signed_image))
    assert {"nosuid", "nodev"} <= options_seen  # mount.fuse3's dev,suid did not get through
    _umount_and_wait(mnt)


def test_helper_finds_siffs_without_path(helper_installed, signed_image, mnt, private_env):
    """mount(8) may run helpers with a bare PATH: the console script names its interpreter."""
    env = dict(private_env, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    result = _mount("-t", "fuse.siffs", "-o", f"key={PUBLIC_KEY}", signed_image, mnt, env=env)
    assert result.returncode == 0, result.stderr
    _umount_and_wait(mnt)


def test_mount_f_pretends(helper_installed, signed_image, mnt, private_env):
    result = _mount("-f", "-t", "fuse.siffs", "-o", "ro,allow_unsigned", signed_image, mnt, env=private_env)
    assert result.returncode == 0, result.stderr
    assert not is_mounted(mnt)
    assert os.listdir(mnt) == []


def test_setup_is_idempotent_and_uninstalls(helper_installed):
    again = run_siffs("setup", "mount-helper", check=True)
    assert again.stdout.startswith(f"already linked: {HELPER} -> ")
    assert run_siffs("setup", "mount-helper", "--uninstall", check=True).stdout == f"removed {HELPER}\n"
    assert not HELPER.is_symlink()
    gone = run_siffs("setup", "mount-helper", "--uninstall", check=True)
    assert gone.stdout == f"{HELPER} is not installed\n"


def test_setup_leaves_a_foreign_helper_alone(private_host):
    HELPER.write_text("#!/bin/sh\n")  # lands in the private layer
    result = run_siffs("setup", "mount-helper")
    assert result.returncode == ExitCode.MOUNT_FAILED
    foreign = f"{HELPER} exists and is not a link to a siffs {HELPER.name}; remove it first"
    assert result.stderr == f"siffs: {foreign}\n"
    assert run_siffs("setup", "mount-helper", "--uninstall").returncode == ExitCode.MOUNT_FAILED
    assert HELPER.read_text() == "#!/bin/sh\n"


def test_setup_refuses_a_script_users_can_change(private_host, tmp_path):
    """Root's mount(8) would run it: a script in a user-writable place is refused."""
    from siffs.fs import helper  # noqa: PLC0415

    script = tmp_path / "user-bin" / HELPER.name
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o755)
    script.parent.chmod(0o777)
    with pytest.raises(helper.HelperError, match="can be changed by a user other than root"):
        helper.install(tmp_path, script)
    assert not (tmp_path / HELPER.name).exists()


def test_setup_needs_root(tmp_path):
    ensure_user()
    result = run_siffs("setup", "mount-helper", "--dir", tmp_path, user=TEST_USER)
    assert result.returncode == ExitCode.REFUSED
    assert "needs root" in result.stderr and result.stderr.count("\n") == 1
