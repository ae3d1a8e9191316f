"""Where siffs keeps per-user state: the XDG base directories (config for keys, cache for tables)."""

from __future__ import annotations

import os
from pathlib import Path


def _base(variable: str, default: str) -> Path:
    value = os.environ.get(variable, "")
    # The XDG spec says relative paths are invalid and must be ignored.
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / default


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/siffs`` (default ``~/.config/siffs``): trusted keys, the cache secret."""
    return _base("XDG_CONFIG_HOME", ".config") / "siffs"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/siffs`` (default ``~/.cache/siffs``): disposable, rebuilt on demand."""
    return _base("XDG_CACHE_HOME", ".cache") / "siffs"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the owner only; returns it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
