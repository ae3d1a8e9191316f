"""Run a pyfuse3 filesystem: in the foreground, or as a daemon that reports readiness.

``siffs mount`` must return only once the mount is live, and a daemon's failure must reach
the caller's terminal and exit code. So the caller forks; the child detaches (new session,
standard streams to the log file), mounts, and writes one line to a pipe: ``ok`` or the
error message. The parent waits for that line. Nothing is mounted by the parent, so an
early failure leaves neither a daemon nor a mount behind.

SIGTERM, SIGINT and SIGHUP end the session and unmount cleanly (without handlers they
would kill the daemon and leave a dead mount behind); an external ``fusermount3 -u`` ends
the session too, and the daemon then exits on its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from siffs.fs import operations, registry
from siffs.fs.errors import MountError

log = logging.getLogger("siffs.fs")

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4


def log_path_for(mount_point: str) -> Path:
    return registry.state_dir() / "logs" / f"{registry.file_stem(mount_point)}.log"


def setup_logging(log_file: Path | None, *, to_stderr: bool, verbose: bool = False) -> None:
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


async def _session() -> None:
    """Serve requests until unmounted or signalled; says whether to unmount on the way out."""
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(*_SIGNALS) as signals:
                async for signum in signals:
                    log.info("received %s: unmounting", signal.Signals(signum).name)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(watch_signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _fuse_complaint(log_file: Path | None) -> str | None:
    """The last thing libfuse or fusermount3 wrote to the log (they explain refusals there)."""
    if log_file is None or not log_file.exists():
        return None
    with open(log_file, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = f.read().decode("utf-8", "replace").splitlines()
    found = [line for line in lines if line.startswith(("fusermount", "fuse:"))]
    return found[-1] if found else None


@dataclass(frozen=True)
class Served:
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


def serve(
    ops: pyfuse3.Operations,
    mount_point: str,
    options: set[str],
    served: Served,
    *,
    on_ready: Callable[[], None],
    log_file: Path | None = None,
) -> None:
    """Mount, call ``on_ready``, serve until unmounted or signalled, then clean up."""
    if served.secret:
        _not_dumpable()
    try:
        pyfuse3.init(ops, mount_point, options)
    except RuntimeError as exc:
        reason = _fuse_complaint(log_file) or f"{exc} (is /dev/fuse usable?)"
        raise MountError(f"{mount_point}: FUSE mount failed: {reason}") from exc
    log.info("mounted %s at %s (verified by %s)", served.image, mount_point, served.verified_by)
    registry.record(mount_point, served.image, served.verified_by)
    operations.internal_errors.listener = lambda count: registry.count_internal_errors(mount_point, count)
    on_ready()
    try:
        trio.run(_session)
    finally:
        # After an external unmount the session is gone and this is a no-op; after a
        # signal it removes the mount.
        pyfuse3.close(unmount=True)
        registry.forget(mount_point)
        log.info("unmounted %s", mount_point)
        if served.ephemeral:
            with contextlib.suppress(OSError):
                os.rmdir(mount_point)


def run_foreground(
    ops_factory: Callable[[], pyfuse3.Operations], mount_point: str, options: set[str], served: Served
) -> None:
    serve(ops_factory(), mount_point, options, served, on_ready=lambda: None)


def run_background(
    ops_factory: Callable[[], pyfuse3.Operations],
    mount_point: str,
    options: set[str],
    served: Served,
    log_file: Path,
) -> int:
    """Fork a daemon that mounts; return its pid once the mount is live, or raise ``MountError``."""
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        _daemon_main(
            ops_factory, mount_point, options, served, log_file=log_file, ready_fd=write_end, parent=parent
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode("utf-8", "replace").strip()
    if answer == "ok":
        return pid
    _, status = os.waitpid(pid, 0)
    if answer:
        raise MountError(answer)
    raise MountError(f"the mount daemon died while starting (status {status}); see {log_file}")


def _daemon_main(
    ops_factory: Callable[[], pyfuse3.Operations],
    mount_point: str,
    options: set[str],
    served: Served,
    *,
    log_file: Path,
    ready_fd: int,
    parent: int,
) -> None:
    code = 0
    try:
        if served.ephemeral:
            _die_with(parent)
        os.setsid()
        _detach_stdio(log_file)
        setup_logging(log_file, to_stderr=False)

        def ready() -> None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)

        serve(ops_factory(), mount_point, options, served, on_ready=ready, log_file=log_file)
    except MountError as exc:
        log.error("%s", exc)
        _report(ready_fd, str(exc))
        code = 1
    except BaseException as exc:  # the daemon must never die silently
        log.exception("daemon failed")
        _report(ready_fd, f"the mount daemon failed: {type(exc).__name__}: {exc}; see {log_file}")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _die_with(parent: int) -> None:
    """Get SIGTERM (and so unmount cleanly) when ``parent`` dies, even of SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _not_dumpable() -> None:
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
