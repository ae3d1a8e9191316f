"""Desktop integration with the real tools: the MIME type by name and by content, the handler,
and siffs-open mounting (verified), reporting a refusal, and unmounting.

The file manager itself is replaced by a stand-in ``xdg-open`` that records what it was asked
to open; seeing a real one show the tree under Xvfb is a manual check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from siffs.cli.exitcodes import ExitCode
from tests.contrib.conftest import CONTRIB, PUBLIC_KEY, SIFFS_BIN
from tests.support.images import require_tool
from tests.support.mounts import is_mounted
from tests.support.reference import IMAGES

MIME = "application/x-sif"
OPEN = CONTRIB / "desktop" / "siffs-open"


def run(*argv: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True, env=env, check=False)


@pytest.fixture
def installed(private_env) -> dict[str, str]:
    """install-desktop.sh run for a user whose home and XDG directories are temporary."""
    for tool in ("update-mime-database", "xdg-mime", "gio", "mimetype"):
        require_tool(tool)
    env = dict(private_env, SIFFS=str(SIFFS_BIN))
    env.pop("XDG_CURRENT_DESKTOP", None)
    result = run("sh", CONTRIB / "install-desktop.sh", env=env)
    assert result.returncode == 0, result.stderr
    return env


@pytest.fixture
def samples(signed_image, tmp_path) -> dict[str, Path]:
    """SIF files named .sif or not, with an empty launch script (corpus) or siffs' default one
    ("#!/usr/bin/env run-singularity"), and a text file."""
    found = {"corpus": IMAGES / "one-group.sif", "launchable": signed_image}
    for name in ("corpus", "launchable"):
        renamed = tmp_path / f"{name}-renamed"
        shutil.copyfile(found[name], renamed)
        found[f"{name}-renamed"] = renamed
    found["text"] = tmp_path / "notes.txt"
    found["text"].write_text("not an image\n")
    return found


@pytest.mark.parametrize("desktop", ["generic", "GNOME"])
def test_type_by_name_and_by_content(installed, samples, desktop):
    """xdg-mime asks mimetype(1) (File::MimeInfo) on a bare system, gio on GNOME: both agree."""
    env = dict(installed)
    if desktop != "generic":
        env["XDG_CURRENT_DESKTOP"] = desktop
    for name in ("corpus", "corpus-renamed", "launchable", "launchable-renamed"):
        result = run("xdg-mime", "query", "filetype", samples[name], env=env)
        assert result.stdout.strip() == MIME, (name, result.stdout, result.stderr)
    assert run("xdg-mime", "query", "filetype", samples["text"], env=env).stdout.strip() == "text/plain"


def test_handler_is_registered_and_default(installed):
    listing = run("gio", "mime", MIME, env=installed)
    assert listing.returncode == 0, listing.stderr
    assert "Default application" in listing.stdout and "siffs-open.desktop" in listing.stdout
    assert run("xdg-mime", "query", "default", MIME, env=installed).stdout.strip() == "siffs-open.desktop"


def test_desktop_entry_is_valid(installed):
    entry = Path(installed["XDG_DATA_HOME"]) / "applications" / "siffs-open.desktop"
    result = run(require_tool("desktop-file-validate"), entry, env=installed)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout
    text = entry.read_text()
    assert f'Exec=env "SIFFS={SIFFS_BIN}" "{OPEN}" %f' in text
    assert "[Desktop Action unmount]" in text


# -- siffs-open --------------------------------------------------------------------------------


@pytest.fixture
def desktop_env(private_env, tmp_path) -> dict[str, str]:
    """siffs on $SIFFS, and stand-ins for xdg-open and notify-send that record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("xdg-open", "notify-send"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{tmp_path}/{tool}.log"\n')
        stub.chmod(0o755)
    return dict(private_env, SIFFS=str(SIFFS_BIN), PATH=f"{bin_dir}:{private_env['PATH']}")


def _log(tmp_path: Path, tool: str) -> str:
    path = tmp_path / f"{tool}.log"
    return path.read_text() if path.exists() else ""


def test_open_mounts_verified_then_unmount(signed_image, desktop_env, tmp_path):
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not usable")
    env = dict(desktop_env, SIFFS_MOUNT_ARGS=f"--key {PUBLIC_KEY}")
    result = run(OPEN, signed_image, env=env)
    assert result.returncode == 0, result.stderr
    mount_point = Path(env["XDG_RUNTIME_DIR"]) / "siffs" / "desktop" / signed_image.name
    assert _log(tmp_path, "xdg-open") == f"{mount_point}\n"  # the file manager opened there
    try:
        assert is_mounted(mount_point)
        assert (mount_point / "bin" / "busybox").exists()
        again = run(OPEN, signed_image, env=env)  # opened twice: shown again, not mounted twice
        assert again.returncode == 0, again.stderr
        assert _log(tmp_path, "xdg-open").count(str(mount_point)) == 2
    finally:
        done = run(OPEN, "--unmount", signed_image, env=env)
    assert done.returncode == 0, done.stderr
    assert not is_mounted(mount_point) and not mount_point.exists()
    assert _log(tmp_path, "notify-send") == ""


def test_untrusted_image_is_refused_with_a_notification(signed_image, desktop_env, tmp_path):
    result = run(OPEN, signed_image, env=desktop_env)  # verified by default; the keyring is empty
    assert result.returncode == ExitCode.NOT_TRUSTED
    notified = _log(tmp_path, "notify-send")
    assert "siffs key import" in notified  # siffs' own reason, for the user to see
    assert _log(tmp_path, "xdg-open") == ""
    assert not (Path(desktop_env["XDG_RUNTIME_DIR"]) / "siffs" / "desktop" / signed_image.name).exists()


def test_unmount_of_what_is_not_open_says_so(signed_image, desktop_env, tmp_path):
    result = run(OPEN, "--unmount", signed_image, env=desktop_env)
    assert result.returncode == ExitCode.MOUNT_FAILED
    assert "not mounted" in _log(tmp_path, "notify-send")
