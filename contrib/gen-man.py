#!/usr/bin/env python3
"""Write siffs' man pages into contrib/man/ from its argument parser (run after changing a command).

    .venv/bin/python contrib/gen-man.py

The pages are committed; tests/contrib/test_man.py fails while they differ from the parser.
Read one with ``man -l contrib/man/siffs-mount.1``; install with ``cp contrib/man/*.1
/usr/local/share/man/man1/`` (or ``~/.local/share/man/man1/``).
"""

from __future__ import annotations

from pathlib import Path

from siffs.cli.main import build_parser
from siffs.cli.manpage import pages

MAN_DIR = Path(__file__).resolve().parent / "man"


def main() -> None:
    wanted = pages(build_parser())
    for stale in MAN_DIR.glob("*.1"):
        if stale.name not in wanted:  # a command that went away takes its page with it
            stale.unlink()
    for name, text in wanted.items():
        (MAN_DIR / name).write_text(text)


if __name__ == "__main__":
    main()
