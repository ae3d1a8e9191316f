"""The per-case limits of the mutation fuzzer: a bug, a blow-up, a hang and a crash each fail."""

from __future__ import annotations

import os
import signal
import time

from tests.fuzz.limits import Limited


def answer(what: str) -> str:
    if what == "bad input":
        raise ValueError("an answer the caller expects")
    if what == "escape":
        return what.split()[5]  # IndexError, as a parser indexing past a short record
    if what == "memory":
        return str(len(bytearray(512 << 20)))
    if what == "hang":
        time.sleep(60)
    if what == "crash":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    return what


def test_each_failure_is_reported_and_the_next_case_runs():
    with Limited(answer, (ValueError,), memory_mib=256, seconds=3) as run:
        assert run("fine").value == "fine"
        bad = run("bad input")
        assert bad.expected and bad.error == "ValueError"
        escape = run("escape")
        assert not escape.expected and escape.error == "IndexError" and "Traceback" in escape.detail
        assert run("memory").error == "MemoryError"  # past the 256 MiB above the start
        assert run("hang").error == "Timeout"
        assert run("crash").error == "Crash"
        assert run("fine again").value == "fine again"  # a fresh child took over


def test_the_limit_decides_what_fits():
    """300 MiB fits in a 1 GiB budget and not in a 256 MiB one (both fit in this machine's RAM)."""
    for budget, fits in ((1024, True), (256, False)):
        with Limited(lambda: len(bytearray(300 << 20)), (), memory_mib=budget, seconds=30) as run:
            result = run()
        assert (result.value == 300 << 20) if fits else (result.error == "MemoryError"), (budget, result)
