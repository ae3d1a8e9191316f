"""Start a FUSE daemon that reports readiness; the FUSE binding is imported only inside it.

``siffs mount`` must return only once the mount is live, and a daemon's failure must reach
the caller's terminal and exit code. So the caller forks; the child detaches (new session,
standard streams to the log file) and writes one line to a pipe: ``ok`` or the error
message. The parent waits for that line.

Where the early mount is available (``siffs.fs.kernelmount``), the caller has made the mount
before forking and the child says ``ok`` once it has recorded the mount, before it imports
pyfuse3 and trio; requests wait in the kernel until it serves them. Otherwise the child
mounts through libfuse after those imports and says ``ok`` then. Either way an early
failure leaves neither a daemon nor a mount behind.

Serving itself is ``siffs.fs.session``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from siffs.fs import registry
from siffs.fs.errors import MountError

if TYPE_CHECKING:  # the FUSE binding (and logging) is imported in the daemon only
    import logging

    from pyfuse3 import Operations

    from siffs.fs.kernelmount import KernelMount


def _log() -> logging.Logger:
    import logging  # noqa: PLC0415 - see TYPE_CHECKING above

    return logging.getLogger("siffs.fs")


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4


def log_path_for(mount_point: str) -> Path:
    return registry.state_dir() / "logs" / f"{registry.file_stem(mount_point)}.log"


def setup_logging(log_file: Path | None, *, to_stderr: bool, verbose: bool = False) -> None:
    import logging  # noqa: PLC0415 - see TYPE_CHECKING above

    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s siffs[%(process)d] %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )


class Served(NamedTuple):
    """What a daemon serves, for the logs and ``siffs mounts``.

    ``ephemeral``: the mount belongs to one command (``siffs run``): the daemon unmounts when
    that command's process dies, however it dies, and removes the mount point it was given.
    ``secret``: the tree holds decryption keys: the daemon is made non-dumpable (no core dump,
    no ptrace or /proc/PID/mem by the same user).
    """

    image: str
    verified_by: str
    ephemeral: bool = False
    secret: bool = False


class Stopped(BaseException):
    """A stop signal arrived before the session's own signal handling took over."""


def run_background(
    ops_factory: Callable[[], Operations],
    mount_point: str,
    options: set[str],
    served: Served,
    log_file: Path,
    *,
    kernel: KernelMount | None = None,
) -> int:
    """Fork a daemon; return its pid once the mount is live, or raise ``MountError``.

    With ``kernel`` (an early mount), the mount is live already and this process's copy of
    the connection is closed here: the daemon owns it.
    """
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
    except OSError:
        if kernel is not None:  # no daemon will own the mount
            from siffs.fs import kernelmount  # noqa: PLC0415 - imported already by whoever mounted

            kernelmount.unmount(mount_point)
        raise
    if pid == 0:  # the daemon
        os.close(read_end)
        _daemon_main(
            ops_factory,
            mount_point,
            options,
            served,
            log_file=log_file,
            ready_fd=write_end,
            parent=parent,
            kernel=kernel,
        )
    os.close(write_end)
    if kernel is not None:
        kernel.close()
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.readline().decode("utf-8", "replace").strip()
    if answer == "ok":
        return pid
    _, status = os.waitpid(pid, 0)
    if answer:
        raise MountError(answer)
    raise MountError(f"the mount daemon died while starting (status {status}); see {log_file}")


