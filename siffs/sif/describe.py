"""Render an image the way the reference ``siftool`` does, and as JSON.

The text forms reproduce ``siftool header``, ``list`` and ``info`` byte for byte
(sif-format.md §6), so that scripts and eyes used to siftool see the same thing. The JSON
forms carry the same facts with raw values kept (schema in README, "JSON output").
"""

from __future__ import annotations

import math
from typing import Any

from siffs.sif.errors import SifFormatError
from siffs.sif.load import Image
from siffs.sif.raw import Descriptor, Header, format_time
from siffs.sif.types import (
    DATA_TYPE_NAMES,
    FORMAT_TYPE_NAMES,
    FS_TYPE_NAMES,
    HASH_TYPE_NAMES,
    MESSAGE_TYPE_NAMES,
    PART_TYPE_NAMES,
    SBOM_FORMAT_NAMES,
    name_of,
)

_RULE = "-" * 78


def _truncating_div(a: int, b: int) -> int:
    """Integer division rounding toward zero, as Go's ``/`` on integers does."""
    q = abs(a) // b
    return q if a >= 0 else -q


def readable_size(size: int) -> str:
    """siftool's ``readableSize``: binary units, integer-truncated unit choice, rounded value."""
    if -1024 < size < 1024:
        return f"{size} B"
    div, exp = 1024, 0
    n = _truncating_div(size, 1024)
    while n <= -1024 or n >= 1024:
        div *= 1024
        exp += 1
        n = _truncating_div(n, 1024)
    value = size / div
    rounded = math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)  # Go rounds halves away from zero
    return f"{rounded} {'KMGTPE'[exp]}iB"


def _tabulate(rows: list[tuple[str, str]], padding: int, margin: str = "") -> str:
    """Two columns as Go's tabwriter aligns them (key column = widest key + padding)."""
    width = max((len(k) for k, _ in rows), default=0) + padding
    return "".join(f"{margin}{k.ljust(width)}{v}\n" for k, v in rows)


def header_text(h: Header) -> str:
    rows: list[tuple[str, str]] = []
    script = h.launch_script.rstrip(b"\0").decode("utf-8", "replace")
    if script:
        rows.append(("Launch Script:", script.removesuffix("\n")))
    rows.append(("Version:", h.version.rstrip(b"\0").decode("ascii", "replace")))
    if h.arch_name != "unknown":
        rows.append(("Primary Architecture:", h.arch_name))
    if h.uuid is not None:
        rows.append(("ID:", str(h.uuid)))
    for key, t in (("Created At:", h.created_at), ("Modified At:", h.modified_at)):
        if (shown := format_time(t)) is not None:
            rows.append((key, shown))
    rows += [
        ("Descriptors Free:", str(h.descriptors_free)),
        ("Descriptors Total:", str(h.descriptors_total)),
        ("Descriptors Offset:", str(h.descriptors_offset)),
        ("Descriptors Size:", readable_size(h.descriptors_size)),
        ("Data Offset:", str(h.data_offset)),
        ("Data Size:", readable_size(h.data_size)),
    ]
    return _tabulate(rows, padding=1)


def type_label(d: Descriptor) -> str | None:
    """The TYPE column of ``list``; ``None`` where siftool fails to decode the metadata."""
    name = name_of(DATA_TYPE_NAMES, d.data_type)
    if (part := d.partition) is not None:
        fs = name_of(FS_TYPE_NAMES, part.fs_type)
        return f"{name} ({fs}/{name_of(PART_TYPE_NAMES, part.part_type)}/{part.arch_name})"
    if (sig := d.signature) is not None:
        if sig.hash_type not in HASH_TYPE_NAMES:
            return None
        return f"{name} ({HASH_TYPE_NAMES[sig.hash_type]})"
    if (msg := d.crypt_message) is not None:
        fmt = name_of(FORMAT_TYPE_NAMES, msg.format_type)
        return f"{name} ({fmt}/{name_of(MESSAGE_TYPE_NAMES, msg.message_type)})"
    if (sbom := d.sbom_format) is not None:
        return f"{name} ({name_of(SBOM_FORMAT_NAMES, sbom, 'unknown')})"
    return name


def _group_text(d: Descriptor) -> str:
    return str(d.group) if d.group else "NONE"


def list_text(image: Image) -> str:
    out = [
        _RULE,
        "\n",
        f"{'ID':<4} {'|GROUP':<8} {'|LINK':<8} {'|SIF POSITION (start-end)':<26} |TYPE\n",
        _RULE,
        "\n",
    ]
    for d in image.descriptors:
        out.append(f"{d.id:<4} |{_group_text(d):<7} ")
        link = d.link
        if link is None:
            out.append(f"|{'NONE':<7} ")
        elif link.is_group:
            out.append(f"|{link.target:<3} (G) ")
        else:
            out.append(f"|{link.target:<7} ")
        out.append(f"{f'|{d.offset}-{d.end} ':<26} ")
        label = type_label(d)
        # siftool prints nothing more, not even the newline, when it cannot decode the type.
        if label is not None:
            out.append(f"|{label}\n")
    return "".join(out)


