"""The SIF vocabulary: data types, partition kinds, hash types and their printed names.

Names are spelled exactly as the reference ``siftool`` prints them, because ``siffs list``
and ``siffs info`` must reproduce its output byte for byte. Unknown numeric values are
legal in a file (a newer writer may use them), so lookups never raise: they answer
``"Unknown"`` (or ``"unknown"`` where siftool spells it in lower case).
"""

from __future__ import annotations

from enum import IntEnum

MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"
HEADER_SIZE = 128
DESCRIPTOR_SIZE = 585
NAME_SIZE = 128
EXTRA_SIZE = 384
LAUNCH_SCRIPT_SIZE = 32
DEFAULT_LAUNCH_SCRIPT = b"#!/usr/bin/env run-singularity\n"
DEFAULT_DESCRIPTORS_OFFSET = 4096
DEFAULT_DESCRIPTOR_CAPACITY = 48
PARTITION_ALIGNMENT = 4096

#: Go's zero ``time.Time`` as Unix seconds: the reference writes it for "no time".
UNSET_TIME = -62135596800

#: Top bits that mark a group number in GroupID and a group link in LinkedID.
GROUP_MASK = 0xF0000000
ID_MASK = 0x0FFFFFFF


class DataType(IntEnum):
    """What a descriptor's object holds."""

    DEFFILE = 0x4001
    ENVVAR = 0x4002
    LABELS = 0x4003
    PARTITION = 0x4004
    SIGNATURE = 0x4005
    GENERIC_JSON = 0x4006
    GENERIC = 0x4007
    CRYPTO_MESSAGE = 0x4008
    SBOM = 0x4009
    OCI_ROOT_INDEX = 0x400A
    OCI_BLOB = 0x400B


class FsType(IntEnum):
    """Filesystem inside a partition object."""

    SQUASHFS = 1
    EXT3 = 2
    ARCHIVE = 3
    RAW = 4
    ENCRYPTED_SQUASHFS = 5
    GOCRYPTFS_SQUASHFS = 6


class PartType(IntEnum):
    """Role of a partition; ``PRIMSYS`` marks the one a runtime mounts as ``/``."""

    SYSTEM = 1
    PRIMSYS = 2
    DATA = 3
    OVERLAY = 4


class HashType(IntEnum):
    """Digest named by a signature descriptor (used by legacy signatures)."""

    SHA256 = 1
    SHA384 = 2
    SHA512 = 3
    BLAKE2S_256 = 4
    BLAKE2B_256 = 5


class FormatType(IntEnum):
    """Encoding of a cryptographic message object."""

    OPENPGP = 1
    PEM = 2


class MessageType(IntEnum):
    """Kind of a cryptographic message object."""

    CLEAR_SIGNATURE = 0x100
    RSA_OAEP = 0x200


class SBOMFormat(IntEnum):
    """Format of a software bill of materials object."""

    CYCLONEDX_JSON = 1
    CYCLONEDX_XML = 2
    GITHUB_JSON = 3
    SPDX_JSON = 4
    SPDX_RDF = 5
    SPDX_TAG_VALUE = 6
    SPDX_YAML = 7
    SYFT_JSON = 8


DATA_TYPE_NAMES: dict[int, str] = {
    DataType.DEFFILE: "Def.FILE",
    DataType.ENVVAR: "Env.Vars",
    DataType.LABELS: "JSON.Labels",
    DataType.PARTITION: "FS",
    DataType.SIGNATURE: "Signature",
    DataType.GENERIC_JSON: "JSON.Generic",
    DataType.GENERIC: "Generic/Raw",
    DataType.CRYPTO_MESSAGE: "Cryptographic Message",
    DataType.SBOM: "SBOM",
    DataType.OCI_ROOT_INDEX: "OCI.RootIndex",
    DataType.OCI_BLOB: "OCI.Blob",
}

FS_TYPE_NAMES: dict[int, str] = {
    FsType.SQUASHFS: "Squashfs",
    FsType.EXT3: "Ext3",
    FsType.ARCHIVE: "Archive",
    FsType.RAW: "Raw",
    FsType.ENCRYPTED_SQUASHFS: "Encrypted squashfs",
}

PART_TYPE_NAMES: dict[int, str] = {
    PartType.SYSTEM: "System",
    PartType.PRIMSYS: "*System",
    PartType.DATA: "Data",
    PartType.OVERLAY: "Overlay",
}

HASH_TYPE_NAMES: dict[int, str] = {
    HashType.SHA256: "SHA-256",
    HashType.SHA384: "SHA-384",
    HashType.SHA512: "SHA-512",
    HashType.BLAKE2S_256: "BLAKE2s-256",
    HashType.BLAKE2B_256: "BLAKE2b-256",
}

FORMAT_TYPE_NAMES: dict[int, str] = {FormatType.OPENPGP: "OpenPGP", FormatType.PEM: "PEM"}

MESSAGE_TYPE_NAMES: dict[int, str] = {
    MessageType.CLEAR_SIGNATURE: "Clear Signature",
    MessageType.RSA_OAEP: "RSA-OAEP",
}

SBOM_FORMAT_NAMES: dict[int, str] = {
    SBOMFormat.CYCLONEDX_JSON: "cyclonedx-json",
    SBOMFormat.CYCLONEDX_XML: "cyclonedx-xml",
    SBOMFormat.GITHUB_JSON: "github-json",
    SBOMFormat.SPDX_JSON: "spdx-json",
    SBOMFormat.SPDX_RDF: "spdx-rdf",
    SBOMFormat.SPDX_TAG_VALUE: "spdx-tag-value",
    SBOMFormat.SPDX_YAML: "spdx-yaml",
    SBOMFormat.SYFT_JSON: "syft-json",
}

#: Two-digit architecture codes (header and partition Extra) and Go's GOARCH names.
ARCH_NAMES: dict[bytes, str] = {
    b"01": "386",
    b"02": "amd64",
    b"03": "arm",
    b"04": "arm64",
    b"05": "ppc64",
    b"06": "ppc64le",
    b"07": "mips",
    b"08": "mipsle",
    b"09": "mips64",
    b"10": "mips64le",
    b"11": "s390x",
    b"12": "riscv64",
    b"13": "loong64",
}
ARCH_CODES: dict[str, bytes] = {name: code for code, name in ARCH_NAMES.items()}
ARCH_UNKNOWN = b"00"


def name_of(table: dict[int, str], value: int, unknown: str = "Unknown") -> str:
    """Printed name of ``value`` in ``table``, or siftool's word for an unknown value."""
    return table.get(value, unknown)


def arch_name(code: bytes) -> str:
    """GOARCH name of a three-byte (two digits + NUL) architecture field."""
    return ARCH_NAMES.get(code[:2], "unknown")


def arch_code(name: str) -> bytes:
    """Two-digit code of a GOARCH name (``amd64`` -> ``b"02"``); unknown names give ``00``."""
    return ARCH_CODES.get(name, ARCH_UNKNOWN)
