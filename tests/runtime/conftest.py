"""Trees and a runner for the runtime tests: every container runs as the unprivileged test user.

The base tree is the example rootfs plus env scripts that exercise each row of runtime.md
§2.1; variants are copies with one thing changed. ``Siffs.env`` reads the command's
environment from ``/proc/$$/environ`` of the exec'd shell, so values compare byte-exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.images import build_rootfs
from tests.support.users import TEST_USER, ensure_user, user_dir

DOCKER_ENV = 'export PATH="/docker/bin:/usr/bin"\nexport DOCKER_VAR="${DOCKER_VAR:-"image"}"\n'
IMAGE_ENV = """\
export GREETING="${GREETING:-hello from %environment}"
export EXAMPLE_IMAGE=1
export FOO=from-image
export EMPTY_IN_IMAGE=""
export PATH_AT_90="$PATH"
"""
RUNTIMEVARS = "export RUNTIMEVARS_RAN=1\n"


def add_file(root: Path, path: str, text: str | bytes, mode: int = 0o755) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        target.write_bytes(text)
    else:
        target.write_text(text)
    target.chmod(mode)
    return target


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Siffs:
    """``siffs`` run as the test user with exactly the host environment given."""

    def __init__(self, base_env: dict[str, str], cwd: str) -> None:
        self.base_env = base_env
        self.cwd = cwd

    def command(self, *argv: object, env: dict[str, str] | None = None) -> list[str]:
        host = {**self.base_env, **(env or {})}
        return [
            "runuser", "-u", TEST_USER, "--", "env", "-i",
            *(f"{k}={v}" for k, v in host.items()),
            sys.executable, "-m", "siffs", *map(str, argv),
        ]  # fmt: skip

    def __call__(self, *argv: object, env: dict[str, str] | None = None, cwd: str | None = None) -> Result:
        done = subprocess.run(
            self.command(*argv, env=env), capture_output=True, cwd=cwd or self.cwd, timeout=60, check=False
        )
        return Result(done.returncode, os.fsdecode(done.stdout), os.fsdecode(done.stderr))

    def env(self, tree: Path, *options: object, env: dict[str, str] | None = None) -> dict[str, str]:
        """The command's environment (``exec`` of a shell reading its own initial environment)."""
        result = self("exec", *options, tree, "/bin/sh", "-c", "cat /proc/$$/environ; :", env=env)
        assert result.returncode == 0, result.stderr
        pairs = (item.partition("=") for item in result.stdout.split("\0") if item)
        return {name: value for name, _, value in pairs}


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    ensure_user()
    base = tmp_path_factory.mktemp("runtime")
    return Path(user_dir(base, "work"))


@pytest.fixture(scope="session")
def tree(work) -> Path:
    """The example tree with env scripts for every row of the precedence table."""
    root = build_rootfs(work / "tree")
    add_file(root, "/.singularity.d/env/10-docker2singularity.sh", DOCKER_ENV)
    add_file(root, "/.singularity.d/env/90-environment.sh", IMAGE_ENV)
    add_file(root, "/.singularity.d/env/99-runtimevars.sh", RUNTIMEVARS)
    add_file(root, "/.singularity.d/test", "#!/bin/sh\necho testing\nexit 4\n")
    subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
    return root


@pytest.fixture(scope="session")
def variant(tree, work) -> Callable[[str, Callable[[Path], None]], Path]:
    """A copy of ``tree`` changed by ``edit``, built once per name."""
    built: dict[str, Path] = {}

    def make(name: str, edit: Callable[[Path], None]) -> Path:
        if name not in built:
            root = work / name
            shutil.copytree(tree, root, symlinks=True)
            edit(root)
            subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
            built[name] = root
        return built[name]

    return make


@pytest.fixture(scope="session")
def siffs(work) -> Siffs:
    return Siffs({"TERM": "xterm", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}, str(work))


@pytest.fixture
def user_env(work, tmp_path) -> dict[str, str]:
    """Per-test XDG directories the test user owns, so every test starts with an empty keyring."""
    base = work / f"xdg-{tmp_path.name}"
    base.mkdir()
    subprocess.run(["chown", "siffs-test", str(base)], check=True)
    return {
        "XDG_CONFIG_HOME": f"{base}/config",
        "XDG_CACHE_HOME": f"{base}/cache",
        "XDG_STATE_HOME": f"{base}/state",
        "XDG_RUNTIME_DIR": str(base),
    }
