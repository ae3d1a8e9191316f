"""The systemd user unit's command lines mount and unmount an image, as systemd would run them.

Two ways. Under a real ``systemd --user`` (the last test: the manager gets a private mount
namespace and delegated cgroups, which is what a container lacks). And without systemd: the
unit file is read, its specifiers (%i %I %f %t %h) and variables are
expanded and its command lines split as systemd does it for the syntax the unit uses, and the
lines run in systemd's order as the unprivileged test user, with that user's home and runtime
directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from siffs.cli.exitcodes import ExitCode
from siffs.fs.mountpoint import find_mount
from tests.contrib.conftest import CONTRIB, PUBLIC_KEY, SIFFS_BIN
from tests.support.mounts import daemons_for
from tests.support.users import TEST_USER, ensure_user, user_dir

UNIT = CONTRIB / "systemd" / "siffs-mount@.service"


def mounted(path: Path) -> bool:
    """In the mount table (which escapes the space that the image's name puts in the path)."""
    return find_mount(str(path)) is not None


def systemd_escape(*args: str) -> str:
    return subprocess.run(
        ["systemd-escape", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file, each a list of (key, value): keys may repeat (Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def _unescape_c(word: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})|\\\\", lambda m: chr(int(m[1], 16)) if m[1] else "\\", word)


@dataclass
class Instance:
    """One instance of the template: its specifiers and environment."""

    image: Path
    home: Path
    runtime: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return systemd_escape("--path", str(self.image))

    def specifiers(self) -> dict[str, str]:
        unescaped = systemd_escape("--unescape", self.name)
        return {
            "i": self.name,
            "I": unescaped,
            "f": "/" + unescaped.lstrip("/"),
            "t": str(self.runtime),
            "h": str(self.home),
            "%": "%",
        }

    def expand(self, value: str) -> str:
        table = self.specifiers()
        return re.sub(r"%(.)", lambda m: table[m[1]], value)

    def words(self, value: str) -> list[str]:
        """Split as systemd splits a command line: "quoted" words, C escapes (\\x2d)."""
        return [_unescape_c(q if q else w) for q, w in re.findall(r'"([^"]*)"|(\S+)', self.expand(value))]

    def environment(self, service: list[tuple[str, str]]) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "USER": TEST_USER,
            "LANG": "C.UTF-8",
        }
        for key, value in service:
            if key == "Environment":
                env.update(word.split("=", 1) for word in self.words(value))  # type: ignore[misc]
        env.update(self.extra_env)  # a drop-in's Environment= lines come last
        return env

    def argv(self, value: str, env: dict[str, str]) -> tuple[list[str], bool]:
        """The command and whether its failure is ignored ('-' prefix); $VAR words split, as systemd."""
        ignore = value.startswith("-")
        out: list[str] = []
        for word in self.words(value.lstrip("-")):
            if re.fullmatch(r"\$\w+", word):
                out += env.get(word[1:], "").split()
            else:
                out.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], ""), word))
        return out, ignore

    def run(self, phase: str) -> list[subprocess.CompletedProcess[str]]:
        """Run every line of ``phase`` (ExecStart, ...) as the test user; stop at a failure."""
        service = read_unit(UNIT)["Service"]
        env = self.environment(service)
        results = []
        for key, value in service:
            if key != phase:
                continue
            argv, ignore = self.argv(value, env)
            result = subprocess.run(
                ["runuser", "-u", TEST_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
                capture_output=True,
                text=True,
                check=False,
            )
            results.append(result)
            if result.returncode != 0 and not ignore:
                break
        return results

    @property
    def mount_point(self) -> Path:
        """The directory ExecStartPre made: the only one under %t/siffs/systemd/."""
        made = list((self.runtime / "siffs" / "systemd").iterdir())
        assert len(made) == 1, made
        return made[0]


@pytest.fixture
def instance(signed_image, tmp_path) -> Instance:
    """An image whose path needs escaping (a dash, a space), a home with siffs in ~/.local/bin."""
    user = ensure_user()
    images = Path(user_dir(tmp_path, "images"))
    image = images / "tools-v1 beta.sif"
    shutil.copyfile(signed_image, image)
    os.chmod(image, 0o644)
    home = Path(user_dir(tmp_path, "home"))
    runtime = Path(user_dir(tmp_path, "runtime"))
    runtime.chmod(0o700)
    bin_dir = home / ".local" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "siffs").symlink_to(SIFFS_BIN)  # where pipx puts it
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)
    return Instance(image, home, runtime)


