"""The systemd user unit's command lines mount and unmount an image, as systemd would run them.

No systemd here: the unit file is read, its specifiers (%i %I %f %t %h) and variables are
expanded and its command lines split as systemd does it for the syntax the unit uses, and the
lines run in systemd's order as the unprivileged test user, with that user's home and runtime
directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
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
