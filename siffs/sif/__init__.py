"""SIF container format: read, validate and write Singularity Image Format files.

Knows nothing above the container: no signatures, no filesystems. See sif-format.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from siffs.sif.errors import ObjectNotFoundError, SifError, SifFormatError, SifIOError, SifUsageError

if TYPE_CHECKING:
    from siffs.sif.load import Image
    from siffs.sif.raw import Descriptor, Header, Link
    from siffs.sif.write import ObjectInput, add, create, delete, link_group, set_primary

#: Where the reader and the writer live. They are imported on first use (PEP 562): the error
#: classes alone, which every command maps to exit codes, must not load the writer and what it
#: needs (uuid, platform, datetime) into ``siffs run`` and ``siffs mount``. (The writer's module
#: is not called ``create``: importing it would set the package's ``create`` to the module.)
_LAZY = {
    **dict.fromkeys(("ObjectInput", "add", "create", "delete", "link_group", "set_primary"), "write"),
    "Image": "load",
    **dict.fromkeys(("Descriptor", "Header", "Link"), "raw"),
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Descriptor",
    "Header",
    "Image",
    "Link",
    "ObjectInput",
    "ObjectNotFoundError",
    "SifError",
    "SifFormatError",
    "SifIOError",
    "SifUsageError",
    "add",
    "create",
    "delete",
    "link_group",
    "set_primary",
]