def info_text(d: Descriptor) -> str:
    link = d.link
    linked = "NONE" if link is None else f"{link.target} (G)" if link.is_group else str(link.target)
    rows = [
        ("Data Type:", name_of(DATA_TYPE_NAMES, d.data_type)),
        ("ID:", str(d.id)),
        ("Group ID:", _group_text(d)),
        ("Linked ID:", linked),
        ("Offset:", str(d.offset)),
        ("Size:", str(d.size)),
    ]
    for key, t in (("Created At:", d.created_at), ("Modified At:", d.modified_at)):
        if (shown := format_time(t)) is not None:
            rows.append((key, shown))
    if d.name:
        rows.append(("Name:", d.name_text))
    rows += _type_rows(d)
    return _tabulate(rows, padding=2, margin="  ")


def _type_rows(d: Descriptor) -> list[tuple[str, str]]:
    if (part := d.partition) is not None:
        return [
            ("Filesystem Type:", name_of(FS_TYPE_NAMES, part.fs_type)),
            ("Partition Type:", name_of(PART_TYPE_NAMES, part.part_type)),
            ("Architecture:", part.arch_name),
        ]
    if (sig := d.signature) is not None:
        if sig.hash_type not in HASH_TYPE_NAMES:
            raise SifFormatError(f"object {d.id}: hash algorithm {sig.hash_type} unsupported")
        rows = [("Hash Type:", HASH_TYPE_NAMES[sig.hash_type])]
        if sig.fingerprint is not None:
            rows.append(("Entity:", sig.fingerprint))
        return rows
    if (msg := d.crypt_message) is not None:
        return [
            ("Format Type:", name_of(FORMAT_TYPE_NAMES, msg.format_type)),
            ("Message Type:", name_of(MESSAGE_TYPE_NAMES, msg.message_type)),
        ]
    if (sbom := d.sbom_format) is not None:
        return [("Format:", name_of(SBOM_FORMAT_NAMES, sbom, "unknown"))]
    if (digest := d.oci_digest) is not None:
        return [("Digest:", digest)]
    return []


# -- JSON ---------------------------------------------------------------------------------


def header_json(h: Header) -> dict[str, Any]:
    return {
        "launch_script": h.launch_script_text,
        "version": h.version.rstrip(b"\0").decode("ascii", "replace"),
        "arch": h.arch_name,
        "arch_code": h.arch[:2].decode("ascii", "replace"),
        "id": None if h.uuid is None else str(h.uuid),
        "created_at": None if format_time(h.created_at) is None else h.created_at,
        "modified_at": None if format_time(h.modified_at) is None else h.modified_at,
        "descriptors_free": h.descriptors_free,
        "descriptors_total": h.descriptors_total,
        "descriptors_offset": h.descriptors_offset,
        "descriptors_size": h.descriptors_size,
        "data_offset": h.data_offset,
        "data_size": h.data_size,
    }


def descriptor_json(d: Descriptor) -> dict[str, Any]:
    link = d.link
    out: dict[str, Any] = {
        "id": d.id,
        "slot": d.slot,
        "data_type": d.data_type,
        "data_type_name": name_of(DATA_TYPE_NAMES, d.data_type),
        "group": d.group or None,
        "link": None if link is None else {"id": link.target, "is_group": link.is_group},
        "offset": d.offset,
        "size": d.size,
        "size_with_padding": d.size_with_padding,
        "created_at": None if format_time(d.created_at) is None else d.created_at,
        "modified_at": None if format_time(d.modified_at) is None else d.modified_at,
        "name": d.name_text,
    }
    if (part := d.partition) is not None:
        out["partition"] = {
            "fs_type": part.fs_type,
            "fs_type_name": name_of(FS_TYPE_NAMES, part.fs_type),
            "part_type": part.part_type,
            "part_type_name": name_of(PART_TYPE_NAMES, part.part_type),
            "arch": part.arch_name,
        }
    if (sig := d.signature) is not None:
        out["signature"] = {
            "hash_type": sig.hash_type,
            "hash_type_name": name_of(HASH_TYPE_NAMES, sig.hash_type),
            "fingerprint": sig.fingerprint,
        }
    if (msg := d.crypt_message) is not None:
        out["crypt_message"] = {
            "format_type": msg.format_type,
            "format_type_name": name_of(FORMAT_TYPE_NAMES, msg.format_type),
            "message_type": msg.message_type,
            "message_type_name": name_of(MESSAGE_TYPE_NAMES, msg.message_type),
        }
    if (sbom := d.sbom_format) is not None:
        out["sbom"] = {"format": sbom, "format_name": name_of(SBOM_FORMAT_NAMES, sbom, "unknown")}
    if (digest := d.oci_digest) is not None:
        out["oci"] = {"digest": digest}
    return out


def image_json(image: Image) -> dict[str, Any]:
    primary = [d.id for d in image.descriptors if d.is_primary_partition]
    return {
        "path": image.path,
        "header": header_json(image.header),
        "primary_partition": primary[0] if len(primary) == 1 else None,
        "groups": image.groups(),
        "descriptors": [descriptor_json(d) for d in image.descriptors],
    }
