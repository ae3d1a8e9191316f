"""Coverage-guided fuzzing of siffs' parsers with atheris (libFuzzer for Python).

    python -m tests.fuzz.run TARGET [CORPUS_DIR ...] [libFuzzer flags]

TARGET is one of ``tests/fuzz/targets.py`` (sif, squashfs, signature). With no directory
the run reads and grows ``tests/fuzz/corpus/TARGET`` (the committed seeds); libFuzzer writes
new inputs to the first directory and only reads the others. Every input runs under a
memory limit (``RLIMIT_AS``: the address space at start plus ``--memory-mib``) and a time
limit (libFuzzer's ``-timeout``); an exception outside the target's own error hierarchy, a
``MemoryError`` or a time-out is a crash: libFuzzer stops, saves the input as
``crash-<sha1>`` (or ``timeout-``) in ``-artifact_prefix`` and exits non-zero.

The long run (what the README documents)::

    nice python -m tests.fuzz.run squashfs -max_total_time=3600 -print_final_stats=1

A saved input replays by passing its file instead of a directory. Shrink a grown corpus
before committing it::

    python -m tests.fuzz.run squashfs -merge=1 /tmp/min tests/fuzz/corpus/squashfs
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["siffs"]):
    from tests.fuzz.limits import MEMORY_MIB, SECONDS, cap_memory
    from tests.fuzz.targets import CORPUS, TARGETS, Target


def one_input(target: Target) -> Callable[[bytes], None]:
    """The function libFuzzer calls with each input: the target's own errors are answers."""

    def test(data: bytes) -> None:
        with contextlib.suppress(*target.expected):  # the parser's own answer to bad input
            target.run(data)

    return test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", choices=sorted(TARGETS))
    ap.add_argument("--memory-mib", type=int, default=MEMORY_MIB, help="address space (above the start)")
    a, rest = ap.parse_known_args()
    if not any(not arg.startswith("-") for arg in rest):
        rest.append(str(CORPUS / a.target))
    # Defaults first, so flags given on the command line win. libFuzzer's own RSS watchdog
    # samples once a second; RLIMIT_AS stops any allocation at once, so it is the memory limit.
    flags = [f"-timeout={SECONDS:g}", "-rss_limit_mb=0", "-malloc_limit_mb=0", *rest]
    cap_memory(a.memory_mib)
    # libFuzzer runs argv[0] through the shell for -merge and -fork: make it this very command.
    root = Path(__file__).parents[2]
    me = f"env PYTHONPATH={shlex.quote(str(root))} {shlex.quote(sys.executable)} -m tests.fuzz.run"
    argv0 = f"{me} {a.target} --memory-mib={a.memory_mib}"
    atheris.Setup([argv0, *flags], one_input(TARGETS[a.target]))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
