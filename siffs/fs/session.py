"""Serve a mounted FUSE session with pyfuse3, until unmounted or signalled.

This is the only module of the daemon that imports the FUSE binding, so ``siffs.fs.daemon``
imports it in the daemon only, after the mount exists where the early mount is available
(``siffs.fs.kernelmount``). The patched binding serves without an event loop
(``pyfuse3.main_sync``: siffs' handlers never suspend); stock pyfuse3 needs trio, imported
only then, because importing it takes longer than everything else the daemon does before
its first request.

SIGTERM, SIGINT and SIGHUP end the session and unmount cleanly (without handlers they
would kill the daemon and leave a dead mount behind); an external ``fusermount3 -u`` ends
the session too, and the daemon then exits on its own.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pyfuse3

from siffs.fs import binding, kernelmount, operations, registry
from siffs.fs.daemon import SIGNALS, Served, finish, ignore_stop_signals, not_dumpable
from siffs.fs.errors import MountError

log = logging.getLogger("siffs.fs")


def _terminate(signum: int) -> None:
    log.info("received %s: unmounting", signal.Signals(signum).name)
    pyfuse3.terminate()


def _serve_sync(mount_point: str, blocking: bool) -> None:
    """Serve in this thread; pyfuse3 delivers signals between requests, where they end the loop.

    ``blocking``: wait for requests in a blocking read, woken for signals through the mount
    point (``binding.Features.blocking_receive``).
    """
    before = {signum: signal.signal(signum, lambda signum, _frame: _terminate(signum)) for signum in SIGNALS}
    try:
        if blocking:
            pyfuse3.main_sync(wake_path=mount_point)
        else:
            pyfuse3.main_sync()
    finally:  # as trio's signal receiver does: the session is closed after this
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _serve_trio() -> None:
    """Serve with stock pyfuse3's event loop; a stop signal ends it the same way."""
    import trio  # noqa: PLC0415 - stock binding only (see the module docstring)

    async def session() -> None:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                with trio.open_signal_receiver(*SIGNALS) as signals:
                    async for signum in signals:
                        _terminate(signum)
                        return

            nursery.start_soon(watch_signals)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    trio.run(session)


def _fuse_complaint(log_file: Path | None) -> str | None:
    """The last thing libfuse or fusermount3 wrote to the log (they explain refusals there)."""
    if log_file is None or not log_file.exists():
        return None
    with open(log_file, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = f.read().decode("utf-8", "replace").splitlines()
    found = [line for line in lines if line.startswith(("fusermount", "fuse:"))]
    return found[-1] if found else None


def serve(
    ops: pyfuse3.Operations,
    mount_point: str,
    options: set[str],
    served: Served,
    *,
    on_ready: Callable[[], None],
    log_file: Path | None = None,
) -> None:
    """Mount, record, call ``on_ready``, serve until unmounted or signalled, then clean up."""
    try:
        pyfuse3.init(ops, mount_point, options)
    except RuntimeError as exc:
        reason = _fuse_complaint(log_file) or f"{exc} (is /dev/fuse usable?)"
        raise MountError(f"{mount_point}: FUSE mount failed: {reason}") from exc
    log.info("mounted %s at %s (verified by %s)", served.image, mount_point, served.verified_by)
    registry.record(mount_point, served.image, served.verified_by)
    on_ready()
    try:
        _run(mount_point)
    finally:
        ignore_stop_signals()
        # After an external unmount the session is gone and this is a no-op; after a
        # signal it removes the mount.
        pyfuse3.close(unmount=True)
        finish(mount_point, served)


def serve_mounted(ops: pyfuse3.Operations, kernel: kernelmount.KernelMount, options: set[str]) -> None:
    """Serve a mount made before this process imported pyfuse3 (``siffs.fs.kernelmount``).

    libfuse does not unmount what it did not mount: the daemon does, once this returns or raises.
    """
    pyfuse3.init(ops, kernel.session_path(), options)
    try:
        _run(kernel.mount_point)
    finally:
        pyfuse3.close(unmount=False)


def _run(mount_point: str) -> None:
    operations.internal_errors.listener = lambda count: registry.count_internal_errors(mount_point, count)
    features = binding.selected()
    if features.sync_loop:
        _serve_sync(mount_point, features.blocking_receive)
    else:
        _serve_trio()


def run_foreground(
    ops_factory: Callable[[], pyfuse3.Operations], mount_point: str, options: set[str], served: Served
) -> None:
    if served.secret:
        not_dumpable()
    serve(ops_factory(), mount_point, options, served, on_ready=lambda: None)
