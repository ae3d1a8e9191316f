"""A tiny progress bar on standard error, shown only when it is a terminal.

Layers below the CLI report progress through a ``(done, total)`` callback and never print;
this turns the callback into a bar. Piped or redirected output stays clean, and so does
``siffs -q``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from siffs.cli import output

_WIDTH = 30
_INTERVAL = 0.1


class ProgressBar:
    """``with ProgressBar("verifying") as bar: work(progress=bar.update)``; quiet when not a tty or -q."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() and output.verbosity() > output.Verbosity.QUIET
        self._last = 0.0
        self._shown = False
        self._start = time.monotonic()

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < _INTERVAL and done < total):
            return
        self._last = now
        fraction = min(1.0, done / total) if total > 0 else 1.0
        filled = int(fraction * _WIDTH)
        rate = done / max(now - self._start, 1e-6) / 2**20
        bar = "#" * filled + "-" * (_WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%} {rate:6.0f} MiB/s")
        self.stream.flush()
        self._shown = True

    def __enter__(self) -> Callable[[int, int], None]:
        return self.update

    def __exit__(self, *exc: object) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