def _daemon_main(
    ops_factory: Callable[[], Operations],
    mount_point: str,
    options: set[str],
    served: Served,
    *,
    log_file: Path,
    ready_fd: int,
    parent: int,
    kernel: KernelMount | None,
) -> None:
    code = 0
    _close_inherited(keep={ready_fd} | ({kernel.fd} if kernel is not None else set()))
    # A descriptor of our own on the early mount's connection: libfuse closes its copy on the way
    # out, and this one still tells whether the kernel has dropped the mount.
    probe = None if kernel is None else os.dup(kernel.fd)
    try:
        if kernel is not None:
            _stop_on_signals()  # from now on a stop signal must remove the mount, not just kill
        if served.ephemeral:
            _die_with(parent)
        if served.secret:
            not_dumpable()
        os.setsid()

        def ready() -> None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)

        if kernel is None:
            _detach_stdio(log_file)
            setup_logging(log_file, to_stderr=False)
            from siffs.fs.session import serve  # noqa: PLC0415 - see the module docstring

            serve(ops_factory(), mount_point, options, served, on_ready=ready, log_file=log_file)
        else:
            registry.record(mount_point, served.image, served.verified_by)
            ready()  # as soon as the mount is live and recorded: the caller may go on
            _detach_stdio(log_file)
            setup_logging(log_file, to_stderr=False)
            _log().info("mounted %s at %s (verified by %s)", served.image, mount_point, served.verified_by)
            from siffs.fs.session import serve_mounted  # noqa: PLC0415 - see the module docstring

            serve_mounted(ops_factory(), kernel, options)
    except MountError as exc:
        _log().error("%s", exc)
        _report(ready_fd, str(exc))
        code = 1
    except Stopped as exc:
        _log().info("received %s while starting: unmounting", exc)
    except BaseException as exc:  # the daemon must never die silently
        _log().exception("daemon failed")
        _report(ready_fd, f"the mount daemon failed: {type(exc).__name__}: {exc}; see {log_file}")
        code = 1
    finally:
        ignore_stop_signals()
        try:
            if probe is not None:
                code = _remove_early_mount(mount_point, probe, served) or code
            import logging  # noqa: PLC0415 - see TYPE_CHECKING above

            logging.shutdown()
        finally:
            os._exit(code)


def _close_inherited(keep: set[int]) -> None:
    """Close what the command inherited from its own caller (a lock, a pipe), but keep ``keep``.

    The daemon outlives the command by hours: an inherited descriptor would hold a lock its
    owner believes released, or keep a pipe's reader from ever seeing its end. Python opens its
    own files close-on-exec, so a descriptor without that flag came from outside (or is one of
    ``keep``); the image files the daemon serves are siffs' own and stay open.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                inherited = not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            except OSError:
                continue  # the directory's own descriptor, closed already
            if inherited:
                os.close(fd)


def _remove_early_mount(mount_point: str, probe: int, served: Served) -> int:
    """Unmount unless the kernel already dropped the mount, and forget it; 1 if it stays mounted."""
    from siffs.fs import kernelmount  # noqa: PLC0415 - imported already by whoever mounted

    code = 0
    try:
        if not kernelmount.connection_gone(probe):
            kernelmount.unmount(mount_point)
    except MountError as exc:
        _log().error("%s", exc)
        code = 1
    finally:
        os.close(probe)
    finish(mount_point, served)
    return code


def finish(mount_point: str, served: Served) -> None:
    """After the mount is gone: drop its record and, for an ephemeral mount, its mount point."""
    registry.forget(mount_point)
    _log().info("unmounted %s", mount_point)
    if served.ephemeral:
        with contextlib.suppress(OSError):
            os.rmdir(mount_point)


def ignore_stop_signals() -> None:
    """Let nothing cut the cleanup short: a stop signal during it (a ``siffs run`` that has just
    unmounted exits, and its death signal arrives; a second Ctrl-C) would kill the daemon before it
    forgets its record and removes its mount point, or raise ``Stopped`` out of a ``finally`` block
    and unwind this forked copy through the command's own frames. The daemon exits right after."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _stop_on_signals() -> None:
    """Turn SIGTERM, SIGINT and SIGHUP into ``Stopped`` until trio's signal receiver replaces this."""

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    for signum in SIGNALS:
        signal.signal(signum, stop)


def _die_with(parent: int) -> None:
    """Get SIGTERM (and so unmount cleanly) when ``parent`` dies, even of SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def not_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): keys in this process's memory never reach a core file."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def _report(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass  # the parent already has its answer (we failed after being ready)


def _detach_stdio(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
