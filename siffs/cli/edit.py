"""``siffs new|add|del|setprim`` (as siftool has them) and ``siffs create``.

``create`` assembles a runnable image in one step from a SquashFS root filesystem and the
optional Singularity metadata objects, laid out as ``singularity build`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import struct
import tempfile
from typing import BinaryIO

from siffs.cli import encrypted
from siffs.cli.common import CommandError
from siffs.cli.exitcodes import ExitCode
from siffs.cli.progress import ProgressBar
from siffs.sif import ObjectInput, add, create, delete, set_primary
from siffs.sif.raw import oci_extra, partition_extra, sbom_extra, signature_extra
from siffs.sif.types import (
    ARCH_CODES,
    SBOM_FORMAT_NAMES,
    DataType,
    FormatType,
    FsType,
    MessageType,
    PartType,
    arch_code,
)

#: siftool's ``--datatype`` numbers (1-9), plus the two OCI types of newer siftool releases.
DATATYPE_NUMBERS = {i + 1: t for i, t in enumerate(DataType)}
#: siftool's ``--partarch`` numbers.
PARTARCH_NUMBERS = {int(code): name for name, code in ARCH_CODES.items()}
_MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("new", help="create an empty SIF image (as siftool new)")
    p.add_argument("image", help="SIF file to create (replaced if it exists)")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("add", help="add a data object to an image (as siftool add)")
    p.add_argument("image", help="SIF file to modify")
    p.add_argument("object", help="file holding the object's data")
    p.add_argument(
        "--datatype",
        type=int,
        required=True,
        choices=sorted(DATATYPE_NUMBERS),
        help="1 Deffile, 2 EnvVar, 3 Labels, 4 Partition, 5 Signature, 6 GenericJSON, "
        "7 Generic, 8 CryptoMessage, 9 SBOM, 10 OCI root index, 11 OCI blob",
    )
    p.add_argument(
        "--parttype", type=int, default=0, help="with --datatype 4: 1 System, 2 PrimSys, 3 Data, 4 Overlay"
    )
    p.add_argument(
        "--partfs", type=int, default=0, help="with --datatype 4: 1 Squash, 2 Ext3, 3 ImmuObj, 4 Raw"
    )
    p.add_argument(
        "--partarch",
        type=int,
        default=0,
        help="with --datatype 4: 1 386, 2 amd64, 3 arm, 4 arm64, "
        "5 ppc64, 6 ppc64le, 7 mips, 8 mipsle, 9 mips64, 10 mips64le, 11 s390x, 12 riscv64",
    )
    p.add_argument(
        "--signhash",
        type=int,
        default=0,
        help="with --datatype 5: 1 SHA256, 2 SHA384, 3 SHA512, 4 BLAKE2s_256, 5 BLAKE2b_256",
    )
    p.add_argument("--signentity", default="", help="with --datatype 5: signer fingerprint, 40 hex digits")
    p.add_argument(
        "--sbomformat", default="", help="with --datatype 9: " + ", ".join(SBOM_FORMAT_NAMES.values())
    )
    p.add_argument("--groupid", type=int, default=0, help="object group (default: none)")
    p.add_argument("--link", type=int, default=None, help="linked object ID")
    p.add_argument("--alignment", type=int, default=None, help="data alignment (default 4096 for partitions)")
    p.add_argument("--filename", default=None, help="object name stored in the descriptor")
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("del", help="delete a data object (as siftool del)")
    p.add_argument("id", type=int, help="object ID")
    p.add_argument("image", help="SIF file to modify")
    p.set_defaults(func=cmd_del)

    p = sub.add_parser("setprim", help="make a system partition the primary one (as siftool setprim)")
    p.add_argument("id", type=int, help="partition object ID")
    p.add_argument("image", help="SIF file to modify")
    p.set_defaults(func=cmd_setprim)

    p = sub.add_parser("create", help="build a runnable SIF from a SquashFS root filesystem")
    p.add_argument("image", help="SIF file to create (replaced if it exists)")
    p.add_argument(
        "rootfs",
        help="SquashFS image of the root filesystem (e.g. from mksquashfs); with --encrypt also a directory",
    )
    p.add_argument("--deffile", help="definition file to store (Def.FILE)")
    p.add_argument("--labels", help="labels JSON file to store (JSON.Labels)")
    p.add_argument("--env", help="environment script to store (Env.Vars)")
    p.add_argument(
        "--data", action="append", default=[], metavar="FILE", help="extra data partition (raw), repeatable"
    )
    p.add_argument(
        "--arch", default=None, help="architecture of the root filesystem (default: this machine's)"
    )
    encrypted.add_build_arguments(p)
    p.set_defaults(func=cmd_create)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}", ExitCode.IO) from exc


def _open_file(stack: contextlib.ExitStack, path: str) -> BinaryIO:
    try:
        return stack.enter_context(open(path, "rb"))
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}", ExitCode.IO) from exc


def cmd_new(args: argparse.Namespace) -> None:
    create(args.image)


def _usage(message: str) -> CommandError:
    return CommandError(message, ExitCode.USAGE)


def _add_extra(args: argparse.Namespace, data_type: DataType, data: bytes | None) -> bytes:
    if data_type == DataType.PARTITION:
        if not (args.parttype and args.partfs and args.partarch):
            raise _usage("with a partition (--datatype 4), --partfs, --parttype and --partarch must be given")
        arch = arch_code(PARTARCH_NUMBERS.get(args.partarch, "unknown"))
        return partition_extra(args.partfs, args.parttype, arch)
    if data_type == DataType.SIGNATURE:
        try:
            entity = bytes.fromhex(args.signentity)
        except ValueError as exc:
            raise _usage("--signentity must be a fingerprint of 40 hex digits") from exc
        if len(entity) != 20:
            raise _usage(f"invalid signing entity fingerprint length: got {len(entity)} bytes, want 20")
        if not 1 <= args.signhash <= 5:
            raise _usage(f"invalid hash type: {args.signhash}")
        return signature_extra(args.signhash, entity)
    if data_type == DataType.SBOM:
        formats = {name: number for number, name in SBOM_FORMAT_NAMES.items()} | {"github": 3}
        if args.sbomformat not in formats:
            raise _usage(f"with an SBOM (--datatype 9), --sbomformat must be one of {', '.join(formats)}")
        return sbom_extra(formats[args.sbomformat])
    if data_type in (DataType.OCI_ROOT_INDEX, DataType.OCI_BLOB):
        assert data is not None
        return oci_extra("sha256:" + hashlib.sha256(data).hexdigest())
    return b""


def cmd_add(args: argparse.Namespace) -> None:
    data_type = DATATYPE_NUMBERS[args.datatype]
    if args.link is not None and args.link <= 0:
        raise _usage("--link must be a positive object ID")
    with contextlib.ExitStack() as stack:
        oci = data_type in (DataType.OCI_ROOT_INDEX, DataType.OCI_BLOB)
        data: bytes | BinaryIO = _read_file(args.object) if oci else _open_file(stack, args.object)
        extra = _add_extra(args, data_type, data if isinstance(data, bytes) else None)
        obj = ObjectInput(
            data_type=data_type,
            data=data,
            group=args.groupid,
            link=args.link or 0,
            name=(args.filename or "").encode(),
            extra=extra,
            alignment=args.alignment,
        )
        add(args.image, obj)


def cmd_del(args: argparse.Namespace) -> None:
    delete(args.image, args.id)


def cmd_setprim(args: argparse.Namespace) -> None:
    set_primary(args.image, args.id)


def host_arch() -> str:
    return _MACHINE_ARCH.get(platform.machine(), "unknown")


def cmd_create(args: argparse.Namespace) -> None:
    arch = args.arch or host_arch()
    if arch not in ARCH_CODES:
        raise _usage(f"unknown architecture {arch!r}; one of {', '.join(ARCH_CODES)}")
    objects: list[ObjectInput] = []
    if args.deffile:
        objects.append(ObjectInput(DataType.DEFFILE, _read_file(args.deffile)))
    if args.labels:
        labels = _read_file(args.labels)
        try:
            json.loads(labels)
        except ValueError as exc:
            raise CommandError(f"{args.labels}: not valid JSON ({exc})", ExitCode.USAGE) from exc
        objects.append(ObjectInput(DataType.LABELS, labels))
    if args.env:
        objects.append(ObjectInput(DataType.ENVVAR, _read_file(args.env)))
    with contextlib.ExitStack() as stack:
        fs_type: int = FsType.SQUASHFS
        message: bytes | None = None
        rootfs = None if args.encrypt and os.path.isdir(args.rootfs) else _open_file(stack, args.rootfs)
        if rootfs is not None and rootfs.read(4) != b"hsqs":
            raise CommandError(f"{args.rootfs}: not a SquashFS image (no 'hsqs' magic)", ExitCode.USAGE)
        if args.encrypt:
            choice = encrypted.BuildChoice.from_args(args)
            workdir = stack.enter_context(
                tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.image)))
            )
            with ProgressBar("encrypting") as progress:
                partition, fs_type, message = encrypted.build_partition(
                    args.rootfs, choice, workdir, progress=progress
                )
            rootfs = _open_file(stack, partition)
        assert rootfs is not None
        rootfs.seek(0)
        objects.append(
            ObjectInput(
                DataType.PARTITION, rootfs, extra=partition_extra(fs_type, PartType.PRIMSYS, arch_code(arch))
            )
        )
        if message is not None:  # the key, encrypted to the RSA key, linked to the partition's ID
            extra = struct.pack("<ii", FormatType.PEM, MessageType.RSA_OAEP)
            objects.append(ObjectInput(DataType.CRYPTO_MESSAGE, message, link=len(objects), extra=extra))
        for path in args.data:
            objects.append(
                ObjectInput(
                    DataType.PARTITION,
                    _open_file(stack, path),
                    extra=partition_extra(FsType.RAW, PartType.DATA, arch_code(arch)),
                )
            )
        create(args.image, objects)
