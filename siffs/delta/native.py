"""Loading the optional native hot paths of the delta stage (C extensions built by ``pip install``).

Each native module has a pure-Python twin that gives the same results: the fallback where no C
compiler was at hand, and the oracle the tests compare the native code with. ``SIFFS_NO_NATIVE=1``
forces the Python code everywhere (to compare, or to rule the native code out when debugging).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str) -> ModuleType | None:
    """The native module ``siffs.delta.<name>``, or None when it was not built or is disabled."""
    if os.environ.get("SIFFS_NO_NATIVE"):
        return None
    try:
        return importlib.import_module(f"siffs.delta.{name}")
    except ImportError:
        return None
