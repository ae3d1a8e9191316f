"""Loading the optional native hot paths (C extensions built by ``pip install``, see setup.py).

Each native module has a pure-Python twin that gives the same results: the fallback where no C
compiler was at hand, and the oracle the tests compare the native code with. ``SIFFS_NO_NATIVE=1``
forces the Python code everywhere (to compare, or to rule the native code out when debugging).

Each native module states the version of its interface to its Python caller (``ABI``, a
constant bumped whenever that interface changes), and the caller says which one it was written
for: a module built from other sources (an editable install updated without ``pip install -e .``)
is then not used, and the Python code serves instead of failing on a changed signature.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def disabled() -> bool:
    """Whether ``SIFFS_NO_NATIVE`` asks for the Python code (set to anything but empty or 0)."""
    return os.environ.get("SIFFS_NO_NATIVE", "") not in ("", "0")


def load(name: str, abi: int) -> ModuleType | None:
    """The native module ``name`` (e.g. ``siffs.delta._chunk``) of interface version ``abi``, or
    None when not built, built from other sources, or disabled."""
    if disabled():
        return None
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    built = getattr(module, "ABI", None)
    if built != abi:
        import logging  # noqa: PLC0415 - only here: importing it costs every command's start

        logging.getLogger(__name__).warning(
            "native module %s was built for interface %s, not %d: using the Python code "
            "(rebuild it: pip install -e .)",
            name,
            built,
            abi,
        )
        return None
    return module
