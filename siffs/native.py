"""Loading the optional native hot paths (C extensions built by ``pip install``, see setup.py).

Each native module has a pure-Python twin that gives the same results: the fallback where no C
compiler was at hand, and the oracle the tests compare the native code with. ``SIFFS_NO_NATIVE=1``
forces the Python code everywhere (to compare, or to rule the native code out when debugging).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def disabled() -> bool:
    """Whether ``SIFFS_NO_NATIVE`` asks for the Python code (set to anything but empty or 0)."""
    return os.environ.get("SIFFS_NO_NATIVE", "") not in ("", "0")


def load(name: str) -> ModuleType | None:
    """The native module ``name`` (e.g. ``siffs.delta._chunk``), or None when not built or disabled."""
    if disabled():
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