def _stop(instance: Instance) -> None:
    for phase in ("ExecStop", "ExecStopPost"):
        for result in instance.run(phase):
            assert result.returncode == 0, result.stderr


def test_unit_file_shape():
    unit = read_unit(UNIT)
    service = dict(unit["Service"])
    assert service["Type"] == "forking"  # 'siffs mount' returns once the mount is live
    assert "siffs mount" in service["ExecStart"] and "%f" in service["ExecStart"]
    assert "siffs umount" in service["ExecStop"]
    assert dict(unit["Install"])["WantedBy"] == "default.target"
    assert "systemctl --user enable --now" in UNIT.read_text()  # documented in the file


def test_start_mounts_verified_and_stop_unmounts(instance):
    user_cmd = ["runuser", "-u", TEST_USER, "--", "env", f"HOME={instance.home}", str(SIFFS_BIN)]
    keyring = subprocess.run(
        [*user_cmd, "key", "import", str(PUBLIC_KEY)], capture_output=True, text=True, check=False
    )
    assert keyring.returncode == 0, keyring.stderr
    assert " " in instance.specifiers()["f"] and "\\x2d" in instance.name  # the escaping is exercised
    for result in instance.run("ExecStartPre") + instance.run("ExecStart"):
        assert result.returncode == 0, result.stderr
    mount_point = instance.mount_point
    assert mounted(mount_point)
    listing = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "cat", str(mount_point / ".singularity.d/runscript")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Hello from the siffs example" in listing.stdout
    assert daemons_for(mount_point), "the daemon systemd would follow as the main process"
    _stop(instance)
    deadline = time.monotonic() + 10
    while daemons_for(mount_point) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mounted(mount_point) and not daemons_for(mount_point)
    assert not mount_point.exists()  # ExecStopPost removed it
    assert mount_point.name == _unescape_c(instance.name)  # %i, as systemd unescapes command lines


def test_untrusted_image_fails_the_unit_with_a_reason(instance):
    results = instance.run("ExecStartPre") + instance.run("ExecStart")
    assert results[-1].returncode == ExitCode.NOT_TRUSTED
    assert "siffs key import" in results[-1].stderr  # what systemd puts in the journal
    mount_point = instance.mount_point
    assert not mounted(mount_point)
    for result in instance.run("ExecStopPost"):  # systemd runs it after a failed start
        assert result.returncode == 0, result.stderr
    assert not mount_point.exists()


def test_drop_in_arguments_reach_siffs_mount(instance):
    instance.extra_env["SIFFS_MOUNT_ARGS"] = f"--key {PUBLIC_KEY} -o cache_size=8"
    for result in instance.run("ExecStartPre") + instance.run("ExecStart"):
        assert result.returncode == 0, result.stderr
    mount_point = instance.mount_point
    assert mounted(mount_point)
    _stop(instance)
    assert not mounted(mount_point)


# -- under a real systemd user manager ------------------------------------------------------------


def _delegated_cgroups(name: str, uid: int) -> list[Path]:
    """Cgroups the user's manager may own: the unified one, and name=systemd on a hybrid host."""
    root = Path("/sys/fs/cgroup")
    parents = [root] if (root / "cgroup.controllers").exists() else [root / "unified", root / "systemd"]
    made = []
    for parent in parents:
        if not parent.is_dir():
            pytest.skip(f"no cgroup hierarchy at {parent} to delegate to a systemd user manager")
        group = parent / name
        group.mkdir()
        made.append(group)
        for entry in [group, *group.iterdir()]:
            os.chown(entry, uid, -1)
    return made


