"""SIF container format: read, validate and write Singularity Image Format files.

Knows nothing above the container: no signatures, no filesystems. See sif-format.md.
"""

from siffs.sif.create import ObjectInput, add, create, delete, link_group, set_primary
from siffs.sif.errors import ObjectNotFoundError, SifError, SifFormatError, SifIOError, SifUsageError
from siffs.sif.load import Image
from siffs.sif.raw import Descriptor, Header, Link

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
