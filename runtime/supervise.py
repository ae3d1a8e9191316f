"""Wait for a child, pass it the signals meant for the container, report its status (runtime.md §3).

Used where a process must stay between the user and the command: the parent of a PID
namespace, its PID 1 (which the kernel shields from signals it has no handler for), and a
caller that must unmount an image after the command ends.
"""

from __future__ import annotations

import contextlib
import os
import signal

FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
#: Dispositions Python changes at start-up that a command must not inherit through execve.
_PYTHON_IGNORED = (signal.SIGPIPE, signal.SIGXFSZ)


def exit_status(wait_status: int) -> int:
    """A shell's view of a wait status: the exit code, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


#: Signals that end an instance whose start script has already ended.
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_stop_requested = False


def forward_to(pid: int) -> None:
    def forward(signum: int, _frame: object) -> None:
        global _stop_requested  # noqa: PLW0603 - set from a signal handler, read once the child is gone
        _stop_requested = _stop_requested or signum in STOPPING
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)


def wait_for(pid: int, reap_all: bool = False) -> int:
    """Forward signals to ``pid`` until it exits; as PID 1 (``reap_all``) also reap orphans."""
    forward_to(pid)
    while True:
        try:
            done, status = os.waitpid(-1 if reap_all else pid, 0)
        except ChildProcessError:
            return 255
        if done == pid:
            return exit_status(status)


def linger() -> None:
    """PID 1 of an instance after its start script ended: reap what others start in it, until stopped.

    An Apptainer instance lives until ``instance stop``, whatever its start script does.
    """

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    for signum in STOPPING:
        signal.signal(signum, stop)
    if _stop_requested:
        return
    with contextlib.suppress(SystemExit):
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                signal.pause()


def restore_signals() -> None:
    """Default dispositions for the command, as a freshly started program expects them."""
    for signum in (*FORWARDED, *_PYTHON_IGNORED):
        signal.signal(signum, signal.SIG_DFL)