def _remove_cgroups(groups: list[Path]) -> None:
    """Kill what the manager left in them (processes this test started) and remove them."""
    for group in groups:
        for _ in range(100):
            left = [int(p) for path in group.rglob("cgroup.procs") for p in path.read_text().split()]
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not left:
                break
            time.sleep(0.1)
        for path in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            path.rmdir()
        group.rmdir()


@contextlib.contextmanager
def user_manager(instance: Instance) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """A real ``systemd --user`` for the test user; yields a runner of commands in its namespace.

    A container is not booted with systemd and gives users no cgroup, so the manager gets what
    logind would give it: a private mount namespace where /run/systemd/system exists (a tmpfs
    over /run/systemd, never the host's) and cgroups delegated to the user. Its FUSE mounts live
    in that namespace and vanish with it.
    """
    systemd = Path("/lib/systemd/systemd")
    if not systemd.exists() or shutil.which("systemctl") is None:
        pytest.skip("systemd is not installed")
    user = ensure_user()
    groups = _delegated_cgroups(f"siffs-test-{os.getpid()}", user.pw_uid)
    env = f"HOME={instance.home} XDG_RUNTIME_DIR={instance.runtime} PATH=/usr/bin:/bin"
    join = "".join(f"echo $$ > {g}/cgroup.procs; " for g in groups)
    script = (
        "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && "
        f"{join}exec runuser -u {TEST_USER} -- env -i {env} {systemd} --user"
    )
    manager = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script], start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def inside(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(manager.pid), "-m", "runuser", "-u", TEST_USER, "--",
             "env", "-i", *env.split(), *argv],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    try:
        deadline = time.monotonic() + 30
        while inside("systemctl", "--user", "is-system-running").stdout.strip() not in (
            "running",
            "degraded",
        ):
            if manager.poll() is not None or time.monotonic() > deadline:
                manager.kill()
                pytest.fail(f"systemd --user did not start: {manager.communicate()[0][-2000:]}")
            time.sleep(0.2)
        yield inside
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(manager.pid, signal.SIGTERM)
        try:
            manager.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(manager.pid, signal.SIGKILL)
            manager.wait()
        _remove_cgroups(groups)


def test_real_systemd_user_manager_starts_and_stops_the_unit(instance):
    user = ensure_user()
    units = instance.home / ".config" / "systemd" / "user"
    units.mkdir(parents=True)
    shutil.copyfile(UNIT, units / UNIT.name)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(instance.home)], check=True)
    key = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "env", f"HOME={instance.home}", str(SIFFS_BIN), "key", "import",
         str(PUBLIC_KEY)], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert key.returncode == 0, key.stderr
    service = f"siffs-mount@{instance.name}.service"
    with user_manager(instance) as inside:
        started = inside("systemctl", "--user", "start", service)
        assert started.returncode == 0, (
            started.stderr + inside("systemctl", "--user", "status", service).stdout
        )
        assert inside("systemctl", "--user", "is-active", service).stdout.strip() == "active"
        mount_point = instance.mount_point
        runscript = inside("cat", str(mount_point / ".singularity.d/runscript"))
        assert "Hello from the siffs example" in runscript.stdout, runscript.stderr
        assert inside("mountpoint", "-q", str(mount_point)).returncode == 0
        assert inside("findmnt", "--source", str(instance.image)).returncode == 0
        stopped = inside("systemctl", "--user", "stop", service)
        assert stopped.returncode == 0, stopped.stderr
        assert inside("systemctl", "--user", "is-active", service).stdout.strip() == "inactive"
        assert inside("findmnt", "--source", str(instance.image)).returncode == 1  # not mounted anywhere
        assert not mount_point.exists()  # ExecStopPost removed it
