"""Run fuzz cases in a child process under a memory and a time limit, so that a blow-up or a
hang is a failure the fuzzer reports, not something that slows or kills the run.

The child is forked once and then serves case after case (a fork per case would cost more
than most cases). Its address space is capped with ``RLIMIT_AS`` at what it uses when it
starts plus ``memory_mib``: an allocation past that raises ``MemoryError`` in the parser,
which is not an expected error, so the case is a bug. The parent waits at most ``seconds``
for each answer; a case that takes longer is a hang: the child is killed, the case is
reported, and a fresh child serves the next case. A child that dies (a crash in a C
extension, the kernel's OOM killer) is reported the same way.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import resource
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Defaults of the fuzzers: far above what any case needs (the reader bounds every call by a
#: block size; cases take milliseconds), far below what an unbounded loop or allocation reaches.
MEMORY_MIB = 256
SECONDS = 10.0


def address_space() -> int:
    """Bytes of address space this process uses now (``VmSize``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def cap_memory(memory_mib: int) -> None:
    """Limit this process's address space to its current size plus ``memory_mib`` MiB.

    A limit inherited from the parent (libFuzzer's -merge children) stays if it is lower.
    """
    limit = address_space() + (memory_mib << 20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@dataclass
class Result:
    """What one case did: ``value`` if it returned, else ``error`` (exception type) and ``detail``."""

    value: Any = None
    error: str = ""
    detail: str = ""
    expected: bool = False  # the error is one the code under test raises on purpose


def _serve(conn: multiprocessing.connection.Connection, fn: Callable[..., Any], expected: tuple[type, ...],
           memory_mib: int) -> None:  # fmt: skip
    cap_memory(memory_mib)
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return
        try:
            result = Result(value=fn(*args))
        except expected as e:
            result = Result(error=type(e).__name__, detail=str(e), expected=True)
        except BaseException as e:  # anything else is what the fuzzer looks for
            result = Result(error=type(e).__name__, detail=traceback.format_exc())
        conn.send(result)


class Limited:
    """Calls ``fn(*args)`` in a child under the limits; expected exceptions are answers, not bugs."""

    def __init__(
        self,
        fn: Callable[..., Any],
        expected: tuple[type[BaseException], ...],
        *,
        memory_mib: int = MEMORY_MIB,
        seconds: float = SECONDS,
    ) -> None:
        self._fn, self._expected = fn, expected
        self.memory_mib, self.seconds = memory_mib, seconds
        self._ctx = multiprocessing.get_context("fork")
        self._child: Any = None
        self._conn: multiprocessing.connection.Connection | None = None

    def _start(self) -> multiprocessing.connection.Connection:
        parent, child = self._ctx.Pipe()
        self._child = self._ctx.Process(
            target=_serve, args=(child, self._fn, self._expected, self.memory_mib), daemon=True
        )
        self._child.start()
        child.close()
        self._conn = parent
        return parent

    def __call__(self, *args: Any) -> Result:
        conn = self._conn or self._start()
        conn.send(args)
        if conn.poll(self.seconds):
            try:
                return conn.recv()  # type: ignore[no-any-return]
            except EOFError:
                pass
            code = self._stop()
            return Result(error="Crash", detail=f"the child died while running the case (exit {code})")
        self._stop()
        return Result(
            error="Timeout", detail=f"no answer within {self.seconds:g} s: a hang or unbounded work"
        )

    def _stop(self) -> int | None:
        """End the child (it may be stuck in C code: SIGKILL) and forget it; its exit code."""
        if self._child is not None:
            if self._child.is_alive():
                os.kill(self._child.pid, 9)
            self._child.join()
            code = self._child.exitcode
            self._child = None
        else:
            code = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return code

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> Limited:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
