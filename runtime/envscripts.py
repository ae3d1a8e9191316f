"""Run the image's env scripts in the image's own shell and read back what they export (§2.4, §12.2).

The scripts are arbitrary shell, so only the container's shell can run them; but the shell
only *evaluates*: it starts from an empty environment (plus the runtime's identity
variables), sources the scripts with the hooks of §2.4, and then re-executes itself so that
the kernel holds its exported variables as the new process' initial environment, which the
runtime reads, byte-exact, from ``/proc/PID/environ``. The runtime then merges host
variables and execs the command itself, so it can say precisely why a command did not start.

The same sourcing part, with a different tail that dispatches the runscript, is the process
of an OCI bundle (``bundle``), where no siffs code runs inside the container.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Mapping

from runtime.environment import DEFAULT_PATH, ENV_DIR
from runtime.errors import ContainerError, warn
from runtime.metadata import APPS_DIR

TIMEOUT = 60.0  # Apptainer gives env scripts one minute
SHELLS = ("/bin/bash", "/bin/sh")
_READY_FD, _RELEASE_FD = 3, 4

# The hooks of §2.4 step 2: default PATH before 90-environment.sh, default entries appended
# after the docker script, overrides right after 99-base.sh, the image's 99-runtimevars.sh skipped.
# PS1 goes too: busybox sh gives itself one, which 99-base.sh would then keep and export.
# An image built by Apptainer sources the ``--app`` environment in its own 95-apps.sh; for other
# SCIF images (no such script) the wrapper does the same before 99-base.sh: the app's bin and
# lib directories first on PATH and LD_LIBRARY_PATH, then the app's env scripts.
_SOURCE = f"""\
unset PATH PS1
__siffs_default={DEFAULT_PATH}
__siffs_injected=
__siffs_inject() {{
__siffs_injected=1
%INJECT%
}}
__siffs_add_default_path() {{
    __siffs_rest=$__siffs_default
    while [ -n "$__siffs_rest" ]; do
        __siffs_dir=${{__siffs_rest%%:*}}
        case $__siffs_rest in *:*) __siffs_rest=${{__siffs_rest#*:}} ;; *) __siffs_rest= ;; esac
        case :${{PATH-}}: in *:"$__siffs_dir":*) ;; *) PATH=${{PATH:+$PATH:}}$__siffs_dir ;; esac
    done
    export PATH
}}
__siffs_source() {{
    %ANNOUNCE%
    . "$1"
}}
__siffs_app_done=
__siffs_app() {{
    __siffs_app_done=1
    [ -n "${{SINGULARITY_APPNAME:-}}" ] || return 0
    __siffs_root={APPS_DIR}/$SINGULARITY_APPNAME
    export SCIF_APPS={APPS_DIR} SCIF_APPROOT="$__siffs_root" SINGULARITY_APPNAME
    PATH=$__siffs_root:${{PATH:-$__siffs_default}}
    [ ! -d "$__siffs_root/bin" ] || PATH=$__siffs_root/bin:$PATH
    export PATH
    [ ! -d "$__siffs_root/lib" ] || LD_LIBRARY_PATH="$__siffs_root/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
    [ -z "${{LD_LIBRARY_PATH+x}}" ] || export LD_LIBRARY_PATH
    for __siffs_e in "$__siffs_root"/scif/env/*.sh; do  # not __siffs_f: the caller's loop still needs it
        [ ! -f "$__siffs_e" ] || __siffs_source "$__siffs_e"
    done
}}
if [ -d {ENV_DIR} ]; then
    for __siffs_f in {ENV_DIR}/*.sh; do
        [ -f "$__siffs_f" ] || continue
        case ${{__siffs_f##*/}} in
            99-runtimevars.sh) continue ;;
            90-environment.sh) [ -n "${{PATH+x}}" ] || export PATH="$__siffs_default" ;;
            95-apps.sh) __siffs_app_done=1 ;;
            99-base.sh) [ -n "$__siffs_app_done" ] || __siffs_app ;;
        esac
        __siffs_source "$__siffs_f"
        case ${{__siffs_f##*/}} in
            10-docker*.sh) __siffs_add_default_path ;;
            99-base.sh) __siffs_inject ;;
        esac
    done
elif [ -f /environment ]; then
    __siffs_source /environment
fi
[ -n "$__siffs_app_done" ] || __siffs_app
[ -n "$__siffs_injected" ] || __siffs_inject
"""

#: Hand the exported variables back: re-exec, say "ready", wait until the runtime has read them.
_HANDBACK = f"""\
exec "$0" -c 'echo ready >&{_READY_FD}; read -r __siffs_line <&{_RELEASE_FD}'
"""

#: Dispatch ``run`` inside the container (OCI bundles, §8.3).
RUN_TAIL = """\
[ -n "${PATH+x}" ] || export PATH="$__siffs_default"
for __siffs_f in /.singularity.d/runscript /apptainer /singularity; do
    [ -x "$__siffs_f" ] && exec "$__siffs_f" "$@"
done
echo "No runscript found, executing /bin/sh" >&2
exec /bin/sh "$@"
"""


def wrapper(injection: str, tail: str, announce: bool = False) -> str:
    """The shell program: sourcing with ``injection`` after 99-base.sh, then ``tail``."""
    text = _SOURCE.replace("%ANNOUNCE%", f'echo "source $1" >&{_READY_FD}' if announce else ":")
    return text.replace("%INJECT%", injection) + tail


class EnvironmentScriptFailed(ContainerError):
    """An image env script stopped the shell (syntax error, ``exit``) or took too long."""


def find_shell() -> str | None:
    return next((s for s in SHELLS if os.access(s, os.X_OK)), None)


def evaluate(shell: str, injection: str, identity: Mapping[str, str]) -> dict[str, str]:
    """The environment the image's scripts export, evaluated by ``shell`` (inside the container)."""
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - replaced by the shell
        try:
            os.dup2(ready_w, _READY_FD)
            os.dup2(release_r, _RELEASE_FD)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            script = wrapper(injection, _HANDBACK, announce=True)
            os.execve(shell, [shell, "-c", script, shell], dict(identity))
        finally:
            os._exit(127)
    os.close(ready_w)
    os.close(release_r)
    try:
        current = _wait_ready(ready_r, pid)
        if current is None:
            with open(f"/proc/{pid}/environ", "rb") as f:
                raw = f.read()
            return _parse_environ(raw)
    finally:
        os.close(release_w)
        os.close(ready_r)
        _, status = os.waitpid(pid, 0)
    what = f"the image's environment script {current}" if current else f"{shell} (evaluating the environment)"
    raise EnvironmentScriptFailed(
        f"{what} failed (wait status {status}); fix the script or use a shell it suits"
    )


def _wait_ready(fd: int, pid: int) -> str | None:
    """None once the shell is ready; else the script it was sourcing when it stopped."""
    deadline = time.monotonic() + TIMEOUT
    buffered, current = b"", ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            os.kill(pid, 9)
            warn(f"environment scripts took more than {TIMEOUT:.0f} s: stopped")
            return current or "(timeout)"
        chunk = os.read(fd, 4096)
        if not chunk:
            return current
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            if line == b"ready":
                return None
            if line.startswith(b"source "):
                current = os.fsdecode(line[7:])


def _parse_environ(raw: bytes) -> dict[str, str]:
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            env[os.fsdecode(name)] = os.fsdecode(value)
    return env
