"""Start a container: the order of runtime.md §5, from host-side checks to ``execve``.

Two entry points. ``exec_container`` turns the calling process into the command (no process of
siffs stays between the user and the command, except PID 1 of a PID namespace): signals reach
the command directly and its status is the caller's. ``run_container`` forks first and waits,
forwarding signals, for callers that have something to do afterwards (unmount an image).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

from runtime import actions, fuselayers, libc, namespaces, rootfs, subid
from runtime.elf import Target, host_target
from runtime.environment import (
    IDENTITY_PREFIXES,
    Overrides,
    apply_literally,
    collect_overrides,
    forwarded_host,
    identity_variables,
    injection_script,
    merge,
)
from runtime.envscripts import evaluate, find_shell
from runtime.errors import ContainerError, InvalidRequest, NamespacesUnavailable, NoRunscript, report, warn
from runtime.layout import Layout, NvidiaFiles, plan
from runtime.metadata import APPS_DIR
from runtime.passwd import Identity
from runtime.paths import host_path, real_path, resolve_in
from runtime.request import NvidiaSources, Request
from runtime.supervise import linger, restore_signals, wait_for

_HOST_NAME_MAX = 64
#: Apptainer's root-mapped mode (no /etc/subuid range, or --ignore-subuid) says as much.
FAKEROOT_WARNING = (
    "--fakeroot: root-mapped namespace: you are root inside, every other user and group shows as "
    "nobody (no subordinate id range of /etc/subuid is used)"
)
_ENV_ITEM_SPLIT = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_]*=)")


class Prepared(NamedTuple):
    """Everything decided on the host, before any namespace exists (§5 step 1)."""

    request: Request
    layout: Layout
    identity: dict[str, str]
    forwarded: dict[str, str]
    overrides: Overrides
    host: Target
    host_cwd: str | None
    #: ``--fakeroot``'s subordinate ranges; None for the root-mapped (or identity) namespace.
    ranges: subid.Mapping | None = None


def env_options(items: Sequence[str]) -> list[tuple[str, str]]:
    """``--env K=V[,K=V]`` as pairs; a comma starts a new pair only when ``NAME=`` follows."""
    pairs = []
    for item in items:
        for part in _ENV_ITEM_SPLIT.split(item):
            name, sep, value = part.partition("=")
            if not sep or not name:
                raise InvalidRequest(f"--env {part!r}: expected NAME=VALUE")
            pairs.append((name, value))
    return pairs


def prepare(request: Request) -> Prepared:
    """Check and compute everything that can fail cheaply; nothing is mounted yet."""
    root = real_path(request.root)
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise InvalidRequest(f"{request.root} {what}")
    request = request._replace(root=root)
    if request.writable and not os.access(root, os.W_OK):
        raise InvalidRequest(
            f"--writable: you cannot write {request.root} (a SIF is read-only: use --writable-tmpfs)"
        )
    if request.writable and (request.writable_tmpfs or request.overlays):
        raise InvalidRequest("--writable cannot be combined with --writable-tmpfs or --overlay")
    if request.hostname is not None and not 0 < len(request.hostname.encode()) <= _HOST_NAME_MAX:
        raise InvalidRequest(f"--hostname {request.hostname!r}: 1 to {_HOST_NAME_MAX} bytes")
    # As Apptainer: env files see the host environment plus APPTAINER_IMAGE, and the arguments.
    file_scope = {**request.environ, "APPTAINER_IMAGE": request.container or root}
    files = []
    if request.env_files:  # the parser and the GPU search are imported only where used (start time)
        from runtime import envfile  # noqa: PLC0415

        files = [envfile.load(p, file_scope, request.args) for p in request.env_files]
    overrides = collect_overrides(request.environ, files, env_options(request.env))
    injection_script(overrides, evaluate=not request.no_eval)  # refuses now what would break the start
    gpu = NvidiaFiles()
    if request.nv or request.rocm:
        from runtime import nvidia  # noqa: PLC0415

        if request.nv:
            gpu = nvidia.resolve(request.nv_sources or NvidiaSources())
        if request.rocm:
            gpu = nvidia.combine(gpu, nvidia.resolve(request.rocm_sources or NvidiaSources(), nvidia.ROCM))
    layout = plan(request, Identity.of_caller(), gpu)
    ranges = subid.caller_mapping() if request.fakeroot and not request.ignore_subuid else None
    if request.fakeroot and ranges is None:
        warn(FAKEROOT_WARNING)
    for message in (*overrides.warnings, *gpu.warnings, *layout.warnings):
        warn(message)
    if request.app and not os.path.isdir(host_path(root, resolve_in(root, f"{APPS_DIR}/{request.app}"))):
        raise NoRunscript(f"Could not locate the container application: {request.app}")
    identity = identity_variables(
        request.container or root, request.action, layout.home, layout.bind_destinations, request.app
    )
    for prefix in IDENTITY_PREFIXES:
        if request.shell:
            identity[f"{prefix}_SHELL"] = request.shell
        if request.no_eval:
            identity[f"{prefix}_NO_EVAL"] = "1"
    try:
        host_cwd: str | None = os.getcwd()
    except OSError:
        host_cwd = None
    forwarded = forwarded_host(request.environ, request.clean, request.no_env)
    return Prepared(request, layout, identity, forwarded, overrides, host_target(), host_cwd, ranges)


def exec_container(request: Request, ready: int | None = None) -> NoReturn:
    """Become the container's command. Errors before the command starts raise ``ContainerError``.

    ``ready``: a descriptor to write one byte to (and close) once the container's root is built.
    """
    prepared = prepare(request)
    sys.stdout.flush()
    sys.stderr.flush()
    namespaces.enter(
        pid=request.new_pid,
        ipc=request.new_ipc,
        uts=request.new_uts,
        net=request.net,
        fakeroot=request.fakeroot,
        ranges=prepared.ranges,
    )
    if request.new_pid:
        pid = os.fork()
        if pid:  # outside the PID namespace: pass signals to its init, return its status
            if ready is not None:
                os.close(ready)  # the init builds the root and tells; none here must hold it open
            os._exit(wait_for(pid))
        _in_child(lambda: _start(prepared, as_init=not request.no_init, ready=ready))
    _start(prepared, as_init=False, ready=ready)


def run_container(request: Request) -> int:
    """Run the container in a child and return its exit status (128+N if killed by signal N)."""
    return wait_for(start_container(request))


def start_container(request: Request, *, wait_built: bool = False) -> int:
    """Start the container in a child and return its pid, which holds the container's namespaces.

    ``join_container`` with that pid enters them (``instance://``); signals sent to it reach
    the command. ``wait_built``: return only once the container's root is built (or its start
    failed before), so that nobody joins namespaces still being set up (an instance's start:
    a join before the root's pivot would see the host's files, not the image's).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    built_r, built_w = os.pipe2(os.O_CLOEXEC) if wait_built else (-1, -1)
    pid = os.fork()
    if pid == 0:
        if wait_built:
            os.close(built_r)
        _in_child(lambda: exec_container(request, built_w if wait_built else None))
    if wait_built:
        os.close(built_w)
        os.read(built_r, 1)  # a byte once the root is built; end of file if the start failed first
        os.close(built_r)
    return pid


def join_container(request: Request, holder: int) -> NoReturn:
    """Run ``request``'s command in the namespaces of a running container (``start_container``'s pid).

    Its root, mounts and identity are the running container's; the environment is computed
    again, as for a new container, from the image's scripts and this caller's host variables.
    """
    prepared = prepare(request)
    sys.stdout.flush()
    sys.stderr.flush()
    if namespaces.join(holder):  # a PID namespace applies to children only
        pid = os.fork()
        if pid:
            os._exit(wait_for(pid))
        _in_child(lambda: _start(prepared, as_init=False, build=False))
    _start(prepared, as_init=False, build=False)


def _in_child(body: Callable[[], object]) -> NoReturn:
    """Run ``body`` in a forked child, which must never return into the caller's code."""
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)  # the container dies with whoever waits for it
    status = 255
    try:
        body()
    except ContainerError as exc:
        report(exc)
        status = exc.exit_status
    except BaseException:
        import traceback  # noqa: PLC0415 - a bug's path only

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _start(prepared: Prepared, as_init: bool, build: bool = True, ready: int | None = None) -> NoReturn:
    """Inside the namespaces: build the root (unless joining one), compute the environment, exec.

    ``ready`` gets one byte, and is closed, once the root is built (see ``start_container``).
    """
    request, layout = prepared.request, prepared.layout
    if build:
        _isolate(request)
        try:
            rootfs.build(layout)
        except BaseException:
            fuselayers.stop()  # the helpers started so far, flushed before the failure is reported
            raise
    if ready is not None:
        os.write(ready, b"1")
        os.close(ready)
    workdir = actions.working_directory(request.pwd, request.contained, prepared.host_cwd, layout.home)
    os.chdir(workdir)
    shell = find_shell()
    if shell is not None:
        injection = injection_script(prepared.overrides, evaluate=not request.no_eval)
        evaluated = evaluate(shell, injection, {**prepared.identity, "PWD": workdir})
    else:
        warn("the image has no shell: its environment scripts are skipped")
        evaluated = {}
        apply_literally(prepared.overrides, evaluated)
    env = merge(evaluated, prepared.forwarded, prepared.identity, libs_on_path=request.nv or request.rocm)
    env["PWD"] = workdir
    shell_option = (
        request.shell or request.environ.get("APPTAINER_SHELL") or request.environ.get("SINGULARITY_SHELL")
    )
    argv = actions.command(request.action, request.args, env, shell_option, request.app)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    if request.no_umask:
        os.umask(0o022)
    # PID 1, or the keeper of ext3 overlay helpers: the command is a child, signals are forwarded,
    # orphans reaped (as PID 1); the helpers are stopped, their writes flushed, before the status
    # goes back to the caller.
    if as_init or fuselayers.running():
        pid = os.fork()
        if pid:
            status = wait_for(pid, reap_all=as_init)
            if as_init and request.action == "start":  # an instance outlives its start script
                linger()
            fuselayers.stop()
            os._exit(status)
        _in_child(lambda: _exec(argv, env, prepared.host))
    _exec(argv, env, prepared.host)


def _isolate(request: Request) -> None:
    """Inside the new UTS and network namespaces: the hostname, and a loopback that is up."""
    try:
        if request.hostname is not None:
            socket.sethostname(request.hostname)
        if request.net:
            namespaces.loopback_up()
    except OSError as exc:
        raise NamespacesUnavailable(f"cannot set up the UTS or network namespace: {exc.strerror}") from None


def _exec(argv: list[str], env: dict[str, str], host: Target) -> NoReturn:
    restore_signals()
    actions.execute(argv, env, host)
