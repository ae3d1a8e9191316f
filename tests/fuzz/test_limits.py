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
        return str(len(bytearray(1 << 30)))
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
        assert run("memory").error == "MemoryError"  # 1 GiB is past the 256 MiB above the start
        assert run("hang").error == "Timeout"
        assert run("crash").error == "Crash"
        assert run("fine again").value == "fine again"  # a fresh child took over


def test_limit_is_above_what_the_child_started_with():
    with Limited(answer, (), memory_mib=512, seconds=30) as run:
        assert run("memory").error == "MemoryError"
    with Limited(lambda: len(bytearray(100 << 20)), (), memory_mib=512, seconds=30) as run:
        assert run().value == 100 << 20
