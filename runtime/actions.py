"""What ``run``, ``exec``, ``shell`` and ``test`` execute, and how a failed ``execve`` is explained (§3).

This runs inside the container, after ``pivot_root``: every path here is a container path.
The runtime execs the command itself (§12.2) so that "not found", "not executable", "wrong
architecture" and "missing interpreter" are told apart instead of surfacing as a shell's
``not found``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from typing import NoReturn

from runtime.elf import Target, read_target
from runtime.errors import CommandNotFound, InvalidRequest, NoRunscript, warn
from runtime.metadata import APPS_DIR
from runtime.request import Action

RUNSCRIPTS = ("/.singularity.d/runscript", "/apptainer", "/singularity")
TEST_SCRIPT = "/.singularity.d/test"
START_SCRIPT = "/.singularity.d/startscript"
#: An app's script for each action, and Apptainer's words when it is missing.
_APP_SCRIPTS = {
    "run": ("runscript", "no runscript"),
    "test": ("test", "No tests"),
    "start": ("startscript", "No startscript"),
}


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_program(name: str, path: str) -> str:
    """``name`` looked up on the container's final ``PATH``, as ``execvp`` would."""
    if "/" in name:
        return name
    unusable = None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if _executable(candidate):
            return candidate
        if unusable is None and os.path.isfile(candidate):
            unusable = candidate
    if unusable is not None:  # as execvp: a file that is there but not executable says so
        return unusable
    raise CommandNotFound(f'"{name}": executable file not found in $PATH')


def command(
    action: Action, args: Sequence[str], env: dict[str, str], shell: str | None, app: str = ""
) -> list[str]:
    """The argv to execute for ``action`` (with ``app``, the SCIF app's runscript or test).

    ``env`` gains ``SHELL`` for ``shell``, as Apptainer sets it.
    """
    if action == "exec":
        if not args:
            raise InvalidRequest("exec needs a command")
        return [find_program(args[0], env.get("PATH", "")), *args[1:]]
    if action in ("run", "test", "start") and app:
        name, missing = _APP_SCRIPTS[action]
        script = f"{APPS_DIR}/{app}/scif/{name}"
        if _executable(script):
            return [script, *args]
        raise NoRunscript(f"{missing} for contained app: {app}")
    if action == "start":  # an instance: without a start script it just stays, as Apptainer's does
        return [START_SCRIPT, *args] if _executable(START_SCRIPT) else ["/bin/sh", "-c", "true"]
    if action == "run":
        for script in RUNSCRIPTS:
            if _executable(script):
                return [script, *args]
        if _executable("/bin/sh"):
            warn("No runscript found, executing /bin/sh")
            return ["/bin/sh", *args]
        raise NoRunscript("the image has no runscript and no /bin/sh")
    if action == "test":
        if os.path.isfile(TEST_SCRIPT):
            return [TEST_SCRIPT, *args]
        # What the test script of an Apptainer build without %test says and does.
        print("No test found in container, executing /bin/sh -c true", flush=True)
        return ["/bin/sh", "-c", "true"]
    if shell and _executable(shell):
        argv = [shell, *args]
    elif _executable("/bin/bash"):
        argv = ["/bin/bash", "--norc", *args]
    else:
        argv = ["/bin/sh", *args]
    env["SHELL"] = argv[0]
    return argv


def working_directory(pwd: str | None, contained: bool, host_cwd: str | None, home: str) -> str:
    """``--pwd``; else the host cwd if the container has it; else home; else ``/`` (§3)."""
    if pwd:
        if not os.path.isdir(pwd):
            raise InvalidRequest(f"--pwd {pwd}: no such directory in the container")
        return pwd
    if not contained and host_cwd and os.path.isdir(host_cwd):
        return host_cwd
    if os.path.isdir(home):
        return home
    warn(f"cannot use {home} as working directory: using /")
    return "/"


def execute(argv: list[str], env: Mapping[str, str], host: Target) -> NoReturn:
    """``execve`` the command; a file without ``#!`` that is not ELF runs under ``/bin/sh`` (as execvp)."""
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        if exc.errno == errno.ENOEXEC and read_target(argv[0]) is None and _executable("/bin/sh"):
            try:
                os.execve("/bin/sh", ["/bin/sh", *argv], env)
            except OSError as again:
                exc = again
        raise CommandNotFound(explain(argv[0], exc.errno or 0, host)) from None


def explain(path: str, err: int, host: Target) -> str:
    """Why ``path`` did not start, in the terms a user can act on."""
    target = read_target(path) if err in (errno.ENOENT, errno.ENOEXEC) else None
    if target is not None and target != host:  # the kernel says ENOEXEC, or ENOENT for the loader
        return f"{path}: cannot run: the image is {target.describe()}, this host is {host.describe()}"
    if err == errno.ENOENT and os.path.exists(path):
        if target is not None:
            return f"{path}: cannot run: its program interpreter (dynamic loader) is missing in the image"
        interpreter = _shebang(path)
        if interpreter:
            return f"{path}: cannot run: its interpreter {interpreter} is missing in the image"
    if err in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied (not executable, or on a noexec mount)"
    if err == errno.ENOENT:
        return f"{path}: no such file or directory"
    return f"{path}: cannot run: {os.strerror(err)}"


def _shebang(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].split()
    return os.fsdecode(words[0]) if words else None
